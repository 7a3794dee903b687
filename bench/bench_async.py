"""Sync vs async Ray pipeline on the math tool task: steps/s, busy fractions, weight broadcast.

One Ray instance and one set of actors (a learner and one rollout worker with the vLLM engine,
SmolLM2-135M, one CPU and one torch thread each) serve every run; runs alternate sync, async,
sync, async... so machine load drifts hit both modes alike. Steps/s counts steady state: the
first step of each run (pipeline fill) is left out.

    .venv/bin/python bench/bench_async.py --repeats 2 --steps 5
    .venv/bin/python bench/bench_async.py --engine hf --model <folder>   # without vLLM
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def config(args, mode: str, run_dir: Path):
    from rl.config import load_config, to_dataclass

    overrides = [
        "launcher=ray", f"launcher.mode={mode}", f"launcher.max_staleness={args.staleness}",
        f"rollout={args.engine}", f"model.name={args.model}", f"trainer.run_dir={run_dir}",
        "sft.enabled=false", "eval.compare_stages=false", "trainer.wandb=disabled",
        f"trainer.steps={args.steps}", f"trainer.tasks_per_step={args.tasks}",
        f"algorithm.group_size={args.group}", f"rollout.max_tokens_per_turn={args.max_tokens}",
        # the base model rarely succeeds: keep every group so the learner works every step
        "algorithm.drop_uniform_groups=false", "tasks.train_size=256", "tasks.eval_size=2",
        f"vllm.kv_cache_space_gb={args.kv_gb}", "launcher.threads_per_actor=1",
        "launcher.cpus_per_rollout_worker=1", "launcher.cpus_per_learner=1",
        *args.overrides,
    ]
    return to_dataclass(load_config(overrides))


def one_run(args, pool, mode: str) -> dict[str, float]:
    from rl.distributed.controller import RayController

    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-async-{mode}-"))
    ctl = RayController(config(args, mode, run_dir), run_dir, pool=pool)
    ctl.fit()
    h = ctl.history
    steady = (len(h) - 1) / (h[-1]["dist/elapsed_s"] - h[0]["dist/elapsed_s"])
    loads = [r["dist/weights_load_s"] for r in h if "dist/weights_load_s" in r]
    return {
        "steps_per_s": steady,
        "step_s": 1.0 / steady,
        "rollout_busy": h[-1]["dist/rollout_busy_frac"],
        "learner_busy": h[-1]["dist/learner_busy_frac"],
        "staleness_mean": statistics.mean(r["dist/staleness_mean"] for r in h),
        "publish_s": statistics.median(r["dist/weights_publish_s"] for r in h),
        "load_s": statistics.median(loads) if loads else float("nan"),
        "rollout_wait_s": statistics.mean(r["time/rollout_wait"] for r in h[1:]),
        "update_s": statistics.mean(r["time/update"] for r in h[1:]),
        "tis_weight_mean": statistics.mean(r.get("actor/tis_weight_mean", float("nan"))
                                           for r in h),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="vllm")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--staleness", type=int, default=1)
    p.add_argument("--kv-gb", type=float, default=1.0)
    p.add_argument("--json", default="")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = p.parse_args()

    import ray

    from rl.distributed.pool import WorkerPool

    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")  # shared box: see tests
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    pool_dir = Path(tempfile.mkdtemp(prefix="bench-async-pool-"))
    pool = WorkerPool(config(args, "sync", pool_dir), str(pool_dir))
    print(f"actors up in {time.perf_counter() - t0:.1f} s", flush=True)
    rows: dict[str, list[dict[str, float]]] = {"sync": [], "async": []}
    for r in range(args.repeats):
        for mode in ("sync", "async"):
            res = one_run(args, pool, mode)
            rows[mode].append(res)
            print(f"[{mode} #{r}] " + " ".join(f"{k}={v:.3f}" for k, v in res.items()), flush=True)
    pool.shutdown()
    ray.shutdown()

    keys = ["steps_per_s", "step_s", "rollout_busy", "learner_busy", "staleness_mean",
            "publish_s", "load_s", "rollout_wait_s", "update_s", "tis_weight_mean"]
    med = {m: {k: statistics.median(x[k] for x in rows[m]) for k in keys} for m in rows}
    print("\n| mode | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for m in ("sync", "async"):
        print(f"| {m} | " + " | ".join(f"{med[m][k]:.3f}" for k in keys) + " |")
    print(f"\nasync / sync steps/s: {med['async']['steps_per_s'] / med['sync']['steps_per_s']:.2f}x"
          f" (median of {args.repeats} alternating runs each)")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": rows, "median": med}, indent=1))


if __name__ == "__main__":
    main()
