"""The reward registry and weighted composition."""

from __future__ import annotations

import pytest

from rewards.compose import (
    DEFAULT_WEIGHTS,
    compose,
    get_reward,
    register_reward,
    registered_rewards,
)
from rl.types import Task, ToolCall, Trajectory, Turn


def _traj(final: str | None, text: str, calls: list[ToolCall]) -> Trajectory:
    return Trajectory(
        task=Task(id="t", prompt="?", answer=12),
        token_ids=[],
        loss_mask=[],
        logprobs=[],
        prompt_len=0,
        turns=[
            Turn(start=0, end=0, text="call", finish_reason="stop", tool_calls=calls),
            Turn(start=0, end=0, text=text, finish_reason="stop"),
        ],
        info={"final_answer": final},
    )


def test_registry() -> None:
    assert {"outcome", "format", "tool_use"} <= set(registered_rewards())
    assert set(DEFAULT_WEIGHTS) <= set(registered_rewards())
    with pytest.raises(KeyError, match="valid names: .*outcome"):
        get_reward("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("outcome")(lambda traj: 0.0)


def test_compose_by_hand() -> None:
    good = _traj("12", "<answer>12</answer>", [ToolCall("calculator", {"expression": "3*4"})])
    total, terms = compose(good, {"outcome": 1.0, "format": 0.2, "tool_use": 0.0})
    assert terms == {"outcome": 1.0, "format": 1.0, "tool_use": 1.0}
    assert total == pytest.approx(1.2)
    half = _traj("13", "<answer>13</answer>", [ToolCall("calculator", {}), ToolCall("", {}, "x")])
    total, terms = compose(half, {"outcome": 1.0, "format": 0.2, "tool_use": 0.5})
    assert terms == {"outcome": 0.0, "format": 0.5, "tool_use": 1.0}
    assert total == pytest.approx(0.2 * 0.5 + 0.5)
    assert compose(half, {}) == (0.0, {})
