"""The evaluation harness: any env x model (base, checkpoint, exported folder) x engine x tasks x
seeds x temperature, with 95% intervals.

A pure harness: the caller passes what it built (the tokenizer, env factory and tasks of
rl.build's ``Parts``, an engine). ``turnrl eval`` loads the policy and builds them in
``rl.build.run_eval``, then calls :func:`evaluate_tasks` and :func:`write_eval_folder`; the
trainer's stage evaluations call :func:`evaluate_tasks` on the parts they already built. An eval
folder holds ``results.json`` (metrics with intervals, parse and call errors, the settings),
``trajectories.jsonl`` (every episode, with the loss mask as text segments) and ``report.html``
(rl/report.py).

Intervals (all 95%):

- rates (success, tool-call rate, truncation, pass@k): the Wilson score interval when every task
  has one sample (scipy's ``binomtest(...).proportion_ci(method="wilson")``); with several
  samples per task (``n_samples`` x seeds) samples of one task are correlated, so a rate is the
  mean of the per-task rates with a Student-t interval over tasks;
- means (reward, turns, tool calls, tokens, share of turns cut by a token limit, reward terms):
  Student-t over episodes (over tasks with several samples per task). ``Interval.method`` names
  which one each figure used.

pass@k uses the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models
Trained on Code", eq. 1): ``1 - C(n - c, k) / C(n, k)`` per task with ``n`` samples of which
``c`` succeeded, averaged over tasks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rl.tooluse import PARSE_KINDS, call_error_kind, tool_use_stats
from rl.types import Task, Trajectory

Z95 = 1.959963984540054


@dataclass
class Interval:
    """A point estimate with its 95% interval; ``n`` observations; ``method`` how."""

    value: float
    low: float
    high: float
    n: int
    method: str

    def fmt(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def wilson(successes: int, n: int) -> Interval:
    """Wilson score interval of a binomial rate (scipy), ``n`` trials."""
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, 0, "wilson")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson: successes={successes} must be in [0, n={n}]")
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return Interval(successes / n, float(ci.low), float(ci.high), n, "wilson")


def t_interval(values: Sequence[float], method: str = "t") -> Interval:
    """Mean with a Student-t interval (n - 1 degrees of freedom); a single value has none."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, method)
    mean = sum(xs) / n
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, method)
    from scipy.stats import t as student_t

    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, method)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task: ``n`` samples, ``c`` correct (Chen et al. 2021, eq. 1)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class EvalResult:
    """Metrics with intervals, error counts and the episodes of one evaluation."""

    metrics: dict[str, Interval]
    parse_errors: dict[str, int]  # kind -> calls the format could not read
    call_errors: dict[str, dict[str, int]]  # tool name -> {"calls", "errors", <kind>: n}
    trajectories: list[Trajectory] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self, intervals: bool = False) -> dict[str, float]:
        """Point values by name: a drop-in for rl.build.evaluate's dict (the trainer's stage
        table reads it); ``intervals`` adds ``<name>_low`` / ``<name>_high``."""
        out = {k: v.value for k, v in self.metrics.items()}
        if intervals:
            for k, v in self.metrics.items():
                out[f"{k}_low"], out[f"{k}_high"] = v.low, v.high
        return out

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings,
                "metrics": {k: asdict(v) for k, v in self.metrics.items()},
                "parse_errors": self.parse_errors, "call_errors": self.call_errors}

    def table(self) -> str:
        """The metrics as a markdown table, then parse errors and errors per call type."""
        lines = ["| metric | value | 95% interval | n | interval |", "|---|---|---|---|---|"]
        for k, v in self.metrics.items():
            lines.append(f"| {k} | {v.value:.3f} | [{v.low:.3f}, {v.high:.3f}] | {v.n} | "
                         f"{v.method} |")
        if self.parse_errors:
            lines += ["", "parse errors by kind: " + ", ".join(
                f"{k}={v}" for k, v in sorted(self.parse_errors.items()))]
        if self.call_errors:
            lines += ["", "| tool | calls | errors | error kinds |", "|---|---|---|---|"]
            for name, c in sorted(self.call_errors.items()):
                kinds = ", ".join(f"{k}={v}" for k, v in sorted(c.items())
                                  if k not in ("calls", "errors"))
                lines.append(f"| {name} | {c['calls']} | {c['errors']} | {kinds or '-'} |")
        return "\n".join(lines)


