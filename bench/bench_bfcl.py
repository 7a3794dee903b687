"""BFCL env step latency per category: reset and step times while replaying the demonstrations
(ground truth) of every entry of each category (no model: the env's own cost, i.e. parsing,
API execution, the end-of-turn ground-truth run and checks).

    .venv/bin/python bench/bench_bfcl.py                       # the default categories
    .venv/bin/python bench/bench_bfcl.py --categories multi_turn_base --json out.json

``--eval N`` instead evaluates the default model greedily (rl.evaluate.evaluate_tasks, the
harness of ``turnrl eval``, loaded once for all categories) on N test entries per category:

    .venv/bin/python bench/bench_bfcl.py --eval 8 --categories simple_python parallel \
        --overrides rollout.max_tokens_per_turn=128 --json bench/results/bfcl_base.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

DEFAULT = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance",
           "multi_turn_base", "multi_turn_long_context", "multi_turn_miss_func",
           "multi_turn_miss_param"]


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def measure(category: str) -> dict[str, float]:
    from envs.tasks.bfcl import BFCLEnv
    from envs.tasks.bfcl_data import make_tasks

    resets, steps, turn_ends = [], [], []
    for t in make_tasks(category, "test", 10_000, test_percent=100):
        env = BFCLEnv()
        actions = env.demonstration(t)
        t0 = time.perf_counter()
        await env.reset(t)
        resets.append(time.perf_counter() - t0)
        for a in actions:
            t0 = time.perf_counter()
            res = await env.step(a)
            dt = time.perf_counter() - t0
            steps.append(dt)
            if "turn" in res.info:
                turn_ends.append(dt)
            if res.terminated or res.truncated:
                break
    ms = 1000.0
    out = {"entries": len(resets), "steps": len(steps),
           "reset_median_ms": statistics.median(resets) * ms,
           "reset_p99_ms": quantile(resets, 0.99) * ms,
           "step_median_ms": statistics.median(steps) * ms,
           "step_p99_ms": quantile(steps, 0.99) * ms}
    if turn_ends:
        out["turn_end_step_median_ms"] = statistics.median(turn_ends) * ms
        out["turn_end_step_p99_ms"] = quantile(turn_ends, 0.99) * ms
    return out


def evaluate(categories: list[str], n: int, overrides: list[str]) -> dict[str, dict]:
    import torch

    from rl.build import build_parts
    from rl.config import load_config, to_dataclass
    from rl.evaluate import evaluate_tasks
    from rl.models import load_policy

    torch.set_num_threads(1)
    policy, results = None, {}
    for c in categories:
        # engine=hf (before --overrides, which may change it): one engine per category, and
        # the HF one is the loaded policy itself, where engine=auto could start vLLM each time
        cfg = to_dataclass(load_config(["env=bfcl", f"tasks.source={c}", f"tasks.eval_size={n}",
                                        "trainer.wandb=disabled", "engine=hf", *overrides]))
        if policy is None:
            policy = load_policy(cfg, None)
            policy.eval()
        parts = build_parts(cfg, model=policy)
        t0 = time.perf_counter()
        res = evaluate_tasks(cfg, parts, parts.make_engine(policy), parts.eval_tasks)
        js = res.to_json()
        results[c] = {"seconds": round(time.perf_counter() - t0, 1), **js}
        print(f"## {c} ({results[c]['seconds']} s)\n{res.table()}", flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--categories", nargs="*", default=DEFAULT)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--eval", type=int, default=0, metavar="N",
                   help="evaluate the model on N test entries per category instead")
    p.add_argument("--overrides", nargs="*", default=[], help="config overrides for --eval")
    args = p.parse_args()
    if args.eval:
        out = evaluate(args.categories, args.eval, args.overrides)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1, default=str)
        return
    results = {}
    for c in args.categories:
        results[c] = r = asyncio.run(measure(c))
        print(f"{c:26s} entries={r['entries']:4d} steps={r['steps']:5d} "
              f"step median {r['step_median_ms']:.3f} ms p99 {r['step_p99_ms']:.3f} ms | "
              f"reset median {r['reset_median_ms']:.3f} ms p99 {r['reset_p99_ms']:.3f} ms",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
