"""Prefix-shared learner pass (rl/learner/prefix.py): same logprobs and gradients as the plain
per-row pass, fp32, on a tiny random Llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl.learner.prefix import (
    build_plan,
    pack_rows,
    packed_length_cap,
    prefix_microbatches,
    prefix_token_logprobs,
    scatter_rows,
    trie_order,
)
from rl.learner.torch import token_logprobs
from rl.types import Batch

VOCAB = 300


def _model(attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, attn_implementation=attn)
    return LlamaForCausalLM(cfg).float()


def _rand(g, n):
    return torch.randint(10, VOCAB, (n,), generator=g).tolist()


def _rows_to_batch(rows: list[tuple[list[int], list[int]]]) -> Batch:
    L = max(len(ids) for ids, _ in rows)
    B = len(rows)
    ids = torch.zeros((B, L), dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    mask = torch.zeros((B, L))
    for i, (t, m) in enumerate(rows):
        ids[i, : len(t)] = torch.tensor(t)
        attn[i, : len(t)] = 1
        mask[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
    z = torch.zeros((B, L))
    return Batch(ids, attn, mask, z.clone(), z.clone())


def _tree_batch(seed: int = 0) -> Batch:
    """Several groups: a shared prompt with 3 branches of different lengths (one row a prefix of
    another, one duplicated), a depth-3 multi-turn tree whose shared model turn carries loss, a
    group of one; rows in shuffled order."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    p = [1] + _rand(g, 11)  # group A: 12 shared tokens
    for n in (3, 7, 5):
        b = _rand(g, n)
        rows.append((p + b, [0] * len(p) + [1] * n))
    rows.append((rows[1][0][:15], rows[1][1][:15]))  # a prefix of a branch
    rows.append(rows[2])  # a duplicate row
    root = [2] + _rand(g, 6)  # group B, a multi-turn tree of depth 3
    t1 = _rand(g, 4)  # shared model turn 1 (loss), then observation
    obs = _rand(g, 3)
    for k in range(2):
        t2 = _rand(g, 3 + k)  # turn 2 branches
        for j in range(2):
            t3 = _rand(g, 2 + j)  # turn 3 branches under each turn 2
            ids = root + t1 + obs + t2 + obs + t3
            m = [0] * len(root) + [1] * 4 + [0] * 3 + [1] * len(t2) + [0] * 3 + [1] * len(t3)
            rows.append((ids, m))
    lone = [3] + _rand(g, 9)  # a group of one
    rows.append((lone, [0] * 4 + [1] * 6))
    perm = torch.randperm(len(rows), generator=g).tolist()
    return _rows_to_batch([rows[i] for i in perm])


