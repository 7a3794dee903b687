"""Episode-level call matching, the env's success verdict, and the success criterion."""

from __future__ import annotations

import pytest

from rewards.outcome import call_match_outcome_reward, env_success_reward, success
from rl.types import Task, ToolCall, Trajectory, Turn

REFS = [{"name": "book_table", "arguments": {"restaurant": "Luigi", "day": "Friday", "people": 4}}]


def traj(*calls: list[ToolCall], refs=REFS, answer=None, final=None, infos=None) -> Trajectory:
    infos = infos or [{} for _ in calls]
    return Trajectory(
        task=Task(id="t", prompt="?", answer=answer, data={"reference_calls": refs}),
        token_ids=[], loss_mask=[], logprobs=[], prompt_len=0,
        turns=[Turn(0, 0, "", "stop", tool_calls=c, info=i) for c, i in zip(calls, infos)],
        info={"final_answer": final},
    )


def book(**args: object) -> ToolCall:
    return ToolCall("book_table", dict(args))


def test_call_match_outcome_by_hand() -> None:
    exact = book(restaurant="luigi", day="Friday", people=4)
    assert call_match_outcome_reward(traj([], [exact])) == 1.0
    # 2 of 3 arguments right: 0.5 + 0.5 * 2/3
    near = book(restaurant="Luigi", day="Monday", people=4)
    assert call_match_outcome_reward(traj([near])) == pytest.approx(5 / 6)
    # calls that errored did not run and do not count; an extra executed call halves the credit
    failed = ToolCall("book_table", {"people": "four"}, error="bad argument")
    assert call_match_outcome_reward(traj([failed], [exact])) == 1.0
    assert call_match_outcome_reward(traj([ToolCall("check", {})], [exact])) == 0.5
    assert call_match_outcome_reward(traj([])) == 0.0  # nothing ran: 0 / 1
    assert call_match_outcome_reward(traj([], refs=[])) == 1.0  # nothing to call, nothing called
    with pytest.raises(ValueError, match="reference_calls"):
        call_match_outcome_reward(traj([], refs=None))


def test_env_success_and_success() -> None:
    won = traj([], [], infos=[{}, {"success": True}])
    lost = traj([], infos=[{"success": False}])
    assert env_success_reward(won) == 1.0 and success(won)
    assert env_success_reward(lost) == 0.0 and not success(lost)
    # no verdict from the env: env_success is 0, success falls back to the answer match
    silent = traj([], answer=12, final="12")
    assert env_success_reward(silent) == 0.0 and success(silent)
    assert not success(traj([], answer=12, final="13"))
    # the env's verdict wins over the answer match
    lost.task.answer, lost.info["final_answer"] = "cat", "cat"
    assert not success(lost)
