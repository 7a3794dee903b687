"""Turn-level rewards: ``fn(traj) -> list[float]``, one number per model turn.

- ``tool_success``: the mean over the turn's tool calls of +1 (the call ran) / -1 (malformed,
  unknown tool, bad arguments, tool failure or timeout, or not run); 0.0 for a turn without calls.
- ``env_progress``: the env's own step reward (``Turn.reward``): e.g. the guessing game's share
  of candidates a question eliminated, the simulated user's newly revealed requirement.
- ``call_match``: MatchTIR-style. The turn's calls (all of them, as written) are matched by
  maximum-weight bipartite matching (:mod:`envs.matching`) to the reference calls
  (``task.data["reference_calls"]``) that earlier turns have not matched yet; the turn earns the
  mean similarity over its calls (an unmatched call earns 0), 0.0 when it made no call.
  References are episode-level, consumed in turn order: a call repeated in a later turn earns
  nothing.

Weights: ``algorithm.turn_reward_weights``; :func:`rewards.compose.compose_turns` sums them.
"""

from __future__ import annotations

from envs.matching import match_calls
from rewards.compose import register_turn_reward
from rewards.outcome import reference_calls
from rl.types import Trajectory


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
    remaining = list(reference_calls(traj))
    out = []
    for turn in traj.turns:
        calls = turn.tool_calls
        if not calls:
            out.append(0.0)
            continue
        pairs = match_calls(calls, remaining)
        out.append(sum(w for _, _, w in pairs) / len(calls))
        used = {j for _, j, _ in pairs}
        remaining = [r for j, r in enumerate(remaining) if j not in used]
    return out