def _disjoint_batch() -> Batch:
    """No shared prefix at all: every row starts with its own token."""
    g = torch.Generator().manual_seed(1)
    rows = [([20 + i] + _rand(g, 5 + 2 * i), [0, 0] + [1] * (4 + 2 * i)) for i in range(4)]
    return _rows_to_batch(rows)


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _check_equal(model, b: Batch, **kw) -> None:
    w = torch.randn(b.input_ids.shape, generator=torch.Generator().manual_seed(3))
    model.zero_grad()
    plain = token_logprobs(model, b.input_ids, b.attention_mask, b.loss_mask, 0.7)
    (plain * w).sum().backward()
    g_plain = _grads(model).clone()
    model.zero_grad()
    shared = prefix_token_logprobs(model, b.input_ids, b.attention_mask, b.loss_mask, 0.7, **kw)
    (shared * w).sum().backward()
    g_shared = _grads(model)
    assert (plain != 0).sum() == b.loss_mask[:, 1:].sum()  # every loss token was scored
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    assert torch.all(shared[b.loss_mask == 0] == 0)
    assert g_plain.abs().sum() > 0
    torch.testing.assert_close(g_shared, g_plain, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_pass_equals_plain_forward_and_gradients(attn):
    _check_equal(_model(attn), _tree_batch())


def test_shared_pass_with_packed_length_cap_and_no_sharing():
    model = _model()
    _check_equal(model, _tree_batch(seed=5), max_len=30)  # groups split across sequences
    _check_equal(model, _disjoint_batch())


def test_plan_counts_each_trie_node_once():
    b = _tree_batch()
    plan = build_plan(b.input_ids, b.attention_mask)
    # group A: 12 shared + 3 + 7 + 5 (prefix row and duplicate add nothing);
    # group B: 7 root + 4 + 3 shared, then 2 x (3+k turn 2 + 3 obs) + 4 x turn 3 (2 or 3)
    group_b = 7 + 4 + 3 + (3 + 3) + (4 + 3) + 2 * (2 + 3)
    assert sorted(s.length for s in plan.sequences) == sorted([12 + 15, group_b, 10])
    assert plan.packed_tokens == 27 + group_b + 10
    assert int(b.attention_mask.sum()) > plan.packed_tokens
    # every row's tokens sit at its packed copies, with its own positions
    flat_ids = plan.input_ids.flatten()
    flat_pos = plan.position_ids.flatten()
    for r in range(len(b)):
        n = int(b.attention_mask[r].sum())
        assert torch.equal(flat_ids[plan.index[r, :n]], b.input_ids[r, :n])
        assert torch.equal(flat_pos[plan.index[r, :n]], torch.arange(n))
        assert torch.all(plan.index[r, n:] == -1)


def test_tree_mask_is_each_rows_causal_prefix():
    b = _tree_batch()
    plan = build_plan(b.input_ids, b.attention_mask)
    G, P = plan.input_ids.shape
    for r in range(len(b)):
        n = int(b.attention_mask[r].sum())
        idx = plan.index[r, :n]
        g = int(idx[0]) // P
        local = idx - g * P
        for t in range(n):  # token t sees exactly tokens 0..t of its row
            expect = torch.zeros(P, dtype=torch.bool)
            expect[local[: t + 1]] = True
            assert torch.equal(plan.tree_mask[g, local[t]], expect)


def test_trie_order_lcp_is_the_longest_shared_prefix_with_any_earlier_row():
    seqs = [np.array(s) for s in ([5, 1, 2], [5, 1, 3, 4], [6], [5, 1], [5, 9, 9], [5, 1, 3])]
    order, lcp = trie_order(seqs)
    assert order == [3, 0, 5, 1, 4, 2]  # lexicographic: [5,1] < [5,1,2] < [5,1,3] < ...
    assert lcp == [0, 2, 2, 3, 1, 0]
    packed, _, _ = pack_rows(seqs)
    assert [(s.rows, s.length) for s in packed] == [([3, 0, 5, 1, 4], 2 + 1 + 1 + 1 + 2),
                                                     ([2], 1)]
    packed, _, _ = pack_rows(seqs, min_shared=2)  # [5, 9, 9] shares only one token
    assert [s.rows for s in packed] == [[3, 0, 5, 1], [4], [2]]
    with pytest.raises(ValueError, match="min_shared"):
        pack_rows(seqs, min_shared=0)


def test_left_padding_is_refused():
    b = _disjoint_batch()
    b.attention_mask[0] = torch.flip(b.attention_mask[0], [0])
    with pytest.raises(ValueError, match="right-padded rows; attention_mask row 0"):
        build_plan(b.input_ids, b.attention_mask)


def test_microbatches_cover_every_row_once_within_budget():
    b = _tree_batch()
    B, L = b.input_ids.shape
    for mbs in (1, 2, 4, 100):
        parts = prefix_microbatches(b, mbs)
        rows = sorted(r for rr, _ in parts for r in rr)
        assert rows == list(range(B))
        for rr, mb in parts:
            assert torch.equal(mb.input_ids, b.input_ids[rr])
            plan = build_plan(mb.input_ids, mb.attention_mask,
                              max_len=packed_length_cap(mbs, L))
            G, P = plan.input_ids.shape
            if G > 1:  # within the plain micro-batch's token slots and attention area
                assert G * P <= mbs * L
                assert sum(s.length ** 2 for s in plan.sequences) <= mbs * L * L
            assert P <= max(packed_length_cap(mbs, L), L)
    assert len(prefix_microbatches(b, 100)) == 1
    assert packed_length_cap(4, 10) == 20 and packed_length_cap(8, 10) == 28
    assert packed_length_cap(1, 10) == 10
    model = _model()
    with torch.no_grad():
        plain = token_logprobs(model, b.input_ids, b.attention_mask, b.loss_mask)
        parts = [(rr, prefix_token_logprobs(model, mb.input_ids, mb.attention_mask,
                                            mb.loss_mask)) for rr, mb in prefix_microbatches(b, 1)]
    torch.testing.assert_close(scatter_rows(parts, (B, L), "cpu"), plain, atol=1e-5, rtol=1e-5)


def test_flash_attention_is_refused():
    model = _model()
    model.config._attn_implementation = "flash_attention_2"
    b = _disjoint_batch()
    with pytest.raises(ValueError, match="sdpa, eager or flex_attention; the model uses "
                                         "'flash_attention_2'"):
        prefix_token_logprobs(model, b.input_ids, b.attention_mask, b.loss_mask)


# -- TorchLearner with learner.prefix_sharing ------------------------------------------------------

def _learner_batch() -> Batch:
    b = _tree_batch(seed=2)
    g = torch.Generator().manual_seed(4)
    b.advantages = torch.randn(len(b), generator=g)[:, None] * b.loss_mask
    b.old_logprobs = -torch.rand(b.input_ids.shape, generator=g) * b.loss_mask
    return b


def _learner(share: bool, lora: bool = False, gc: bool = False, **kw):
    from rl.learner.torch import LearnerConfig, LoraConfig, TorchLearner

    cfg = LearnerConfig(micro_batch_size=2, autocast="fp32", gradient_checkpointing=gc,
                        prefix_sharing=share, lora=LoraConfig(enabled=lora, r=4, alpha=8), **kw)
    learner = TorchLearner(_model(), cfg)
    learner.optimizer.step = lambda *a, **k: None  # type: ignore[method-assign]
    learner.scheduler.step = lambda *a, **k: None  # type: ignore[method-assign]
    return learner


@pytest.mark.parametrize("lora,gc", [(False, False), (True, False), (False, True), (True, True)])
def test_learner_update_gradients_equal_with_prefix_sharing(lora, gc):
    from rl.learner.torch import LossConfig

    b = _learner_batch()
    grads, metrics = [], []
    for share in (False, True):
        learner = _learner(share, lora, gc)
        metrics.append(learner.update(b, LossConfig(kl_coef=0.0)))
        grads.append({n: p.grad.clone() for n, p in learner.model.named_parameters()
                      if p.requires_grad and p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert any(float(g.abs().sum()) > 0 for g in grads[0].values())
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4, msg=n)
    for k in ("actor/pg_loss", "grad_norm"):
        if k in metrics[0]:
            assert metrics[1][k] == pytest.approx(metrics[0][k], rel=1e-4, abs=1e-6)


def test_learner_old_logprobs_and_sft_equal_with_prefix_sharing():
    b = _learner_batch()
    plain, shared = _learner(False), _learner(True)
    torch.testing.assert_close(shared.compute_logprobs(b, 0.9), plain.compute_logprobs(b, 0.9),
                               atol=1e-5, rtol=1e-5)
    # (sft/nll is a row-weighted mean of per-micro-batch means: it depends on the grouping)
    m0, m1 = plain.sft_update(b), shared.sft_update(b)
    assert m0["grad_norm"] > 0
    assert m1["grad_norm"] == pytest.approx(m0["grad_norm"], rel=1e-4)


def test_trainer_step_with_prefix_sharing_and_tree_credit(tmp_path, tiny_model_dir):
    """Through the real trainer (multi-turn guessing game, tiny Llama): learner.prefix_sharing
    and algorithm.credit=tree train, and a group's rows share their prompt in the packed pass.
    A test episode reward (share of even token ids) gives the random model a signal."""
    from rewards.compose import register_reward, registered_rewards
    from rl.config import load_config, to_dataclass
    from rl.learner.prefix import build_plan
    from rl.trainer import Trainer

    if "even_tokens_prefix_test" not in registered_rewards():
        @register_reward("even_tokens_prefix_test")
        def _even(traj):
            ids = [t for u in traj.turns for t in traj.token_ids[u.start:u.end]]
            return sum(t % 2 == 0 for t in ids) / max(len(ids), 1)

    overrides = [
        "env=guess", f"model.name={tiny_model_dir}", "engine=hf", f"trainer.run_dir={tmp_path}",
        "trainer.steps=1", "trainer.tasks_per_step=2", "algorithm.group_size=3",
        "tasks.train_size=4", "tasks.eval_size=2", "sft.enabled=false",
        "eval.compare_stages=false", "rollout.max_turns=2", "rollout.max_tokens_per_turn=6",
        "learner.autocast=fp32", "learner.lr=1e-3", "learner.micro_batch_size=2",
        "learner.prefix_sharing=true", "algorithm.credit=tree", "trainer.num_threads=1",
        "trainer.wandb=disabled", "trainer.samples_to_log=0",
        "++algorithm.reward_weights={even_tokens_prefix_test: 1.0}",
    ]
    t = Trainer(to_dataclass(load_config(overrides)), tmp_path)
    assert t.learner.cfg.prefix_sharing
    trajs = t.rollout(0)
    t.core.score(trajs)
    adv, _ = t.core.assign_credit(trajs)
    batch = t.core.make_batch(trajs, adv)
    assert batch is not None
    plan = build_plan(batch.input_ids, batch.attention_mask)
    assert plan.packed_tokens < int(batch.attention_mask.sum())  # prompts computed once
    before = {n: p.detach().clone() for n, p in t.learner.model.named_parameters()}
    _, metrics, _ = t.train_step(1)
    assert metrics["update/trained_seqs"] > 0
    assert any(not torch.equal(before[n], p) for n, p in t.learner.model.named_parameters())


def test_rows_without_loss_tokens_still_run_the_forward():
    """A micro-batch with no loss token still puts every parameter in the graph (zero gradient),
    as the plain pass does: backward works, and DeepSpeed's per-pass collectives match."""
    model = _model()
    b = _disjoint_batch()
    b.loss_mask.zero_()
    lp = prefix_token_logprobs(model, b.input_ids, b.attention_mask, b.loss_mask)
    assert lp.requires_grad and torch.all(lp == 0)
    lp.sum().backward()
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in model.parameters())


@pytest.mark.parametrize("max_len", [None, 30])
def test_flex_block_mask_encodes_the_tree_mask(max_len):
    """The flex-attention path's mask (ancestors = ``kv <= q <= subtree_end[kv]``), evaluated
    densely on CPU, is exactly the dense tree mask (padding included). The fused CUDA kernel
    itself is not run here."""
    from torch.nn.attention.flex_attention import create_mask

    from rl.learner.prefix import flex_block_mask

    b = _tree_batch(seed=5)
    plan = build_plan(b.input_ids, b.attention_mask, max_len=max_len)
    G, P = plan.input_ids.shape
    end = plan.subtree_end
    q = torch.arange(P)[:, None]
    kv = torch.arange(P)[None, :]
    dense = (kv <= q) & (q <= end[:, None, :])  # (G, P, P)
    assert torch.equal(dense, plan.tree_mask)
    block = flex_block_mask(plan)
    assert tuple(block.shape) == (G, 1, P, P)
    tree = block.mask_mod
    got = create_mask(tree, G, 1, P, P, device="cpu")[:, 0]
    assert torch.equal(got, plan.tree_mask)
