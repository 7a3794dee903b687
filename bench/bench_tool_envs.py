"""Step latency of env=search, env=sql and env=code (issue 17): reset, tool-call steps and the
final (scoring) step, timed while replaying the demonstrations of held-out tasks (no model: the
env's own cost: parsing, BM25 retrieval, SQLite on a per-episode copy, sandboxed Python in a
persistent session, the unit-test run, close).

    .venv/bin/python bench/bench_tool_envs.py                     # 200 episodes per env
    .venv/bin/python bench/bench_tool_envs.py --episodes 50 --json bench/results/tool_envs.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def measure(name: str, episodes: int) -> dict[str, float]:
    from envs.base import make_env
    from envs.tasks import make_tasks

    env = make_env(name)
    tasks = make_tasks(name, "mixed", "test", episodes, 0)
    times: dict[str, list[float]] = {"reset": [], "tool_step": [], "final_step": [], "close": []}
    await env.reset(tasks[0])  # warm-up: index build, database cache, sandbox workers
    for a in env.demonstration(tasks[0]):  # type: ignore[attr-defined]
        await env.step(a)
    await env.close()
    for task in tasks:
        t0 = time.perf_counter()
        await env.reset(task)
        times["reset"].append(time.perf_counter() - t0)
        for action in env.demonstration(task):  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            res = await env.step(action)
            dt = time.perf_counter() - t0
            times["final_step" if res.terminated or res.truncated else "tool_step"].append(dt)
            if res.terminated or res.truncated:
                assert res.success, f"{name}: demonstration of {task.id} failed"
                break
        t0 = time.perf_counter()
        await env.close()
        times["close"].append(time.perf_counter() - t0)
    out: dict[str, float] = {"episodes": float(len(tasks))}
    for k, xs in times.items():
        out[f"{k}_median_ms"] = 1000 * statistics.median(xs)
        out[f"{k}_p99_ms"] = 1000 * quantile(xs, 0.99)
        out[f"{k}_n"] = float(len(xs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envs", default="search,sql,code")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, load "
                          f"{os.getloadavg()[0]:.1f} at start", "envs": {}}
    for name in args.envs.split(","):
        r = asyncio.run(measure(name, args.episodes))
        results["envs"][name] = r  # type: ignore[index]
        print(f"{name:7s} episodes={int(r['episodes'])} " + " ".join(
            f"{k}={r[f'{k}_median_ms']:.1f}/{r[f'{k}_p99_ms']:.1f}ms"
            for k in ("reset", "tool_step", "final_step", "close")), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
