"""One rank of a multi-process DeepSpeed learner test (run by tests/rl/learner/test_*.py).

``python ds_worker.py <shard,train> <model_dir> <out_dir> <zero_stage> [lora] [gc]`` with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (``launch`` does that). Each rank writes
``out_dir/rank<r>.pt``.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import torch

ROWS = [  # (length, prompt length): uneven rows so shards differ in tokens and micro-batches
    (12, 4), (9, 3), (14, 6), (7, 2), (11, 5), (10, 4), (13, 3),
]
ADVANTAGES = [1.0, -1.0, 0.5, -0.5, 2.0, -1.5, 0.25]
SHARD = {2: [[0, 1, 2, 3, 4], [5, 6]], 1: [list(range(len(ROWS)))]}
"""Rows per rank: rank 0 gets 5 rows (3 micro-batches of 2), rank 1 gets 2 (1 micro-batch)."""


def make_batch(rows: list[int], seed: int = 0):
    """The rows ``rows`` of one fixed full batch (same ids whichever rank builds them)."""
    from rl.types import Batch, Task, Trajectory

    g = torch.Generator().manual_seed(seed)
    all_ids = [torch.randint(10, 200, (n,), generator=g).tolist() for n, _ in ROWS]
    trajs = []
    for i in rows:
        n, prompt = ROWS[i]
        mask = [0] * prompt + [1] * (n - prompt)
        if i == 3:
            mask = [0] * n  # a row without loss tokens: must not count as a sequence
        trajs.append(Trajectory(Task(str(i), ""), all_ids[i], mask, [0.0] * n, prompt))
    return Batch.from_trajectories(trajs, torch.tensor([ADVANTAGES[i] for i in rows]), pad_id=0)


def checksums(named) -> dict[str, tuple[float, float, bool]]:
    """name -> (sum, sum of squares, all finite) of each full tensor."""
    out = {}
    for name, t in named:
        t = t.detach().float()
        out[name] = (float(t.sum()), float((t * t).sum()), bool(torch.isfinite(t).all()))
    return out


def capture_grads(learner, store: list) -> None:
    """Record every parameter's full (reduced over ranks) gradient when ``engine.step()`` has
    finalised the accumulated gradients, before clipping and the optimizer touch them."""
    from deepspeed.utils import safe_get_full_grad

    zero = learner.engine.optimizer
    orig = zero.finalize_gradient_accumulation_boundary

    def finalize(*a, **k):
        out = orig(*a, **k)
        store.append({n: safe_get_full_grad(p).detach().float().clone()
                      for n, p in learner.model.named_parameters() if p.requires_grad})
        return out

    zero.finalize_gradient_accumulation_boundary = finalize


def assert_same_update(ref: dict, other: dict, label: str) -> None:
    """Two ranks' results of one update (``run_train``-style dicts) agree: the full gradients
    of both optimizer steps (non-zero), ``actor/loss`` and ``grad_norm``, and the weights after.
    (Per-micro-batch metrics such as ``actor/kl`` are row-weighted means over micro-batches, so
    they depend on the grouping; the loss is a sum and includes the KL term.)"""
    import pytest

    assert len(ref["grads"]) == len(other["grads"]) == 2
    for g0, g1 in zip(ref["grads"], other["grads"]):
        assert g0.keys() == g1.keys()
        assert any(float(g.abs().sum()) > 0 for g in g0.values())
        for n in g0:
            torch.testing.assert_close(g1[n], g0[n], atol=1e-5, rtol=1e-4, msg=f"{label} {n}")
    for k in ("actor/loss", "grad_norm"):
        assert other["metrics"][k] == pytest.approx(ref["metrics"][k], rel=1e-4,
                                                    abs=1e-6), (label, k)
    w0, w1 = ref["weights"], other["weights"]
    assert w0.keys() == w1.keys()
    for n in w0:
        torch.testing.assert_close(w1[n], w0[n], atol=1e-5, rtol=1e-5, msg=f"{label} {n}")


def run_shard(learner, world: int, rank: int) -> dict:
    """Loss and full gradient of this rank's shard in every aggregation mode, and for SFT."""
    from rl.algos import AGGREGATIONS
    from rl.learner.torch import LossConfig

    learner.set_lr(0.0)  # the weights never move, so every mode sees the same model
    grads: list = []
    capture_grads(learner, grads)
    modes = {}
    for agg in AGGREGATIONS.names():
        m = learner.update(make_batch(SHARD[world][rank]), LossConfig(agg=agg))
        modes[agg] = {"loss": m["actor/loss"], "grads": grads.pop(), "grad_norm": m["grad_norm"]}
    m = learner.sft_update(make_batch(SHARD[world][rank]))
    modes["sft"] = {"loss": m["sft/loss"], "grads": grads.pop(), "grad_norm": m["grad_norm"]}
    return modes


