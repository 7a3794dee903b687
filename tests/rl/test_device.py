"""Device plumbing without a GPU (issue 12): stand-ins on the ``meta`` device and a mocked
``torch.cuda`` prove where tensors go and which backend a rank picks; the ``gpu`` tests run the
CUDA branches for real where a device exists (``pytest -m gpu``; launch/gpu_check.sh)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import rl.models
from rl.config import Config, LearnerConfig, config_problems
from rl.learner import dist
from rl.models import resolve_device
from rl.rollout.engines.base import GenerationRequest, SamplingParams
from rl.types import Batch

META = torch.device("meta")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# -- a model that says it lives on the meta device ---------------------------------------------
class MetaStandIn(torch.nn.Module):
    """Reports ``device = meta`` and records the device of every tensor the engine passes in.
    Meta tensors carry no values, so its logits are scripted on the CPU: row 0 of the first
    full-batch step samples EOS (the engine then drops that row), every other row token 5."""

    def __init__(self, vocab: int, eos: int, batch: int) -> None:
        super().__init__()
        self.vocab, self.eos, self.batch = vocab, eos, batch
        self.seen: list[tuple[str, torch.device]] = []
        self.calls = 0

    @property
    def device(self) -> torch.device:
        return META

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=None, logits_to_keep=None):
        self.calls += 1
        for name, t in (("input_ids", input_ids), ("attention_mask", attention_mask),
                        ("position_ids", position_ids)):
            if t is not None:
                self.seen.append((name, t.device))
        B = input_ids.shape[0]
        logits = torch.full((B, 1, self.vocab), -100.0)
        logits[:, :, 5] = 100.0
        if B == self.batch:
            logits[0, :, :] = -100.0
            logits[0, :, self.eos] = 100.0
        return SimpleNamespace(logits=logits)


class _Tok:
    pad_token_id, eos_token_id = 0, 2

    def decode(self, ids):
        return " ".join(map(str, ids))


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_hf_engine_builds_every_tensor_on_the_model_device(shared_prefix):
    from rl.rollout.engines.hf import HFEngine

    model = MetaStandIn(vocab=16, eos=2, batch=3)
    engine = HFEngine(model, _Tok(), seed=0)
    head = list(range(3, 23)) if shared_prefix else []  # 20 common tokens: prefilled once
    reqs = [GenerationRequest(head + [7, 8, 9]), GenerationRequest(head + [9]),
            GenerationRequest(head + [4, 4])]
    outs = engine.generate(reqs, SamplingParams(max_new_tokens=4, temperature=1.0, seed=3))
    # row 0 stopped at once (and was dropped), the others ran to their budget
    assert [o.token_ids for o in outs] == [[2], [5, 5, 5, 5], [5, 5, 5, 5]]
    assert [o.finish_reason for o in outs] == ["stop", "length", "length"]
    names = {n for n, _ in model.seen}
    assert names == {"input_ids", "attention_mask", "position_ids"}
    assert {d for _, d in model.seen} == {META}, model.seen
    # prefix prefill (1 row) + batch prefill + 3 decode steps
    assert model.calls == (5 if shared_prefix else 4)
    # sampling drew from a generator where the logits are (the CPU here)
    assert engine.generator.device == torch.device("cpu")


def test_hf_engine_update_weights_copies_onto_each_parameter_device(tiny_model, tokenizer):
    from rl.rollout.engines.hf import HFEngine

    engine = HFEngine(tiny_model, tokenizer)
    name, p = next(iter(tiny_model.named_parameters()))
    new = torch.full(p.shape, 0.25, dtype=torch.float64)  # other dtype: cast on copy
    engine.update_weights([(name, new)])
    assert p.dtype == torch.float32 and torch.all(p == 0.25)


# -- the learner puts the model on the configured device ---------------------------------------
def _batch(B: int = 2, L: int = 6) -> Batch:
    mask = torch.zeros((B, L))
    mask[:, 3:] = 1
    return Batch(input_ids=torch.randint(3, 50, (B, L)), attention_mask=torch.ones((B, L),
                 dtype=torch.long), loss_mask=mask, old_logprobs=torch.zeros((B, L)),
                 advantages=torch.ones((B, L)))


def test_torch_learner_moves_model_and_batches_to_its_device(tiny_model, monkeypatch):
    import rl.learner.torch as tl
    from rl.algos import LossNorm
    from rl.config import LossConfig

    asked: list = []
    monkeypatch.setattr(rl.models, "resolve_device", lambda spec: asked.append(spec) or META)
    learner = tl.TorchLearner(tiny_model, LearnerConfig(autocast="fp32", micro_batch_size=1),
                              device="cuda")
    assert asked == ["cuda"] and learner.device == META
    assert {p.device for p in learner.model.parameters()} == {META}
    seen: list[tuple[str, torch.device]] = []

    def fake_logprobs(model, input_ids, attention_mask, loss_mask, temperature=1.0, chunk=0):
        seen.extend([("ids", input_ids.device), ("attn", attention_mask.device),
                     ("mask", loss_mask.device)])
        return torch.zeros(input_ids.shape)  # values on the host: meta has none

    def fake_loss(lp, mb, cfg, norm: LossNorm, on_policy):
        seen.extend([("adv", mb.advantages.device), ("old", mb.old_logprobs.device)])
        return torch.zeros((), requires_grad=True), {"pg": 0.0}

    monkeypatch.setattr(tl, "token_logprobs", fake_logprobs)
    monkeypatch.setattr(tl, "rl_loss", fake_loss)
    batch = _batch()
    out = learner.compute_logprobs(batch)
    assert out.device == batch.input_ids.device and out.shape == batch.input_ids.shape
    learner.update(batch, LossConfig())
    assert seen and {d for _, d in seen} == {META}, seen
    assert {k for k, _ in seen} == {"ids", "attn", "mask", "adv", "old"}
    assert batch.input_ids.device.type == "cpu"  # the caller's batch is not moved


def test_torch_learner_without_device_keeps_the_model_where_it_is(tiny_model):
    from rl.learner.torch import TorchLearner

    learner = TorchLearner(tiny_model, LearnerConfig(autocast="bf16"))
    assert learner.device == torch.device("cpu")
    assert learner._autocast().device == "cpu"  # bf16 autocast on the model's device type


def test_load_model_places_the_model(tiny_model_dir, monkeypatch):
    from rl.models import load_model

    assert next(load_model(str(tiny_model_dir), device="cpu").parameters()).device.type == "cpu"
    monkeypatch.setattr(rl.models, "resolve_device", lambda spec: META)
    assert {p.device for p in load_model(str(tiny_model_dir)).parameters()} == {META}


# -- which device and backend a rank picks (mocked torch.cuda) ---------------------------------
@pytest.fixture()
def gpus(monkeypatch):
    """``gpus(n)``: pretend ``n`` CUDA devices are visible; torchrun's variables cleared."""
    for k in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "RANK", "DS_ACCELERATOR"):
        monkeypatch.delenv(k, raising=False)

    def set_gpus(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_gpus


@pytest.mark.parametrize("env, n, want", [
    ({}, 0, "cpu"),
    ({}, 1, "cuda:0"),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, 2, "cuda:1"),
    # two processes, one GPU (the DeepSpeed / checkpoint test harnesses): both ranks take the
    # CPU, so they agree on gloo; without LOCAL_WORLD_SIZE the world size counts as local
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, 1, "cpu"),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, 1, "cpu"),
    ({"WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}, 1, "cuda:0"),  # Ray actor
    ({"DS_ACCELERATOR": "cpu"}, 1, "cpu"),
])
def test_auto_device(gpus, monkeypatch, env, n, want):
    gpus(n)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert resolve_device("auto") == torch.device(want)
    assert dist.backend_for(resolve_device("auto")) == ("nccl" if want != "cpu" else "gloo")


