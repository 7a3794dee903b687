"""Outcome-level advantage estimators: one scalar reward per trajectory -> one advantage each.

Every estimator has the same signature, so choosing one is a registry lookup::

    fn(rewards: Tensor (N,), group_ids: Tensor (N,) long, cfg: AdvantageConfig) -> Tensor (N,)

``group_ids[i]`` names the group (the prompt / task) trajectory ``i`` was sampled for. Ids are
arbitrary integers: they need not be contiguous, sorted or start at 0. Group statistics are
computed with ``torch.unique`` + ``index_add`` (no Python loop over groups). A group of size 1
has no baseline to compare against and gets advantage 0 from the group-relative estimators
(``grpo``, ``drgrpo``, ``rloo``).

The learner broadcasts the result over each trajectory's model tokens (``(N,) -> (N, L)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rl.registry import Registry

AdvantageFn = Callable[[Tensor, Tensor, "AdvantageConfig"], Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")


@dataclass(frozen=True)
class AdvantageConfig:
    """Settings shared by all advantage estimators (each reads only what applies to it)."""

    estimator: str = "grpo"
    """Name in ``ADVANTAGES``: "grpo", "drgrpo", "rloo" or "reinforce"."""

    norm_std: bool = True
    """grpo: divide the centred reward by the group's reward std. Ignored by the others
    (drgrpo never divides; that is its point)."""

    std_unbiased: bool = False
    """grpo: std with Bessel's correction (divide by n-1) instead of the population std
    (divide by n). DeepSeekMath writes ``std(r)`` of the group's rewards without saying which;
    we default to the population std (rewards [1, 0, 0, 1] -> advantages [1, -1, -1, 1]).
    TRL and verl use the unbiased std (``Tensor.std()``): set True to match them."""

    eps: float = 1e-6
    """grpo: added to the std before dividing, so a group with equal rewards (std 0) gets
    advantage 0 instead of 0/0."""

    std_floor: float = 0.0
    """grpo: the std is floored at this value (reward units) before dividing, so a group whose
    rewards barely differ (partial credit 0.05 apart: std 0.02) is not blown up to the ±1.7 of
    a real success/failure split. Binary rewards in groups of up to 14 have std >= 0.25, so a
    floor of 0.25 leaves them unchanged. 0 = the plain GRPO std."""

    batch_baseline: bool = False
    """reinforce: subtract the mean reward of the whole batch (a constant baseline, no groups).
    False gives plain REINFORCE with the raw reward as advantage."""


def compute_advantages(rewards: Tensor, group_ids: Tensor, cfg: AdvantageConfig) -> Tensor:
    """Advantages from the estimator ``cfg.estimator``. ``(N,), (N,) -> (N,)``."""
    return ADVANTAGES.get(cfg.estimator)(rewards, group_ids, cfg)


@dataclass(frozen=True)
class _GroupStats:
    """Per-trajectory views of its group's statistics, all ``(N,)``."""

    rewards: Tensor  # float rewards
    size: Tensor  # number of trajectories in the group (float)
    mean: Tensor  # group mean reward
    sq_dev_sum: Tensor  # sum over the group of (r_j - mean)^2


def _float_rewards(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Checks shapes / dtypes; rewards as a floating tensor."""
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be (N,), got {tuple(rewards.shape)} and "
            f"{tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype.is_complex:
        raise TypeError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    return rewards if rewards.dtype.is_floating_point else rewards.to(torch.get_default_dtype())


def _group_stats(rewards: Tensor, group_ids: Tensor) -> _GroupStats:
    r = _float_rewards(rewards, group_ids)
    # dense group index 0..G-1 per trajectory; ids may be sparse / unsorted
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    num_groups = counts.numel()
    size = counts.to(r.dtype)
    mean = r.new_zeros(num_groups).index_add(0, inv, r) / size
    dev = r - mean[inv]
    # two-pass variance (sum of squared deviations), stabler than E[r^2] - E[r]^2
    sq_dev_sum = r.new_zeros(num_groups).index_add(0, inv, dev * dev)
    return _GroupStats(rewards=r, size=size[inv], mean=mean[inv], sq_dev_sum=sq_dev_sum[inv])


@ADVANTAGES.register("grpo")
def grpo(rewards: Tensor, group_ids: Tensor, cfg: AdvantageConfig) -> Tensor:
    """GRPO outcome supervision (Shao et al. 2024, DeepSeekMath, Sec. 4.1.2):
    ``A_i = (r_i - mean(r_group)) / max(std(r_group), std_floor)``. ``(N,), (N,) -> (N,)``.
    The floor is our departure from the paper (``std_floor=0`` is the paper's formula).

    std is the population std unless ``cfg.std_unbiased`` (see :class:`AdvantageConfig`).
    """
    g = _group_stats(rewards, group_ids)
    centred = g.rewards - g.mean  # exactly 0 for a group of size 1
    if not cfg.norm_std:
        return centred
    dof = (g.size - 1.0).clamp_min(1.0) if cfg.std_unbiased else g.size
    std = torch.sqrt(g.sq_dev_sum / dof).clamp_min(cfg.std_floor)
    return centred / (std + cfg.eps)


@ADVANTAGES.register("drgrpo")
def drgrpo(rewards: Tensor, group_ids: Tensor, cfg: AdvantageConfig) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective"):
    ``A_i = r_i - mean(r_group)``; the std division is dropped (it up-weights groups whose
    rewards barely differ — the "question-level difficulty bias"), whatever ``cfg.norm_std``
    says. ``(N,), (N,) -> (N,)``.
    """
    g = _group_stats(rewards, group_ids)
    return g.rewards - g.mean


@ADVANTAGES.register("rloo")
def rloo(rewards: Tensor, group_ids: Tensor, cfg: AdvantageConfig) -> Tensor:
    """REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"):
    ``A_i = r_i - 1/(n-1) * sum_{j != i} r_j``, which equals ``n/(n-1) * (r_i - mean)``.
    ``(N,), (N,) -> (N,)``. Groups of size 1 have no other sample: advantage 0.
    """
    g = _group_stats(rewards, group_ids)
    scale = torch.where(g.size > 1, g.size / (g.size - 1.0).clamp_min(1.0), 0.0)
    return scale * (g.rewards - g.mean)


@ADVANTAGES.register("reinforce")
def reinforce(rewards: Tensor, group_ids: Tensor, cfg: AdvantageConfig) -> Tensor:
    """REINFORCE (Williams 1992): the return itself, ``A_i = r_i - b`` with ``b = 0``, or the
    batch-mean reward when ``cfg.batch_baseline``. Groups are ignored. ``(N,), (N,) -> (N,)``.
    """
    r = _float_rewards(rewards, group_ids)
    if cfg.batch_baseline and r.numel() > 0:
        return r - r.mean()
    return r.clone()
