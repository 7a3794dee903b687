"""Prefix-shared learner pass under 2-process DeepSpeed ZeRO-2 / ZeRO-3 (CPU, gloo): with
``learner.prefix_sharing`` the old logprobs, the full (rank-reduced) gradients of every optimizer
step, the global loss and grad norm, and the weights after the update equal the plain pass's
(fp32, 1e-5).

The batch is test_prefix.py's tree batch: a group sharing its prompt (one row a prefix of
another, one duplicated), a depth-3 multi-turn tree whose rows share turns, a group of one. Rank 0
gets the prompt group and the lone row, rank 1 the tree (one of its rows without loss tokens), so
the ranks regroup different rows into different numbers of micro-batches (padding micro-batches
on one side). ``mini_batches=2`` recomputes the old logprobs inside the update (the shared pass
there too) and makes two optimizer steps; under ZeRO-2 a KL term against the reference snapshot
(reference logprobs through the shared pass) is on.

This file is also the per-rank worker: ``python test_prefix_deepspeed.py <out_dir> <stage>``
with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set (``_launch`` does that).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

WORLD = 2


def _shards():
    """The full batch and each rank's rows (by the first token: 1 = prompt group, 2 = tree,
    3 = the lone row)."""
    from test_prefix import _learner_batch

    b = _learner_batch()
    first = b.input_ids[:, 0].tolist()
    tree = [r for r, t in enumerate(first) if t == 2]
    b.loss_mask[tree[1]] = 0  # a row without loss tokens
    b.advantages = b.advantages * b.loss_mask
    b.old_logprobs = b.old_logprobs * b.loss_mask
    return b, [[r for r, t in enumerate(first) if t in (1, 3)], tree]


def _run(stage: int, share: bool, rank: int, lora_gc: bool = False) -> dict:
    from ds_worker import capture_grads
    from test_prefix import _model

    from rl.learner import make_learner
    from rl.learner.prefix import select_rows
    from rl.learner.torch import DeepSpeedConfig, LearnerConfig, LoraConfig, LossConfig

    cfg = LearnerConfig(backend="deepspeed", lr=1e-2, grad_clip=0.0, micro_batch_size=2,
                        mini_batches=2, autocast="fp32", prefix_sharing=share,
                        lora=LoraConfig(enabled=lora_gc, r=4, alpha=8),
                        gradient_checkpointing=lora_gc,
                        deepspeed=DeepSpeedConfig(zero_stage=stage, bf16="off"))
    learner = make_learner(_model(), cfg)  # seeded: the same weights on every rank and run
    full, rows = _shards()
    shard = select_rows(full, rows[rank])
    kl = 0.05 if stage != 3 else 0.0  # ZeRO-3 refuses the reference snapshot
    if kl:
        learner.snapshot_reference()
    grads: list = []
    capture_grads(learner, grads)
    out = {"logprobs": learner.compute_logprobs(shard, 0.9),
           "splits": [p[0] if p is not None else None for p in learner._split(shard)]}
    out["metrics"] = learner.update(shard, LossConfig(kl_coef=kl), temperature=0.9)
    out["grads"] = grads
    out["weights"] = {n: t.detach().float().clone() for n, t in learner.named_weights()}
    return out


def main() -> None:
    out_dir, stage, lora_gc = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["lora_gc"]
    torch.set_num_threads(1)
    from rl.learner import dist

    rank = int(os.environ["RANK"])
    res = {share: _run(stage, share, rank, lora_gc) for share in (False, True)}
    dist.barrier()
    torch.save(res, out_dir / f"rank{rank}.pt")


def _launch(out_dir: Path, stage: int, lora_gc: bool, timeout: float = 400) -> list[dict]:
    from ds_worker import launch_ranks

    return launch_ranks(Path(__file__), [str(out_dir), str(stage)] + ["lora_gc"] * lora_gc,
                        out_dir, WORLD, timeout)


@pytest.mark.parametrize("stage,lora_gc", [(2, False), (3, False), (3, True)])
def test_prefix_sharing_equals_plain_pass_under_two_process_zero(stage, lora_gc, tmp_path):
    """``lora_gc``: with a LoRA adapter and gradient checkpointing."""
    pytest.importorskip("deepspeed")
    from ds_worker import assert_same_update

    from rl.learner.prefix import build_plan, select_rows

    full, rows = _shards()
    for r in rows:  # each shard really shares prefixes
        sub = select_rows(full, r)
        assert build_plan(sub.input_ids, sub.attention_mask).packed_tokens < int(
            sub.attention_mask.sum())
    ranks = _launch(tmp_path, stage, lora_gc)
    for rank, res in enumerate(ranks):
        plain, shared = res[False], res[True]
        # the shared pass regroups this rank's rows (whole trie groups), the plain pass does not
        assert plain["splits"] != shared["splits"]
        assert sorted(r for s in shared["splits"] if s for r in s) == list(range(len(rows[rank])))
        lp = plain["logprobs"]
        mask = select_rows(full, rows[rank]).loss_mask
        assert lp.shape == mask.shape and (lp[:, 1:] != 0).sum() == mask[:, 1:].sum()
        torch.testing.assert_close(shared["logprobs"], lp, atol=1e-5, rtol=1e-5)
        # full gradients of both optimizer steps (reduced over ranks), global metrics, weights
        assert_same_update(plain, shared, f"rank {rank}")
        if stage == 2:
            assert plain["metrics"]["actor/kl"] > 0  # the second step moved off the reference
    # data parallel: both ranks hold the same weights, and the update moved every one (with
    # LoRA: every adapted projection, merged)
    from test_prefix import _model

    start = dict(_model().named_parameters())
    moved = set()
    for n, w in ranks[0][True]["weights"].items():
        assert torch.equal(w, ranks[1][True]["weights"][n])
        if not torch.equal(w, start[n].detach()):
            moved.add(n)
    expect = {n for n in start if n.endswith("proj.weight")} if lora_gc else set(start)
    assert expect <= moved and expect, sorted(set(start) - moved)
    assert ranks[0][True]["metrics"] == ranks[1][True]["metrics"]


if __name__ == "__main__":
    main()
