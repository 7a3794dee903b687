"""Format reward = answer_ok * 0.5 ** (failed tool calls), by hand."""

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
    # One of four calls failed: halved.
    assert (
        format_reward(traj(("c", [OK, BAD, OK]), ("c", [OK]), ("<answer>2</answer>", []))) == 0.5
    )
    # Two failed calls: a quarter.
    assert format_reward(traj(("c", [BAD]), ("c", [OK, BAD]), ("<answer>2</answer>", []))) == 0.25
    # Missing, unclosed, repeated, or early answers: 0.
    assert format_reward(traj(("call", [OK]), ("2", []))) == 0.0
    assert format_reward(traj(("<answer>2", []))) == 0.0
    assert format_reward(traj(("<answer>2</answer><answer>3</answer>", []))) == 0.0
    assert format_reward(traj(("<answer>1</answer>", [OK]), ("<answer>2</answer>", []))) == 0.0


def test_extra_calls_do_not_dilute_a_failed_one() -> None:
    answer = ("<answer>2</answer>", [])
    one_failure = format_reward(traj(("c", [BAD]), answer))
    assert one_failure == 0.5
    # pointless successful calls around the failed one change nothing
    assert format_reward(traj(("c", [BAD, OK, OK]), ("c", [OK, OK, OK]), answer)) == one_failure
    # and the reward never rises with more failures
    rewards = [format_reward(traj(("c", [BAD] * k + [OK] * 3), answer)) for k in range(5)]
    assert rewards == [1.0, 0.5, 0.25, 0.125, 0.0625]
