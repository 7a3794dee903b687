"""RL-recipe benchmark: does GRPO after SFT add, across seeds? Arms x seeds of `turnrl train`,
each arm a set of Hydra overrides, pooled paired gains over the cold-start policy.

    # ablation: every arm resumes from one shared cold-start checkpoint (SFT done once), so arms
    # differ only in RL; seeds change the RL samples (rollout seeds, vLLM seed)
    python bench/bench_recipe.py --start runs/a/checkpoints/step_000000 --seeds 0 1 2 \
        --arm old "learner.lr=2e-5" --arm new "" --out runs/recipe --jobs 2
    # the whole `make train` per seed (base eval, SFT, GRPO, eval): what a new user sees
    python bench/bench_recipe.py --seeds 0 1 2 3 4 --arm default "" --out runs/make_train
    python bench/bench_recipe.py --report --out runs/recipe      # table from finished runs

Each run is one `turnrl train` process writing ``<out>/<arm>_s<seed>/`` (its ``results.json``:
the stage evaluations with per-task success). A rerun skips runs whose results exist.

Statistics (95%): per run the paired gain of the final policy over the start (cold-start SFT)
on the same held-out tasks, Student-t over tasks; pooled over seeds, the t interval of all
seeds' per-task differences together (N = tasks x seeds; the issue's "seed-pooled paired
gain"), and the t interval over the per-seed gains (the unit that carries seed variance: with
3 seeds its interval is wide by construction). Health: from each run's ``metrics.jsonl``, the
last step's KL to the RL-start policy, the mean relative update size and KL per update, the
mean tool-call rate and truncation over the RL steps. Reused: scipy via rl.evaluate.t_interval.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / f"{arm}_s{seed}"


def command(args, arm_overrides: str, seed: int, rdir: Path) -> list[str]:
    cmd = [str(ROOT / ".venv/bin/turnrl"), "train", f"engine={args.engine}",
           f"trainer.run_dir={rdir}", f"trainer.seed={seed}",
           f"trainer.num_threads={args.threads}", "trainer.wandb=disabled"]
    if args.start:
        cmd.append(f"resume={args.start}")
    return cmd + shlex.split(args.common) + shlex.split(arm_overrides)


def launch(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(name, ov, seed) for seed in args.seeds for name, ov in args.arm  # arms alternate
            if not (run_dir(out, name, seed) / "results.json").exists()]
    running: list[tuple[subprocess.Popen, str, float]] = []
    env = {**os.environ, "WANDB_MODE": "disabled"}
    while todo or running:
        while todo and len(running) < args.jobs:
            name, ov, seed = todo.pop(0)
            rdir = run_dir(out, name, seed)
            rdir.mkdir(parents=True, exist_ok=True)
            cmd = command(args, ov, seed, rdir)
            print(f"[recipe] start {rdir.name}: {shlex.join(cmd)}", flush=True)
            log = open(rdir / "train.log", "w")
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                             cwd=ROOT), rdir.name, time.time()))
        time.sleep(5)
        for p, name, t0 in list(running):
            if p.poll() is not None:
                running.remove((p, name, t0))
                print(f"[recipe] done {name}: rc={p.returncode} in {time.time() - t0:.0f} s",
                      flush=True)


def health(rdir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (rdir / "metrics.jsonl").read_text().splitlines()
            if line.strip()] if (rdir / "metrics.jsonl").exists() else []
    rl = [r for r in rows if r.get("stage") == "rl"]

    def mean(key: str) -> float:
        xs = [float(r[key]) for r in rl if isinstance(r.get(key), (int, float))]
        return sum(xs) / len(xs) if xs else float("nan")

    last_kl = [float(r["health/kl_to_start"]) for r in rl if "health/kl_to_start" in r]
    return {"kl_to_start_last": last_kl[-1] if last_kl else float("nan"),
            "kl_update": mean("health/kl_update"), "update_rel": mean("health/update_rel"),
            "call_rate": mean("tools/call_rate"), "truncated": mean("health/truncated"),
            "train_success": mean("reward/success"), "steps": float(len(rl))}


def report(args) -> str:
    from rl.evaluate import t_interval

    out = Path(args.out)
    arms: dict[str, list[Path]] = {}
    for res in sorted(out.glob("*_s*/results.json")):
        arm = res.parent.name.rsplit("_s", 1)[0]
        arms.setdefault(arm, []).append(res.parent)
    lines = ["| arm | seeds | start success | final success | per-seed gain (paired, N each) | "
             "pooled paired gain [95%] (N) | t over seed gains [95%] | final tool-call rate | "
             "KL to start (last step) | update size (rel) | KL per update |",
             "|---" * 11 + "|"]
    for arm, dirs in arms.items():
        diffs: list[float] = []
        gains, starts, finals, calls, hs = [], [], [], [], []
        for d in sorted(dirs, key=lambda p: int(p.name.rsplit("_s", 1)[1])):
            res = json.loads((d / "results.json").read_text())
            stages = list(res)
            start, final = res[args.baseline], res[stages[-1]]
            a, b = final["success_by_task"], start["success_by_task"]
            diffs += [x - y for x, y in zip(a, b)]
            gains.append(t_interval([x - y for x, y in zip(a, b)]))
            starts.append(start["success"])
            finals.append(final["success"])
            calls.append(final.get("tool_call_rate", float("nan")))
            hs.append(health(d))
        pooled, over = t_interval(diffs), t_interval([g.value for g in gains])

        def avg(xs):
            return sum(xs) / len(xs)

        def hmean(k, hs=hs):
            return avg([h[k] for h in hs])

        per_seed = ", ".join(f"{g.value:+.3f}" for g in gains)
        lines.append(
            f"| {arm} | {len(dirs)} | {avg(starts):.3f} | {avg(finals):.3f} | {per_seed} "
            f"(N={gains[0].n}) | {pooled.value:+.3f} [{pooled.low:+.3f}, {pooled.high:+.3f}] "
            f"({pooled.n}) | {over.value:+.3f} [{over.low:+.3f}, {over.high:+.3f}] | "
            f"{avg(calls):.3f} | {hmean('kl_to_start_last'):.4f} | {hmean('update_rel'):.2e} | "
            f"{hmean('kl_update'):.4f} |")
    return "\n".join(lines)


def plot(args) -> Path | None:
    """``<out>/health.png``: per-step health metrics of every arm, mean over its seeds (the
    before/after of the learning-health telemetry between recipes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    keys = [("reward/success", "train-batch success"), ("health/neg_logprob", "entropy proxy"),
            ("health/kl_update", "KL per update"), ("health/kl_to_start", "KL to RL start"),
            ("health/update_rel", "|dtheta|/|theta|"), ("tools/call_rate", "tool-call rate")]
    series: dict[str, dict[str, list[list[float]]]] = {}
    for m in sorted(out.glob("*_s*/metrics.jsonl")):
        arm = m.parent.name.rsplit("_s", 1)[0]
        rows = [json.loads(x) for x in m.read_text().splitlines() if x.strip()]
        rl = sorted((r for r in rows if r.get("stage") == "rl"), key=lambda r: r["step"])
        for k, _ in keys:
            series.setdefault(arm, {}).setdefault(k, []).append(
                [float(r.get(k, float("nan"))) for r in rl])
    if not series:
        return None
    fig, grid = plt.subplots(2, 3, figsize=(13, 6.4))
    axes = list(grid.flat)
    for ax, (k, title) in zip(axes, keys):
        for arm, per in series.items():
            runs = [r for r in per[k] if r]
            n = min(len(r) for r in runs) if runs else 0
            if n:
                mean = [sum(r[i] for r in runs) / len(runs) for i in range(n)]
                ax.plot(range(n), mean, marker="o", ms=3, label=f"{arm} ({len(runs)} seeds)")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("RL step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "health.png"
    fig.savefig(path, dpi=100)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arm", nargs=2, action="append", metavar=("NAME", "OVERRIDES"), default=[],
                   help="an arm: its name and its Hydra overrides (one string; '' = defaults)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--start", default="", help="cold-start checkpoint every run resumes from")
    p.add_argument("--common", default="", help="overrides every run gets")
    p.add_argument("--engine", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (2 cores: at most 2)")
    p.add_argument("--baseline", default="sft", help="stage the gain is measured against")
    p.add_argument("--out", default="runs/recipe")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    if not args.report:
        if not args.arm:
            p.error("give at least one --arm NAME OVERRIDES")
        launch(args)
    print(report(args))
    print(f"[recipe] plot: {plot(args)}")


if __name__ == "__main__":
    main()
