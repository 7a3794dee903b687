"""Turn-level rewards and compose_turns, by hand."""

from __future__ import annotations

import pytest

from rewards.compose import (
    compose_turns,
    get_turn_reward,
    register_reward,
    register_turn_reward,
    registered_turn_rewards,
    reward_metrics,
    score,
)
from rewards.outcome import call_match_outcome_reward
from rewards.turn import call_match, env_progress, tool_success
from rl.types import Task, ToolCall, Trajectory, Turn

OK = ToolCall("ask", {"slot": "day"})
BAD = ToolCall("", {}, error="invalid JSON")


def traj(*turns: tuple[list[ToolCall], float], refs: list[dict] | None = None) -> Trajectory:
    data = {} if refs is None else {"reference_calls": refs}
    return Trajectory(
        task=Task(id="t", prompt="?", data=data), token_ids=[], loss_mask=[], logprobs=[],
        prompt_len=0,
        turns=[Turn(start=0, end=0, text="", finish_reason="stop", tool_calls=c, reward=r)
               for c, r in turns],
    )


def test_registry() -> None:
    assert {"tool_success", "env_progress", "call_match"} <= set(registered_turn_rewards())
    with pytest.raises(KeyError, match="valid names: .*env_progress"):
        get_turn_reward("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_turn_reward("call_match")(lambda traj: [])
    # one name, one registry: reward/<name> metrics stay unambiguous
    with pytest.raises(ValueError, match="already registered as an episode reward"):
        register_turn_reward("outcome")
    with pytest.raises(ValueError, match="already registered as a turn reward"):
        register_reward("env_progress")


def test_tool_success_by_hand() -> None:
    t = traj(([], 0.0), ([OK], 0.0), ([BAD], 0.0), ([OK, OK, BAD, OK], 0.0))
    assert tool_success(t) == [0.0, 1.0, -1.0, 0.5]  # (1 + 1 - 1 + 1) / 4
    assert tool_success(traj()) == []


def test_env_progress_reads_step_rewards() -> None:
    assert env_progress(traj(([], 0.5), ([], 0.25), ([], 0.0))) == [0.5, 0.25, 0.0]


def test_call_match_is_each_turns_share_of_the_outcome() -> None:
    refs = [{"name": "ask", "arguments": {"slot": "day"}},
            {"name": "book", "arguments": {"day": "Friday", "people": 2}}]
    good_book = ToolCall("book", {"day": "friday", "people": 2})
    half_book = ToolCall("book", {"day": "Monday", "people": 2})  # 0.5 * 1/2
    # 5 calls attempted in the episode, 2 references: every turn's credit is divided by 5
    t = traj(
        ([], 0.0),  # no call: 0
        ([OK, BAD], 0.0),  # OK matches ref 0 exactly, BAD earns 0: 1 / 5
        ([OK], 0.0),  # ref 0 already credited: a repeated call earns nothing
        ([half_book], 0.0),  # 0.25 / 5
        ([good_book], 0.0),  # the correction earns the improvement: (1 - 0.25) / 5
        refs=refs,
    )
    assert call_match(t) == pytest.approx([0.0, 0.2, 0.0, 0.05, 0.15])
    assert sum(call_match(t)) == pytest.approx(call_match_outcome_reward(t)) == 2 / 5
    assert call_match(traj(([good_book, OK], 0.0), refs=refs)) == [1.0]
    assert call_match(traj(([good_book], 0.0), ([OK], 0.0), refs=refs)) == [0.5, 0.5]
    assert call_match(traj(([], 0.0), refs=[])) == [0.0]  # nothing to call, nothing called
    with pytest.raises(ValueError, match="reference_calls"):
        call_match(traj(([OK], 0.0)))


def test_call_match_cannot_be_raised_by_malformed_or_extra_calls() -> None:
    refs = [{"name": "find_member", "arguments": {"name": "Ana"}},
            {"name": "rain_chance", "arguments": {"city": "Oslo", "day": "Friday"}}]
    good = ToolCall("find_member", {"name": "Ana"})
    right = ToolCall("rain_chance", {"city": "Oslo", "day": "Friday"})
    wrong = ToolCall("rain_chance", {"city": "Paris", "day": "Monday"})
    named_bad = ToolCall("rain_chance", {}, error='"arguments" must be a JSON object')
    # issue 23's cases, per turn: 1 good call; + 10 malformed calls; + a wrong-argument call
    assert call_match(traj(([good], 0.0), refs=refs)) == [0.5]
    ten_bad = [BAD, named_bad] * 5
    assert call_match(traj(([good], 0.0), (ten_bad, 0.0), refs=refs)) == pytest.approx(
        [1 / 11, 0.0])  # was [1.0, 0.05]: a named malformed call earned 0.5, shared by 10
    # was [1.0, 0.5]: the right name alone earned half credit
    assert call_match(traj(([good], 0.0), ([wrong], 0.0), refs=refs)) == [0.5, 0.0]
    # a malformed call that kept its name earned full credit for a tool without arguments
    ping = [{"name": "ping", "arguments": {}}]
    unclosed = ToolCall("ping", {}, error="unclosed call: [TOOL_CALLS]ping has no [ARGS]")
    assert call_match(traj(([unclosed], 0.0), refs=ping)) == [0.0]  # was [1.0]
    # perfect: the turns sum to 1 however the calls are split; any extra call lowers the sum
    assert call_match(traj(([good, right], 0.0), refs=refs)) == [1.0]
    assert call_match(traj(([good], 0.0), ([right], 0.0), refs=refs)) == [0.5, 0.5]
    for extra in (good, right, wrong, named_bad, BAD):
        per_turn = call_match(traj(([good], 0.0), ([right], 0.0), ([extra], 0.0), refs=refs))
        assert per_turn == pytest.approx([1 / 3, 1 / 3, 0.0]), extra  # was [1.0, 1.0, 0.0]


def test_compose_turns_weights_and_terms() -> None:
    t = traj(([OK], 0.5), ([BAD], 0.25), ([], 0.0))
    per_turn, terms = compose_turns(t, {"tool_success": 0.5, "env_progress": 2.0})
    # turn 0: 0.5*1 + 2*0.5 = 1.5; turn 1: 0.5*(-1) + 2*0.25 = 0; turn 2: 0
    assert per_turn == pytest.approx([1.5, 0.0, 0.0])
    assert terms == pytest.approx({"tool_success": 0.0, "env_progress": 0.75})
    assert compose_turns(t, {}) == ([0.0, 0.0, 0.0], {})
    per_turn, terms = compose_turns(t, {"env_progress": 0.0})  # zero weight: logged, not summed
    assert per_turn == [0.0, 0.0, 0.0] and terms == {"env_progress": 0.75}


def test_compose_turns_rejects_wrong_length_and_nan() -> None:
    if "_test_short" not in registered_turn_rewards():  # idempotent if the test reruns
        register_turn_reward("_test_short")(lambda traj: [1.0])
        register_turn_reward("_test_nan")(lambda traj: [float("nan")] * len(traj.turns))
    t = traj(([], 0.0), ([], 0.0))
    with pytest.raises(ValueError, match="returned 1 values for 2 turns"):
        compose_turns(t, {"_test_short": 1.0})
    with pytest.raises(ValueError, match="_test_nan"):
        compose_turns(t, {"_test_nan": 1.0})


def test_score_fills_the_trajectory_and_metrics() -> None:
    a = traj(([OK], 0.5), ([], 0.0))
    b = traj(([BAD], 0.0))
    a.info["final_answer"], b.info["final_answer"] = "x", None
    a.task.answer = b.task.answer = "x"
    assert score(a, {"outcome": 1.0}, {"tool_success": 1.0, "env_progress": 1.0}) == 1.0
    assert a.outcome_reward == 1.0 and a.reward_terms == {"outcome": 1.0}
    assert a.turn_rewards == [1.5, 0.0]
    assert score(b, {"outcome": 1.0}, {"tool_success": 1.0, "env_progress": 1.0}) == 0.0
    assert b.turn_rewards == [-1.0]
    m = reward_metrics([a, b])
    assert m == pytest.approx({"reward/outcome": 0.5, "reward/tool_success": 0.0,
                               "reward/env_progress": 0.25, "reward/turn_total": 0.25})
    score(a, {"outcome": 1.0}, {})  # no turn weights: zeros, and no turn metrics
    assert a.turn_rewards == [0.0, 0.0] and reward_metrics([a]) == {"reward/outcome": 1.0}
