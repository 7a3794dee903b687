"""Learners: ``TorchLearner`` (one process) and ``DeepSpeedLearner`` (ZeRO across ranks), chosen
by ``learner.backend`` from a registry. Both implement :class:`rl.learner.base.Learner`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rl.config import LearnerConfig
from rl.learner.base import Learner, rollout_policy
from rl.registry import Registry

__all__ = ["LEARNERS", "Learner", "make_learner", "rollout_policy"]

LEARNERS: Registry[Callable[..., Learner]] = Registry("learner backend")
"""Each entry: ``(model, cfg, device=None) -> Learner``."""


@LEARNERS.register("torch")
def _torch(model: torch.nn.Module, cfg: LearnerConfig, device: Any = None) -> Learner:
    from rl.learner.torch import TorchLearner

    return TorchLearner(model, cfg, device=device)


@LEARNERS.register("deepspeed")
def _deepspeed(model: torch.nn.Module, cfg: LearnerConfig, device: Any = None) -> Learner:
    from rl.learner.deepspeed import DeepSpeedLearner

    return DeepSpeedLearner(model, cfg, device=device)


def make_learner(model: torch.nn.Module, cfg: LearnerConfig,
                 device: torch.device | str | None = None) -> Learner:
    """The learner for ``cfg.backend`` ("torch" | "deepspeed") around ``model``, training on
    ``device`` (the ``model.device`` spec; None: where the model was loaded, for DeepSpeed
    the device its process group implies)."""
    return LEARNERS.get(cfg.backend)(model, cfg, device=device)
