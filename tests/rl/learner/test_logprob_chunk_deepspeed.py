"""Chunked LM-head logprobs (``learner.logprob_chunk``) under 2-process DeepSpeed ZeRO-2 / ZeRO-3
(CPU, gloo): the old logprobs, the full (rank-reduced) gradients of both optimizer steps, the
global loss and grad norm and the weights after the update equal the plain pass's (fp32, 1e-5),
for the plain and the prefix-shared pass. Under ZeRO-3 the head's weight is partitioned: its
module hooks gather it for every chunk, in the backward's recompute too. Under ZeRO-2 a KL term
(reference logprobs through the chunked pass) is on.

The batch and shards are test_prefix_deepspeed.py's. This file is also the per-rank worker:
``python test_logprob_chunk_deepspeed.py <out_dir> <stage>`` with RANK / WORLD_SIZE /
MASTER_ADDR / MASTER_PORT set (``_launch`` does that).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

WORLD = 2
CHUNK = 3
VARIANTS = [("plain", False, 0), ("chunked", False, CHUNK), ("shared, chunked", True, CHUNK)]


def _run(stage: int, share: bool, chunk: int, rank: int) -> dict:
    from ds_worker import capture_grads
    from test_prefix import _model
    from test_prefix_deepspeed import _shards

    from rl.learner import make_learner
    from rl.learner.prefix import select_rows
    from rl.learner.torch import DeepSpeedConfig, LearnerConfig, LossConfig

    cfg = LearnerConfig(backend="deepspeed", lr=1e-2, grad_clip=0.0, micro_batch_size=2,
                        mini_batches=2, autocast="fp32", prefix_sharing=share,
                        logprob_chunk=chunk,
                        deepspeed=DeepSpeedConfig(zero_stage=stage, bf16="off"))
    learner = make_learner(_model(), cfg)  # seeded: the same weights on every rank and run
    for group in learner.optimizer.param_groups:  # an Adam step linear in the gradient (a
        group["eps"] = 1.0  # near-zero gradient's sign cannot flip a whole lr step)
    full, rows = _shards()
    shard = select_rows(full, rows[rank])
    kl = 0.05 if stage != 3 else 0.0  # ZeRO-3 refuses the reference snapshot
    if kl:
        learner.snapshot_reference()
    grads: list = []
    capture_grads(learner, grads)
    out = {"logprobs": learner.compute_logprobs(shard, 0.9)}
    out["metrics"] = learner.update(shard, LossConfig(kl_coef=kl), temperature=0.9)
    out["grads"] = grads
    out["weights"] = {n: t.detach().float().clone() for n, t in learner.named_weights()}
    return out


def main() -> None:
    out_dir, stage = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    from rl.learner import dist

    rank = int(os.environ["RANK"])
    res = {}
    for name, share, chunk in VARIANTS:
        res[name] = _run(stage, share, chunk, rank)
        print(f"[rank {rank}] {name}: done", flush=True)  # progress, in the rank's log
    dist.barrier()
    torch.save(res, out_dir / f"rank{rank}.pt")


@pytest.mark.parametrize("stage", [2, 3])
def test_chunked_logprobs_equal_plain_pass_under_two_process_zero(stage, tmp_path):
    pytest.importorskip("deepspeed")
    from ds_worker import assert_same_update, launch_ranks
    from test_prefix_deepspeed import _shards

    from rl.learner.prefix import select_rows

    full, rows = _shards()
    for r in rows:  # every shard's micro-batches score more tokens than one chunk
        assert int(select_rows(full, r).loss_mask[:2, 1:].sum()) > CHUNK
    ranks = launch_ranks(Path(__file__), [str(tmp_path), str(stage)], tmp_path, WORLD, 400)
    for rank, res in enumerate(ranks):
        plain = res["plain"]
        for name, *_ in VARIANTS[1:]:
            other = res[name]
            torch.testing.assert_close(other["logprobs"], plain["logprobs"], atol=1e-5,
                                       rtol=1e-5)
            assert_same_update(plain, other, f"rank {rank} {name}")
        if stage == 2:
            assert plain["metrics"]["actor/kl"] > 0  # the second step moved off the reference


if __name__ == "__main__":
    main()
