"""Scoring at three levels: episode rewards ``fn(traj) -> float`` and turn rewards
``fn(traj) -> list[float]`` (one registry each, in ``rewards.compose``), combined by
``compose`` / ``compose_turns``; the learned critic is ``rl.algos.critic``.

Importing the package registers every reward function: episode "outcome", "format", "tool_use",
"call_match_outcome", "env_success"; turn "tool_success", "env_progress", "call_match".
"""

from rewards import compose as compose  # noqa: F401  (the registries; imported first)
from rewards import format as format  # noqa: F401  (registers "format")
from rewards import outcome as outcome  # noqa: F401  (registers the outcome rewards)
from rewards import turn as turn  # noqa: F401  (registers the turn rewards)
