"""Chunked LM-head logprobs (rl/learner/logprobs.py, ``learner.logprob_chunk``): the same
logprobs, entropies and parameter gradients as the plain pass (fp32, 1e-5) for the helper, the
torch learner's plain and prefix-shared passes, its loss, reference and health-probe paths; the
full-vocabulary logits are never materialised (largest vocabulary-wide tensor, tensors saved for
backward); models whose forward post-processes the logits score like their own forward."""

from __future__ import annotations

import pytest
import torch
from test_prefix import _learner_batch, _model, _tree_batch
from torch.utils._python_dispatch import TorchDispatchMode

from rl.learner.logprobs import logit_transform, model_logprobs, selected_logprobs
from rl.learner.prefix import prefix_token_logprobs
from rl.learner.torch import token_logprobs
from rl.types import Batch

CHUNKS = [1, 3, 7, 16]  # chunks of one token, and chunk sizes that do and do not divide the count


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()
            if p.requires_grad and p.grad is not None}


def _assert_grads_close(got: dict, want: dict) -> float:
    assert got.keys() == want.keys() and want
    assert any(float(g.abs().sum()) > 0 for g in want.values())
    worst = 0.0
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=1e-5, rtol=1e-4, msg=n)
        worst = max(worst, float((got[n] - want[n]).abs().max()))
    return worst


# -- the helper --------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 3, 5, 12, 40])
@pytest.mark.parametrize("softcap", [False, True])
def test_helper_chunked_equals_plain_logprobs_entropy_and_gradients(chunk, softcap):
    """States scored for several targets (``rows`` repeats, unsorted), chunk sizes that divide
    the 15 states (5), do not (3 does, 12 / 40 leave a short or single chunk), 1 per chunk."""
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True)
    hidden = torch.randn(15, 8, generator=g, requires_grad=True)
    rows = torch.randint(0, 15, (23,), generator=g)
    targets = torch.randint(0, 50, (23,), generator=g)
    w_lp, w_ent = torch.randn(23, generator=g), torch.randn(23, generator=g)
    transform = (lambda x: torch.tanh(x / 3.0) * 3.0) if softcap else None
    outs, grads = [], []
    for c in (0, chunk):
        head.zero_grad()
        hidden.grad = None
        lp, ent = selected_logprobs(head, hidden, targets, rows=rows, temperature=0.7, chunk=c,
                                    transform=transform, entropy=True)
        ((lp * w_lp).sum() + (ent * w_ent).sum()).backward()
        outs.append((lp.detach(), ent.detach()))
        grads.append([hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()])
    logits = head(hidden[rows]).float()
    if transform is not None:
        logits = transform(logits)
    ref = torch.log_softmax(logits / 0.7, -1)
    torch.testing.assert_close(outs[0][0], ref.gather(-1, targets[:, None]).squeeze(-1))
    torch.testing.assert_close(outs[0][1], -(ref.exp() * ref).sum(-1))
    for a, b in zip(outs[1], outs[0]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads[1], grads[0]):
        assert float(b.abs().sum()) > 0
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_helper_without_grad_and_without_targets():
    head = torch.nn.Linear(4, 9)
    h = torch.randn(6, 4)
    with torch.no_grad():
        torch.testing.assert_close(selected_logprobs(head, h, torch.arange(6), chunk=4),
                                   selected_logprobs(head, h, torch.arange(6), chunk=0))
    empty = selected_logprobs(head, h[:0], torch.zeros(0, dtype=torch.long), chunk=4)
    assert empty.shape == (0,)