def test_explicit_devices_and_their_errors(gpus, monkeypatch):
    gpus(2)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(ValueError, match="is not one of: auto"):
        resolve_device("gpu")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ValueError, match="LOCAL_RANK=2 but only 2 CUDA"):
        resolve_device("cuda")
    gpus(0)
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        resolve_device("cuda")


@pytest.mark.parametrize("env, n, backend, device", [
    ({"LOCAL_RANK": "1"}, 1, "gloo", None),  # the two-process-on-one-GPU case of issue 12
    ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, 2, "nccl", torch.device("cuda", 1)),
    ({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "DS_ACCELERATOR": "cpu"}, 2, "gloo", None),
])
def test_init_from_env_takes_the_backend_from_the_device(gpus, monkeypatch, env, n, backend,
                                                         device):
    gpus(n)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    calls: dict = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **kw: calls.setdefault("backend", backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("device", d))
    assert dist.init_from_env() is True
    assert calls.get("backend") == backend and calls.get("device") == device


def test_nccl_without_a_cuda_device_is_refused(gpus, monkeypatch):
    gpus(1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    with pytest.raises(ValueError, match="nccl needs a CUDA device"):
        dist.init_from_env(backend="nccl", device="cpu")


def test_deepspeed_accelerator_must_match_the_device(gpus, monkeypatch):
    from rl.config import DeepSpeedConfig
    from rl.learner.deepspeed import ds_config, prepare_env, resolve_bf16

    gpus(1)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    with pytest.raises(ValueError, match="DS_ACCELERATOR=cpu but the DeepSpeed learner runs on"):
        prepare_env(torch.device("cuda", 0))
    prepare_env(torch.device("cpu"))
    monkeypatch.delenv("DS_ACCELERATOR")
    prepare_env(torch.device("cpu"))
    import os

    assert os.environ["DS_ACCELERATOR"] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_bf16("auto", torch.device("cuda", 0)) and not resolve_bf16("auto", META)
    cfg = LearnerConfig(deepspeed=DeepSpeedConfig(offload_optimizer=True))
    assert ds_config(cfg, torch.device("cpu"))["zero_optimization"]["offload_optimizer"][
        "pin_memory"] is False
    on_gpu = ds_config(cfg, torch.device("cuda", 0))
    assert on_gpu["zero_optimization"]["offload_optimizer"]["pin_memory"] is True
    assert on_gpu["bf16"]["enabled"] is True


def test_deepspeed_learner_refuses_a_cpu_device_on_an_nccl_group(gpus, monkeypatch, tiny_model):
    from rl.learner.deepspeed import DeepSpeedLearner

    gpus(1)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "backend", lambda: "nccl")
    with pytest.raises(ValueError, match="process group uses nccl but the DeepSpeed learner "
                                         "runs on cpu"):
        DeepSpeedLearner(tiny_model, LearnerConfig(backend="deepspeed"), device="cpu")


