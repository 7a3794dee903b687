"""Credit-assignment benchmark: held-out success vs training episodes for outcome-only GRPO,
turn-level GRPO (per-index and pooled baselines), ArCHer (encoder critic with replay; frozen
policy-backbone critic) and tree advantages on fork / error rollout trees, at equal SAMPLE
budgets, over seeds, with 95% intervals, and the sizing of a run that could rank them.

    # the whole benchmark, one command (a GPU machine; see BENCHMARKS.md "Credit assignment");
    # rerunning it after an interruption keeps the finished jobs
    python bench/bench_credit.py --model <cold-start folder> --engine vllm --out runs/bench_credit
    python bench/bench_credit.py <same arguments> --dry-run   # every job's command + budget
    python bench/bench_credit.py --report --out runs/bench_credit   # plot + table, partial too
    python bench/bench_credit.py --sizing --out runs/pilot --delta 0.10
    python bench/bench_credit.py --sizing --out <no results>    # the sizing grid, no pilot

Methods (``METHODS``): ``grpo``, ``grpo_turn-index``, ``grpo_turn-group``, ``archer`` (its replay
reuse ratio = critic samples drawn / turn transitions added is reported), ``archer-policy``
(``critic_backbone=policy``: the policy's frozen decoder under the critic heads; TurnRL has no
LoRA-adapted critic backbone), ``tree-fork`` / ``tree-error`` (``algorithm.credit=tree`` with
``rollout.tree.mode=fork|error``). Sample accounting: every method samples ``--group`` episodes
per task; a tree method samples ``group - tree_branches`` roots plus ``tree_branches`` branch
slots (rollout.tree fills unused slots with extra roots), so branches count like any episode and
every step has ``tasks_per_step x group`` (checked at every step and by ``--dry-run``).

Protocol. Every method starts from the same model (``--model``: a cold-start SFT folder; if
absent, a first job SFTs on ``--sft-examples`` env demonstrations into ``--out/sft``), sees the
same number of env episodes (``--episodes``) and is evaluated greedily on the same
``--eval-tasks`` held-out tasks at episode 0 (one shared job: the start model is the same for
all) and every ``--eval-every`` episodes. Methods alternate within each seed so drifts of the
machine hit them alike. Each job runs in a fresh process (``--in-process`` for tests), so GPU
memory and vLLM state never carry over; its overrides are exactly those of the ``turnrl train``
line that ``--dry-run`` prints (the harness drives the same steps itself to evaluate between
them). Each job rewrites ``<out>/<job>/bench_run.json`` after every evaluation and
``results.json`` is re-assembled after every job, so ``--report`` draws the plot and table from a
run still going; a rerun of the same command in the same ``--out`` skips finished jobs, and
refuses an ``--out`` planned with other arguments.

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
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

METHODS: dict[str, list[str]] = {
    "grpo": ["algorithm=grpo"],
    "grpo_turn-index": ["algorithm=grpo_turn", "algorithm.turn_norm=index"],
    "grpo_turn-group": ["algorithm=grpo_turn", "algorithm.turn_norm=group"],
    "archer": ["algorithm=archer", "algorithm.archer.warmup_iters=1"],
    # the policy's own decoder, frozen, under the critic's MLP heads (rl/algos/critic.py); there
    # is no LoRA-adapted critic backbone in TurnRL yet
    "archer-policy": ["algorithm=archer", "algorithm.archer.warmup_iters=1",
                      "algorithm.archer.critic_backbone=policy"],
    "tree-fork": ["algorithm=grpo", "algorithm.credit=tree", "rollout.tree.mode=fork"],
    "tree-error": ["algorithm=grpo", "algorithm.credit=tree", "rollout.tree.mode=error"],
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


# -- methods and their sample accounting ---------------------------------------------------------
def method_overrides(method: str, group: int, tree_branches: int) -> list[str]:
    """The Hydra overrides of ``method`` when every method samples ``group`` episodes per task.

    A tree method (rollout.tree.mode fork | error) samples exactly ``group_size + max_branches``
    episodes per task (rl/rollout/tree.py: unfilled branch slots become extra root episodes), so
    it gets ``group - tree_branches`` roots and ``tree_branches`` branch slots, forked two at a
    time: its branches are counted in the budget like any other episode."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of: {', '.join(METHODS)}")
    o = list(METHODS[method])
    if not any(x.startswith("rollout.tree.mode=") for x in o):
        return [*o, f"algorithm.group_size={group}"]
    roots = group - tree_branches
    if tree_branches < 1 or roots < 1:
        raise ValueError(f"--tree-branches={tree_branches} with --group={group}: a tree method "
                         f"needs >= 1 branch slot and >= 1 root episode per task")
    return [*o, f"algorithm.group_size={roots}", f"rollout.tree.max_branches={tree_branches}",
            f"rollout.tree.branch={min(2, tree_branches)}"]


