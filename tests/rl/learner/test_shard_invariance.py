"""Data-parallel shards give the full batch's loss and gradient, in every aggregation mode.

Two DeepSpeed ranks (ZeRO-2 and ZeRO-3, gloo) each take an uneven share of one fixed batch
(5 rows = 3 micro-batches vs 2 rows = 1 micro-batch, one row without loss tokens); the loss the
learner reports and the reduced gradient it hands the optimizer must equal a plain full-batch
forward/backward in one process. Tolerance: fp32 with a different summation order, so
``atol=1e-6, rtol=1e-4`` on gradients whose entries reach ~1.
"""

from __future__ import annotations

import pytest
import torch
from ds_worker import ROWS, SHARD, make_batch

from rl.algos import AGGREGATIONS, LossNorm, policy_loss, sft_loss
from rl.learner.torch import token_logprobs

MODES = [*AGGREGATIONS.names(), "sft"]


@pytest.fixture(scope="module")
def reference(tiny_model_dir) -> dict[str, tuple[float, dict[str, torch.Tensor]]]:
    """Full-batch loss and gradient per mode, one process, no DeepSpeed."""
    from transformers import AutoModelForCausalLM

    full = make_batch(list(range(len(ROWS))))
    out = {}
    for mode in MODES:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        lp = token_logprobs(model, full.input_ids, full.attention_mask, full.loss_mask)
        norm = LossNorm.from_mask(full.loss_mask, float(full.input_ids.shape[1]))
        if mode == "sft":
            loss, _ = sft_loss(lp, full.loss_mask, norm=norm)
        else:
            loss, _ = policy_loss(lp, lp.detach(), full.advantages, full.loss_mask, agg=mode,
                                  norm=norm)
        loss.backward()
        out[mode] = (float(loss), {n: p.grad.clone() for n, p in model.named_parameters()})
    return out


def _assert_matches(ranks: list[dict], reference, mode: str) -> None:
    ref_loss, ref_grads = reference[mode]
    for r in ranks:
        got = r["modes"][mode]
        assert got["loss"] == pytest.approx(ref_loss, rel=1e-5, abs=1e-6), mode
        assert set(got["grads"]) == set(ref_grads)
        for name, g in ref_grads.items():
            torch.testing.assert_close(got["grads"][name], g, atol=1e-6, rtol=1e-4,
                                       msg=lambda m, n=name: f"{mode} {n}: {m}")


def test_shards_really_differ():
    """The shards are uneven, so local normalisers would be wrong (the test can fail)."""
    a, b = (make_batch(rows) for rows in SHARD[2])
    assert a.loss_mask.sum() != b.loss_mask.sum() and a.input_ids.shape[1] != b.input_ids.shape[1]
    full = LossNorm.from_mask(make_batch(SHARD[1][0]).loss_mask)
    assert full.num_seqs == len(ROWS) - 1  # the row without loss tokens is not a sequence


@pytest.mark.parametrize("mode", MODES)
def test_zero2_two_shards_equal_full_batch(ds_run, reference, mode):
    _assert_matches(ds_run("shard,train", 2), reference, mode)


@pytest.mark.parametrize("mode", MODES)
def test_zero3_two_shards_equal_full_batch(ds_run, reference, mode):
    _assert_matches(ds_run("shard,train", 3), reference, mode)


def test_single_rank_deepspeed_equals_full_batch(ds_run, reference):
    """World size 1: DeepSpeed on one rank (the benchmark's baseline) gives the same numbers."""
    ranks = ds_run("shard,train", 2, world=1)
    for mode in MODES:
        _assert_matches(ranks, reference, mode)


def test_local_normalisers_would_break_invariance(tiny_model_dir):
    """Control: averaging per-shard token-means (what a naive DP loss does) is not the
    full-batch gradient on these shards, so the tests above can detect a missing all-reduce."""
    from transformers import AutoModelForCausalLM

    def grad(rows, norm):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        b = make_batch(rows)
        lp = token_logprobs(model, b.input_ids, b.attention_mask, b.loss_mask)
        loss, _ = policy_loss(lp, lp.detach(), b.advantages, b.loss_mask, norm=norm)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    full = grad(SHARD[1][0], None)
    naive = sum(grad(rows, None) for rows in SHARD[2]) / 2
    glob = LossNorm.from_mask(make_batch(SHARD[1][0]).loss_mask)
    summed = sum(grad(rows, glob) for rows in SHARD[2])
    torch.testing.assert_close(summed, full, atol=1e-6, rtol=1e-4)
    assert (naive - full).abs().max() > 1e-3 * full.abs().max()
