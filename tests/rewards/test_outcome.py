"""Outcome reward: tolerant numeric matching, computed by hand."""

from __future__ import annotations

import pytest

from rewards.outcome import (
    answers_match,
    final_answer,
    outcome_reward,
    parse_number,
    tool_use_reward,
)
from rl.types import Task, ToolCall, Trajectory, Turn


def traj(
    answer: object, final: str | None, texts: tuple[str, ...] = (), **info: object
) -> Trajectory:
    turns = [Turn(start=0, end=0, text=t, finish_reason="stop") for t in texts]
    info = {"final_answer": final, **info} if final is not None or not texts else dict(info)
    return Trajectory(
        task=Task(id="t", prompt="?", answer=answer),
        token_ids=[],
        loss_mask=[],
        logprobs=[],
        prompt_len=0,
        turns=turns,
        info=info,
    )


@pytest.mark.parametrize(
    "text, value",
    [
        ("1234", 1234.0),
        (" 12 ", 12.0),
        ("1,234", 1234.0),
        ("1,234,567.5", 1234567.5),
        ("1234.0", 1234.0),
        ("$12", 12.0),
        ("12 apples", 12.0),
        ("x = -3", -3.0),
        ("\u22123", -3.0),
        ("3/4", 0.75),
        ("3 / 4", 0.75),
        ("\\frac{3}{4}", 0.75),
        ("\\boxed{7}", 7.0),
        ("50%", 50.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("1e3", 1000.0),
        ("", None),
        ("twelve", None),
        ("3 + 4 = 7", None),  # more than one number: no credit for hedging
        ("12 or 13", None),
        ("1/0", None),
        ("3,5", None),  # not a thousands separator: two numbers
    ],
)
def test_parse_number(text: str, value: float | None) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "pred, ref, ok",
    [
        ("1,234", 1234, True),
        ("1234.0", 1234, True),
        ("$12", 12, True),
        (" 12 ", 12.0, True),
        ("12 apples", 12, True),
        ("3/4", 0.75, True),
        ("0.75", "3/4", True),
        ("0.3333333", 1 / 3, True),  # relative error 1e-7
        ("0.33333", 1 / 3, False),  # relative error 1e-5
        ("1000001", 1000000, True),  # relative error 1/1000001 < 1e-6
        ("1000002", 1000000, False),  # relative error 2e-6
        ("0", 0, True),
        ("0.0000000001", 0, True),  # abs tolerance 1e-9 near zero
        ("13", 12, False),
        ("12", "12", True),
        (None, 12, False),
        ("12", None, False),
        ("Paris", "paris", True),
        (" 'Paris'. ", "Paris", True),
        ("Lyon", "Paris", False),
        ("True", True, True),
    ],
)
def test_answers_match(pred: str | None, ref: object, ok: bool) -> None:
    assert answers_match(pred, ref) is ok


def test_outcome_reward() -> None:
    assert outcome_reward(traj(42, "42")) == 1.0
    assert outcome_reward(traj(42, "41")) == 0.0
    assert outcome_reward(traj(42, None)) == 0.0
    # No final_answer recorded by the loop: the last turn's last <answer> is used.
    assert (
        outcome_reward(traj(42, None, ("<tool_call>x</tool_call>", "<answer>42</answer>"))) == 1.0
    )
    assert final_answer(traj(42, None, ("no answer",))) is None


def test_tool_use_reward() -> None:
    t = traj(1, "1", ("a", "b"))
    assert tool_use_reward(t) == 0.0
    t.turns[0].tool_calls = [ToolCall("calculator", {}, error="bad")]
    assert tool_use_reward(t) == 0.0
    t.turns[1].tool_calls = [ToolCall("calculator", {"expression": "1"})]
    assert tool_use_reward(t) == 1.0