def run_train(learner, world: int, rank: int, out_dir: Path) -> dict:
    """Train a few steps; save -> move -> load -> the same step again; an empty shard."""
    from rl.learner.torch import LossConfig

    learner.set_lr(1e-2)
    batch = make_batch(SHARD[world][rank])
    out: dict = {"before": checksums(learner.named_weights())}
    out["metrics"] = [learner.update(batch, LossConfig()) for _ in range(2)]
    out["metrics"].append(learner.sft_update(batch))
    out["after"] = checksums(learner.named_weights())
    out["optimizer_steps"] = learner.optimizer_steps
    save_dir = out_dir / "saved"
    learner.save_pretrained(save_dir)
    buf = io.BytesIO()  # through bytes, like a checkpoint (the dict holds live tensors)
    torch.save(learner.state_dict(), buf)
    learner.update(batch, LossConfig())
    out["moved"] = checksums(learner.named_weights())
    learner.load_pretrained(save_dir)
    buf.seek(0)
    learner.load_state_dict(torch.load(buf, weights_only=False))
    out["reloaded"] = checksums(learner.named_weights())
    learner.update(batch, LossConfig())  # same weights, same Adam state: the same step again
    out["moved_again"] = checksums(learner.named_weights())
    out["saved_files"] = sorted(p.name for p in save_dir.iterdir()) if rank == 0 else []
    # a rank without rows still joins the update (the other rank has rows)
    out["empty_shard_metrics"] = learner.update(batch if rank == 0 else None, LossConfig())
    return out


def main() -> None:
    scenarios, model_dir, out_dir, stage = sys.argv[1].split(","), *sys.argv[2:5]
    flags = set(sys.argv[5:])  # "lora", "gc" (gradient checkpointing)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    from rl.learner import dist, make_learner
    from rl.learner.torch import DeepSpeedConfig, LearnerConfig, LoraConfig

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = LearnerConfig(
        backend="deepspeed", lr=1e-2, grad_clip=0.0, micro_batch_size=2, autocast="fp32",
        lora=LoraConfig(enabled="lora" in flags, r=4, alpha=8),
        gradient_checkpointing="gc" in flags,
        deepspeed=DeepSpeedConfig(zero_stage=int(stage), bf16="off"),
    )
    learner = make_learner(model, cfg)
    out: dict = {"rank": rank, "world": world}
    if "shard" in scenarios:
        out["modes"] = run_shard(learner, world, rank)
    if "train" in scenarios:
        out.update(run_train(learner, world, rank, Path(out_dir)))
    dist.barrier()
    torch.save(out, Path(out_dir) / f"rank{rank}.pt")


def launch(scenarios: str, model_dir, out_dir, stage: int, world: int = 2, lora: bool = False,
           timeout: float = 300, gc: bool = False) -> list[dict]:
    """Run this script as ``world`` ranks; every rank's results, in rank order."""
    args = [scenarios, str(model_dir), str(out_dir), str(stage)]
    return launch_ranks(Path(__file__), args + (["lora"] if lora else []) + (["gc"] if gc else []),
                        out_dir, world, timeout)


def launch_ranks(script: Path, args: list[str], out_dir, world: int,
                 timeout: float) -> list[dict]:
    """Run ``script args`` as ``world`` ranks (one process each, gloo, a free port), each
    writing ``out_dir/rank<r>.pt``; their contents in rank order. Raises with the ranks'
    output if one fails."""
    import subprocess

    from rl.learner.dist import free_port

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(Path(script).resolve()), *args]
    procs, logs = [], []
    for r in range(world):
        log = open(out_dir / f"log{r}.txt", "w")  # noqa: SIM115 (closed below)
        logs.append(log)
        procs.append(subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                      stdout=log, stderr=subprocess.STDOUT, cwd=repo))
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    if any(codes):
        tails = "\n".join(f"--- rank {r} (exit {c}) ---\n" +
                          (out_dir / f"log{r}.txt").read_text()[-3000:]
                          for r, c in enumerate(codes))
        raise RuntimeError(f"a rank failed:\n{tails}")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]


if __name__ == "__main__":
    main()