def test_config_rejects_an_unknown_device():
    cfg = Config()
    cfg.model.device = "gpu0"
    assert "model.device='gpu0' is not one of: auto, cpu, cuda, cuda:N" in config_problems(cfg)
    for ok in ("auto", "cpu", "cuda", "cuda:3"):
        cfg.model.device = ok
        assert not [p for p in config_problems(cfg) if "model.device" in p]


# -- CUDA RNG restore with another number of visible GPUs --------------------------------------
@pytest.mark.parametrize("visible, restored", [(1, [0]), (3, [0, 1])])
def test_cuda_rng_restore_follows_the_visible_devices(gpus, monkeypatch, visible, restored):
    from rl import checkpoint as ckpt

    gpus(visible)
    got: list[tuple[int, int]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda s, i: got.append((i, int(s[0]))))
    state = ckpt.rng_state()  # no CUDA state here; add two devices' worth
    state["cuda"] = [torch.tensor([10], dtype=torch.uint8), torch.tensor([11], dtype=torch.uint8)]
    ckpt.set_rng_state(state)
    assert got == [(i, 10 + i) for i in restored]


# -- the real CUDA branches (skipped without a GPU) --------------------------------------------
@pytest.mark.gpu
@CUDA
def test_gpu_auto_device_engine_and_learner(tiny_model, tokenizer):
    from rl.config import LossConfig
    from rl.learner.torch import TorchLearner, token_logprobs
    from rl.rollout.engines.hf import HFEngine

    assert resolve_device("auto") == torch.device("cuda", 0)
    learner = TorchLearner(tiny_model, LearnerConfig(lr=1e-2, autocast="bf16"), device="auto")
    assert {p.device.type for p in learner.model.parameters()} == {"cuda"}
    engine = HFEngine(learner.model, tokenizer, shared=True, seed=0)
    assert engine.generator.device.type == "cuda"
    req = GenerationRequest(tokenizer.encode("1 + 1 ="))
    out = engine.generate([req], SamplingParams(max_new_tokens=6, temperature=1.0, seed=1))[0]
    ids = torch.tensor([req.prompt_ids + out.token_ids], device="cuda")
    mask = torch.tensor([[0] * len(req.prompt_ids) + [1] * len(out.token_ids)], device="cuda")
    with torch.no_grad():
        lp = token_logprobs(learner.model, ids, torch.ones_like(ids), mask)[0, len(req.prompt_ids):]
    torch.testing.assert_close(lp.cpu(), torch.tensor(out.logprobs), atol=1e-3, rtol=1e-3)
    before = [p.detach().clone() for p in learner.model.parameters()]
    learner.update(_batch(), LossConfig())
    assert any(not torch.equal(b, p) for b, p in zip(before, learner.model.parameters()))


