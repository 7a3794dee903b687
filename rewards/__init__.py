"""Scoring: reward functions ``fn(traj) -> float`` in one registry (``rewards.compose``),
combined by ``rewards.compose.compose(traj, weights)``.

Importing the package registers every reward function ("outcome", "format", "tool_use").
"""

from rewards import compose as compose  # noqa: F401  (the registry; imported first)
from rewards import format as format  # noqa: F401  (registers "format")
from rewards import outcome as outcome  # noqa: F401  (registers "outcome", "tool_use")
