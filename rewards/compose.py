"""The reward registries and weighted composition, at two granularities.

Episode (outcome) rewards have one signature, ``fn(traj: Trajectory) -> float``: they read
``traj.task`` (reference answer, ``data["reference_calls"]``), ``traj.turns`` (each model turn's
text, parsed ``tool_calls``, env reward and info), ``traj.info`` (``final_answer`` from the env)
and ``traj.messages``. ``compose`` returns the weighted total and every named term.

Turn rewards have one signature too, ``fn(traj) -> list[float]``: one number per model turn
(``len == len(traj.turns)``). ``compose_turns`` returns the weighted per-turn sum and, for
logging, each component's (unweighted) sum over the episode's turns.

The third level, a learned critic, lives in ``rl/algos/critic.py``. :func:`score` fills a
trajectory's ``outcome_reward``, ``reward_terms`` and ``turn_rewards`` from the two weight dicts;
:func:`reward_metrics` gives the per-component means a trainer logs (``reward/<name>``).
A name lives in one registry only, so ``reward/<name>`` is unambiguous.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rl.registry import Registry
from rl.types import Trajectory

RewardFn = Callable[[Trajectory], float]
TurnRewardFn = Callable[[Trajectory], list[float]]

_REWARDS: Registry[RewardFn] = Registry("reward")
_TURN_REWARDS: Registry[TurnRewardFn] = Registry("turn reward")

# Suggested weights (the trainer's config holds the real defaults): the outcome carries the
# signal, format is light shaping; tool_use is off (it can be hacked by pointless calls).
DEFAULT_WEIGHTS: dict[str, float] = {"outcome": 1.0, "format": 0.1, "tool_use": 0.0}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: ``@register_reward("outcome")``. Duplicate names are refused (also names
    already used by a turn reward)."""
    if name in _TURN_REWARDS:
        raise ValueError(f"reward {name!r} is already registered as a turn reward")
    return _REWARDS.register(name)


def register_turn_reward(name: str) -> Callable[[TurnRewardFn], TurnRewardFn]:
    """Decorator: ``@register_turn_reward("tool_success")``. Duplicate names are refused (also
    names already used by an episode reward)."""
    if name in _REWARDS:
        raise ValueError(f"turn reward {name!r} is already registered as an episode reward")
    return _TURN_REWARDS.register(name)


def get_turn_reward(name: str) -> TurnRewardFn:
    return _TURN_REWARDS.get(name)


def registered_turn_rewards() -> list[str]:
    return sorted(_TURN_REWARDS.names())


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


def compose_turns(
    traj: Trajectory, weights: dict[str, float]
) -> tuple[list[float], dict[str, float]]:
    """Weighted per-turn sum of named turn rewards.

    Returns ``(per_turn, terms)``: ``per_turn[t] = sum(weights[name] * fn_name(traj)[t])`` for
    each model turn ``t`` (all zeros when ``weights`` is empty), and ``terms[name]`` = the
    UNweighted sum over turns of each component named in ``weights`` (zero weights included).
    """
    n = len(traj.turns)
    per_turn = [0.0] * n
    terms: dict[str, float] = {}
    for name, w in weights.items():
        values = [float(v) for v in get_turn_reward(name)(traj)]
        if len(values) != n:
            raise ValueError(
                f"turn reward '{name}' returned {len(values)} values for {n} turns "
                f"(task {traj.task.id})"
            )
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"turn reward '{name}' returned {values} for task {traj.task.id}")
        terms[name] = sum(values)
        per_turn = [p + w * v for p, v in zip(per_turn, values)]
    return per_turn, terms


TURN_TERMS_KEY = "turn_reward_terms"  # traj.info key of compose_turns' terms (for logging)


def score(
    traj: Trajectory, weights: dict[str, float], turn_weights: dict[str, float]
) -> float:
    """Fill ``traj.outcome_reward`` / ``reward_terms`` (from ``weights``), ``traj.turn_rewards``
    and ``traj.info["turn_reward_terms"]`` (from ``turn_weights``); return the outcome reward."""
    traj.outcome_reward, traj.reward_terms = compose(traj, weights)
    traj.turn_rewards, traj.info[TURN_TERMS_KEY] = compose_turns(traj, turn_weights)
    return traj.outcome_reward


def reward_metrics(trajs: list[Trajectory]) -> dict[str, float]:
    """Means over ``trajs`` of every scored component: ``reward/<name>`` for episode terms and
    for turn terms (their per-episode sums), and ``reward/turn_total`` (the mean of
    ``sum(turn_rewards)``) when turn rewards were composed."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for t in trajs:
        for name, v in {**t.reward_terms, **t.info.get(TURN_TERMS_KEY, {})}.items():
            sums[name] = sums.get(name, 0.0) + v
            counts[name] = counts.get(name, 0) + 1
    out = {f"reward/{k}": sums[k] / counts[k] for k in sorted(sums)}
    if any(t.info.get(TURN_TERMS_KEY) for t in trajs):
        out["reward/turn_total"] = sum(sum(t.turn_rewards) for t in trajs) / max(len(trajs), 1)
    return out