def summarize(trajs: Sequence[Trajectory], n_per_task: int = 1,
              k_values: Sequence[int] = ()) -> EvalResult:
    """Metrics with intervals over scored trajectories (``outcome_reward`` / ``reward_terms``
    set). Episodes of one task share ``task.id``; ``n_per_task`` > 1 switches to per-task
    clustering (module docstring)."""
    from rewards.outcome import success as solved
    from rl.rollout.agent_loop import turns_cut

    by_task: dict[str, list[Trajectory]] = {}
    for t in trajs:
        by_task.setdefault(t.task.id, []).append(t)
    clustered = n_per_task > 1 or any(len(v) > 1 for v in by_task.values())

    def per_episode(fn) -> list[float]:
        return [float(fn(t)) for t in trajs]

    def rate(fn) -> Interval:
        if not clustered:
            vals = per_episode(fn)
            return wilson(int(sum(vals)), len(vals))
        return t_interval([sum(float(fn(t)) for t in ts) / len(ts) for ts in by_task.values()],
                          "t over tasks")

    def mean(fn) -> Interval:
        if not clustered:
            return t_interval(per_episode(fn))
        return t_interval([sum(float(fn(t)) for t in ts) / len(ts) for ts in by_task.values()],
                          "t over tasks")

    def ok_calls(t: Trajectory) -> int:
        return sum(call_error_kind(c) is None for turn in t.turns for c in turn.tool_calls)

    def parse_errs(t: Trajectory) -> int:
        return sum(call_error_kind(c) in PARSE_KINDS for turn in t.turns for c in turn.tool_calls)

    m: dict[str, Interval] = {
        "success": rate(solved),
        "reward": mean(lambda t: t.outcome_reward),
        "tool_call_rate": rate(lambda t: ok_calls(t) > 0),
        "tool_calls": mean(lambda t: t.num_tool_calls),
        "parse_errors": mean(parse_errs),
        "lenient_calls": mean(lambda t: tool_use_stats([t])["tools/lenient_calls"]),
        "tool_errors": mean(lambda t: t.info.get("tool_errors", 0)),
        "turns": mean(lambda t: len(t.turns)),
        "model_tokens": mean(lambda t: t.num_model_tokens),
        # episodes a limit ended (incl. the env ending one on a cut turn), and per episode the
        # share of turns a token limit cut (rl/rollout/agent_loop.py:trajectory_stats)
        "truncated": rate(lambda t: t.truncated),
        "turn_truncated": mean(turns_cut),
    }
    # Fission-GRPO's question: does the model recover after a tool error it made? (rl/rollout/tree)
    from rl.rollout.tree import saw_error

    m["error_seen"] = rate(saw_error)
    after_error = [t for t in trajs if saw_error(t)]
    if after_error:  # success of the episodes that acted after an error observation
        m["error_recovery"] = wilson(sum(bool(solved(t)) for t in after_error), len(after_error))
    terms = sorted({k for t in trajs for k in t.reward_terms})
    for k in terms:
        m[f"reward/{k}"] = mean(lambda t, k=k: t.reward_terms.get(k, 0.0))
    for k in k_values:
        if k < 1 or any(len(ts) < k for ts in by_task.values()):
            continue
        per_task = [pass_at_k(len(ts), sum(bool(solved(t)) for t in ts), k)
                    for ts in by_task.values()]
        if all(len(ts) == k for ts in by_task.values()):  # binary per task: Wilson over tasks
            m[f"pass@{k}"] = wilson(int(sum(per_task)), len(per_task))
        else:
            m[f"pass@{k}"] = t_interval(per_task, "t over tasks")

    parse: dict[str, int] = {}
    calls: dict[str, dict[str, int]] = {}
    for t in trajs:
        for turn in t.turns:
            for c in turn.tool_calls:
                kind = call_error_kind(c)
                if kind in PARSE_KINDS:
                    parse[kind] = parse.get(kind, 0) + 1
                    continue
                row = calls.setdefault(c.name or "?", {"calls": 0, "errors": 0})
                row["calls"] += 1
                if kind is not None:
                    row["errors"] += 1
                    row[kind] = row.get(kind, 0) + 1
    return EvalResult(m, parse, calls, list(trajs))


def evaluate_tasks(cfg, parts, engine, tasks: Sequence[Task], n_samples: int = 1,
                   seed: int = 10_007, seeds: Sequence[int] | None = None) -> EvalResult:
    """Roll out ``tasks`` (``n_samples`` each, per seed) at ``cfg.eval.temperature``, score
    them with ``cfg.algorithm``'s rewards and summarize with intervals.

    ``parts`` is rl.build's Parts (tokenizer, env_factory, native_tools); ``engine`` any Engine.
    """
    from rewards.compose import score
    from rl.config import TreeConfig
    from rl.rollout.agent_loop import AgentLoop

    if n_samples < 1:
        raise ValueError(f"evaluate_tasks: n_samples={n_samples} must be >= 1")
    if not tasks:
        raise ValueError("evaluate_tasks: no tasks to evaluate")
    # evaluation samples plain episodes: no tree branches (rollout.tree is for training)
    rollout = replace(cfg.rollout, temperature=cfg.eval.temperature, tree=TreeConfig())
    loop = AgentLoop(engine, parts.tokenizer, parts.env_factory, rollout,
                     native_tools=parts.native_tools)
    trajs: list[Trajectory] = []
    for s in (list(seeds) if seeds else [seed]):
        out = loop.run(list(tasks), n_samples=n_samples, seed=s)
        for t in out:
            t.info["eval_seed"] = s
        trajs += out
    a = cfg.algorithm
    for t in trajs:
        score(t, a.reward_weights, a.turn_reward_weights)
    n_per_task = n_samples * len(list(seeds) if seeds else [seed])
    ks = sorted({1, n_per_task}) if n_per_task > 1 else []
    res = summarize(trajs, n_per_task, ks)
    res.settings = {"tasks": len(tasks), "n_samples": n_samples,
                    "seeds": list(seeds) if seeds else [seed],
                    "temperature": cfg.eval.temperature, "env": cfg.env.name,
                    "format": cfg.env.format, "model": cfg.model.name, "engine": cfg.engine}
    return res


def write_eval_folder(res: EvalResult, out: Path, tokenizer=None) -> Path:
    """``results.json``, ``trajectories.jsonl`` and ``report.html`` under ``out``."""
    from rl.report import trajectory_record, write_report

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res.to_json(), indent=2, default=str) + "\n")
    records = [trajectory_record(t, tokenizer) for t in res.trajectories]
    with open(out / "trajectories.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r, default=str) + "\n")
    title = f"turnrl eval: {res.settings.get('env', '')} / {res.settings.get('model', '')}"
    write_report(out / "report.html", records, title=title, summary_md=res.table(),
                 settings=res.settings)
    return out
