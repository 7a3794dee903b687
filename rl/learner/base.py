"""The learner contract every backend implements, and the parts the backends share.

:class:`Learner` is what the drivers (rl/trainer.py, rl/distributed/workers.py) and
rl/checkpoint.py call; ``TorchLearner`` (one process) and ``DeepSpeedLearner`` (ZeRO ranks)
implement it. The RL loss itself lives with the algorithms (rl.algos.losses.rl_loss), so both
backends optimise the same objective.

KL reference. The KL penalty (``algorithm.loss.kl_coef > 0``) regularises towards **the policy
at the start of RL** (after the cold-start SFT), not towards the pre-SFT base model: with LoRA,
disabling the adapter would give the base model, which the SFT stage moved away from on
purpose. :class:`ReferenceSnapshot` copies the trainable parameters when RL starts (the adapter
only with LoRA; every weight with full fine-tuning, optionally kept in CPU memory:
``learner.ref_offload``) and computes reference logprobs by swapping those values in under
``no_grad``. The snapshot is part of the learner's ``state_dict``, so a resumed run keeps the
same reference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from rl.config import LossConfig
from rl.types import Batch


@runtime_checkable
class Learner(Protocol):
    """What a driver and the checkpoint code may call on a learner."""

    model: torch.nn.Module
    optimizer_steps: int

    def update(self, batch: Batch, loss_cfg: LossConfig,
               temperature: float = 1.0) -> dict[str, float]:
        """One RL update (advantages are in ``batch``). Mean metrics. Collective under data
        parallel, where a rank without rows passes None (DeepSpeedLearner accepts it)."""
        ...

    def sft_update(self, batch: Batch) -> dict[str, float]:
        """One supervised step on the batch's loss-masked tokens; metrics incl. ``sft/nll``."""
        ...

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full weights under the base model's names (LoRA merged out of place). Collective
        under ZeRO-3: every rank must iterate it."""
        ...

    def set_lr(self, lr: float) -> None: ...

    def reset_optimizer(self) -> None:
        """Fresh optimizer moments (RL after SFT: Adam's state is tuned to another loss)."""
        ...

    def snapshot_reference(self) -> None:
        """Freeze the current policy as the KL reference (called when RL starts)."""
        ...

    def save_pretrained(self, path: str | Path) -> None: ...

    def load_pretrained(self, path: str | Path) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def rollout_policy(learner: Any) -> tuple[torch.nn.Module, bool]:
    """The module a rollout engine should generate with, and whether it shares the learner's
    parameters (then ``update_weights`` is a no-op). ZeRO-3 partitions the learner's module, so
    its engine gets a separate full copy kept current through ``named_weights()``."""
    return (getattr(learner, "rollout_model", learner.model),
            bool(getattr(learner, "rollout_shared", True)))


def param_groups(model: torch.nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """AdamW parameter groups: the trained special-token rows (PEFT trainable tokens,
    rl/learner/tokens.py) at ``lr * cfg.lora.token_rows_lr_scale`` without weight decay (their
    delta holds the whole row, so decay would shrink the row itself), everything else at ``lr``.
    Each group carries its ``lr_scale``; :func:`set_group_lr` keeps it when the base LR changes.
    """
    from rl.learner.tokens import is_token_adapter_param

    rows, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (rows if is_token_adapter_param(name) else rest).append(p)
    groups = [{"params": rest, "lr": cfg.lr, "lr_scale": 1.0}]
    if rows:
        scale = float(cfg.lora.token_rows_lr_scale)
        groups.append({"params": rows, "lr": cfg.lr * scale, "lr_scale": scale,
                       "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def set_group_lr(optimizer: torch.optim.Optimizer, scheduler: Any, lr: float) -> None:
    """Change the base learning rate of every group (times its ``lr_scale``); the scheduler's
    warm-up factor still applies."""
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    scheduler.base_lrs = [lr * g.get("lr_scale", 1.0) for g in optimizer.param_groups]
    for g, base in zip(optimizer.param_groups, scheduler.base_lrs):
        g["lr"] = base * factor


class ReferenceSnapshot:
    """The KL reference as a copy of the trainable parameters at the start of RL.

    ``params``: the module's trainable parameters by name (the LoRA adapter, or every weight).
    Reference logprobs swap the snapshot's values into those parameters for one no-grad
    forward and swap the live values back; nothing is copied per call. ``offload`` keeps the
    snapshot in CPU memory and moves it to the parameters' device for the forward.
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], offload: bool = False) -> None:
        self.params, self.offload = params, offload
        self.values: dict[str, torch.Tensor] = {}

    @property
    def ready(self) -> bool:
        return bool(self.values)

    def take(self) -> None:
        with torch.no_grad():
            self.values = {n: (p.detach().to("cpu") if self.offload else p.detach()).clone()
                           for n, p in self.params.items()}

    @contextlib.contextmanager
    def swapped_in(self):
        """Inside the block the parameters hold the reference values (no grad)."""
        if not self.ready:
            raise RuntimeError("KL reference requested before RL started (snapshot_reference)")
        live = {n: p.data for n, p in self.params.items()}
        try:
            with torch.no_grad():
                for n, p in self.params.items():
                    v = self.values[n]
                    p.data = v.to(p.device) if v.device != p.device else v
                yield
        finally:
            for n, p in self.params.items():
                p.data = live[n]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: v.to("cpu") for n, v in self.values.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            self.values = {}
            return
        missing = set(self.params) - set(state)
        if missing:
            raise ValueError(f"KL reference snapshot lacks {len(missing)} parameters, e.g. "
                             f"{sorted(missing)[:3]}")
        self.values = {n: (state[n] if self.offload else state[n].to(p.device)).clone()
                       for n, p in self.params.items()}


def reference_logprobs(snapshot: ReferenceSnapshot,
                       compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` (a logprob pass) with the reference's values in place."""
    with snapshot.swapped_in():
        return compute()