def episodes_per_step(cfg) -> int:
    """Env episodes one RL step samples under a composed ``Config``: tasks_per_step x
    (group_size, + rollout.tree.max_branches when tree rollouts are on)."""
    tree = cfg.rollout.tree
    per_task = cfg.algorithm.group_size + (tree.max_branches if tree.mode != "off" else 0)
    return cfg.trainer.tasks_per_step * per_task


def n_evals(episodes: int, every: int) -> int:
    """Held-out evaluations of one run: every ``every`` episodes and at the end."""
    return episodes // every + (1 if episodes % every else 0)


# -- the plan: every job, its exact overrides and its episodes -----------------------------------
CONTROL = ("report", "sizing", "dry_run", "only", "in_process", "threshold", "delta", "note",
           "start_window")


def _common(args) -> list[str]:
    knobs = [f"+tasks.kwargs.{k}" for k in args.knobs]
    return [f"env={args.env}", *knobs, f"tasks.eval_size={args.eval_tasks}",
            f"trainer.tasks_per_step={args.tasks_per_step}", f"trainer.num_threads={args.threads}",
            "trainer.wandb=disabled", "trainer.samples_to_log=0", "eval.compare_stages=false",
            "eval.temperature=0", f"learner.lr={args.lr}", f"rollout={args.engine}"]


def start_model(args) -> str:
    return args.model or str(Path(args.out) / "sft" / "checkpoints" / "step_000000" / "model")


def plan(args) -> list[dict[str, Any]]:
    """Every job in run order: the cold-start SFT (only without ``--model``), the shared start
    evaluation, then per seed every method (methods alternate within a seed, so a drift in the
    machine hits them alike). A run's overrides are exactly what ``turnrl train`` composes."""
    out, model = Path(args.out), start_model(args)
    steps = args.episodes // (args.tasks_per_step * args.group)
    jobs: list[dict[str, Any]] = []
    if not args.model:
        jobs.append({"job": "sft", "kind": "sft", "train_episodes": 0, "eval_episodes": 0,
                     "overrides": [*_common(args), "trainer.steps=0", "sft.enabled=true",
                                   f"sft.num_examples={args.sft_examples}", "sft.epochs=2",
                                   f"sft.lr={args.sft_lr}", f"trainer.run_dir={out / 'sft'}",
                                   *args.override]})
    jobs.append({"job": "start", "kind": "start", "train_episodes": 0,
                 "eval_episodes": args.eval_tasks,
                 "overrides": [*_common(args), f"model.name={model}", "sft.enabled=false",
                               "trainer.steps=0", f"trainer.run_dir={out / 'start'}",
                               *args.override]})
    branches = args.tree_branches if args.tree_branches else args.group // 2
    for seed in args.seeds:
        for m in args.methods:
            tag = f"{m}-s{seed}"
            jobs.append({"job": tag, "kind": "run", "method": m, "seed": seed,
                         "train_episodes": args.episodes,
                         "eval_episodes": n_evals(args.episodes, args.eval_every) * args.eval_tasks,
                         "overrides": [*_common(args), *method_overrides(m, args.group, branches),
                                       f"model.name={model}", "sft.enabled=false",
                                       f"trainer.seed={seed}", f"trainer.steps={steps}",
                                       f"trainer.run_dir={out / tag}", *args.override]})
    return jobs


