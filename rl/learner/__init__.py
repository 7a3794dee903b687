"""Learners: ``TorchLearner`` (one process) and ``DeepSpeedLearner`` (ZeRO across ranks), chosen
by ``learner.backend`` from a registry. Both implement :class:`rl.learner.base.Learner`."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rl.config import LearnerConfig
from rl.learner.base import Learner, rollout_policy
from rl.registry import Registry

__all__ = ["LEARNERS", "Learner", "make_learner", "rollout_policy"]

LEARNERS: Registry[Callable[[torch.nn.Module, LearnerConfig], Learner]] = Registry(
    "learner backend")


@LEARNERS.register("torch")
def _torch(model: torch.nn.Module, cfg: LearnerConfig) -> Learner:
    from rl.learner.torch import TorchLearner

    return TorchLearner(model, cfg)


@LEARNERS.register("deepspeed")
def _deepspeed(model: torch.nn.Module, cfg: LearnerConfig) -> Learner:
    from rl.learner.deepspeed import DeepSpeedLearner

    return DeepSpeedLearner(model, cfg)


def make_learner(model: torch.nn.Module, cfg: LearnerConfig) -> Learner:
    """The learner for ``cfg.backend`` ("torch" | "deepspeed") around ``model``."""
    return LEARNERS.get(cfg.backend)(model, cfg)
