"""The reward registry and weighted composition.

Every reward function has one signature, ``fn(traj: Trajectory) -> float``: it reads
``traj.task`` (reference answer), ``traj.turns`` (each model turn's text and parsed
``tool_calls``), ``traj.info`` (``final_answer`` from the env) and ``traj.messages``. Choosing
rewards is a lookup by name; ``compose`` returns the weighted total and every named term.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rl.algos.registry import Registry
from rl.types import Trajectory

RewardFn = Callable[[Trajectory], float]

_REWARDS: Registry[RewardFn] = Registry("reward")

# Suggested weights (the trainer's config holds the real defaults): the outcome carries the
# signal, format is light shaping; tool_use is off (it can be hacked by pointless calls).
DEFAULT_WEIGHTS: dict[str, float] = {"outcome": 1.0, "format": 0.1, "tool_use": 0.0}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: ``@register_reward("outcome")``. Duplicate names are refused."""
    return _REWARDS.register(name)


def get_reward(name: str) -> RewardFn:
    return _REWARDS.get(name)


def registered_rewards() -> list[str]:
    return sorted(_REWARDS.names())


def compose(traj: Trajectory, weights: dict[str, float]) -> tuple[float, dict[str, float]]:
    """Weighted sum of named rewards.

    Returns ``(total, terms)`` where ``terms[name]`` is the UNweighted value of each reward named
    in ``weights`` (zero-weight ones included, so they can be logged) and
    ``total = sum(weights[name] * terms[name])``.
    """
    terms: dict[str, float] = {}
    total = 0.0
    for name, w in weights.items():
        value = float(get_reward(name)(traj))
        if not math.isfinite(value):
            raise ValueError(f"reward '{name}' returned {value} for task {traj.task.id}")
        terms[name] = value
        total += w * value
    return total, terms