def command(job: dict[str, Any]) -> str:
    """The job as a shell command line (the start evaluation runs inside the harness)."""
    if job["kind"] == "start":
        return ("# start: held-out evaluation of the start model (in the harness), config: "
                + shlex.join(job["overrides"]))
    return shlex.join(["turnrl", "train", *job["overrides"]])


def budget(jobs: list[dict[str, Any]]) -> dict[str, int]:
    train = sum(j["train_episodes"] for j in jobs)
    ev = sum(j["eval_episodes"] for j in jobs)
    return {"runs": sum(j["kind"] == "run" for j in jobs), "train_episodes": train,
            "eval_episodes": ev, "total_episodes": train + ev}


def check_plan(jobs: list[dict[str, Any]], per_step: int) -> list[str]:
    """Compose and validate every job's config as ``turnrl train`` would (no model loads); a
    run whose steps would not sample ``per_step`` episodes is a problem too. A start model that
    the plan's own SFT job will write is checked as the model that SFT starts from."""
    from rl.checks import validate
    from rl.config import load_config, to_dataclass

    sft_out = next((f"model.name={Path(o.split('=', 1)[1]) / 'checkpoints' / 'step_000000' / 'model'}"
                    for j in jobs if j["kind"] == "sft" for o in j["overrides"]
                    if o.startswith("trainer.run_dir=")), None)
    problems = []
    for j in jobs:
        overrides = [o for o in j["overrides"] if o != sft_out]
        try:
            cfg = to_dataclass(load_config(overrides))
            validate(cfg)
        except Exception as e:  # Hydra / ConfigError: say which job
            problems.append(f"{j['job']}: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        if j["kind"] == "run" and episodes_per_step(cfg) != per_step:
            problems.append(f"{j['job']}: {episodes_per_step(cfg)} episodes per step, the "
                            f"others {per_step}")
    return problems


def print_plan(args, jobs: list[dict[str, Any]]) -> None:
    b = budget(jobs)
    per_step = args.tasks_per_step * args.group
    print(f"# bench_credit plan: {len(args.methods)} methods x {len(args.seeds)} seeds = "
          f"{b['runs']} runs; {per_step} episodes per RL step ({args.tasks_per_step} tasks x "
          f"{args.group}; tree methods: {args.group - (args.tree_branches or args.group // 2)} "
          f"roots + {args.tree_branches or args.group // 2} branch slots per task), "
          f"{args.episodes // per_step} steps = {args.episodes} training episodes per run;\n"
          f"# greedy held-out evaluation on {args.eval_tasks} tasks at episode 0 (shared) and "
          f"every {args.eval_every} episodes. Each run trains exactly the config of its "
          f"`turnrl train` line;\n# the harness drives those steps itself (a fresh process per "
          f"job) to evaluate between them; it stops after the start evaluation unless the start "
          f"model's success is in [{args.start_window[0]}, {args.start_window[1]}].")
    for j in jobs:
        print(command(j))
    print(f"# budget: training episodes {b['train_episodes']} ({b['runs']} x {args.episodes}); "
          f"held-out eval episodes {b['eval_episodes']}; total env episodes "
          f"{b['total_episodes']}")


# -- running ------------------------------------------------------------------------------------
def _trainer(overrides: list[str]):
    from rl.config import load_config, to_dataclass
    from rl.trainer import Trainer

    cfg = to_dataclass(load_config(overrides))
    return Trainer(cfg, Path(cfg.trainer.run_dir))


def _eval(t, label: str) -> dict[str, Any]:
    res = t.evaluate(label)
    by_task = res["success_by_task"]
    n = len(by_task)
    seen = int(round(res.get("error_seen", 0.0) * n))  # episodes that acted after a tool error
    return {"k": int(round(sum(by_task))), "n": n, "success": res["success"],
            "tool_call_rate": res.get("tool_call_rate", 0.0), "error_seen": seen,
            "error_recovered": int(round(res.get("error_recovery", 0.0) * seen)),
            "seconds": res.get("seconds", 0.0)}


def run_file(out: Path, job: str) -> Path:
    return out / job / "bench_run.json" if job not in ("sft", "start") else out / f"{job}.json"


def job_done(out: Path, job: dict[str, Any]) -> bool:
    if job["kind"] == "sft":
        return (out / "sft" / "checkpoints" / "step_000000" / "model").exists()
    f = run_file(out, job["job"])
    return f.exists() and json.loads(f.read_text()).get("done", False)


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)  # a reader (--report) never sees half a file


