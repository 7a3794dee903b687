"""Format reward: did the model follow the protocol?

``format = answer_ok * FAILED_CALL_FACTOR ** n_failed`` where

- ``answer_ok`` is 1 when the LAST turn holds exactly one complete ``<answer>...</answer>`` and
  no earlier turn holds one (0 otherwise: missing, repeated or unclosed answer);
- ``n_failed`` counts the tool calls (over all turns) with an error, whatever the cause the env
  recorded: malformed JSON, unclosed tag, unknown tool, bad arguments, a tool failure or
  timeout, or a call left unrun because the same turn also answered. Each failed call halves the
  reward (``FAILED_CALL_FACTOR = 0.5``).

So 1.0 means clean tool use and a single final answer; 0 means no usable answer. The penalty
depends on the number of failed calls only, not on their share of all calls: a fraction of
clean calls (the earlier rule) rose when pointless extra calls diluted a failed one (1 failed of
1 scored 0, 1 failed of 4 scored 0.75).

Answer tags are the same in every tool-call format, so this reads ``turn.text`` directly.
"""

from __future__ import annotations

from envs.formats import find_answers
from rewards.compose import register_reward
from rl.types import Trajectory

FAILED_CALL_FACTOR = 0.5
"""Multiplier applied once per failed tool call."""


@register_reward("format")
def format_reward(traj: Trajectory) -> float:
    if not traj.turns:
        return 0.0
    counts = [len(find_answers(t.text)) for t in traj.turns]
    answer_ok = counts[-1] == 1 and sum(counts) == 1
    n_failed = sum(c.error is not None for t in traj.turns for c in t.tool_calls)
    return float(answer_ok) * FAILED_CALL_FACTOR**n_failed
