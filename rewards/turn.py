"""Turn-level rewards: ``fn(traj) -> list[float]``, one number per model turn.

- ``tool_success``: the mean over the turn's tool calls of +1 (the call ran) / -1 (malformed,
  unknown tool, bad arguments, tool failure or timeout, or not run); 0.0 for a turn without calls.
- ``env_progress``: the env's own step reward (``Turn.reward``): e.g. the guessing game's share
  of candidates a question eliminated, the simulated user's newly revealed requirement.
- ``call_match``: MatchTIR-style, on the episode rule of ``call_match_outcome``
  (:mod:`rewards.outcome`): a turn earns what its calls add to the matched credit of the
  episode's calls so far (maximum-weight matching to ``task.data["reference_calls"]``,
  :mod:`envs.matching`), divided by ``max(#attempted calls in the episode, #reference calls)``.
  So the turn rewards sum to ``call_match_outcome`` (unless nothing was to be called and
  nothing was: 1.0 there, turns of 0 here); each is >= 0; a turn without a call, or whose calls
  are malformed, failed, repeat a call already credited, or have only the right name, earns 0;
  and every attempted call, in whichever turn, counts in the denominator of all of them. A later
  call that is closer to a reference than an earlier one earns the improvement (a near miss
  corrected after its observation).

  Departure from MatchTIR and from this reward before issue 23: the turn's mean similarity over
  its own calls let a malformed call that carried a name earn credit, let a wrong call in a turn
  of its own cost nothing, and summed to more than 1 when right calls came one per turn.

Weights: ``algorithm.turn_reward_weights``; :func:`rewards.compose.compose_turns` sums them.
"""

from __future__ import annotations

from rewards.compose import register_turn_reward
from rewards.outcome import attempted_calls, matched_credit, reference_calls
from rl.types import ToolCall, Trajectory


@register_turn_reward("tool_success")
def tool_success(traj: Trajectory) -> list[float]:
    out = []
    for turn in traj.turns:
        calls = turn.tool_calls
        out.append(sum(1.0 if c.error is None else -1.0 for c in calls) / len(calls)
                   if calls else 0.0)
    return out


@register_turn_reward("env_progress")
def env_progress(traj: Trajectory) -> list[float]:
    return [float(turn.reward) for turn in traj.turns]


@register_turn_reward("call_match")
def call_match(traj: Trajectory) -> list[float]:
    refs = reference_calls(traj)
    denom = max(len(attempted_calls(traj)), len(refs))
    out: list[float] = []
    calls: list[ToolCall] = []
    before = 0.0
    for turn in traj.turns:
        calls += turn.tool_calls
        total = matched_credit(calls, refs) if turn.tool_calls else before
        # a larger call set never matches to less; max() only absorbs float rounding
        out.append(max(total - before, 0.0) / denom if denom else 0.0)
        before = max(total, before)
    return out
