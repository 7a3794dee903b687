"""LLMUser's batching (envs/tasks/llm_user.py; the Ray user actor turns it on): concurrent greedy
replies share engine calls and read the same as unbatched ones; sampled replies keep their own
seeds; an engine error reaches every waiting reply."""

from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace

import pytest

from envs.tasks.llm_user import LLMUser

GOALS = [f"Order {n} pizzas." for n in range(6)]
CONVERSATION = [{"role": "assistant", "content": "Hello, how can I help?"}]


class CountingEngine:
    """Reply = a hash of the whole prompt and the seed, as text; records each call's size."""

    def __init__(self, tokenizer, fail: bool = False) -> None:
        self.tok, self.fail = tokenizer, fail
        self.sizes: list[int] = []
        self.seeds: list[int | None] = []

    def generate(self, requests, sampling):
        if self.fail:
            raise RuntimeError("engine down")
        self.sizes.append(len(requests))
        self.seeds.append(sampling.seed)
        outs = []
        for r in requests:
            digest = hashlib.sha256(f"{r.prompt_ids}/{sampling.seed}".encode()).hexdigest()
            ids = self.tok(digest[:10], add_special_tokens=False)["input_ids"]
            outs.append(SimpleNamespace(token_ids=ids, logprobs=[0.0] * len(ids),
                                        finish_reason="stop"))
        return outs


def _replies(user: LLMUser) -> list[str]:
    async def run():
        return await asyncio.gather(*(user.reply(g, CONVERSATION) for g in GOALS))

    return asyncio.run(run())


def test_greedy_replies_batch_and_match_the_unbatched_path(tokenizer) -> None:
    single = LLMUser(CountingEngine(tokenizer), tokenizer)
    batched = LLMUser(CountingEngine(tokenizer), tokenizer, max_batch=4, batch_wait_s=0.05)
    want, got = _replies(single), _replies(batched)
    assert got == want and len(set(got)) == 6  # six different prompts, six different replies
    assert single.engine.sizes == [1] * 6
    assert batched.engine.sizes == [4, 2]  # max_batch caps a call
    assert batched.calls == 6 and batched.engine_calls == 2


def test_sampled_replies_keep_their_own_seeds(tokenizer) -> None:
    single = LLMUser(CountingEngine(tokenizer), tokenizer, temperature=0.7, seed=1)
    batched = LLMUser(CountingEngine(tokenizer), tokenizer, temperature=0.7, seed=1,
                      max_batch=8, batch_wait_s=0.05)
    assert _replies(batched) == _replies(single)
    assert batched.engine.sizes == [1] * 6  # one seed per prompt: nothing to share
    assert len(set(batched.engine.seeds)) == 6 and None not in batched.engine.seeds


def test_an_engine_error_reaches_every_waiting_reply(tokenizer) -> None:
    user = LLMUser(CountingEngine(tokenizer, fail=True), tokenizer, max_batch=8)

    async def run():
        return await asyncio.gather(*(user.reply(g, CONVERSATION) for g in GOALS),
                                    return_exceptions=True)

    errors = asyncio.run(run())
    assert all(isinstance(e, RuntimeError) and "engine down" in str(e) for e in errors)
    with pytest.raises(ValueError, match="max_batch"):
        LLMUser(CountingEngine(tokenizer), tokenizer, max_batch=0)
