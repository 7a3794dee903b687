"""Learner update throughput: torch in one process vs DeepSpeed ZeRO-2 / ZeRO-3 on 2 processes.

    .venv/bin/python bench/bench_learner.py [--rows 8] [--length 128] [--steps 2] [--rounds 2]

SmolLM2-135M-Instruct (the embedded default), one fixed synthetic RL batch (random token ids,
a quarter of each row prompt, advantages +-1), fp32, micro-batch 4, AdamW, clipping 1.0. The
data-parallel runs split the same rows over the ranks (rl.learner.dist.shard). Each row of the
table runs in its own processes; rows alternate in rounds and the median tokens/s is reported.
Tokens are all attention-mask tokens of the batch (like the trainer's perf/update_tokens_per_s).
Threads: the whole machine per row, i.e. ``--cores`` threads for one process and
``--cores / 2`` per rank for two.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROWS = [  # (label, backend, zero stage, processes)
    ("torch, 1 process", "torch", 0, 1),
    ("DeepSpeed ZeRO-2, 1 process", "deepspeed", 2, 1),
    ("DeepSpeed ZeRO-2, 2 processes", "deepspeed", 2, 2),
    ("DeepSpeed ZeRO-3, 2 processes", "deepspeed", 3, 2),
]


def make_batch(rows: int, length: int):
    from rl.types import Batch, Task, Trajectory

    g = torch.Generator().manual_seed(0)
    trajs = []
    for i in range(rows):
        ids = torch.randint(100, 40000, (length,), generator=g).tolist()
        prompt = length // 4
        trajs.append(Trajectory(Task(str(i), ""), ids, [0] * prompt + [1] * (length - prompt),
                                [0.0] * length, prompt))
    adv = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(rows)])
    return Batch.from_trajectories(trajs, adv, pad_id=0)


def worker(args) -> None:
    """One rank: ``args.steps`` timed updates after one warm-up; rank 0 prints a JSON line."""
    torch.set_num_threads(args.threads)
    from rl.learner import dist, make_learner
    from rl.learner.torch import DeepSpeedConfig, LearnerConfig, LossConfig
    from rl.models import load_model

    cfg = LearnerConfig(backend=args.backend, lr=1e-6, micro_batch_size=args.micro,
                        autocast="fp32", deepspeed=DeepSpeedConfig(zero_stage=max(args.stage, 1),
                                                                   bf16="off"))
    learner = make_learner(load_model("smollm2-135m-instruct"), cfg)
    full = make_batch(args.rows, args.length)
    mine = dist.shard(list(range(args.rows)))  # this rank's contiguous rows
    batch = full.split(len(mine))[mine[0] // len(mine)] if dist.world_size() > 1 else full
    assert len(batch) == len(mine)
    learner.update(batch, LossConfig())  # warm-up (allocations, DeepSpeed buckets)
    times = []
    for _ in range(args.steps):
        dist.barrier()
        t0 = time.perf_counter()
        learner.update(batch, LossConfig())
        dist.barrier()
        times.append(time.perf_counter() - t0)
    if dist.is_main():
        tokens = float(full.attention_mask.sum())
        print("RESULT " + json.dumps({"tokens": tokens, "seconds": statistics.median(times)}),
              flush=True)


def run_row(backend: str, stage: int, procs: int, args) -> float:
    """Launch one table row in fresh processes; its tokens/s."""
    from rl.learner.dist import free_port

    repo = Path(__file__).resolve().parent.parent
    threads = max(args.cores // procs, 1)
    cmd = [sys.executable, __file__, "--worker", "--backend", backend, "--stage", str(stage),
           "--rows", str(args.rows), "--length", str(args.length), "--steps", str(args.steps),
           "--micro", str(args.micro), "--threads", str(threads)]
    env = {**os.environ, "WORLD_SIZE": str(procs), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(repo)}
    ps = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for r in range(procs)]
    outs = [p.communicate()[0] for p in ps]
    if any(p.returncode for p in ps):
        raise SystemExit(f"{backend} z{stage} x{procs} failed:\n" + outs[0][-3000:])
    line = next(ln for ln in outs[0].splitlines() if ln.startswith("RESULT "))
    r = json.loads(line.removeprefix("RESULT "))
    return r["tokens"] / r["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--stage", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.rows % 2:
        raise SystemExit("--rows must be even (the 2-process rows split the batch in halves)")
    if args.worker:
        worker(args)
        return
    results: dict[str, list[float]] = {label: [] for label, *_ in ROWS}
    for r in range(args.rounds):
        for label, backend, stage, procs in ROWS:
            results[label].append(run_row(backend, stage, procs, args))
            print(f"round {r}: {label}: {results[label][-1]:.0f} tokens/s", flush=True)
    base = statistics.median(results[ROWS[0][0]])
    print(f"\nSmolLM2-135M, {args.rows} rows x {args.length} tokens, fp32, micro-batch "
          f"{args.micro}, {args.cores} cores, median of {args.rounds} rounds x {args.steps} "
          "updates")
    print("| learner | update tokens/s | vs torch |\n|---|---|---|")
    for label, *_ in ROWS:
        v = statistics.median(results[label])
        print(f"| {label} | {v:.0f} | {v / base:.2f}x |")


if __name__ == "__main__":
    main()
