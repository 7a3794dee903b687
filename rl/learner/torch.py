"""Single-process torch learner: AdamW, micro-batches with gradient accumulation, clipping,
optional LoRA (PEFT) and bf16 autocast (``learner.autocast``; auto: where bf16 is native).

Logprobs are recomputed for the sampled tokens only: the backbone runs on the whole sequence,
but the LM head (a 49k x 576 matmul for SmolLM2, ~20% of the FLOPs) and the softmax run only on
positions that carry loss, ``learner.logprob_chunk`` positions at a time (rl/learner/logprobs.py:
the full-vocabulary logits of a micro-batch are never held at once, forward or backward).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from rl.algos import LossNorm, sft_loss
from rl.algos.objective import preference_loss, preference_weights, rl_loss
from rl.algos.preference import PREFERENCE
from rl.config import DeepSpeedConfig, LearnerConfig, LoraConfig, LossConfig  # noqa: F401
from rl.learner.base import (
    HealthProbe,
    ReferenceSnapshot,
    param_groups,
    reference_logprobs,
    set_group_lr,
    warmup_scheduler,
)
from rl.learner.precision import resolve_autocast
from rl.types import Batch


def apply_lora(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from rl.learner.tokens import fast_token_layers, lora_token_indices, peft_token_indices

    peft_cfg = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=(
            "all-linear" if list(cfg.target_modules) == ["all-linear"] else list(cfg.target_modules)
        ),
        task_type="CAUSAL_LM",
        # the format's barely trained special-token rows, trained beside the adapter
        trainable_token_indices=peft_token_indices(model, lora_token_indices(model, cfg)),
    )
    peft_model = get_peft_model(model, peft_cfg)
    fast_token_layers(peft_model)  # PEFT's own forward copies the whole embedding per call
    return peft_model


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = 0,
    min_chunks: int = 0,
) -> torch.Tensor:
    """Logprob of each token given its prefix, at positions where ``loss_mask`` is 1.

    Shapes: all ``(B, L)``; returns ``(B, L)`` float32 with zeros where the mask is 0.
    ``chunk``: scored positions per LM-head chunk (``learner.logprob_chunk``, 0 = all at once;
    ``min_chunks``: at least that many, for ZeRO-3; rl/learner/logprobs.py).
    """
    from rl.learner.logprobs import model_logprobs

    decoder = model.get_decoder()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    target_mask = loss_mask[:, 1:] > 0  # token t is scored from hidden state t-1
    h = hidden[:, :-1][target_mask]  # (N, H)
    targets = input_ids[:, 1:][target_mask]
    lp = model_logprobs(model, h, targets, temperature=temperature, chunk=chunk,
                        min_chunks=min_chunks)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:][target_mask] = lp
    return out


def batch_to(mb: Batch, device: torch.device) -> Batch:
    """``mb`` with every tensor on ``device`` (the same object when they already are)."""
    if mb.input_ids.device == device:
        return mb
    return Batch(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                    for k, v in vars(mb).items()})


class TorchLearner:
    """``device``: where the model trains (``model.device`` spec, rl.models.resolve_device);
    None keeps it where it was loaded. Batches arrive on the host and move per micro-batch;
    logprobs come back on the batch's device."""

    def __init__(self, model: torch.nn.Module, cfg: LearnerConfig,
                 device: torch.device | str | None = None) -> None:
        from rl.models import module_device, resolve_device

        self.cfg = cfg
        if cfg.lora.enabled:
            model = apply_lora(model, cfg.lora)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if device is not None:  # before the optimizer and the reference see the parameters
            model = model.to(resolve_device(device))
        self.device = module_device(model)
        self.model = model
        self.optimizer = torch.optim.AdamW(
            param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.scheduler = warmup_scheduler(self.optimizer, cfg.warmup_steps)
        self.optimizer_steps = 0
        self.reference = ReferenceSnapshot(
            {n: p for n, p in model.named_parameters() if p.requires_grad}, cfg.ref_offload)

    def reset_optimizer(self) -> None:
        self.optimizer.state.clear()

    def snapshot_reference(self) -> None:
        self.reference.take()

    def set_lr(self, lr: float, warmup_steps: int | None = None) -> None:
        """Change the base learning rate (token rows keep their scale); ``warmup_steps``
        restarts the schedule with that warm-up (rl.learner.base.set_group_lr)."""
        set_group_lr(self.optimizer, self.scheduler, lr, warmup_steps)

    # -- checkpoint protocol (rl/checkpoint.py uses only these; DeepSpeedLearner has the same) --
    def save_pretrained(self, path) -> None:
        """Collective: rank 0 writes an HF folder (full weights, or the PEFT adapter with LoRA)."""
        from rl.learner import dist

        if dist.is_main():
            self.model.save_pretrained(path, safe_serialization=True)

    def load_pretrained(self, path) -> None:
        """Collective: load a folder written by :meth:`save_pretrained` into the model."""
        from pathlib import Path

        from rl.models import load_weights_into

        load_weights_into(self.model, Path(path))

    def state_dict(self) -> dict[str, Any]:
        """This process's optimizer, scheduler and step counter (weights: save_pretrained)."""
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "optimizer_steps": self.optimizer_steps,
                "reference": self.reference.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.optimizer_steps = int(state["optimizer_steps"])
        self.reference.load_state_dict(state.get("reference", {}))

    # -- helpers -------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        # on the device the model computes on; auto: bf16 only where it is native (precision.py)
        if resolve_autocast(self.cfg.autocast, self.device)[0] == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _logprobs(self, mb: Batch, temperature: float) -> torch.Tensor:
        mb = batch_to(mb, self.device)
        with self._autocast():
            if self.cfg.prefix_sharing:  # shared prefixes once (rl/learner/prefix.py)
                from rl.learner.prefix import packed_length_cap, prefix_token_logprobs

                return prefix_token_logprobs(
                    self.model, mb.input_ids, mb.attention_mask, mb.loss_mask, temperature,
                    max_len=packed_length_cap(self.cfg.micro_batch_size, mb.input_ids.shape[1]),
                    chunk=self.cfg.logprob_chunk)
            return token_logprobs(self.model, mb.input_ids, mb.attention_mask, mb.loss_mask,
                                  temperature, chunk=self.cfg.logprob_chunk)

    def _split(self, batch: Batch) -> list[Batch]:
        """Micro-batches: ``micro_batch_size`` rows in order, or with ``prefix_sharing`` whole
        prefix-shared groups by a token budget (rows regrouped; row-additive losses)."""
        if self.cfg.prefix_sharing:
            from rl.learner.prefix import prefix_microbatches

            return [mb for _, mb in prefix_microbatches(batch, self.cfg.micro_batch_size)]
        return batch.split(self.cfg.micro_batch_size)

    @torch.no_grad()
    def compute_logprobs(self, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
        """``(B, L)`` logprobs of the batch's sampled tokens under the current policy."""
        was = self.model.training
        self.model.eval()
        if self.cfg.prefix_sharing:
            from rl.learner.prefix import prefix_microbatches, scatter_rows

            parts = [(rows, self._logprobs(mb, temperature))
                     for rows, mb in prefix_microbatches(batch, self.cfg.micro_batch_size)]
            out = scatter_rows(parts, tuple(batch.input_ids.shape), batch.input_ids.device)
        else:
            out = torch.cat(
                [self._logprobs(mb, temperature) for mb in batch.split(self.cfg.micro_batch_size)]
            ).to(batch.input_ids.device)
        self.model.train(was)
        return out

    @torch.no_grad()
    def compute_ref_logprobs(self, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
        """Logprobs under the KL reference: the policy when RL started (rl/learner/base.py)."""
        return reference_logprobs(self.reference,
                                  lambda: self.compute_logprobs(batch, temperature))

    def _step(self, micro: list[Batch], loss_fn: Callable[[Batch], tuple[torch.Tensor, dict]]):
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for mb in micro:
            loss, metrics = loss_fn(mb)
            loss.backward()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(mb)
        n = sum(len(mb) for mb in micro)
        out = {k: v / n for k, v in sums.items()}
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        out["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, clip))
        out["lr"] = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer_steps += 1
        return out

    def _minibatches(self, batch: Batch) -> Iterator[Batch]:
        n = len(batch)
        size = math.ceil(n / max(self.cfg.mini_batches, 1))
        yield from batch.split(size)

    # -- public --------------------------------------------------------------------------------
    def update(
        self, batch: Batch, loss_cfg: LossConfig, temperature: float = 1.0
    ) -> dict[str, float]:
        """One RL update on a batch (advantages already in ``batch``). Returns mean metrics.

        ``temperature`` is the sampling temperature: logits are divided by it so learner and
        sampler score tokens under the same distribution.
        """
        temp = temperature if temperature > 0 else 1.0
        pref = batch.preference  # dpo / kto / refuel: a whole-batch objective (rl/algos/preference.py)
        on_policy = self.cfg.ppo_epochs == 1 and self.cfg.mini_batches == 1 and pref is None
        if not on_policy:
            batch.sampler_logprobs = batch.old_logprobs
            batch.old_logprobs = self.compute_logprobs(batch, temp)
        if batch.ref_logprobs is None and (loss_cfg.kl_coef > 0 or (
                pref is not None and PREFERENCE.get(pref.objective).reference == "start")):
            batch.ref_logprobs = self.compute_ref_logprobs(batch, temp)
        history: list[dict[str, float]] = []
        probe = HealthProbe(self.optimizer.param_groups)  # what the update did to the policy (telemetry)
        for epoch in range(self.cfg.ppo_epochs):
            pref_m: dict[str, float] = {}
            if pref is not None:  # its gradient at the current weights, as per-token weights
                now = batch.old_logprobs if epoch == 0 else self.compute_logprobs(batch, temp)
                ref = batch.old_logprobs if batch.ref_logprobs is None else batch.ref_logprobs
                pref_m = preference_weights(batch, now, ref)
            for mini in self._minibatches(batch):
                norm = LossNorm.from_mask(
                    mini.loss_mask, float(loss_cfg.max_tokens or mini.input_ids.shape[1])
                )

                def loss_fn(mb: Batch, norm: LossNorm = norm) -> tuple[torch.Tensor, dict]:
                    mb = batch_to(mb, self.device)
                    lp = self._logprobs(mb, temp)
                    probe.observe(mb, lp)
                    if pref is not None:
                        return preference_loss(lp, mb)
                    return rl_loss(lp, mb, loss_cfg, norm, on_policy)

                history.append({**self._step(self._split(mini), loss_fn), **pref_m})
        out = {k: sum(h[k] for h in history) / len(history) for k in history[0]}
        return {**out, **self._health(probe, temp)}

    @torch.no_grad()
    def _health(self, probe: HealthProbe, temp: float) -> dict[str, float]:
        """Learning-health metrics of the update just made (rl.learner.base.HealthProbe): the
        relative size of the parameter change and, on the first micro-batch, the KL between
        the policy before and after it and the KL to the RL-start policy (when taken)."""
        if probe.mb is None:
            return {}
        was = self.model.training
        self.model.eval()
        with self._autocast():
            after = self._logprobs(probe.mb, temp)
            ref = probe.mb.ref_logprobs  # the KL penalty's reference pass, when it ran
            if ref is None and self.reference.ready:
                with self.reference.swapped_in():
                    ref = self._logprobs(probe.mb, temp)
        self.model.train(was)
        return probe.metrics(after, ref)

    def sft_update(self, batch: Batch, agg: str = "token-mean") -> dict[str, float]:
        """One supervised step: NLL of the tokens in ``batch.loss_mask`` (assistant tokens)."""
        norm = LossNorm.from_mask(batch.loss_mask, float(batch.input_ids.shape[1]))

        def loss_fn(mb: Batch) -> tuple[torch.Tensor, dict]:
            mb = batch_to(mb, self.device)
            lp = self._logprobs(mb, 1.0)
            loss, m = sft_loss(lp, mb.loss_mask, agg=agg, norm=norm)
            return loss, {"sft/nll": float(m["nll"])}

        return self._step(self._split(batch), loss_fn)

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full weights under the base model's parameter names. With LoRA, each adapted weight
        is ``W + scale * B @ A`` computed out of place: merging and unmerging in place would
        drift the frozen base weights by rounding error every sync."""
        if not self.cfg.lora.enabled:
            for name, p in self.model.named_parameters():
                yield name, p.detach()
            return
        base = self.model.get_base_model()
        deltas: dict[str, torch.Tensor] = {}
        for mod_name, module in base.named_modules():
            if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight"):
                for adapter in getattr(module, "active_adapters", ["default"]):
                    d = module.get_delta_weight(adapter).detach()
                    key = f"{mod_name}.weight"
                    deltas[key] = deltas[key] + d if key in deltas else d
        from rl.learner.tokens import is_token_adapter_param, trainable_token_weights

        rows = trainable_token_weights(self.model)  # embedding / head with trained token rows
        yield from rows.items()
        with torch.no_grad():
            for name, p in base.named_parameters():
                if "lora_" in name or is_token_adapter_param(name):
                    continue
                plain = name.replace("base_layer.", "")
                yield plain, (p + deltas[plain]) if plain in deltas else p.detach()
