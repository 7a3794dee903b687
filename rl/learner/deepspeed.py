"""DeepSpeed ZeRO learner (stage 1/2/3): the TorchLearner protocol across data-parallel ranks.

One process per rank (``torchrun`` or Ray actors; a single process works too). Every rank holds
its own shard of the step's trajectories, whole GRPO groups, so advantages need no
communication. What makes the shards add up to the full batch:

* the loss normaliser is global: token and sequence counts are all-reduced (SUM) and the
  ``seq-mean-token-sum-norm`` budget defaults to the longest row over all ranks, so each shard
  is aggregated exactly like its rows would be in the full batch (rl.algos.losses docstring);
* ZeRO averages gradients over ranks, so each rank's loss is multiplied by the world size:
  the reduced gradient is then the *sum* of shard gradients = the full-batch gradient;
* ZeRO-2/3 reduce gradients inside every backward and ZeRO-3 gathers parameters inside every
  forward (collectives), so all ranks run the same number of micro-batches: a rank with fewer
  rows runs padding micro-batches whose loss mask is all zero (gradient exactly 0).

``learner.prefix_sharing`` (rl/learner/prefix.py) works here as in the torch learner: each rank
regroups its own shard's rows into prefix-shared micro-batches by the token budget
(``prefix_microbatches``), and the engine's module runs the packed forward
(``prefix_token_logprobs``) through the DeepSpeed engine, so ZeRO-3 gathers parameters and
``engine.backward`` reduces gradients as in the plain pass. Regrouping changes nothing in the
loss: micro-batch losses are sums over their rows with the global normaliser above, so any
partition of a shard's rows adds up to the same shard loss (logprobs of old/reference policies
are scattered back to the shard's row order).

Gradient accumulation is ours (``managed_gradient_accumulation: false``): any number of
backward passes, then one ``engine.step()`` (clipping, optimizer, LR schedule). The optimizer is
a client ``torch.optim.AdamW``: DeepSpeed's fused Adam ops would JIT-compile for minutes on
first use. bf16 ("auto": where the device computes bf16 natively, rl.learner.precision) keeps
fp32 master weights in the optimizer.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from rl.algos import LossNorm, sft_loss
from rl.algos.objective import rl_loss
from rl.config import LearnerConfig, LossConfig
from rl.learner import dist
from rl.learner.base import (
    ReferenceSnapshot,
    param_groups,
    reference_logprobs,
    set_group_lr,
    warmup_scheduler,
)
from rl.learner.precision import resolve_autocast
from rl.learner.torch import apply_lora, token_logprobs
from rl.types import Batch

BF16_MODES = ("auto", "on", "off")


def _on_cuda(device: torch.device | None) -> bool:
    return torch.cuda.is_available() if device is None else device.type == "cuda"


def prepare_env(device: torch.device | None = None) -> None:
    """Environment DeepSpeed reads at import: its accelerator (the learner's device type: cuda
    or cpu; None = cuda where visible), and where JIT-built ops go. A ``DS_ACCELERATOR`` that
    contradicts the device is an error: DeepSpeed's CPU accelerator on top of an NCCL group (or
    the reverse) fails inside its first collective."""
    want = "cuda" if _on_cuda(device) else "cpu"
    have = os.environ.get("DS_ACCELERATOR", "").strip().lower()
    if have and have != want:
        raise ValueError(f"DS_ACCELERATOR={have} but the DeepSpeed learner runs on "
                         f"{device or want} (model.device); unset one of them")
    os.environ["DS_ACCELERATOR"] = want
    from rl.models import cache_dir

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))


def check_accelerator(device: torch.device) -> None:
    """DeepSpeed picks its accelerator once per process (at first use); refuse one that does
    not match the learner's device (e.g. a second learner on another device type)."""
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    if name != device.type:
        raise ValueError(f"DeepSpeed's accelerator in this process is {name!r} but the learner "
                         f"runs on {device} (model.device): one device type per process")