def test_min_chunks_makes_every_rank_call_the_head_equally_often():
    """ZeRO-3 gathers the head's weight in every head call (a collective): with ``min_chunks``
    a rank with few (or no) scored tokens calls the head as often as the busiest rank, in
    forward and in the backward's recompute, with the same values."""
    head = torch.nn.Linear(4, 9)
    calls: list[int] = []
    head.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    for states in (0, 2, 5):
        h = torch.randn(states, 4, requires_grad=True)
        t = torch.randint(0, 9, (states,))
        calls.clear()
        lp = selected_logprobs(head, h, t, chunk=3, min_chunks=4)
        forward = list(calls)
        calls.clear()
        lp.sum().backward()
        assert len(forward) == len(calls) == 4 and sum(forward) == sum(calls) == states
        torch.testing.assert_close(lp, selected_logprobs(head, h, t))


# -- token_logprobs and the prefix-shared pass on a tiny Llama -----------------------------------

def _padded_batch() -> Batch:
    b = _tree_batch(seed=7)  # right-padded rows of different lengths, prompt tokens unmasked
    assert (b.attention_mask == 0).any() and (b.loss_mask[:, 1:] == 0).any()
    return b


def _pass(model, b: Batch, chunk: int, shared: bool):
    w = torch.randn(b.input_ids.shape, generator=torch.Generator().manual_seed(3))
    model.zero_grad()
    fn = prefix_token_logprobs if shared else token_logprobs
    lp = fn(model, b.input_ids, b.attention_mask, b.loss_mask, 0.7, chunk=chunk)
    (lp * w).sum().backward()
    return lp.detach(), _grads(model)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("shared", [False, True])
def test_token_and_prefix_passes_chunked_equal_plain(chunk, shared):
    model = _model()
    b = _padded_batch()
    n = int(b.loss_mask[:, 1:].sum())
    assert n > max(CHUNKS) and n % 3 == 0 and n % 7 and n % 16  # 3 divides it, 7 and 16 not
    plain_lp, plain_g = _pass(model, b, 0, shared=False)
    lp, g = _pass(model, b, chunk, shared)
    torch.testing.assert_close(lp, plain_lp, atol=1e-5, rtol=1e-5)
    assert torch.all(lp[b.loss_mask == 0] == 0) and (lp != 0).sum() == n
    _assert_grads_close(g, plain_g)


def test_chunked_pass_under_bf16_autocast():
    """The backward's recompute runs under the forward's autocast (bf16 logits, as in the
    forward; checkpoint's check would refuse a dtype change): values and gradients agree with
    the plain bf16 pass to bf16 precision."""
    model = _model()
    b = _padded_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain_lp, plain_g = _pass(model, b, 0, shared=False)
        lp, g = _pass(model, b, 7, shared=False)
    torch.testing.assert_close(lp, plain_lp, atol=2e-2, rtol=2e-2)
    for n in plain_g:
        torch.testing.assert_close(g[n], plain_g[n], atol=5e-2, rtol=5e-2, msg=n)


