"""Learner update throughput: torch in one process vs DeepSpeed ZeRO-2 / ZeRO-3 on 2 processes;
with ``--mode chunk``, peak memory and speed of chunked LM-head logprobs (``learner.logprob_chunk``).

    .venv/bin/python bench/bench_learner.py [--rows 8] [--length 128] [--steps 2] [--rounds 2]
    .venv/bin/python bench/bench_learner.py --mode chunk [--shapes train=32x232:150,long=8x1536:384]
        [--chunks 0,1024] [--autocasts fp32,bf16] [--model smollm2-135m-instruct] [--steps 2]
    # a quick run with a tiny random model (SmolLM2's vocabulary, 2 layers of width 64):
    .venv/bin/python bench/bench_learner.py --mode chunk --model tiny --shapes long=2x512:128 \
        --chunks 0,128 --autocasts fp32 --steps 1

``--mode chunk``: one torch-learner RL update (defaults: micro-batch 8, AdamW, no LoRA, no prefix
sharing) per table row, each row in a fresh process after one warm-up update, on synthetic rows
``RxL:P`` (R rows of L random tokens, the first P of each a prompt without loss; the default
``train`` is ``make train``'s update batch: 32 rows, the longest 232 tokens, ~150 before the first
model token; ``long`` is 8 multi-turn rows of 1.5k tokens). Columns: loss tokens per micro-batch
(what the LM head scores), the process's peak RSS during the updates (VmHWM, reset just before
the warm-up via /proc/self/clear_refs) and its growth over the RSS before them, update tokens/s
(attention-mask tokens, median over ``--steps``) and the grad norm (the same for every chunk size
of one shape and autocast: chunking does not change the numbers). The workers run with
``MALLOC_MMAP_THRESHOLD_=1048576`` unless the environment sets it: glibc otherwise raises its
mmap threshold after the first large free and keeps later freed tensors in its heap, so RSS
would report allocator caching instead of the tensors alive at the peak (measured with the tiny
model on 2 x 512 tokens: the plain pass's backward peak +400 MB with it, and the chunked pass's
+86 MB; without it the chunked pass's RSS crept up across repeats and its first peak read +290 MB).

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


def parse_shapes(spec: str) -> list[tuple[str, int, int, int]]:
    """``name=RxL:P,...`` -> ``(name, rows, length, prompt)``."""
    out = []
    for item in spec.split(","):
        name, _, dims = item.partition("=")
        rl, _, prompt = dims.partition(":")
        r, _, length = rl.partition("x")
        out.append((name, int(r), int(length), int(prompt or int(length) // 4)))
    return out


def shaped_batch(rows: int, length: int, prompt: int, vocab: int):
    """Rows of ``length`` random ids below ``vocab``, the first ``prompt`` tokens without loss;
    the rows' lengths spread over [length - length // 8, length] like a real batch's."""
    from rl.types import Batch, Task, Trajectory

    g = torch.Generator().manual_seed(0)
    trajs = []
    for i in range(rows):
        n = length - (length // 8) * i // max(rows - 1, 1)
        ids = torch.randint(100, vocab, (n,), generator=g).tolist()
        trajs.append(Trajectory(Task(str(i), ""), ids, [0] * prompt + [1] * (n - prompt),
                                [0.0] * n, prompt))
    adv = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(rows)])
    return Batch.from_trajectories(trajs, adv, pad_id=0)


def _proc_status(key: str) -> float:
    """A /proc/self/status memory field in MB (0 where unreadable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tiny_model():
    """A random 2-layer Llama of width 64 with SmolLM2's vocabulary (49,152, tied head): the
    LM head's logits dominate its memory, as they do for the 135M model on long rows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=4096, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).float()


def chunk_worker(args) -> None:
    """One ``--mode chunk`` table row in this process: prints a RESULT JSON line."""
    torch.set_num_threads(args.threads)
    from rl.learner.torch import LearnerConfig, LossConfig, TorchLearner
    from rl.models import load_model

    (_, rows, length, prompt), = parse_shapes(args.shape)
    model = tiny_model() if args.model == "tiny" else load_model(args.model)
    cfg = LearnerConfig(lr=1e-6, micro_batch_size=args.micro, autocast=args.autocast,
                        logprob_chunk=args.logprob_chunk)
    learner = TorchLearner(model, cfg)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    batch = shaped_batch(rows, length, prompt, vocab)
    scored = [int(mb.loss_mask[:, 1:].sum()) for mb in batch.split(args.micro)]
    try:  # peak RSS from here on: "5" resets VmHWM to the current RSS (Linux)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    start = _proc_status("VmRSS")
    learner.update(batch, LossConfig())  # warm-up (allocator, kernels)
    times, grad_norm = [], 0.0
    for _ in range(args.steps):
        t0 = time.perf_counter()
        m = learner.update(batch, LossConfig())
        times.append(time.perf_counter() - t0)
        grad_norm = m["grad_norm"]
    print("RESULT " + json.dumps({
        "tokens": float(batch.attention_mask.sum()), "seconds": statistics.median(times),
        "start_rss_mb": start, "peak_rss_mb": _proc_status("VmHWM"),
        "scored_per_micro_batch": max(scored), "grad_norm": grad_norm}), flush=True)


def run_chunk_table(args) -> None:
    """``--mode chunk``: every (shape, autocast, logprob_chunk) row in its own process."""
    repo = Path(__file__).resolve().parent.parent
    shapes = parse_shapes(args.shapes)
    chunks = [int(c) for c in args.chunks.split(",")]
    autocasts = args.autocasts.split(",")
    env = {"MALLOC_MMAP_THRESHOLD_": "1048576", **os.environ, "OMP_NUM_THREADS": str(args.cores),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(repo)}
    table = []
    for name, rows, length, prompt in shapes:
        for ac in autocasts:
            for c in chunks:
                cmd = [sys.executable, __file__, "--chunk-worker", "--shape",
                       f"{name}={rows}x{length}:{prompt}", "--logprob-chunk", str(c),
                       "--autocast", ac, "--model", args.model, "--steps", str(args.steps),
                       "--micro", str(args.micro), "--threads", str(args.cores)]
                p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
                if p.returncode:
                    raise SystemExit(f"{name} {ac} chunk {c} failed:\n{p.stdout[-3000:]}")
                line = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))
                r = json.loads(line.removeprefix("RESULT "))
                table.append((f"{name} {rows}x{length}", ac, c, r))
                print(f"{name} {ac} logprob_chunk={c}: peak RSS {r['peak_rss_mb']:.0f} MB, "
                      f"{r['tokens'] / r['seconds']:.0f} tokens/s", flush=True)
    print(f"\n{args.model}, torch learner, micro-batch {args.micro}, {args.cores} threads, one "
          f"process per row, median of {args.steps} updates after a warm-up, "
          f"MALLOC_MMAP_THRESHOLD_={env['MALLOC_MMAP_THRESHOLD_']}")
    print("| batch | autocast | logprob_chunk | scored tokens / micro-batch | peak RSS MB | "
          "growth in updates MB | update tokens/s | grad norm |")
    print("|---|---|---|---|---|---|---|---|")
    for shape, ac, c, r in table:
        print(f"| {shape} | {ac} | {c or 'plain (0)'} | {r['scored_per_micro_batch']} | "
              f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['start_rss_mb']:.0f} | "
              f"{r['tokens'] / r['seconds']:.0f} | {r['grad_norm']:.4f} |")


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
    ap.add_argument("--mode", choices=("backends", "chunk"), default="backends")
    ap.add_argument("--shapes", default="train=32x232:150,long=8x1536:384",
                    help="--mode chunk: name=RxL:P batches (R rows, L tokens, P prompt tokens)")
    ap.add_argument("--chunks", default="0,1024", help="--mode chunk: learner.logprob_chunk "
                    "values (0 = the plain pass)")
    ap.add_argument("--autocasts", default="fp32,bf16", help="--mode chunk: learner.autocast")
    ap.add_argument("--model", default="smollm2-135m-instruct",
                    help="--mode chunk: a model name or path, or 'tiny'")
    ap.add_argument("--chunk-worker", action="store_true")
    ap.add_argument("--shape", default="")
    ap.add_argument("--logprob-chunk", type=int, default=0)
    ap.add_argument("--autocast", default="fp32")
    args = ap.parse_args()
    if args.chunk_worker:
        chunk_worker(args)
        return
    if args.mode == "chunk":
        if args.micro == 4 and "--micro" not in sys.argv:
            args.micro = 8  # the learner's default micro-batch (make train's)
        run_chunk_table(args)
        return
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