def resolve_bf16(mode: str, device: torch.device | None = None) -> bool:
    """bf16 on/off from "auto" | "on" | "off"; "auto" = where the device computes bf16 natively,
    as ``learner.autocast=auto`` decides (rl.learner.precision: CUDA with bf16, AMX/AVX512-BF16
    CPUs; ``device`` None: a visible CUDA device, else the CPU)."""
    if mode not in BF16_MODES:
        raise ValueError(f"learner.deepspeed.bf16 must be one of {BF16_MODES}, got {mode!r}")
    if mode == "auto":
        on = device if device is not None else ("cuda" if _on_cuda(None) else "cpu")
        return resolve_autocast("auto", on)[0] == "bf16"
    return mode == "on"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def ds_config(cfg: LearnerConfig, device: torch.device | None = None) -> dict[str, Any]:
    """The DeepSpeed config dict for a learner config on ``device`` (None: CUDA where visible;
    ``deepspeed.overrides`` merged last)."""
    d = cfg.deepspeed
    if d.zero_stage not in (1, 2, 3):
        raise ValueError(f"learner.deepspeed.zero_stage must be 1, 2 or 3, got {d.zero_stage}")
    if d.offload_params and d.zero_stage != 3:
        raise ValueError("learner.deepspeed.offload_params needs zero_stage=3")
    zero: dict[str, Any] = {"stage": d.zero_stage, "contiguous_gradients": True,
                            "overlap_comm": False}
    if d.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": _on_cuda(device)}
    if d.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": _on_cuda(device)}
    base = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,  # we call backward N times, then step once
        "gradient_clipping": cfg.grad_clip if cfg.grad_clip > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": resolve_bf16(d.bf16, device)},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # the client AdamW also serves offload (no JIT)
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return _merge(base, dict(d.overrides))


class _TokenLogprobs(torch.nn.Module):
    """What the engine runs forward: logprobs of the sampled tokens (``token_logprobs``), or
    with ``prefix_max_len > 0`` the prefix-shared pass (``prefix_token_logprobs``, packed
    sequences of at most that many tokens). ``chunk``: scored positions per LM-head chunk
    (``learner.logprob_chunk``, rl/learner/logprobs.py), at least ``min_chunks`` of them: under
    ZeRO-3 the head's module hooks gather its weight for each chunk (in the backward's recompute
    too), so every rank must run as many chunks."""

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, input_ids, attention_mask, loss_mask, temperature: float = 1.0,
                prefix_max_len: int = 0, chunk: int = 0, min_chunks: int = 0):
        if prefix_max_len > 0:
            from rl.learner.prefix import prefix_token_logprobs

            return prefix_token_logprobs(self.policy, input_ids, attention_mask, loss_mask,
                                         temperature, max_len=prefix_max_len, chunk=chunk,
                                         min_chunks=min_chunks)
        return token_logprobs(self.policy, input_ids, attention_mask, loss_mask, temperature,
                              chunk=chunk, min_chunks=min_chunks)


def padding_batch(length: int = 2) -> Batch:
    """One row whose loss mask is all zero: a micro-batch with an exactly zero gradient, run
    by ranks that have fewer micro-batches than others (the collectives must match)."""
    z = torch.zeros((1, length))
    return Batch(input_ids=torch.zeros((1, length), dtype=torch.long),
                 attention_mask=torch.ones((1, length), dtype=torch.long), loss_mask=z,
                 old_logprobs=z.clone(), advantages=z.clone(), ref_logprobs=z.clone(),
                 sampler_logprobs=z.clone())


def global_norm(mask: torch.Tensor, max_tokens: float | None) -> LossNorm:
    """The full (all-rank) batch's normalisers from this rank's loss mask ``(B, L)``.

    Collective. ``max_tokens=None`` means the longest row over all ranks (what the full batch,
    padded to its longest row, would use)."""
    local = LossNorm.from_mask(mask)
    counts = dist.all_reduce_sum(torch.tensor([local.num_tokens, local.num_seqs],
                                              dtype=torch.float64))
    if max_tokens is None:
        max_tokens = float(dist.all_reduce_max(torch.tensor([float(mask.shape[-1])]))[0])
    return LossNorm(num_tokens=float(counts[0]), num_seqs=float(counts[1]),
                    max_tokens=max_tokens)


def synced_split(batch: Batch | None, size: int, prefix_sharing: bool = False
                 ) -> list[tuple[list[int], Batch] | None]:
    """This rank's micro-batches as ``(rows, sub-batch)`` pairs (``rows``: indices into
    ``batch``), padded with ``None`` to the largest count over all ranks (collective; ``None``
    stands for a padding micro-batch). Plain: ``size`` rows in order; ``prefix_sharing``: whole
    prefix-shared groups of this rank's rows by a token budget (rl/learner/prefix.py)."""
    local: list[tuple[list[int], Batch] | None] = []
    if batch is not None and len(batch):
        if prefix_sharing:
            from rl.learner.prefix import prefix_microbatches

            local = list(prefix_microbatches(batch, size))
        else:
            local = [(list(range(i, i + len(mb))), mb)
                     for i, mb in zip(range(0, len(batch), size), batch.split(size))]
    n = int(dist.all_reduce_max(torch.tensor([float(len(local))]))[0])
    return local + [None] * (n - len(local))


