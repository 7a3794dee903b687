"""The learner contract every backend implements, and the parts the backends share.

:class:`Learner` is what the drivers (rl/trainer.py, rl/distributed/workers.py) and
rl/checkpoint.py call; ``TorchLearner`` (one process) and ``DeepSpeedLearner`` (ZeRO ranks)
implement it. The RL loss itself lives with the algorithms (rl.algos.objective.rl_loss), so both
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

    def set_lr(self, lr: float, warmup_steps: int | None = None) -> None:
        """Change the base learning rate; with ``warmup_steps`` the schedule also restarts: a
        linear warm-up over that many optimizer steps from now (each stage warms up afresh)."""
        ...

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


class Warmup:
    """The LR factor of optimizer step ``s``: linear warm-up over ``steps`` steps, then 1.

    A callable object rather than a lambda so that ``LambdaLR.state_dict`` saves ``steps`` (a
    resumed run keeps its stage's warm-up) and :func:`set_group_lr` can restart it per stage:
    one scheduler serves SFT and RL, and RL's warm-up must count from RL's first step, not from
    the first SFT step (it did, so ``warmup_steps`` <= SFT steps gave RL no warm-up at all).
    """

    def __init__(self, steps: int) -> None:
        self.steps = max(int(steps), 0)

    def __call__(self, s: int) -> float:
        return min(1.0, (s + 1) / self.steps) if self.steps else 1.0


def warmup_scheduler(optimizer: torch.optim.Optimizer,
                     steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """One :class:`Warmup` shared by every parameter group."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, Warmup(steps))


def set_group_lr(optimizer: torch.optim.Optimizer, scheduler: Any, lr: float,
                 warmup_steps: int | None = None) -> None:
    """Change the base learning rate of every group (times its ``lr_scale``). With
    ``warmup_steps`` the schedule restarts at its step 0 with that warm-up (a new stage);
    otherwise the current warm-up factor still applies."""
    if warmup_steps is not None:
        for fn in scheduler.lr_lambdas:
            fn.steps = max(int(warmup_steps), 0)
        scheduler.last_epoch = 0
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    scheduler.base_lrs = [lr * g.get("lr_scale", 1.0) for g in optimizer.param_groups]
    for g, base in zip(optimizer.param_groups, scheduler.base_lrs):
        g["lr"] = base * factor
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


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


class HealthProbe:
    """What one RL update did to the policy, measured cheaply (issue: a step's size was set by
    the optimizer, not by the signal, and nothing showed it).

    Before the update it keeps the trainable parameters' values (one copy) and, as the first
    micro-batch is scored, that micro-batch and its logprobs under the pre-update policy. After
    the update :meth:`metrics` gives, per token of that micro-batch (tokens sampled by the
    rollout policy, i.e. samples of the pre-update policy up to engine numerics):

    * ``health/kl_update``  KL(pi_before || pi_after), k3 estimator, mean over model tokens;
    * ``health/kl_to_start`` KL(pi_before || pi_start) to the RL-start policy (k3), when the
      reference snapshot exists (it is taken when RL starts);
    * ``health/update_rel`` ``||theta_after - theta_before|| / ||theta_before||`` over the
      trainable parameters; ``health/moved_frac`` the share of trainable parameters that moved
      by at least half the learning rate (a sign-like Adam step moves nearly all of them).
    """

    def __init__(self, param_groups: list[dict[str, Any]]) -> None:
        """``param_groups``: the optimizer's groups, read before the update (their ``lr`` is the
        one the coming step uses)."""
        self.params = [p for g in param_groups for p in g["params"]]
        self.lrs = [float(g["lr"]) for g in param_groups for _ in g["params"]]
        with torch.no_grad():
            self.before = [p.detach().clone() for p in self.params]
        self.mb: Batch | None = None
        self.lp: torch.Tensor | None = None

    ROWS = 4
    """Rows of the first micro-batch the KL figures are measured on (two no-grad forwards)."""

    def observe(self, mb: Batch, lp: torch.Tensor) -> None:
        """Keep the first micro-batch the update scores (``lp``: its logprobs, with grad),
        cut to :attr:`ROWS` rows."""
        if self.mb is None:
            self.mb, self.lp = mb.split(self.ROWS)[0], lp.detach().float()[: self.ROWS]

    @torch.no_grad()
    def metrics(self, after: torch.Tensor, ref: torch.Tensor | None) -> dict[str, float]:
        """``after``: the probed micro-batch's logprobs after the update; ``ref``: under the
        RL-start policy (None when no snapshot was taken)."""
        from rl.algos.kl import k3
        from rl.algos.metrics import masked_mean

        assert self.mb is not None and self.lp is not None
        if self.mb.loss_mask.device.type == "meta":  # a shape-only device: nothing to measure
            return {}
        dev = self.lp.device  # where the logprobs live (the host when a backend returns them there)
        mask, after = self.mb.loss_mask.to(dev), after.to(dev)
        ref = None if ref is None else ref.to(dev)
        # k3(log p - log q) estimates KL(p || q) from samples of p (here: pi_before)
        out = {"health/kl_update": float(masked_mean(k3(_clamped(self.lp - after)), mask))}
        if ref is not None:
            out["health/kl_to_start"] = float(masked_mean(k3(_clamped(self.lp - ref)), mask))
        delta_sq = base_sq = 0.0
        moved = total = 0
        for p, b, lr in zip(self.params, self.before, self.lrs):
            if p.device.type == "meta":  # no values to measure
                continue
            d = p.detach().float() - b.float()
            delta_sq += float(d.pow(2).sum())
            base_sq += float(b.float().pow(2).sum())
            moved += int((d.abs() >= 0.5 * lr).sum()) if lr > 0 else 0
            total += d.numel()
        out["health/update_rel"] = (delta_sq / base_sq) ** 0.5 if base_sq > 0 else 0.0
        out["health/moved_frac"] = moved / max(total, 1)
        return out


def _clamped(log_ratio: torch.Tensor) -> torch.Tensor:
    from rl.algos.kl import DEFAULT_MAX_LOG_RATIO

    return log_ratio.float().clamp(-DEFAULT_MAX_LOG_RATIO, DEFAULT_MAX_LOG_RATIO)


def reference_logprobs(snapshot: ReferenceSnapshot,
                       compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` (a logprob pass) with the reference's values in place."""
    with snapshot.swapped_in():
        return compute()
