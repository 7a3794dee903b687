"""HF engine: sampled tokens' logprobs equal the learner's recomputation; padding-invariant."""

from __future__ import annotations

import torch

from rl.learner.torch import token_logprobs
from rl.rollout.engines.base import GenerationRequest, SamplingParams
from rl.rollout.engines.hf import HFEngine, sample_next


def _requests(tokenizer):
    texts = ["Hello there, how are", "1 + 1 =", "A much longer prompt that needs left padding ok"]
    return [GenerationRequest(tokenizer.encode(t)) for t in texts]


def test_logprobs_match_learner_recompute(tiny_model, tokenizer):
    engine = HFEngine(tiny_model, tokenizer, seed=0)
    reqs = _requests(tokenizer)
    for temp in (1.0, 0.7):
        outs = engine.generate(reqs, SamplingParams(max_new_tokens=12, temperature=temp, seed=1))
        for r, o in zip(reqs, outs):
            ids = torch.tensor([r.prompt_ids + o.token_ids])
            mask = torch.tensor([[0] * len(r.prompt_ids) + [1] * len(o.token_ids)])
            lp = token_logprobs(tiny_model, ids, torch.ones_like(ids), mask, temperature=temp)
            got = lp[0, len(r.prompt_ids):]
            torch.testing.assert_close(got, torch.tensor(o.logprobs), atol=1e-4, rtol=1e-4)


def test_batched_equals_one_by_one_greedy(tiny_model, tokenizer):
    engine = HFEngine(tiny_model, tokenizer)
    reqs = _requests(tokenizer)
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    batched = engine.generate(reqs, greedy)
    single = [engine.generate([r], greedy)[0] for r in reqs]
    for b, s in zip(batched, single):
        assert b.token_ids == s.token_ids
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(s.logprobs),
                                   atol=1e-4, rtol=1e-4)


def test_seeded_sampling_is_reproducible_and_limits_hold(tiny_model, tokenizer):
    engine = HFEngine(tiny_model, tokenizer)
    reqs = _requests(tokenizer)
    reqs[1].max_new_tokens = 3
    sp = SamplingParams(max_new_tokens=6, temperature=1.0, seed=123)
    a, b = engine.generate(reqs, sp), engine.generate(reqs, sp)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert len(a[1].token_ids) <= 3 and len(a[0].token_ids) <= 6
    assert all(o.finish_reason in ("stop", "length") for o in a)


def test_stop_token_ends_the_request(tiny_model, tokenizer):
    engine = HFEngine(tiny_model, tokenizer)
    req = _requests(tokenizer)[:1]
    free = engine.generate(req, SamplingParams(max_new_tokens=6, temperature=0.0))[0]
    stop_at = free.token_ids[2]
    out = engine.generate(req, SamplingParams(max_new_tokens=6, temperature=0.0,
                                              stop_token_ids=[stop_at]))[0]
    first = free.token_ids.index(stop_at)
    assert out.token_ids == free.token_ids[: first + 1] and out.finish_reason == "stop"


def test_top_k_one_is_greedy_and_logprob_is_untruncated():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    tok, lp = sample_next(logits, SamplingParams(temperature=1.0, top_k=1), None)
    assert torch.equal(tok, logits.argmax(-1))
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1).max(-1).values)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen = {int(sample_next(logits, SamplingParams(top_p=0.8), g)[0]) for _ in range(200)}
    assert seen == {0, 1}


def test_shared_prefix_and_row_dropping_do_not_change_results(tiny_model, tokenizer):
    system = tokenizer.encode("A shared system prompt that every trajectory starts with. " * 3)
    reqs = [GenerationRequest(system + tokenizer.encode(t), max_new_tokens=n)
            for t, n in [(" one", 3), (" two words", 9), (" a longer third one", 6)]]
    greedy = SamplingParams(max_new_tokens=9, temperature=0.0)
    shared = HFEngine(tiny_model, tokenizer, share_prefix=True)
    plain = HFEngine(tiny_model, tokenizer, share_prefix=False)
    assert len(shared._shared_prefix([r.prompt_ids for r in reqs])) >= 16
    a, b = shared.generate(reqs, greedy), plain.generate(reqs, greedy)
    for x, y, r in zip(a, b, reqs):
        assert x.token_ids == y.token_ids and len(x.token_ids) <= r.max_new_tokens
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs),
                                   atol=1e-4, rtol=1e-4)
