"""Credit assignment on the guessing game: held-out success after the same wall-clock RL budget
for GRPO (outcome reward only), GRPO with turn-level rewards, and ArCHer, over seeds.

    nice .venv/bin/python bench/bench_credit.py   # = --budget 240 --seeds 0 1 (the defaults)

All three start from the same cold-start SFT checkpoint (env demonstrations, made once), use the
same rollout settings and the same tasks per step; each run trains until ``--budget`` seconds of
RL wall-clock have passed (a step that starts inside the budget finishes), then is evaluated
greedily on the same held-out tasks (evaluation time is not part of the budget). Methods run
alternately within each seed so machine load hits them alike. Writes ``results.json`` and
``credit.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

METHODS: dict[str, list[str]] = {
    "grpo (outcome)": ["algorithm=grpo", "algorithm.drop_uniform_groups=true"],
    "grpo (turn-level)": ["algorithm=grpo_turn"],
    "archer": ["algorithm=archer", "algorithm.archer.warmup_iters=1",
               "algorithm.archer.critic_updates=16", "algorithm.archer.critic_lr=1e-3"],
}


def _common(args) -> list[str]:
    return [
        "env=guess", f"tasks.eval_size={args.eval_tasks}", "tasks.train_size=400",
        f"trainer.tasks_per_step={args.tasks_per_step}", f"algorithm.group_size={args.group}",
        f"trainer.num_threads={args.threads}", "trainer.wandb=disabled", "trainer.samples_to_log=0",
        "eval.compare_stages=false", "trainer.steps=100000", f"learner.lr={args.lr}",
        f"rollout={args.engine}", f"rollout.max_tokens_per_turn={args.turn_tokens}",
    ]


def _trainer(overrides: list[str], run_dir: Path):
    from rl.config import load_config, to_dataclass
    from rl.trainer import Trainer

    cfg = to_dataclass(load_config([*overrides, f"trainer.run_dir={run_dir}"]))
    return Trainer(cfg, run_dir)


def cold_start(args, out: Path) -> Path:
    """SFT on env demonstrations once; the model folder all methods start from."""
    run = out / "sft"
    model = run / "checkpoints" / "step_000000" / "model"
    if model.exists():
        return model
    t = _trainer([*_common(args), "trainer.steps=0", "sft.enabled=true",
                  f"sft.num_examples={args.sft_examples}", "sft.epochs=2",
                  f"sft.lr={args.sft_lr}"], run)
    t.fit()
    return model


def run_one(args, out: Path, model: Path, method: str, seed: int) -> dict:
    tag = f"{method.split()[0]}{'-turn' if 'turn' in method else ''}-s{seed}"
    t = _trainer([*_common(args), *METHODS[method], f"model.name={model}", "sft.enabled=false",
                  f"trainer.seed={seed}"], out / tag)
    curve, step, t0 = [], 0, time.perf_counter()
    while time.perf_counter() - t0 < args.budget:
        trajs, rewards, metrics, timer = t.train_step(step)
        step += 1
        t.step = step
        wins = [x.reward_terms.get("outcome", 0.0) >= 1.0 for x in trajs]
        curve.append({"step": step, "seconds": time.perf_counter() - t0,
                      "train_success": sum(wins) / len(wins), "reward": float(rewards.mean()),
                      **{k: v for k, v in metrics.items() if k.startswith("critic/")},
                      **timer.metrics()})
        print(f"[{tag}] step {step} t={curve[-1]['seconds']:.0f}s "
              f"train_success={curve[-1]['train_success']:.2f}", flush=True)
    train_seconds = time.perf_counter() - t0
    res = t.evaluate(tag)
    t.logger.close()
    return {"method": method, "seed": seed, "steps": step, "train_seconds": train_seconds,
            "eval": res, "curve": curve}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(METHODS)
    for i, m in enumerate(names):
        vals = [r["eval"]["success"] for r in results["runs"] if r["method"] == m]
        if vals:
            ax1.bar(i, sum(vals) / len(vals), color=f"C{i}", alpha=0.6)
            ax1.scatter([i] * len(vals), vals, color="k", zorder=3, s=12)
    ax1.axhline(results["sft"]["success"], color="gray", ls="--", label="SFT start")
    ax1.set_xticks(range(len(names)), names, fontsize=8)
    ax1.set_ylabel("held-out success (greedy)")
    ax1.set_title(f"after {results['budget_s']:.0f} s of RL (bars: mean, dots: seeds)")
    ax1.legend(fontsize=8)
    for r in results["runs"]:
        i = names.index(r["method"])
        xs = [c["seconds"] for c in r["curve"]]
        ys = [c["train_success"] for c in r["curve"]]
        ax2.plot(xs, ys, color=f"C{i}", marker="o", ms=3,
                 label=r["method"] if r["seed"] == results["seeds"][0] else None)
    ax2.set_xlabel("RL wall-clock (s)")
    ax2.set_ylabel("train-batch success")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=240.0, help="RL seconds per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--eval-tasks", type=int, default=16)
    p.add_argument("--tasks-per-step", type=int, default=2)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--sft-examples", type=int, default=32)
    p.add_argument("--sft-lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="rollout engine")
    p.add_argument("--turn-tokens", type=int, default=24, help="rollout.max_tokens_per_turn")
    p.add_argument("--out", default="runs/bench_credit")
    p.add_argument("--report", action="store_true",
                   help="only print the table and redraw the plot from --out/results.json")
    args = p.parse_args()
    out = Path(args.out)
    if args.report:
        report(json.loads((out / "results.json").read_text()), out)
        return
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = cold_start(args, out)
    base = _trainer([*_common(args), f"model.name={model}", "sft.enabled=false"], out / "sft-eval")
    results = {"budget_s": args.budget, "seeds": args.seeds, "args": vars(args),
               "sft": base.evaluate("sft"), "runs": []}
    base.logger.close()
    del base
    (out / "results.json").write_text(json.dumps(results, indent=1))
    for seed in args.seeds:
        for method in args.methods:
            results["runs"].append(run_one(args, out, model, method, seed))
            gc.collect()  # the finished run's model and optimizer
            (out / "results.json").write_text(json.dumps(results, indent=1))
    results["total_seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1))
    report(results, out)


def report(results: dict, out: Path) -> None:
    """Markdown table and plot of (possibly partial) results."""
    plot(results, out / "credit.png")
    print(f"\nSFT start: held-out success {results['sft']['success']:.3f}")
    print("| method | runs (seeds) | RL steps / run | RL s / run | held-out success: mean | "
          "per seed |")
    print("|---|---|---|---|---|---|")
    for m in METHODS:
        rs = [r for r in results["runs"] if r["method"] == m]
        if not rs:
            continue
        succ = [r["eval"]["success"] for r in rs]
        print(f"| {m} | {len(rs)} ({', '.join(str(r['seed']) for r in rs)}) | "
              f"{sum(r['steps'] for r in rs) / len(rs):.1f} | "
              f"{sum(r['train_seconds'] for r in rs) / len(rs):.0f} | "
              f"{sum(succ) / len(succ):.3f} | {', '.join(f'{s:.3f}' for s in succ)} |")
    print(f"plot: {out / 'credit.png'}  results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
