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
    # 2 of 3 arguments right: PARTIAL_WEIGHT (0.5) * 2/3, no credit for the name itself
    near = book(restaurant="Luigi", day="Monday", people=4)
    assert call_match_outcome_reward(traj([near])) == pytest.approx(1 / 3)
    # a call that errored earns nothing but was attempted: 1 / max(2, 1)
    failed = ToolCall("book_table", {"people": "four"}, error="bad argument")
    assert call_match_outcome_reward(traj([failed], [exact])) == 0.5
    assert call_match_outcome_reward(traj([ToolCall("check", {})], [exact])) == 0.5
    assert call_match_outcome_reward(traj([])) == 0.0  # nothing ran: 0 / 1
    assert call_match_outcome_reward(traj([], refs=[])) == 1.0  # nothing to call, nothing called
    assert call_match_outcome_reward(traj([failed], refs=[])) == 0.0  # 0 / max(1, 0)
    with pytest.raises(ValueError, match="reference_calls"):
        call_match_outcome_reward(traj([], refs=None))


# Issue 23's measurement: a task with 2 reference calls. Before: 1 good call 0.50, + 10 malformed
# calls still 0.50, + 1 right-name wrong-argument call 0.75.
REFS2 = [{"name": "find_member", "arguments": {"name": "Ana"}},
         {"name": "rain_chance", "arguments": {"city": "Oslo", "day": "Friday"}}]
GOOD = ToolCall("find_member", {"name": "ana"})
RIGHT = ToolCall("rain_chance", {"city": "Oslo", "day": "Friday"})
WRONG_ARGS = ToolCall("rain_chance", {"city": "Paris", "day": "Monday"})  # no argument agrees
NEAR = ToolCall("rain_chance", {"city": "Oslo", "day": "Monday"})  # 1 of 2 arguments agrees


def malformed(k: int) -> list[ToolCall]:
    """k calls as the formats return what they cannot read (envs/formats); some keep a name."""
    kinds = [ToolCall("", {}, error="invalid JSON in tool call: Expecting ',' delimiter"),
             ToolCall("rain_chance", {}, error='"arguments" must be a JSON object'),
             ToolCall("", {}, error="unclosed <tool_call> tag"),
             ToolCall("find_member", {}, error="invalid JSON in tool call: Extra data")]
    return [kinds[i % len(kinds)] for i in range(k)]


def reward(*turns: list[ToolCall]) -> float:
    return call_match_outcome_reward(traj(*turns, refs=REFS2))


def test_issue_23_cases_by_hand() -> None:
    assert reward([GOOD]) == 0.5  # 1 / max(1, 2)
    # malformed calls are attempts that earn nothing: 1 / max(11, 2) (was 0.5)
    assert reward([GOOD] + malformed(10)) == pytest.approx(1 / 11)
    assert reward([GOOD], malformed(10)) == pytest.approx(1 / 11)  # in a turn of their own too
    # the right tool with wrong arguments earns nothing: (1 + 0) / max(2, 2) (was 0.75)
    assert reward([GOOD, WRONG_ARGS]) == 0.5
    # partly right arguments earn PARTIAL_WEIGHT * 1/2: (1 + 0.25) / 2 (was 0.875), less than
    # the right call
    assert reward([GOOD, NEAR]) == pytest.approx(0.625)
    assert reward([GOOD, NEAR]) < reward([GOOD, RIGHT])


def test_exact_match_is_one_and_any_extra_call_lowers_it() -> None:
    assert reward([GOOD, RIGHT]) == 1.0
    assert reward([RIGHT], [], [GOOD]) == 1.0  # order and turns do not matter
    not_run = ToolCall("rain_chance", {"city": "Oslo", "day": "Friday"},
                       error="not run: the turn also gave a final answer")
    extras = [GOOD, RIGHT, WRONG_ARGS, NEAR, ToolCall("sku_price", {"sku": "SKU-1"}), not_run,
              *malformed(4)]
    for extra in extras:
        # 2 exact matches / max(3 attempts, 2 references) (a duplicate of a right call too)
        assert reward([GOOD, RIGHT, extra]) == pytest.approx(2 / 3), extra
        assert reward([GOOD], [RIGHT], [extra]) == pytest.approx(2 / 3), extra


def test_spraying_right_name_calls_loses_to_the_one_right_call() -> None:
    for k in (1, 2, 5):
        # k right-name calls with garbage arguments: 1 / max(1 + k, 2)
        assert reward([GOOD] + [WRONG_ARGS] * k) == pytest.approx(1 / max(1 + k, 2))
        # k near misses: only one can pair with the reference: (1 + 0.25) / max(1 + k, 2)
        assert reward([GOOD] + [NEAR] * k) == pytest.approx(1.25 / max(1 + k, 2))
        # k guesses, one of them right: 2 / (1 + k)
        if k > 1:
            guesses = [RIGHT] + [NEAR] * (k - 1)
            assert reward([GOOD] + guesses) == pytest.approx(2 / (1 + k))
    assert max(reward([GOOD] + [NEAR] * k) for k in range(1, 8)) < reward([GOOD, RIGHT])


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
