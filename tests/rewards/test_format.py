"""Format reward = answer_ok * fraction of error-free tool calls, by hand."""

from __future__ import annotations

from rewards.format import format_reward
from rl.types import Task, ToolCall, Trajectory, Turn

OK = ToolCall("calculator", {"expression": "1+1"})
BAD = ToolCall("", {}, error="invalid JSON in tool call")


def traj(*turns: tuple[str, list[ToolCall]]) -> Trajectory:
    return Trajectory(
        task=Task(id="t", prompt="?", answer=2),
        token_ids=[],
        loss_mask=[],
        logprobs=[],
        prompt_len=0,
        turns=[Turn(start=0, end=0, text=t, finish_reason="stop", tool_calls=c) for t, c in turns],
    )


def test_format_reward_hand_cases() -> None:
    assert format_reward(traj()) == 0.0
    assert format_reward(traj(("<answer>2</answer>", []))) == 1.0
    assert format_reward(traj(("call", [OK]), ("<answer>2</answer>", []))) == 1.0
    # One of four calls failed: 3/4.
    assert (
        format_reward(traj(("c", [OK, BAD, OK]), ("c", [OK]), ("<answer>2</answer>", []))) == 0.75
    )
    # Missing, unclosed, repeated, or early answers: 0.
    assert format_reward(traj(("call", [OK]), ("2", []))) == 0.0
    assert format_reward(traj(("<answer>2", []))) == 0.0
    assert format_reward(traj(("<answer>2</answer><answer>3</answer>", []))) == 0.0
    assert format_reward(traj(("<answer>1</answer>", [OK]), ("<answer>2</answer>", []))) == 0.0
