"""Learners: ``TorchLearner`` (one process) and ``DeepSpeedLearner`` (ZeRO across ranks), chosen
by ``LearnerConfig.backend``. Both implement one protocol: ``update``, ``sft_update``,
``compute_logprobs``, ``compute_ref_logprobs``, ``set_lr``, ``named_weights``,
``save_pretrained``, ``load_pretrained``, ``state_dict`` / ``load_state_dict``, ``model``,
``optimizer_steps``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rl.registry import Registry
from rl.learner.torch import LearnerConfig

LEARNERS: Registry[Callable[[torch.nn.Module, LearnerConfig], Any]] = Registry("learner backend")


@LEARNERS.register("torch")
def _torch(model: torch.nn.Module, cfg: LearnerConfig):
    from rl.learner.torch import TorchLearner

    return TorchLearner(model, cfg)


@LEARNERS.register("deepspeed")
def _deepspeed(model: torch.nn.Module, cfg: LearnerConfig):
    from rl.learner.deepspeed import DeepSpeedLearner

    return DeepSpeedLearner(model, cfg)


def make_learner(model: torch.nn.Module, cfg: LearnerConfig):
    """The learner for ``cfg.backend`` ("torch" | "deepspeed") around ``model``."""
    return LEARNERS.get(cfg.backend)(model, cfg)


def rollout_policy(learner) -> tuple[torch.nn.Module, bool]:
    """The module a rollout engine should generate with, and whether it shares the learner's
    parameters (then ``update_weights`` is a no-op). ZeRO-3 partitions the learner's module, so
    its engine gets a separate full copy kept current through ``named_weights()``."""
    return (getattr(learner, "rollout_model", learner.model),
            bool(getattr(learner, "rollout_shared", True)))