def test_model_logprobs_entropy_chunked_equals_full_logits():
    """Entropy (and logprobs) from the model's hidden states equal the full-logits forward."""
    model = _model()
    b = _padded_batch()
    hidden = model.get_decoder()(input_ids=b.input_ids,
                                 attention_mask=b.attention_mask).last_hidden_state
    m = b.loss_mask[:, 1:] > 0
    h, targets = hidden[:, :-1][m], b.input_ids[:, 1:][m]
    w = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(1))
    res = []
    for chunk in (0, 7):
        model.zero_grad()
        lp, ent = model_logprobs(model, h, targets, temperature=0.7, chunk=chunk, entropy=True)
        (lp.sum() + (ent * w).sum()).backward(retain_graph=True)
        res.append((lp.detach(), ent.detach(), _grads(model)))
    with torch.no_grad():
        full = torch.log_softmax(model(b.input_ids, attention_mask=b.attention_mask)
                                 .logits.float()[:, :-1][m] / 0.7, -1)
    torch.testing.assert_close(res[0][0], full.gather(-1, targets[:, None]).squeeze(-1),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res[0][1], -(full.exp() * full).sum(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res[1][0], res[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res[1][1], res[0][1], atol=1e-5, rtol=1e-5)
    _assert_grads_close(res[1][2], res[0][2])


# -- the torch learner: loss, old / reference logprobs, health probe, SFT -----------------------

def _learner(chunk: int, share: bool = False, lora: bool = False, rows: bool = False):
    from rl.learner.tokens import tag_format_tokens
    from rl.learner.torch import LearnerConfig, LoraConfig, TorchLearner

    model = _model()
    if rows:
        tag_format_tokens(model, [3, 7, 11])
    cfg = LearnerConfig(micro_batch_size=2, autocast="fp32", prefix_sharing=share,
                        logprob_chunk=chunk, lr=1e-2,
                        lora=LoraConfig(enabled=lora, r=4, alpha=8,
                                        train_token_rows="true" if rows else "false"))
    learner = TorchLearner(model, cfg)
    learner.snapshot_reference()
    return learner


@pytest.mark.parametrize("share,lora,rows", [(False, False, False), (True, False, False),
                                             (False, True, True), (True, True, False)])
def test_learner_update_chunked_equals_plain(share, lora, rows):
    """``update`` with a KL term (reference logprobs through the chunked pass), two mini-batches
    (old logprobs recomputed, two optimizer steps) and the health probe: the gradients of both
    steps, every metric and the weights after them equal the plain pass's. ``rows``: LoRA
    with trainable token rows (a PEFT-wrapped, tied LM head that trains)."""
    from rl.learner.torch import LossConfig

    res = []
    for chunk in (0, 3):
        learner = _learner(chunk, share, lora, rows)
        learner.cfg.mini_batches = 2
        for group in learner.optimizer.param_groups:  # an Adam step linear in the gradient:
            group["eps"] = 1.0  # a near-zero gradient's sign cannot flip a whole lr step
        grads: list[dict] = []
        learner.optimizer.register_step_pre_hook(
            lambda *_, learner=learner, grads=grads: grads.append(_grads(learner.model)))
        b = _learner_batch()
        ref = learner.compute_ref_logprobs(b, 0.9)
        metrics = learner.update(b, LossConfig(kl_coef=0.05), temperature=0.9)
        weights = {n: p.detach().clone() for n, p in learner.model.named_parameters()
                   if p.requires_grad}
        assert len(grads) == 2
        res.append((ref, b.ref_logprobs, metrics, grads, weights))
    (ref0, bref0, m0, g0, w0), (ref1, bref1, m1, g1, w1) = res
    torch.testing.assert_close(ref1, ref0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bref1, bref0, atol=1e-5, rtol=1e-5)
    for a, b in zip(g1, g0):  # both optimizer steps
        _assert_grads_close(a, b)
    assert m0["health/kl_update"] > 0 and "health/kl_to_start" in m0 and m0.keys() == m1.keys()
    for k in m0:
        assert m1[k] == pytest.approx(m0[k], rel=1e-4, abs=1e-6), k
    for n in w0:
        torch.testing.assert_close(w1[n], w0[n], atol=1e-5, rtol=1e-5, msg=n)


def test_learner_sft_and_old_logprobs_chunked_equal_plain():
    b = _learner_batch()
    plain, chunked = _learner(0), _learner(2)
    torch.testing.assert_close(chunked.compute_logprobs(b, 0.9), plain.compute_logprobs(b, 0.9),
                               atol=1e-5, rtol=1e-5)
    m0, m1 = plain.sft_update(b), chunked.sft_update(b)
    assert m0["grad_norm"] > 0
    assert m1["grad_norm"] == pytest.approx(m0["grad_norm"], rel=1e-5)
    assert m1["sft/nll"] == pytest.approx(m0["sft/nll"], rel=1e-5)


# -- memory: the full-vocabulary logits are never materialised --------------------------------

class _VocabTensors(TorchDispatchMode):
    """The most rows of any tensor an op allocates (not a view or alias of one of its inputs,
    e.g. the head weight transposed) whose last dimension is the vocabulary."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves(
            (args, kwargs)) if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if (isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == self.vocab
                    and t.untyped_storage().data_ptr() not in inputs):
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


def _vocab_model(vocab: int = 2000):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).float()


@pytest.mark.parametrize("shared", [False, True])
def test_chunked_pass_never_holds_the_full_vocabulary_logits(shared):
    """Deterministic memory check (no timing): in forward and backward no op of the chunked pass
    produces a vocabulary-wide tensor of more than ``chunk`` rows (the plain pass: one row per
    scored token), and nothing vocabulary-wide is saved for backward (the plain pass saves at
    least its ``(N, V)`` log-softmax)."""
    vocab, chunk = 2000, 8
    model = _vocab_model(vocab)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (4, 24), generator=g)
    ids[1, :10] = ids[0, :10]  # a shared prefix for the prefix-shared pass
    attn = torch.ones_like(ids)
    attn[3, 20:] = 0
    mask = attn.float()
    mask[:, :5] = 0
    n = int(mask[:, 1:].sum())
    fn = prefix_token_logprobs if shared else token_logprobs
    seen = {}
    for c in (0, chunk):
        saved = []

        def pack(t, saved=saved):
            if t.dim() and t.shape[-1] == vocab:
                saved.append(t.numel() * t.element_size())
            return t

        model.zero_grad()
        with _VocabTensors(vocab) as mode:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                lp = fn(model, ids, attn, mask, 1.0, chunk=c)
            lp.sum().backward()
        seen[c] = (mode.rows, sum(saved))
    plain_rows, plain_saved = seen[0]
    assert n > plain_rows > 4 * chunk if shared else plain_rows == n  # shared states: once
    assert plain_saved >= plain_rows * vocab * 4
    assert seen[chunk] == (chunk, 0)


# -- logit post-processing of other families ---------------------------------------------------

def _family(kind: str):
    import transformers as tf

    torch.manual_seed(0)
    common = dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  head_dim=8)
    if kind == "gemma2":
        cfg = tf.Gemma2Config(**common, final_logit_softcapping=2.0, attn_logit_softcapping=None,
                              sliding_window=16)
        return tf.Gemma2ForCausalLM(cfg).float()
    if kind == "granite":
        cfg = tf.GraniteConfig(**{k: v for k, v in common.items() if k != "head_dim"},
                               logits_scaling=4.0)
        return tf.GraniteForCausalLM(cfg).float()
    cfg = tf.CohereConfig(**{k: v for k, v in common.items() if k != "head_dim"},
                          logit_scale=0.3)
    return tf.CohereForCausalLM(cfg).float()


@pytest.mark.parametrize("kind", ["gemma2", "granite", "cohere"])
def test_logit_postprocessing_matches_the_models_own_forward(kind):
    """The learner runs decoder and head itself; Gemma2's soft-capping, Granite's scaling and
    Cohere's logit scale (what their ``forward`` and the sampler apply) are kept, chunked or not."""
    model = _family(kind).eval()
    assert logit_transform(model) is not None
    b = _padded_batch()
    b.input_ids = b.input_ids % 120
    with torch.no_grad():
        full = torch.log_softmax(model(b.input_ids, attention_mask=b.attention_mask)
                                 .logits.float() / 0.8, -1)
        want = full[:, :-1].gather(-1, b.input_ids[:, 1:, None]).squeeze(-1)
        m = b.loss_mask[:, 1:] > 0
        for chunk in (0, 5):
            lp = token_logprobs(model, b.input_ids, b.attention_mask, b.loss_mask, 0.8,
                                chunk=chunk)
            torch.testing.assert_close(lp[:, 1:][m], want[m], atol=1e-5, rtol=1e-5)
    assert logit_transform(_model()) is None  # Llama: the head's output as is


def test_negative_chunk_is_a_config_error():
    from rl.config import Config, config_problems

    cfg = Config()
    cfg.learner.logprob_chunk = -1
    assert any("learner.logprob_chunk=-1 must be >= 0" in p for p in config_problems(cfg))