@pytest.mark.gpu
@CUDA
def test_gpu_rng_round_trip_and_checkpoint_map_location(tmp_path):
    from rl import checkpoint as ckpt

    torch.zeros(1, device="cuda")  # initialise CUDA so its RNG state is saved
    state = ckpt.rng_state()
    assert "cuda" in state
    a = torch.rand(4, device="cuda")
    ckpt.set_rng_state(state)
    torch.testing.assert_close(torch.rand(4, device="cuda"), a)
    torch.save({"x": torch.ones(2, device="cuda")}, tmp_path / "s.pt")
    # what load_state / load_checkpoint do: tensors land on the host
    assert torch.load(tmp_path / "s.pt", weights_only=False, map_location="cpu")[
        "x"].device.type == "cpu"


# -- vLLM's platform options, and the launch script --------------------------------------------
def test_vllm_platform_options_per_platform():
    from rl.config import VLLMConfig
    from rl.rollout.engines.vllm import platform_options

    cpu, cpu_env = platform_options(VLLMConfig(), on_cpu=True)
    assert cpu == {"dtype": "float32", "enforce_eager": True}
    assert cpu_env == {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    gpu, gpu_env = platform_options(VLLMConfig(in_process=False), on_cpu=False)
    assert gpu == {"dtype": "bfloat16", "enforce_eager": False, "gpu_memory_utilization": 0.5}
    assert gpu_env == {}
    pinned, _ = platform_options(VLLMConfig(dtype="float16", enforce_eager=True), on_cpu=False)
    assert pinned["dtype"] == "float16" and pinned["enforce_eager"] is True
    cfg = Config()
    cfg.vllm.dtype = "fp8"
    assert any(p.startswith("vllm.dtype='fp8' is not one of") for p in config_problems(cfg))


def test_gpu_check_script_parses_lints_and_documents_its_command():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sh = root / "launch" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(sh)], check=True)
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if Path(shellcheck).exists():
        out = subprocess.run([shellcheck, "-x", str(sh)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout
    header = sh.read_text().split("set -euo pipefail")[0]
    assert "bash launch/gpu_check.sh" in header and 'carry=[".gpu_bundle"]' in header
    sys.path.insert(0, str(root / "launch"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    for name, _ in gpu_check.SECTIONS:  # every listed section has its function
        assert name == "pytest" or callable(getattr(gpu_check, f"sec_{name}"))
