"""Format reward: did the model follow the protocol?

``format = answer_ok * calls_ok`` where

- ``answer_ok`` is 1 when the LAST turn holds exactly one complete ``<answer>...</answer>`` and
  no earlier turn holds one (0 otherwise: missing, repeated or unclosed answer);
- ``calls_ok`` is the fraction of tool calls (over all turns) without an error, 1.0 when there
  were none. A call "has an error" whatever the cause the env recorded: malformed JSON, unclosed
  tag, unknown tool, bad arguments, a tool failure or timeout, or a call left unrun because the
  same turn also answered. So 1.0 means clean tool use and a single final answer; 0 means no
  usable answer.

Answer tags are the same in every tool-call format, so this reads ``turn.text`` directly.
"""

from __future__ import annotations

from rewards.compose import register_reward
from envs.formats import find_answers
from rl.types import Trajectory


@register_reward("format")
def format_reward(traj: Trajectory) -> float:
    if not traj.turns:
        return 0.0
    counts = [len(find_answers(t.text)) for t in traj.turns]
    answer_ok = counts[-1] == 1 and sum(counts) == 1
    calls = [c for t in traj.turns for c in t.tool_calls]
    calls_ok = sum(c.error is None for c in calls) / len(calls) if calls else 1.0
    return float(answer_ok) * calls_ok
