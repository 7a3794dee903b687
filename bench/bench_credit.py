"""Credit-assignment benchmark: held-out success vs training episodes for outcome-only GRPO,
turn-level GRPO (per-index and pooled baselines), ArCHer and tree advantages, at equal SAMPLE
budgets, over seeds, with 95% intervals, and the sizing of a run that could rank them.

    # the pilot recorded in BENCHMARKS.md (all a loaded 2-core CPU allowed: ranks nothing)
    nice .venv/bin/python bench/bench_credit.py --knobs depth=1 width=1 turns=1 distractors=0 \
        unanswerable=0 --model <SFT folder> --episodes 16 --eval-every 16 --eval-tasks 12 \
        --tasks-per-step 2 --group 4 --seeds 0 --methods grpo grpo_turn-index --out runs/pilot
    .venv/bin/python bench/bench_credit.py --report --out runs/pilot      # partial results too
    .venv/bin/python bench/bench_credit.py --sizing --out runs/pilot --delta 0.10
    .venv/bin/python bench/bench_credit.py --sizing --out <no results>    # the grid, no pilot

Protocol. Every method starts from the same model (``--model``: a cold-start SFT folder; if
absent, SFT on ``--sft-examples`` env demonstrations is run once into ``--out/sft``), sees the
same number of env episodes (``--episodes``; a step is ``tasks_per_step x group`` episodes) and
is evaluated greedily on the same ``--eval-tasks`` held-out tasks at episode 0 (shared: the
start model is the same for all) and every ``--eval-every`` episodes. Methods alternate within
each seed so machine load hits them alike. ``results.json`` is rewritten after every evaluation,
so ``--report`` draws the plot and table from a run still going.

Intervals (95%). Per point and run: the Wilson score interval of the held-out success (scipy,
via rl.evaluate.wilson). Across seeds: the Student-t interval of the per-seed rates (the unit
that ranks methods: seeds differ in training, the held-out tasks are shared). Pairwise: the
difference of two methods' final rates with Newcombe's hybrid-score interval (method 10 of
Newcombe 1998, built from the two Wilson intervals; pooled over seeds, so it ignores seed
variance) and Welch's t interval over seeds; a comparison is called resolved only if both
exclude 0.

Sizing (``--sizing``): the two-proportion sample size at two-sided alpha = 0.05 and 80% power
(Fleiss, no continuity correction) for a difference ``delta`` around the observed rate ``p``:
``n = (z_{1-a/2} sqrt(2 pbar qbar) + z_{1-b} sqrt(p1 q1 + p2 q2))^2 / delta^2`` episodes per
method; and, because seeds vary, the seeds needed at ``N`` held-out tasks:
``S = (z_{1-a/2} + z_{1-b})^2 (2 sigma_seed^2 + (p1 q1 + p2 q2) / N) / delta^2`` with
``sigma_seed^2 = max(0, s^2 - p q / N_pilot)`` (the observed across-seed variance less its
eval-sampling part). Reused: scipy (normal/t quantiles, Wilson, Welch), matplotlib (plot).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from pathlib import Path
from typing import Any

METHODS: dict[str, list[str]] = {
    "grpo": ["algorithm=grpo"],
    "grpo_turn-index": ["algorithm=grpo_turn", "algorithm.turn_norm=index"],
    "grpo_turn-group": ["algorithm=grpo_turn", "algorithm.turn_norm=group"],
    "archer": ["algorithm=archer", "algorithm.archer.warmup_iters=1"],
    "tree": ["algorithm=grpo", "algorithm.credit=tree"],
}
Z95 = 1.959963984540054
Z80 = 0.8416212335729143  # one-sided z for 80% power


# -- statistics (pure; unit-tested) -----------------------------------------------------------
def wilson(k: int, n: int) -> tuple[float, float, float]:
    from rl.evaluate import wilson as _w

    iv = _w(k, n)
    return iv.value, iv.low, iv.high


def across_seeds(rates: list[float]) -> tuple[float, float, float]:
    """Mean of per-seed rates with a Student-t 95% interval (nan bounds for one seed)."""
    from rl.evaluate import t_interval

    iv = t_interval(rates)
    return iv.value, iv.low, iv.high


def newcombe(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float, float]:
    """p1 - p2 with Newcombe's hybrid-score 95% interval (from the two Wilson intervals)."""
    p1, l1, u1 = wilson(k1, n1)
    p2, l2, u2 = wilson(k2, n2)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt(
        (u1 - p1) ** 2 + (p2 - l2) ** 2)


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(a) - mean(b) with Welch's 95% t interval (nan bounds when it is undefined)."""
    from scipy.stats import t as student_t

    d = sum(a) / len(a) - sum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return d, math.nan, math.nan
    va = sum((x - sum(a) / len(a)) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - sum(b) / len(b)) ** 2 for x in b) / (len(b) - 1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return d, d, d  # no spread at all: the interval is the point
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    h = float(student_t.ppf(0.975, dof)) * se
    return d, d - h, d + h


def n_two_proportions(p1: float, p2: float, z_a: float = Z95, z_b: float = Z80) -> int:
    """Episodes per arm to detect p1 vs p2 (two-sided alpha 0.05, power 0.8; Fleiss, no
    continuity correction)."""
    if p1 == p2:
        raise ValueError("n_two_proportions: p1 == p2, no difference to detect")
    pbar = (p1 + p2) / 2
    num = z_a * math.sqrt(2 * pbar * (1 - pbar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(num ** 2 / (p1 - p2) ** 2)


def seeds_needed(p: float, delta: float, seed_var: float, n_tasks: int,
                 z_a: float = Z95, z_b: float = Z80) -> int:
    """Seeds per method so a difference ``delta`` of mean per-seed rates is detected, when each
    seed's rate has variance ``seed_var + p q / n_tasks`` (training + eval sampling)."""
    p2 = min(max(p + delta, 0.0), 1.0)
    var = 2 * seed_var + (p * (1 - p) + p2 * (1 - p2)) / n_tasks
    return max(2, math.ceil((z_a + z_b) ** 2 * var / delta ** 2))


# -- results -> curves, table, pairs, sizing ----------------------------------------------------
def curves(results: dict) -> dict[str, list[dict[str, Any]]]:
    """Per method, per evaluated episode count: pooled Wilson and across-seed t intervals."""
    out: dict[str, list[dict[str, Any]]] = {}
    start = results.get("start")
    for m in results["methods"]:
        runs = [r for r in results["runs"] if r["method"] == m]
        by_ep: dict[int, list[tuple[int, int]]] = {}
        for r in runs:
            pts = ([{"episodes": 0, **start}] if start else []) + r["evals"]
            for e in pts:
                by_ep.setdefault(e["episodes"], []).append((e["k"], e["n"]))
        rows = []
        for ep in sorted(by_ep):
            kn = by_ep[ep]
            k, n = sum(a for a, _ in kn), sum(b for _, b in kn)
            rows.append({"episodes": ep, "seeds": len(kn), "k": k, "n": n,
                         "pooled": wilson(k, n), "seed_mean": across_seeds([a / b for a, b in kn]),
                         "per_seed": [a / b for a, b in kn]})
        out[m] = rows
    return out


def finals(results: dict) -> dict[str, list[dict]]:
    """Each run's last evaluation, per method (runs without one are left out)."""
    out: dict[str, list[dict]] = {}
    for r in results["runs"]:
        if r["evals"]:
            out.setdefault(r["method"], []).append({**r["evals"][-1], "seed": r["seed"]})
    return out


def pairwise(results: dict) -> list[dict[str, Any]]:
    """Each pair of methods at their final (common) episode count: Newcombe and Welch."""
    fin = finals(results)
    names = [m for m in results["methods"] if m in fin]
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ea = {e["episodes"] for e in fin[a]}
            eb = {e["episodes"] for e in fin[b]}
            if ea != eb or len(ea) != 1:
                continue  # unequal budgets are not compared
            fa, fb = fin[a], fin[b]
            nc = newcombe(sum(e["k"] for e in fa), sum(e["n"] for e in fa),
                          sum(e["k"] for e in fb), sum(e["n"] for e in fb))
            wt = welch([e["k"] / e["n"] for e in fa], [e["k"] / e["n"] for e in fb])
            resolved = all(not math.isnan(x) for x in (*nc, *wt)) and (
                nc[1] > 0 or nc[2] < 0) and (wt[1] > 0 or wt[2] < 0)
            rows.append({"a": a, "b": b, "episodes": ea.pop(), "newcombe": nc, "welch": wt,
                         "resolved": bool(resolved)})
    return rows


def sizing(results: dict, delta: float) -> dict[str, Any]:
    """What a run needs to resolve ``delta`` around the observed final rates and spreads."""
    fin = finals(results)
    rates = [e["k"] / e["n"] for es in fin.values() for e in es]
    n_pilot = max((e["n"] for es in fin.values() for e in es), default=0)
    if not rates:
        raise ValueError("sizing: no finished evaluation in the results")
    p = sum(rates) / len(rates)
    spreads = []
    for es in fin.values():
        rs = [e["k"] / e["n"] for e in es]
        if len(rs) > 1:
            mu = sum(rs) / len(rs)
            spreads.append(sum((x - mu) ** 2 for x in rs) / (len(rs) - 1))
    s2 = sum(spreads) / len(spreads) if spreads else 0.0
    seed_var = max(0.0, s2 - p * (1 - p) / n_pilot) if n_pilot else s2
    base = min(max(p, 0.02), 0.98)  # a rate of 0 or 1 has no binomial variance to size on
    p2 = min(base + delta, 0.99)
    per_arm = n_two_proportions(base, p2)
    return {"p_observed": p, "p_used": base, "delta": delta, "s2_across_seeds": s2,
            "n_pilot_tasks": n_pilot, "seed_var": seed_var, "episodes_per_arm": per_arm,
            "seeds_at": {n: seeds_needed(base, delta, seed_var, n) for n in (64, 128, 256, 512)}}


# -- running --------------------------------------------------------------------------------------
def _common(args) -> list[str]:
    knobs = [f"+tasks.kwargs.{k}" for k in args.knobs]
    return [f"env={args.env}", *knobs, f"tasks.eval_size={args.eval_tasks}",
            f"trainer.tasks_per_step={args.tasks_per_step}", f"algorithm.group_size={args.group}",
            f"trainer.num_threads={args.threads}", "trainer.wandb=disabled",
            "trainer.samples_to_log=0", "eval.compare_stages=false", "eval.temperature=0",
            "trainer.steps=100000", f"learner.lr={args.lr}", f"rollout={args.engine}",
            *args.override]


def _trainer(overrides: list[str], run_dir: Path):
    from rl.config import load_config, to_dataclass
    from rl.trainer import Trainer

    cfg = to_dataclass(load_config([*overrides, f"trainer.run_dir={run_dir}"]))
    return Trainer(cfg, run_dir)


def _eval(t, label: str) -> dict[str, Any]:
    res = t.evaluate(label)
    by_task = res["success_by_task"]
    return {"k": int(round(sum(by_task))), "n": len(by_task), "success": res["success"],
            "seconds": res.get("seconds", 0.0)}


def cold_start(args, out: Path) -> Path:
    if args.model:
        return Path(args.model)
    model = out / "sft" / "checkpoints" / "step_000000" / "model"
    if not model.exists():
        _trainer([*_common(args), "trainer.steps=0", "sft.enabled=true",
                  f"sft.num_examples={args.sft_examples}", "sft.epochs=2",
                  f"sft.lr={args.sft_lr}"], out / "sft").fit()
    return model


def run_one(args, out: Path, model: Path, method: str, seed: int, save) -> dict:
    tag = f"{method}-s{seed}"
    t = _trainer([*_common(args), *METHODS[method], f"model.name={model}", "sft.enabled=false",
                  f"trainer.seed={seed}"], out / tag)
    t.start_rl()
    a = t.cfg.algorithm
    run = {"method": method, "seed": seed, "evals": [], "steps": 0, "episodes": 0,
           "train_seconds": 0.0, "turns_added": 0, "critic_samples": 0, "train_success": []}
    save(run)
    step, t0 = 0, time.perf_counter()
    while run["episodes"] < args.episodes:
        trajs, metrics, _ = t.train_step(step)
        step += 1
        t.state.step = step
        run["steps"], run["episodes"] = step, run["episodes"] + len(trajs)
        if a.credit == "archer":  # the step's turns go into the buffer, then U draws of B
            run["turns_added"] += sum(len(x.turns) for x in trajs)
            run["critic_samples"] += a.archer.critic_updates * a.archer.batch_size
        run["train_success"].append(
            sum(float(x.reward_terms.get("env_success", x.reward_terms.get("outcome", 0.0)) >= 1)
                for x in trajs) / len(trajs))
        run["train_seconds"] = time.perf_counter() - t0
        print(f"[{tag}] step {step} episodes {run['episodes']} "
              f"t={run['train_seconds']:.0f}s", flush=True)
        if run["episodes"] % args.eval_every == 0 or run["episodes"] >= args.episodes:
            run["evals"].append({"episodes": run["episodes"], **_eval(t, tag)})
            save(run)
    if run["turns_added"]:
        run["reuse_ratio"] = run["critic_samples"] / run["turns_added"]
    t.logger.close()
    save(run)
    return run


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="compose")
    p.add_argument("--knobs", nargs="*", default=["depth=2", "width=1", "turns=1",
                                                  "distractors=0", "unanswerable=0"],
                   help="tasks.kwargs k=v (compose difficulty)")
    p.add_argument("--episodes", type=int, default=256, help="training episodes per run")
    p.add_argument("--eval-every", type=int, default=64, help="episodes between evaluations")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--eval-tasks", type=int, default=64)
    p.add_argument("--tasks-per-step", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--model", default="", help="cold-start model folder (else SFT once)")
    p.add_argument("--sft-examples", type=int, default=64)
    p.add_argument("--sft-lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="rollout engine")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides")
    p.add_argument("--threshold", type=float, default=0.5, help="success for episodes-to-reach")
    p.add_argument("--delta", type=float, default=0.10, help="difference to size a run for")
    p.add_argument("--out", default="runs/bench_credit")
    p.add_argument("--report", action="store_true", help="table + plot from --out/results.json")
    p.add_argument("--sizing", action="store_true", help="sizing from --out/results.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.sizing and not (out / "results.json").exists():
        print_grid()  # no pilot yet: the plan for assumed rates and seed spreads
        return None
    if args.report or args.sizing:
        results = json.loads((out / "results.json").read_text())
        if args.report:
            report(results, out, args.threshold)
        print_sizing(sizing(results, args.delta))
        return results
    if args.episodes % (args.tasks_per_step * args.group) or args.eval_every % (
            args.tasks_per_step * args.group):
        p.error("--episodes and --eval-every must be multiples of tasks-per-step x group")
    out.mkdir(parents=True, exist_ok=True)
    model = cold_start(args, out)
    results: dict[str, Any] = {"args": vars(args), "methods": args.methods, "seeds": args.seeds,
                               "model": str(model), "runs": []}
    base = _trainer([*_common(args), f"model.name={model}", "sft.enabled=false"], out / "start")
    results["start"] = _eval(base, "start")
    base.logger.close()
    del base
    dump = lambda: (out / "results.json").write_text(json.dumps(results, indent=1))  # noqa: E731
    dump()
    t0 = time.perf_counter()
    for seed in args.seeds:
        for m in args.methods:
            slot = len(results["runs"])
            results["runs"].append({})

            def save(run, slot=slot):
                results["runs"][slot] = run
                dump()

            run_one(args, out, model, m, seed, save)
            gc.collect()  # the finished run's model and optimizer
    results["total_seconds"] = time.perf_counter() - t0
    dump()
    report(results, out, args.threshold)
    print_sizing(sizing(results, args.delta))
    return results


def _fmt(iv, d: int = 3) -> str:
    v, lo, hi = iv
    return f"{v:.{d}f}" if math.isnan(lo) else f"{v:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def report(results: dict, out: Path, threshold: float = 0.5) -> None:
    """Markdown tables and the plot of (possibly partial) results."""
    results = {**results, "runs": [r for r in results["runs"] if r]}
    cv = curves(results)
    plot(results, cv, out / "credit.png")
    s = results.get("start")
    if s:
        print(f"\nstart model: held-out success {_fmt(wilson(s['k'], s['n']))} (Wilson, n={s['n']})")
    print("| method | seeds | episodes | held-out N / seed | final success per seed | pooled "
          "(Wilson) | mean over seeds (t) | episodes to >= threshold | ArCHer reuse |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m, rows in cv.items():
        if not rows or rows[-1]["episodes"] == 0:
            continue
        last = rows[-1]
        reach = next((r["episodes"] for r in rows if r["seed_mean"][0] >= threshold), None)
        runs = [r for r in results["runs"] if r["method"] == m]
        reuse = [r["reuse_ratio"] for r in runs if "reuse_ratio" in r]
        print(f"| {m} | {last['seeds']} | {last['episodes']} | {last['n'] // last['seeds']} | "
              f"{', '.join(f'{x:.3f}' for x in last['per_seed'])} | {_fmt(last['pooled'])} | "
              f"{_fmt(last['seed_mean'])} | {reach if reach is not None else 'not reached'} | "
              f"{', '.join(f'{x:.1f}' for x in reuse) or '-'} |")
    print("\n| a - b | episodes | Newcombe (pooled) | Welch (seeds) | resolved |")
    print("|---|---|---|---|---|")
    for r in pairwise(results):
        print(f"| {r['a']} - {r['b']} | {r['episodes']} | {_fmt(r['newcombe'])} | "
              f"{_fmt(r['welch'])} | {'yes' if r['resolved'] else 'no'} |")
    print(f"plot: {out / 'credit.png'}  results: {out / 'results.json'}")


def print_sizing(sz: dict) -> None:
    print(f"\nsizing for a difference of {sz['delta']:.2f} (two-sided alpha 0.05, power 0.80): "
          f"observed final success {sz['p_observed']:.3f} (sized at {sz['p_used']:.3f}), "
          f"across-seed variance {sz['s2_across_seeds']:.4f} at N={sz['n_pilot_tasks']} tasks "
          f"-> seed variance {sz['seed_var']:.4f}")
    print(f"  held-out episodes per method (no seed variance): {sz['episodes_per_arm']}")
    print("  seeds per method at N held-out tasks: " + ", ".join(
        f"N={n}: {s}" for n, s in sz["seeds_at"].items()))


def print_grid(rates=(0.2, 0.3, 0.5), deltas=(0.05, 0.10, 0.15),
               seed_sds=(0.0, 0.05), n_tasks=(128, 256, 512)) -> None:
    """The sizing table for assumed rates, differences and across-seed SDs (no pilot needed)."""
    print("| p | delta | held-out episodes / method (seed SD 0) | seed SD | seeds at N = "
          + ", ".join(str(n) for n in n_tasks) + " |")
    print("|---|---|---|---|---|")
    for p in rates:
        for d in deltas:
            for sd in seed_sds:
                seeds = ", ".join(str(seeds_needed(p, d, sd ** 2, n)) for n in n_tasks)
                print(f"| {p:.2f} | {d:.2f} | {n_two_proportions(p, p + d)} | {sd:.2f} | {seeds} |")


def plot(results: dict, cv: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (m, rows) in enumerate(cv.items()):
        if not rows:
            continue
        xs = [r["episodes"] + (i - 2) * 0.6 for r in rows]  # small dodge so bars do not overlap
        ys = [r["seed_mean"][0] for r in rows]
        lo = [r["pooled"][1] for r in rows]
        hi = [r["pooled"][2] for r in rows]
        ax.errorbar(xs, ys, yerr=[[y - a for y, a in zip(ys, lo)], [b - y for y, b in zip(ys, hi)]],
                    color=f"C{i}", marker="o", ms=4, capsize=3, label=f"{m} ({rows[-1]['seeds']} seeds)")
        for r, x in zip(rows, xs):
            ax.scatter([x] * len(r["per_seed"]), r["per_seed"], color=f"C{i}", s=6, alpha=0.4)
    ax.set_xlabel("training episodes (env samples)")
    ax.set_ylabel("held-out success (greedy)")
    a = results["args"]
    ax.set_title(f"env={a['env']} {' '.join(a['knobs'])}\nmean over seeds, bars: pooled Wilson "
                 f"95%, dots: seeds; loaded shared 2-core CPU", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