def run_job(args, out: Path, job: dict[str, Any]) -> dict | None:
    if job["kind"] == "sft":
        _trainer(job["overrides"]).fit()
        return None
    if job["kind"] == "start":
        t = _trainer(job["overrides"])
        res = {**_eval(t, "start"), "done": True}
        t.logger.close()
        _write(run_file(out, "start"), res)
        return res
    return run_one(args, job, lambda run: _write(run_file(out, job["job"]), run))


def run_one(args, job: dict[str, Any], save) -> dict:
    from rewards.outcome import success
    from rl.rollout.tree import saw_error

    tag = job["job"]
    t = _trainer(job["overrides"])
    t.start_rl()
    a, per_step = t.cfg.algorithm, episodes_per_step(t.cfg)
    run = {"method": job["method"], "seed": job["seed"], "evals": [], "steps": 0, "episodes": 0,
           "train_seconds": 0.0, "turns_added": 0, "critic_samples": 0, "train_success": [],
           "branch_episodes": 0, "fill_episodes": 0, "done": False}
    save(run)
    step, t0 = 0, time.perf_counter()
    while run["episodes"] < args.episodes:
        trajs, metrics, _ = t.train_step(step)
        if len(trajs) != per_step:  # the sample budget is the benchmark's one invariant
            raise RuntimeError(f"{tag} step {step}: {len(trajs)} episodes, planned {per_step}")
        step += 1
        t.state.step = step
        run["steps"], run["episodes"] = step, run["episodes"] + len(trajs)
        kinds = [x.info.get("tree", {}).get("kind") for x in trajs]
        run["branch_episodes"] += kinds.count("branch")
        run["fill_episodes"] += kinds.count("fill")
        if a.credit == "archer":  # the step's turns go into the buffer, then U draws of B
            run["turns_added"] += sum(len(x.turns) for x in trajs)
            run["critic_samples"] += a.archer.critic_updates * a.archer.batch_size
        run["train_error_seen"] = run.get("train_error_seen", 0) + sum(map(saw_error, trajs))
        run["train_error_recovered"] = run.get("train_error_recovered", 0) + sum(
            saw_error(x) and success(x) for x in trajs)
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
    run["done"] = True
    save(run)
    return run


def check_start(out: Path, lo: float, hi: float) -> None:
    """Stop before any run when the start model's held-out success is outside ``[lo, hi]``: a
    start that never (or nearly always) succeeds gives no method a signal (issue 18, (a))."""
    f = run_file(out, "start")
    if not f.exists():  # the start job failed: failed.json says so; the runs still go
        return
    s = json.loads(f.read_text())
    rate = s["k"] / s["n"]
    if not lo <= rate <= hi:
        raise SystemExit(f"bench_credit: the start model's held-out success {s['k']}/{s['n']} = "
                         f"{rate:.3f} is outside --start-window [{lo}, {hi}]: change the cold "
                         f"start (--model / --sft-examples) or the env knobs, and use another "
                         f"--out")


def plan_args(args) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in CONTROL}


