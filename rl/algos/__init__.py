"""Pure tensor functions for RL on LLMs: advantages, policy / SFT losses, KL estimators.

Each family is a :class:`Registry` of functions sharing one signature; pick one by name.
"""

from rl.algos.advantages import ADVANTAGES, AdvantageConfig, AdvantageFn, compute_advantages
from rl.algos.kl import KL_ESTIMATORS, KLFn, kl_penalty
from rl.algos.losses import (
    AGGREGATIONS,
    AggregationFn,
    LossNorm,
    aggregate,
    policy_loss,
    sft_loss,
    truncated_is_weights,
)
from rl.algos.metrics import masked_max, masked_mean, masked_sum
from rl.registry import Registry

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "AdvantageConfig",
    "AdvantageFn",
    "AggregationFn",
    "KLFn",
    "LossNorm",
    "Registry",
    "aggregate",
    "compute_advantages",
    "kl_penalty",
    "masked_max",
    "masked_mean",
    "masked_sum",
    "policy_loss",
    "sft_loss",
    "truncated_is_weights",
]
