"""Outcome (episode-level) rewards.

- ``outcome``: does the final answer match the task's reference answer (below)?
- ``call_match_outcome``: the episode's tool calls against the reference calls
  (``task.data["reference_calls"]``), paired by maximum-weight matching (:mod:`envs.matching`):
  ``matched credit / max(#attempted calls, #reference calls)`` (rule below); 1.0 iff exactly the
  reference calls ran (in any order) and nothing else was attempted.
- ``env_success``: the env's own terminal verdict (``info["success"]`` of the trajectory or of
  its last step), 0.0 when the env reported none.
- ``env_score``: the env's graded terminal verdict in [0, 1] (``info["score"]``: search F1, share
  of unit tests passed, SQL execution match), 0.0 when the env reported none.
- ``tool_use``: at least one tool call succeeded (shaping, off by default).

:func:`success` is the one success criterion of evaluation and logging: the env's verdict when
it gives one, else ``outcome >= 1``.

The call-matching rule (``call_match_outcome`` here, ``call_match`` per turn in
:mod:`rewards.turn`, issue 23), made so that calling more tools or writing malformed calls
cannot raise the reward:

- **Every attempted call counts** in the denominator ``max(#attempted, #reference)``: each
  :class:`~rl.types.ToolCall` of every turn, executed or not: a call the format could not parse
  (``.error`` set by the format), one the env refused (unknown tool, invalid arguments), one
  that failed or timed out, one not run (beside a final answer, over the per-turn limit).
- **Credit only for the right call**: a call earns credit only if it ran (no ``.error``) and has
  a reference call's name; the exact arguments earn 1.0, partly agreeing arguments earn
  ``PARTIAL_WEIGHT * share of agreeing keys < 0.5`` (:func:`envs.matching.call_similarity`), the
  name alone earns 0. The matching is one-to-one, so one reference pays at most one call.

Consequences (tests/rewards/test_outcome_calls.py computes them by hand): a malformed or failed
call adds 0 to the numerator and 1 to the attempts; once the attempts reach the references the
reward is ``credit / #attempted``, and a further call lowers it unless it adds more credit than
the current reward; k guesses at one reference earn the best one's credit (not the sum) for k
attempts, and the one right call in their place gains more than 0.5 for k - 1 fewer attempts;
adding any call to a perfect episode of n reference calls lowers it to ``n / (n + 1)``.

Answer matching (:func:`answers_match`) lives in :mod:`envs.answers`, beside the envs that
give their verdict with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envs.answers import REL_TOL, answers_match, parse_exact, parse_number  # noqa: F401
from envs.formats import find_answers
from envs.matching import match_calls
from rewards.compose import register_reward
from rl.types import ToolCall, Trajectory


def final_answer(traj: Trajectory) -> str | None:
    """The env's final answer (``traj.info["final_answer"]``); if the agent loop did not record
    one, the last ``<answer>`` in the last turn."""
    if "final_answer" in traj.info:
        answer = traj.info["final_answer"]
        return None if answer is None else str(answer)
    if traj.turns:
        found = find_answers(traj.turns[-1].text)
        return found[-1] if found else None
    return None


@register_reward("outcome")
def outcome_reward(traj: Trajectory) -> float:
    """1.0 when the final answer matches ``traj.task.answer``, else 0.0."""
    return 1.0 if answers_match(final_answer(traj), traj.task.answer) else 0.0


@register_reward("tool_use")
def tool_use_reward(traj: Trajectory) -> float:
    """1.0 when at least one tool call succeeded (small shaping; off by default)."""
    return 1.0 if any(c.error is None for t in traj.turns for c in t.tool_calls) else 0.0


def reference_calls(traj: Trajectory) -> list[dict[str, Any]]:
    """The task's reference calls (``task.data["reference_calls"]``); a clear error if absent."""
    refs = traj.task.data.get("reference_calls")
    if not isinstance(refs, list):
        raise ValueError(
            f"task {traj.task.id} has no data['reference_calls'] (a list of "
            '{"name": ..., "arguments": {...}}); call-matching rewards need one'
        )
    return refs


def attempted_calls(traj: Trajectory) -> list[ToolCall]:
    """Every call the model wrote, in turn order: executed, failed and malformed ones."""
    return [c for t in traj.turns for c in t.tool_calls]


def matched_credit(calls: Sequence[ToolCall], refs: Sequence[dict[str, Any]]) -> float:
    """Total credit of the best one-to-one pairing of ``calls`` to ``refs`` (failed calls earn
    0; :func:`envs.matching.call_similarity`)."""
    return sum(w for _, _, w in match_calls(calls, refs))


@register_reward("call_match_outcome")
def call_match_outcome_reward(traj: Trajectory) -> float:
    """Matched credit of the calls vs the reference calls / max(#attempted, #reference)."""
    refs = reference_calls(traj)
    calls = attempted_calls(traj)
    denom = max(len(calls), len(refs))
    if denom == 0:
        return 1.0  # nothing was to be called and nothing was
    return matched_credit(calls, refs) / denom


def env_verdict(traj: Trajectory) -> bool | None:
    """The env's success flag: ``traj.info["success"]``, else the last step info that has one."""
    if "success" in traj.info:
        return bool(traj.info["success"])
    for turn in reversed(traj.turns):
        if "success" in turn.info:
            return bool(turn.info["success"])
    return None


@register_reward("env_success")
def env_success_reward(traj: Trajectory) -> float:
    """1.0 when the env reported success at the end of the episode, else 0.0."""
    return 1.0 if env_verdict(traj) else 0.0


@register_reward("env_score")
def env_score_reward(traj: Trajectory) -> float:
    """The env's graded verdict in [0, 1] (``info["score"]`` of the trajectory or of its last step
    that has one: search F1, the share of unit tests passed), 0.0 when the env reported none."""
    if "score" in traj.info:
        return float(traj.info["score"])
    for turn in reversed(traj.turns):
        if "score" in turn.info:
            return float(turn.info["score"])
    return 0.0


def success(traj: Trajectory) -> bool:
    """Whether the episode solved its task: the env's verdict if any, else ``outcome >= 1``."""
    verdict = env_verdict(traj)
    return verdict if verdict is not None else outcome_reward(traj) >= 1.0