def collect(out: Path) -> dict[str, Any]:
    """The results so far (finished and running jobs), from ``plan.json`` and the job files;
    an older single ``results.json`` (no plan) is read as is."""
    if not (out / "plan.json").exists():
        return json.loads((out / "results.json").read_text())
    pl = json.loads((out / "plan.json").read_text())
    res: dict[str, Any] = {"args": pl["args"], "methods": pl["methods"], "seeds": pl["seeds"],
                           "model": pl["model"], "runs": []}
    if run_file(out, "start").exists():
        s = json.loads(run_file(out, "start").read_text())
        res["start"] = {k: s[k] for k in ("k", "n", "success", "seconds")}
    for job in pl["jobs"]:
        f = run_file(out, job)
        if job not in ("sft", "start") and f.exists():
            res["runs"].append(json.loads(f.read_text()))
    if (out / "failed.json").exists():
        res["failed"] = json.loads((out / "failed.json").read_text())
    return res


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    p.add_argument("--group", type=int, default=4, help="episodes per task, tree branches included")
    p.add_argument("--tree-branches", type=int, default=0,
                   help="branch slots per task of the tree methods (0 = group // 2)")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--model", default="", help="cold-start model folder (else SFT once)")
    p.add_argument("--sft-examples", type=int, default=64)
    p.add_argument("--sft-lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="rollout engine")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides (every job)")
    p.add_argument("--threshold", type=float, default=0.5, help="success for episodes-to-reach")
    p.add_argument("--delta", type=float, default=0.10, help="difference to size a run for")
    p.add_argument("--note", default="", help="plot title note (machine, load)")
    p.add_argument("--start-window", type=float, nargs=2, default=[0.15, 0.60],
                   metavar=("LO", "HI"), help="stop before the runs unless the start model's "
                   "held-out success is in [LO, HI] (every method needs signal; 0 1: no check)")
    p.add_argument("--out", default="runs/bench_credit")
    p.add_argument("--report", action="store_true", help="table + plot from --out (partial too)")
    p.add_argument("--sizing", action="store_true", help="sizing from --out's results")
    p.add_argument("--dry-run", action="store_true",
                   help="print every job's turnrl command and the episode budget; check configs")
    p.add_argument("--in-process", action="store_true",
                   help="run the jobs in this process (tests); default: a fresh process per job")
    p.add_argument("--only", default="", help=argparse.SUPPRESS)  # one job, in a child process
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.report or args.sizing:
        if not ((out / "plan.json").exists() or (out / "results.json").exists()):
            if args.sizing:
                print_grid()  # no pilot yet: the plan for assumed rates and seed spreads
                return None
            p.error(f"--report: no plan.json or results.json in {out}")
        results = collect(out)
        if args.report:
            report(results, out, args.threshold, args.note)
        if not finals(results) and args.report:  # a run too young to size from
            print("sizing: no run has finished an evaluation yet")
            return results
        print_sizing(sizing(results, args.delta))
        return results
    per_step = args.tasks_per_step * args.group
    if args.episodes % per_step or args.eval_every % per_step:
        p.error("--episodes and --eval-every must be multiples of tasks-per-step x group")
    jobs = plan(args)
    if args.dry_run:
        print_plan(args, jobs)
        problems = check_plan(jobs, per_step)
        print("# configs: " + ("all compose and validate" if not problems else
                               "PROBLEMS:\n" + "\n".join(f"#   {x}" for x in problems)))
        if problems:
            raise SystemExit(f"bench_credit --dry-run: {len(problems)} job(s) would fail")
        return {"jobs": jobs, "budget": budget(jobs)}
    if args.only:
        job = next((j for j in jobs if j["job"] == args.only), None)
        if job is None:
            p.error(f"--only {args.only}: no such job in the plan")
        run_job(args, out, job)
        return None
    out.mkdir(parents=True, exist_ok=True)
    meta = {"args": plan_args(args), "methods": args.methods, "seeds": args.seeds,
            "model": start_model(args), "jobs": [j["job"] for j in jobs]}
    if (out / "plan.json").exists():  # resume: only the same plan continues in this folder
        old = json.loads((out / "plan.json").read_text())
        diff = sorted(k for k in set(old["args"]) | set(meta["args"])
                      if old["args"].get(k) != meta["args"].get(k))
        if diff:
            p.error(f"{out} holds a run planned with other arguments ({', '.join(diff)}); "
                    f"use another --out")
    _write(out / "plan.json", meta)
    (out / "failed.json").unlink(missing_ok=True)  # this invocation's failures only
    failed: dict[str, int] = {}
    t0 = time.perf_counter()
    for job in jobs:
        if job_done(out, job):
            print(f"[bench_credit] {job['job']}: done earlier, kept", flush=True)
            continue
        if args.in_process:
            run_job(args, out, job)
            gc.collect()  # the finished run's model and optimizer
        else:  # a fresh process: GPU memory, vLLM and RNG state never leak between runs
            rc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv,
                                 "--only", job["job"]]).returncode
            if rc:
                failed[job["job"]] = rc
                _write(out / "failed.json", failed)
                if job["kind"] == "sft":  # no start model: nothing can follow
                    raise SystemExit(f"bench_credit: job {job['job']} failed (exit {rc})")
        if job["kind"] == "start":
            check_start(out, *args.start_window)
        _write(out / "results.json", collect(out))
    results = collect(out)
    results["total_seconds"] = time.perf_counter() - t0
    _write(out / "results.json", results)
    report(results, out, args.threshold, args.note)
    print_sizing(sizing(results, args.delta))
    if failed:
        raise SystemExit(f"bench_credit: failed jobs {failed} (rerun the same command to retry)")
    return results


