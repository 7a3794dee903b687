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


def test_call_match_consumes_references_in_turn_order() -> None:
    refs = [{"name": "ask", "arguments": {"slot": "day"}},
            {"name": "book", "arguments": {"day": "Friday", "people": 2}}]
    good_book = ToolCall("book", {"day": "friday", "people": 2})
    half_book = ToolCall("book", {"day": "Monday", "people": 2})  # 0.5 + 0.5 * 1/2
    t = traj(
        ([], 0.0),  # no call: 0
        ([OK, BAD], 0.0),  # OK matches ref 0 exactly, BAD earns 0: (1 + 0) / 2
        ([OK], 0.0),  # ref 0 already consumed: a repeated call earns nothing
        ([half_book], 0.0),  # 0.75, consumes ref 1
        ([good_book], 0.0),  # nothing left to match
        refs=refs,
    )
    assert call_match(t) == [0.0, 0.5, 0.0, 0.75, 0.0]
    assert call_match(traj(([good_book, OK], 0.0), refs=refs)) == [1.0]
    with pytest.raises(ValueError, match="reference_calls"):
        call_match(traj(([OK], 0.0)))


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