def reduce_metrics(sums: dict[str, float], rows: float) -> dict[str, float]:
    """Row-weighted means over all ranks of per-micro-batch metrics (collective). Every rank
    must pass the same keys."""
    keys = sorted(sums)
    t = dist.all_reduce_sum(torch.tensor([sums[k] for k in keys] + [rows], dtype=torch.float64))
    n = max(float(t[-1]), 1.0)
    return {k: float(t[i]) / n for i, k in enumerate(keys)}


class DeepSpeedLearner:
    """The learner protocol (see TorchLearner) on a DeepSpeed ZeRO engine. Collective methods
    (``update``, ``sft_update``, ``compute_*logprobs``, ``named_weights``, ``save_pretrained``,
    ``load_pretrained``) must be called by every rank, in the same order.

    ``device``: the ``model.device`` spec; None = the device an existing process group implies
    (NCCL: this rank's GPU, gloo: the CPU), else auto. DeepSpeed places rank r on
    ``cuda:LOCAL_RANK``, the group's backend follows the device (rl/learner/dist.py), and its
    accelerator is made to match (:func:`prepare_env`)."""

    def __init__(self, model: torch.nn.Module, cfg: LearnerConfig,
                 device: torch.device | str | None = None) -> None:
        from rl.models import resolve_device

        if dist.is_initialized():
            dev = resolve_device(device) if device is not None else dist.group_device()
            if dist.backend_for(dev) != dist.backend():
                raise ValueError(f"the process group uses {dist.backend()} but the "
                                 f"DeepSpeed learner runs on {dev} (model.device)")
        else:
            dev = resolve_device(device)
        if dev.type == "cuda" and dev.index != dist.local_rank():
            raise ValueError(f"DeepSpeed puts this rank on cuda:{dist.local_rank()} "
                             f"(LOCAL_RANK), not {dev}: use model.device=auto|cuda")
        self.device = dev
        prepare_env(dev)
        import deepspeed

        check_accelerator(dev)
        self.cfg = cfg
        self.stage = cfg.deepspeed.zero_stage
        self.config = ds_config(cfg, dev)
        self.bf16 = bool(self.config["bf16"]["enabled"])
        if dev.type == "cpu" and os.environ.get("TURNRL_DS_SHM_COMM") != "1":
            # DeepSpeed's CPU backend JIT-builds a shared-memory kernel (1-2 min, needs a C++
            # compiler) that only its inference all-reduce uses; training never calls it
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        if not dist.init_from_env(device=dev):
            dist.init_single_process(device=dev)
        deepspeed.init_distributed(dist_backend=dist.backend_for(dev))
        # ZeRO-3 partitions the module in place, so the rollout engine gets its own full copy
        # (kept current by the trainer's update_weights(named_weights()) calls), on the device
        self.rollout_model: torch.nn.Module = (copy.deepcopy(model).to(dev) if self.stage == 3
                                               else model)
        self.rollout_shared = self.stage != 3
        if cfg.lora.enabled:
            model = apply_lora(model, cfg.lora)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if self.stage != 3:
            self.rollout_model = model  # with LoRA the PEFT model is what generates
        self.model = model
        self._module = _TokenLogprobs(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr,
                                      betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        def schedule(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
            return warmup_scheduler(opt, cfg.warmup_steps)

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self._module, optimizer=optimizer, lr_scheduler=schedule, config=self.config,
            model_parameters=params,
        )
        self.optimizer_steps = 0
        self.reference = ReferenceSnapshot(
            {n: p for n, p in model.named_parameters() if p.requires_grad}, cfg.ref_offload)

    # -- helpers -------------------------------------------------------------------------------
    def _gather(self, params: list[torch.nn.Parameter], modifier_rank: int | None = None):
        """Full parameters inside the block under ZeRO-3 (collective); no-op otherwise."""
        if self.stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16 and resolve_autocast(self.cfg.autocast, self.device)[0] == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _device(self, mb: Batch) -> Batch:
        dev = self.engine.device
        if mb.input_ids.device == dev:
            return mb
        return Batch(**{k: (v.to(dev) if isinstance(v, torch.Tensor) else v)
                        for k, v in vars(mb).items()})

    def _logprobs(self, mb: Batch, temperature: float) -> torch.Tensor:
        mb = self._device(mb)
        cap = 0  # the plain pass
        if self.cfg.prefix_sharing:  # the torch learner's cap (sub-batches keep the width L)
            from rl.learner.prefix import packed_length_cap

            cap = packed_length_cap(self.cfg.micro_batch_size, mb.input_ids.shape[1])
        chunk, chunks = self.cfg.logprob_chunk, 0
        if self.stage == 3 and chunk > 0:  # collective: the same number of head calls per rank
            from rl.learner.logprobs import num_chunks

            scored = int((mb.loss_mask[:, 1:] > 0).sum())  # >= the states the pass scores
            chunks = int(dist.all_reduce_max(torch.tensor([float(num_chunks(scored, chunk))]))[0])
        with self._autocast():
            return self.engine(mb.input_ids, mb.attention_mask, mb.loss_mask, temperature,
                               cap, chunk, chunks).float()

    def _split(self, batch: Batch | None) -> list[tuple[list[int], Batch] | None]:
        """Micro-batches, the same count on every rank (collective; :func:`synced_split`)."""
        return synced_split(batch, self.cfg.micro_batch_size, self.cfg.prefix_sharing)

    def set_lr(self, lr: float, warmup_steps: int | None = None) -> None:
        """Change the base learning rate (token rows keep their scale); ``warmup_steps``
        restarts the schedule with that warm-up (rl.learner.base.set_group_lr)."""
        set_group_lr(self.optimizer, self.scheduler, lr, warmup_steps)

    @torch.no_grad()
    def compute_logprobs(self, batch: Batch | None, temperature: float = 1.0) -> torch.Tensor:
        """``(B, L)`` logprobs of this rank's sampled tokens under the current policy."""
        was = self.engine.training
        self.engine.eval()
        outs: list[tuple[list[int], torch.Tensor]] = []
        for part in self._split(batch):
            lp = self._logprobs(part[1] if part is not None else padding_batch(), temperature)
            if part is not None:
                outs.append((part[0], lp.cpu()))
        self.engine.train(was)
        if batch is None or not outs:
            return torch.zeros((0, 0))
        from rl.learner.prefix import scatter_rows

        return scatter_rows(outs, tuple(batch.input_ids.shape), "cpu")  # the shard's row order

    @torch.no_grad()
    def compute_ref_logprobs(self, batch: Batch | None, temperature: float = 1.0) -> torch.Tensor:
        """Logprobs under the KL reference: the policy when RL started (rl/learner/base.py).
        Collective: every rank joins the forwards."""
        return reference_logprobs(self.reference,
                                  lambda: self.compute_logprobs(batch, temperature))

    def _step(self, parts: list[tuple[list[int], Batch] | None],
              loss_fn: Callable[[Batch], tuple[torch.Tensor, dict]]) -> dict[str, float]:
        """Backward every micro-batch of :meth:`_split` (padding ones too), then one optimizer
        step. Returns metrics averaged over all ranks' rows; ``*/loss`` is the global loss."""
        micro = [p[1] if p is not None else None for p in parts]
        self.engine.train()
        world = dist.world_size()
        sums: dict[str, float] = {}
        rows = 0.0
        total = 0.0
        for mb in micro:
            loss, metrics = loss_fn(mb if mb is not None else padding_batch())
            # ZeRO averages gradients over ranks; the shard losses are already globally
            # normalised, so scaling by the world size makes the reduced gradient their sum
            self.engine.backward(loss * world, scale_wrt_gas=False)
            total += float(loss.detach())
            if mb is not None:
                rows += len(mb)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(mb)
        keys = sorted(set(k for g in dist.gather_objects(sorted(sums)) for k in g))
        out = reduce_metrics({k: sums.get(k, 0.0) for k in keys}, rows)
        out["loss"] = float(dist.all_reduce_sum(torch.tensor([total], dtype=torch.float64))[0])
        out["lr"] = self.scheduler.get_last_lr()[0]
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        out["grad_norm"] = float(norm) if norm is not None else math.nan
        self.optimizer_steps += 1
        return out

    def _minibatches(self, batch: Batch | None) -> list[Batch | None]:
        """Exactly ``mini_batches`` chunks on every rank (an empty chunk is None), so mini-batch
        ``i`` is the union of every rank's chunk ``i``."""
        k = max(self.cfg.mini_batches, 1)
        n = len(batch) if batch is not None else 0
        size = math.ceil(n / k) if n else 0
        out: list[Batch | None] = []
        for i in range(k):
            if batch is None or i * size >= n:
                out.append(None)
            else:
                out.append(batch.split(size)[i])
        return out

    # -- public --------------------------------------------------------------------------------
    def update(self, batch: Batch | None, loss_cfg: LossConfig,
               temperature: float = 1.0) -> dict[str, float]:
        """One RL update on this rank's shard (advantages already in ``batch``; ``None`` = this
        rank has nothing to learn this step but joins the collectives). Metrics are global."""
        temp = temperature if temperature > 0 else 1.0
        on_policy = self.cfg.ppo_epochs == 1 and self.cfg.mini_batches == 1
        if batch is not None and len(batch) == 0:
            batch = None
        if not on_policy:
            old = self.compute_logprobs(batch, temp)
            if batch is not None:
                batch.sampler_logprobs = batch.old_logprobs
                batch.old_logprobs = old
        needs_ref = batch is not None and batch.ref_logprobs is None
        if loss_cfg.kl_coef > 0 and dist.any_rank(needs_ref):  # every rank joins the forwards
            ref = self.compute_ref_logprobs(batch, temp)
            if batch is not None and needs_ref:
                batch.ref_logprobs = ref
        history: list[dict[str, float]] = []
        for _ in range(self.cfg.ppo_epochs):
            for mini in self._minibatches(batch):
                mask = mini.loss_mask if mini is not None else padding_batch().loss_mask
                norm = global_norm(mask, float(loss_cfg.max_tokens) if loss_cfg.max_tokens
                                   else None)
                loss_fn = self._rl_loss(loss_cfg, norm, temp, on_policy)
                out = self._step(self._split(mini), loss_fn)
                out["actor/loss"] = out.pop("loss")
                history.append(out)
        return {k: sum(h[k] for h in history) / len(history) for k in history[0]}

    def _rl_loss(self, loss_cfg: LossConfig, norm: LossNorm, temp: float, on_policy: bool):
        # TorchLearner's objective (rl_loss) with the global ``norm``.
        def loss_fn(mb: Batch) -> tuple[torch.Tensor, dict[str, float]]:
            lp = self._logprobs(mb, temp)
            loss, metrics = rl_loss(lp, self._device(mb), loss_cfg, norm, on_policy)
            # keeps every parameter in the graph even when the mask is empty (padding rows)
            return loss + 0.0 * lp.sum(), metrics

        return loss_fn

    def sft_update(self, batch: Batch | None, agg: str = "token-mean") -> dict[str, float]:
        """One supervised step on this rank's shard: NLL of the tokens in ``batch.loss_mask``."""
        mask = batch.loss_mask if batch is not None and len(batch) else padding_batch().loss_mask
        norm = global_norm(mask, None)

        def loss_fn(mb: Batch) -> tuple[torch.Tensor, dict]:
            lp = self._logprobs(mb, 1.0)
            loss, m = sft_loss(lp, self._device(mb).loss_mask, agg=agg, norm=norm)
            return loss + 0.0 * lp.sum(), {"sft/nll": float(m["nll"])}

        out = self._step(self._split(batch), loss_fn)
        out["sft/loss"] = out.pop("loss")
        return out

    def reset_optimizer(self) -> None:
        """Drop Adam moments (e.g. between SFT and RL); the step counters stay."""
        self.optimizer.optimizer.state.clear()

    def snapshot_reference(self) -> None:
        """The KL reference swaps values into the module's parameters; ZeRO-3 partitions them,
        so there the reference is refused (use ZeRO-1/2, or kl_coef=0)."""
        if self.stage == 3:
            raise ValueError("algorithm.loss.kl_coef > 0 is not supported with ZeRO-3 (the "
                             "reference snapshot needs whole parameters): use "
                             "learner=deepspeed_zero2 or kl_coef=0")
        self.reference.take()

    # -- weights ---------------------------------------------------------------------------------
    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full weights under the base model's parameter names (collective under ZeRO-3: every
        rank must consume the whole iterator). With LoRA each adapted weight is
        ``W + scale * B @ A``, computed out of place."""
        gathered = self.stage == 3
        if not self.cfg.lora.enabled:
            for name, p in self.model.named_parameters():
                with self._gather([p]):
                    t = p.detach().clone() if gathered else p.detach()
                yield name, t
            return
        base = self.model.get_base_model()
        adapted = {n: m for n, m in base.named_modules()
                   if hasattr(m, "base_layer") and hasattr(m, "get_delta_weight")}
        for name, p in base.named_parameters():
            if "lora_" in name:
                continue
            plain = name.replace("base_layer.", "")
            mod = adapted.get(plain.rsplit(".", 1)[0]) if plain.endswith(".weight") else None
            if mod is None:
                with self._gather([p]):
                    t = p.detach().clone() if gathered else p.detach()
            else:
                with self._gather(list(mod.parameters())), torch.no_grad():
                    t = p.detach().clone()
                    for adapter in getattr(mod, "active_adapters", ["default"]):
                        t += mod.get_delta_weight(adapter).detach().to(t.dtype)
            yield plain, t

    def save_pretrained(self, path: str | Path) -> None:
        """Collective: rank 0 writes an HF folder (full weights, or the PEFT adapter with LoRA)."""
        path = Path(path)
        state = None
        if self.stage == 3:  # layer by layer onto rank 0's CPU
            full = self.engine._zero3_consolidated_16bit_state_dict()
            if full is not None:
                state = {k.removeprefix("policy."): v for k, v in full.items()}
        if dist.is_main():
            path.mkdir(parents=True, exist_ok=True)
            kwargs = {"state_dict": state} if state is not None else {}
            self.model.save_pretrained(str(path), **kwargs)
        dist.barrier()

    def load_pretrained(self, path: str | Path) -> None:
        """Collective: load an HF folder written by :meth:`save_pretrained` (full weights or a
        PEFT adapter) into the model and the optimizer's fp32 master weights."""
        from safetensors.torch import load_file

        path = Path(path)
        adapter = path / "adapter_model.safetensors"
        if adapter.exists():
            from peft import set_peft_model_state_dict

            if not self.cfg.lora.enabled:
                raise ValueError(f"{path} holds a LoRA adapter but learner.lora.enabled is false")
            lora = [p for n, p in self.model.named_parameters() if "lora_" in n]
            with self._gather(lora, modifier_rank=0):
                set_peft_model_state_dict(self.model, load_file(str(adapter)))
        else:
            from rl.models import read_safetensors_folder

            state = read_safetensors_folder(path)
            base = self.model.get_base_model() if self.cfg.lora.enabled else self.model
            params = {n.replace("base_layer.", ""): p for n, p in base.named_parameters()
                      if "lora_" not in n}
            missing = sorted(set(params) - set(state))
            unexpected = sorted(set(state) - set(params))
            tied = getattr(getattr(base, "config", None), "tie_word_embeddings", False)
            unexpected = [k for k in unexpected if not (tied and k.endswith("lm_head.weight"))]
            if missing or unexpected:
                raise ValueError(f"weights in {path} do not fit the model: "
                                 f"missing={missing[:5]} unexpected={unexpected[:5]}")
            for name, p in params.items():
                with self._gather([p], modifier_rank=0), torch.no_grad():
                    if self.stage != 3 or dist.is_main():
                        p.copy_(state[name].to(p.dtype))
        # the optimizer steps fp32 master copies: make them the loaded weights
        self.optimizer.refresh_fp32_params()
        dist.barrier()

    # -- resumable state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This rank's part of the training state: its ZeRO optimizer shard (Adam moments and
        fp32 master weights), the LR scheduler and the step counter."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "optimizer_steps": self.optimizer_steps, "zero_stage": self.stage,
                "world_size": dist.world_size(), "rank": dist.rank(),
                "reference": self.reference.state_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` of this rank (same ZeRO stage and world size)."""
        for key, now in (("zero_stage", self.stage), ("world_size", dist.world_size()),
                         ("rank", dist.rank())):
            if d.get(key) != now:
                raise ValueError(f"learner state was saved with {key}={d.get(key)}, "
                                 f"this run has {key}={now}")
        shards: list[Any] = [None] * dist.world_size()
        shards[dist.rank()] = d["optimizer"]
        self.optimizer.load_state_dict(shards, load_optimizer_states=True,
                                       load_from_fp32_weights=True)
        self.scheduler.load_state_dict(d["scheduler"])
        self.optimizer_steps = int(d["optimizer_steps"])
        self.reference.load_state_dict(d.get("reference", {}))