def _fmt(iv, d: int = 3) -> str:
    v, lo, hi = iv
    return f"{v:.{d}f}" if math.isnan(lo) else f"{v:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def episodes_to_threshold(points: list[tuple[int, float]], threshold: float) -> int | None:
    """The first evaluated episode count whose success is >= ``threshold`` (None: never). No
    interpolation: a curve that crosses between two evaluations is credited at the later one,
    so the resolution is ``--eval-every``."""
    return next((ep for ep, y in sorted(points) if y >= threshold), None)


def reach(results: dict, threshold: float) -> dict[str, dict[str, Any]]:
    """Per method: episodes to ``threshold`` of the across-seed mean curve, and of each seed's
    own curve (the shared start evaluation is episode 0 of every curve)."""
    cv = curves(results)
    start = results.get("start")
    out: dict[str, dict[str, Any]] = {}
    for m, rows in cv.items():
        per_seed = {}
        for r in results["runs"]:
            if r["method"] == m:
                pts = ([(0, start["k"] / start["n"])] if start else []) + [
                    (e["episodes"], e["k"] / e["n"]) for e in r["evals"]]
                per_seed[r["seed"]] = episodes_to_threshold(pts, threshold)
        out[m] = {"mean": episodes_to_threshold(
            [(r["episodes"], r["seed_mean"][0]) for r in rows], threshold), "per_seed": per_seed}
    return out


def band(row: dict[str, Any]) -> tuple[float, float]:
    """The 95% band drawn at one curve point: the across-seed t interval when >= 2 seeds are
    there, else (one seed, or seeds all equal at a rate of 0 or 1) the pooled Wilson interval."""
    _, lo, hi = row["seed_mean"]
    if row["seeds"] >= 2 and not math.isnan(lo) and hi > lo:
        return max(lo, 0.0), min(hi, 1.0)
    return row["pooled"][1], row["pooled"][2]


