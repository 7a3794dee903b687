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
    the device its process group implies). Rank 0 says which autocast it computes in."""
    from rl.learner import dist
    from rl.learner.precision import autocast_line

    learner = LEARNERS.get(cfg.backend)(model, cfg, device=device)
    on = getattr(learner, "device", None)
    if on is not None and dist.is_main():
        bf16 = getattr(learner, "bf16", None)  # DeepSpeed's bf16 weights (autocast then unused)
        ds = "" if bf16 is None else (f"; deepspeed bf16: {'on' if bf16 else 'off'} "
                                      f"(learner.deepspeed.bf16={cfg.deepspeed.bf16})")
        print(autocast_line(cfg.autocast, on) + ds, flush=True)
    return learner