def report(results: dict, out: Path, threshold: float = 0.5, note: str = "") -> None:
    """Markdown tables and the plot of (possibly partial) results."""
    results = {**results, "runs": [r for r in results["runs"] if r]}
    cv = curves(results)
    plot(results, cv, out / "credit.png", note)
    rc = reach(results, threshold)
    s = results.get("start")
    if s:
        print(f"\nstart model: held-out success {_fmt(wilson(s['k'], s['n']))} (Wilson, n={s['n']})")
    print(f"| method | seeds | episodes | held-out N / seed | final success per seed | pooled "
          f"(Wilson) | mean over seeds (t) | episodes to >= {threshold:g} (mean; per seed) | "
          f"ArCHer reuse | tree branch / fill episodes | final tool-call rate (pooled) | "
          f"held-out error recovery: recovered / after an error (pooled, Wilson) | training "
          f"error recovery |")
    print("|---" * 13 + "|")
    for m, rows in cv.items():
        if not rows or rows[-1]["episodes"] == 0:
            continue
        last = rows[-1]
        runs = [r for r in results["runs"] if r["method"] == m]
        reuse = [r["reuse_ratio"] for r in runs if "reuse_ratio" in r]
        tree = [f"{r.get('branch_episodes', 0)}/{r.get('fill_episodes', 0)}" for r in runs
                if r.get("branch_episodes") or r.get("fill_episodes")]
        fin = [r["evals"][-1] for r in runs if r["evals"]]
        calls = sum(e.get("tool_call_rate", 0.0) * e["n"] for e in fin) / max(
            sum(e["n"] for e in fin), 1)
        rec, seen = (sum(e.get(k, 0) for e in fin) for k in ("error_recovered", "error_seen"))
        trec, tseen = (sum(r.get(k, 0) for r in runs)
                       for k in ("train_error_recovered", "train_error_seen"))
        mean_reach = rc[m]["mean"]
        seeds_reach = ", ".join("-" if v is None else str(v) for v in rc[m]["per_seed"].values())
        print(f"| {m} | {last['seeds']} | {last['episodes']} | {last['n'] // last['seeds']} | "
              f"{', '.join(f'{x:.3f}' for x in last['per_seed'])} | {_fmt(last['pooled'])} | "
              f"{_fmt(last['seed_mean'])} | "
              f"{mean_reach if mean_reach is not None else 'not reached'}; {seeds_reach} | "
              f"{', '.join(f'{x:.1f}' for x in reuse) or '-'} | {', '.join(tree) or '-'} | "
              f"{calls:.3f} | {rec}/{seen} = {_fmt(wilson(rec, seen))} | {trec}/{tseen} |")
    print("\n| a - b | episodes | Newcombe (pooled) | Welch (seeds) | resolved |")
    print("|---|---|---|---|---|")
    for r in pairwise(results):
        print(f"| {r['a']} - {r['b']} | {r['episodes']} | {_fmt(r['newcombe'])} | "
              f"{_fmt(r['welch'])} | {'yes' if r['resolved'] else 'no'} |")
    if results.get("failed"):
        print(f"failed jobs (exit codes): {results['failed']}")
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


def plot(results: dict, cv: dict, path: Path, note: str = "") -> None:
    """One PNG: held-out success vs training episodes per method, the mean over seeds with its
    95% band (:func:`band`), each seed as a dot; draws whatever evaluations exist so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    shown = [(m, rows) for m, rows in cv.items() if rows]
    for i, (m, rows) in enumerate(shown):
        dx = (i - (len(shown) - 1) / 2) * 0.4  # small dodge so the seed dots do not overlap
        xs = [r["episodes"] for r in rows]
        ys = [r["seed_mean"][0] for r in rows]
        lo, hi = zip(*(band(r) for r in rows))
        ax.plot(xs, ys, color=f"C{i}", marker="o", ms=3,
                label=f"{m} ({max(r['seeds'] for r in rows)} seeds)")
        ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.15, linewidth=0)
        for r in rows:
            ax.scatter([r["episodes"] + dx] * len(r["per_seed"]), r["per_seed"], color=f"C{i}",
                       s=6, alpha=0.4)
    ax.set_xlabel("training episodes (env samples, tree branches included)")
    ax.set_ylabel("held-out success (greedy)")
    a = results["args"]
    ax.set_title(f"env={a['env']} {' '.join(a['knobs'])}\nmean over seeds; band: 95% t across "
                 f"seeds (pooled Wilson where 1 seed); dots: seeds. {note}".strip(), fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    if shown:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
