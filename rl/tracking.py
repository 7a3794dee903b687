"""Run directory bookkeeping: metrics.jsonl, sample trajectories (samples.txt, samples.jsonl and
the HTML report report.html of rl/report.py), wandb, a PNG plot, tool-use health
(:func:`tool_use_stats`, :class:`ToolUseMonitor`) and learning health (:func:`health_stats`,
:class:`HealthMonitor`: the collapse warning)."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rl.types import Trajectory


class Timer:
    """Named phase timings for one step: ``with timer("rollout"): ...``."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {f"time/{k}": v for k, v in self.times.items()}


def render_trajectory(traj: Trajectory, tokenizer) -> str:
    """Text of a trajectory with the loss mask visible: model tokens inside [[ ]]."""
    parts: list[str] = []
    ids, mask = traj.token_ids, traj.loss_mask
    i = 0
    while i < len(ids):
        j = i
        while j < len(ids) and mask[j] == mask[i]:
            j += 1
        text = tokenizer.decode(ids[i:j], skip_special_tokens=False)
        parts.append(f"[[{text}]]" if mask[i] else text)
        i = j
    head = (
        f"# task={traj.task.id} group={traj.group_id} reward={traj.outcome_reward:.3f} "
        f"terms={traj.reward_terms} answer={traj.task.answer!r} "
        f"final={traj.info.get('final_answer')!r} terminated={traj.terminated} "
        f"truncated={traj.truncated}\n"
    )
    return head + "".join(parts) + "\n"


class RunLogger:
    def __init__(self, run_dir: Path, config: dict[str, Any], wandb_mode: str, project: str):
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(run_dir / "metrics.jsonl", "a")
        self._samples = open(run_dir / "samples.txt", "a")
        self._sample_records: list[dict[str, Any]] = []  # the newest REPORT_MAX, for report.html
        self.history: list[dict[str, Any]] = []
        self.wandb = None
        if wandb_mode != "disabled":
            try:
                import wandb

                os.environ.setdefault("WANDB_SILENT", "true")
                self.wandb = wandb.init(
                    project=project, dir=str(run_dir), mode=wandb_mode, config=config,
                    name=run_dir.name,
                )
            except Exception as e:  # wandb is optional: never kill a run for it
                print(f"[turnrl] wandb disabled: {e}")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.history.append(row)
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    REPORT_MAX = 200  # episodes kept in report.html (samples.jsonl keeps all)

    def samples(self, step: int, trajs: Sequence[Trajectory], tokenizer) -> None:
        """Sampled episodes of a step: samples.txt (text), samples.jsonl (one record per
        episode) and report.html (the newest REPORT_MAX episodes, rl/report.py, below a
        per-step learning-health table of the logged rows)."""
        from rl.report import trajectory_record, write_report

        records = [trajectory_record(t, tokenizer, step=step) for t in trajs]
        with open(self.run_dir / "samples.jsonl", "a") as f:
            for t, r in zip(trajs, records):
                self._samples.write(f"=== step {step}\n" + render_trajectory(t, tokenizer))
                f.write(json.dumps(r, default=str) + "\n")
        self._samples.flush()
        self._sample_records = (self._sample_records + records)[-self.REPORT_MAX:]
        write_report(self.run_dir / "report.html", self._sample_records,
                     title=f"turnrl train samples: {self.run_dir.name}", step_rows=self.history)

    def plot(self, keys: Sequence[str] = ("reward/mean", "episode/model_tokens",
                                          "episode/tool_calls")) -> Path | None:
        """progress.png: ``keys`` on the first row; below, the learning-health panels
        (``HEALTH_PANELS``) with the keys the rows have (none: no second row)."""
        rows = [r for r in self.history if "reward/mean" in r]
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(k: str) -> tuple[list[Any], list[float]]:
            pts = [(r["step"], metric_value(r, k)) for r in rows]
            return [x for x, y in pts if y is not None], [y for _, y in pts if y is not None]

        panels = [(title, [k for k in ks if series(k)[0]], twin)
                  for title, ks, twin in HEALTH_PANELS]
        panels = [p for p in panels if p[1]]
        ncols = max(len(keys), len(panels))
        fig, axes = plt.subplots(2 if panels else 1, ncols, figsize=(4 * ncols,
                                                                     3 * (1 + bool(panels))),
                                 squeeze=False)
        for ax, k in zip(axes[0], keys):
            xs = [r["step"] for r in rows if k in r]
            ys = [r[k] for r in rows if k in r]
            ax.plot(xs, ys, marker="o")
            ax.set_title(k)
            ax.set_xlabel("step")
        for ax, (title, ks, twin) in zip(axes[1] if panels else [], panels):
            lines = []
            for i, k in enumerate(ks):  # a second key of another scale gets its own y axis
                lines += (ax.twinx() if twin and i else ax).plot(*series(k), marker="o",
                                                                 color=f"C{i}", label=k)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            if len(lines) > 1:
                ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7)
        for row_axes, used in zip(axes, (len(keys), len(panels))):
            for ax in row_axes[used:]:
                ax.axis("off")
        fig.tight_layout()
        path = self.run_dir / "progress.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path

    def close(self) -> None:
        self._metrics.close()
        self._samples.close()
        if self.wandb is not None:
            self.wandb.finish()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


# -- tool-use health -------------------------------------------------------------------------------
# Parse failures are errors the format set before any tool ran; call failures are set when the env
# ran (or refused to run) a well-formed call. A format may tag a call with ``kind`` / ``lenient``
# attributes (envs/formats); otherwise the kind comes from the error text of envs/formats/core.py
# and envs/base.py:ToolEnv.
PARSE_KINDS = ("json", "schema", "tags", "other_parse")
_KIND_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("schema", ('has no "name"', "must be a json object", "must be an object")),
    ("json", ("invalid json", "invalid xml", "malformed")),
    ("tags", ("unclosed", "without <", "without [")),
    ("not_run", ("not run",)),
    ("unknown_tool", ("unknown tool",)),
    ("timeout", ("timed out",)),
)


def call_error_kind(call: Any) -> str | None:
    """None for a successful call; else one word: json | tags | schema | other_parse (the format
    could not read it) or unknown_tool | not_run | timeout | tool_error (it could not run)."""
    if getattr(call, "error", None) is None:
        return None
    kind = getattr(call, "kind", None) or getattr(call, "error_kind", None)
    if isinstance(kind, str) and kind:
        return kind
    err = str(call.error).lower()
    for k, needles in _KIND_PATTERNS:
        if any(n in err for n in needles):
            return k
    return "tool_error" if getattr(call, "name", "") else "other_parse"


def _is_lenient(call: Any) -> bool:
    return bool(getattr(call, "lenient", False))


def tool_use_stats(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Tool-use health of a batch of episodes, as step metrics (``tools/...``).

    ``tools/call_rate``: fraction of episodes with at least one successful call;
    ``tools/calls``, ``tools/ok_calls``: calls (successful calls) per episode;
    ``tools/parse_errors``: calls per episode the format could not read, and
    ``tools/parse_error/<kind>`` by kind; ``tools/call_errors`` and ``tools/call_error/<kind>``:
    well-formed calls that failed; ``tools/lenient_calls``: calls per episode accepted only by
    lenient parsing (the format's ``lenient`` option).
    """
    n = max(len(trajs), 1)
    out: dict[str, float] = {"tools/call_rate": 0.0, "tools/calls": 0.0, "tools/ok_calls": 0.0,
                             "tools/parse_errors": 0.0, "tools/call_errors": 0.0,
                             "tools/lenient_calls": 0.0}
    for t in trajs:
        ok = 0
        for turn in t.turns:
            for c in turn.tool_calls:
                out["tools/calls"] += 1
                out["tools/lenient_calls"] += _is_lenient(c)
                kind = call_error_kind(c)
                if kind is None:
                    ok += 1
                elif kind in PARSE_KINDS:
                    out["tools/parse_errors"] += 1
                    out[f"tools/parse_error/{kind}"] = out.get(f"tools/parse_error/{kind}", 0) + 1
                else:
                    out["tools/call_errors"] += 1
                    out[f"tools/call_error/{kind}"] = out.get(f"tools/call_error/{kind}", 0) + 1
            out["tools/lenient_calls"] += int(turn.info.get("lenient_calls", 0) or 0)
        out["tools/ok_calls"] += ok
        out["tools/call_rate"] += ok > 0
    return {k: v / n for k, v in out.items()}


def tool_postfix(stats: dict[str, float]) -> dict[str, str]:
    """Short progress-bar fields: episodes with a successful call, parse errors and lenient
    calls per episode."""
    return {"call": f"{stats.get('tools/call_rate', 0.0):.2f}",
            "perr": f"{stats.get('tools/parse_errors', 0.0):.2f}",
            "lenient": f"{stats.get('tools/lenient_calls', 0.0):.2f}"}


def env_needs_tools(env_factory) -> bool:
    """Whether an env's tasks need tools: its ``needs_tools`` attribute when it declares one,
    else whether it offers any tool."""
    env = env_factory()
    flag = getattr(env, "needs_tools", None)
    return bool(flag) if flag is not None else bool(getattr(env, "tools", None))


class ToolUseMonitor:
    """Warns when an env whose tasks need tools sees no successful tool call.

    ``observe(step, trajs)`` after each RL step returns warnings (empty when healthy): one when
    ``patience`` consecutive steps had no successful call (repeated every ``patience`` steps
    while it lasts), and one when parse failures are most of the calls. ``after_sft(trajs)``
    checks the episodes sampled after the cold start. The trainer prints them and logs
    ``tools/no_call_steps``.
    """

    def __init__(self, needs_tools: bool, patience: int = 3, parse_error_share: float = 0.5):
        if patience < 1:
            raise ValueError(f"ToolUseMonitor patience must be >= 1, got {patience}")
        self.needs_tools, self.patience = needs_tools, patience
        self.parse_error_share = parse_error_share
        self.no_call_steps = 0  # consecutive steps without one successful call

    def observe(self, step: int, trajs: Sequence[Trajectory]) -> list[str]:
        if not self.needs_tools or not trajs:
            return []
        s = tool_use_stats(trajs)
        warnings: list[str] = []
        self.no_call_steps = 0 if s["tools/ok_calls"] > 0 else self.no_call_steps + 1
        if self.no_call_steps and self.no_call_steps % self.patience == 0:
            warnings.append(
                f"[turnrl] WARNING: step {step}: no successful tool call for "
                f"{self.no_call_steps} steps ({len(trajs)} episodes in the last) in an env whose "
                f"tasks need tools: {self._why(s)}")
        calls = s["tools/calls"]
        if calls > 0 and s["tools/parse_errors"] / calls > self.parse_error_share:
            kinds = ", ".join(f"{k.rsplit('/', 1)[1]}={v * len(trajs):.0f}" for k, v in
                              sorted(s.items()) if k.startswith("tools/parse_error/"))
            warnings.append(
                f"[turnrl] WARNING: step {step}: {s['tools/parse_errors'] / calls:.0%} of tool "
                f"calls could not be parsed ({kinds}); check env.format")
        return warnings

    # a checkpoint part: a resumed run warns (and logs no_call_steps) as if never stopped
    def state_dict(self) -> dict[str, int]:
        return {"no_call_steps": self.no_call_steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.no_call_steps = int(state["no_call_steps"])

    def after_sft(self, trajs: Sequence[Trajectory]) -> list[str]:
        if not self.needs_tools or not trajs:
            return []
        s = tool_use_stats(trajs)
        if s["tools/ok_calls"] > 0:
            return []
        return [f"[turnrl] WARNING: after SFT, 0 of {len(trajs)} episodes made a successful tool "
                f"call: {self._why(s)}; RL from here would learn to answer without tools "
                "(raise sft.lr / sft.num_examples, or see learner.lora.train_token_rows)"]

    @staticmethod
    def _why(s: dict[str, float]) -> str:
        if s["tools/calls"] == 0:
            return "the model wrote no tool call at all (wrong env.format? try env.format=auto " \
                   "or a lenient format)"
        return (f"{s['tools/parse_errors']:.2f} unparsable and {s['tools/call_errors']:.2f} "
                "failing calls per episode")


# -- learning health -------------------------------------------------------------------------------
# What moves before reward does when RL goes wrong. RAGEN (Wang et al. 2025, "echo trap"): the
# within-group reward spread and the policy's entropy fall, groups stop carrying signal, then the
# gradient norm spikes. :func:`health_stats` gives the trajectory side (StepCore.metrics_row); the
# learner adds ``health/kl_to_start``, ``health/kl_update``, ``health/update_rel``, ``grad_norm``
# and ``actor/ratio_mean`` / ``actor/clip_frac_low`` / ``actor/clip_frac_high``. Display code takes
# any key being absent (older runs, other learners) and shows only the ones a row has.
HEALTH_KEYS = ("health/neg_logprob", "health/kl_to_start", "health/kl_update",
               "health/update_rel", "grad_norm", "actor/ratio_mean", "actor/clip_frac_low",
               "actor/clip_frac_high", "health/informative_groups", "health/groups",
               "health/group_reward_std", "health/truncated", "health/parse_error_rate")
# progress.png's second row: (title, keys, second key on its own y axis)
HEALTH_PANELS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("entropy proxy (-logprob/token)", ("health/neg_logprob",), False),
    ("KL/token: to start, per update", ("health/kl_to_start", "health/kl_update"), False),
    ("update: |dθ|/|θ|, grad norm", ("health/update_rel", "grad_norm"), True),
    ("informative groups, group std", ("health/informative_groups",
                                       "health/group_reward_std"), True),
    ("truncated, parse errors/turn", ("health/truncated", "health/parse_error_rate"), False),
)


def health_stats(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Learning health of a step's episodes, as step metrics (``health/...``).

    ``health/neg_logprob``: mean of -(sampler logprob) over every model (loss-mask) token, a
    policy-entropy proxy (its expectation is the entropy at the sampling temperature); absent
    when there are no model tokens. ``health/groups``: groups (``group_id``);
    ``health/informative_groups``: groups whose outcome rewards are not all equal (a GRPO group
    with equal rewards has zero advantage); ``health/group_reward_std``: mean over groups of the
    population std of ``outcome_reward`` within the group (absent without groups);
    ``health/truncated``: share of truncated episodes; ``health/parse_error_rate``: calls the
    format could not read per model turn (the kinds of rl/rollout/agent_loop.py:trajectory_stats).
    """
    from envs.formats import PARSE_ERROR_KINDS, error_kind

    groups: dict[int, list[float]] = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(float(t.outcome_reward))
    turns = sum(len(t.turns) for t in trajs)
    parse_errors = sum(1 for t in trajs for u in t.turns for c in u.tool_calls
                       if c.error is not None and error_kind(c.error) in PARSE_ERROR_KINDS)
    out = {"health/groups": float(len(groups)),
           "health/informative_groups": float(sum(max(r) != min(r) for r in groups.values())),
           "health/truncated": sum(t.truncated for t in trajs) / max(len(trajs), 1),
           "health/parse_error_rate": parse_errors / max(turns, 1)}
    tokens = sum(t.num_model_tokens for t in trajs)
    if tokens:
        out["health/neg_logprob"] = -sum(lp for t in trajs for lp, m in zip(t.logprobs,
                                                                              t.loss_mask) if m
                                         ) / tokens
    if groups:
        out["health/group_reward_std"] = sum(_pstd(r) for r in groups.values()) / len(groups)
    return out


def _pstd(xs: Sequence[float]) -> float:
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))


def metric_value(row: dict[str, Any], key: str) -> float | None:
    """A row's finite number under ``key``; None when absent, not a number or not finite (a
    logged row writes inf / nan as strings)."""
    v = row.get(key)
    if v is None or isinstance(v, bool):
        return None
    try:
        x = float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def health_postfix(row: dict[str, Any]) -> dict[str, str]:
    """Short progress-bar fields, only for keys the row has: ``H`` the entropy proxy, ``kl`` KL
    to the RL-start policy per token, ``inf`` informative / all groups."""
    out: dict[str, str] = {}
    h, kl, inf, groups = (metric_value(row, f"health/{k}") for k in (
        "neg_logprob", "kl_to_start", "informative_groups", "groups"))
    if h is not None:
        out["H"] = f"{h:.2f}"
    if kl is not None:
        out["kl"] = f"{kl:.2g}"
    if inf is not None and groups:
        out["inf"] = f"{inf:.0f}/{groups:.0f}"
    return out


class HealthMonitor:
    """Warns once per run when the step rows move the way RAGEN's "echo trap" does.

    ``observe(step, row)`` after each RL step (``row``: the step's metrics) returns at most one
    warning over the whole run (empty when healthy, and always after the first). It fires on:

    * **reward spread collapse**: ``health/group_reward_std`` below ``std_ratio`` (30%) of its
      mean over the first ``warmup`` (3) steps for ``patience`` (2) consecutive steps, while the
      share of informative groups (``health/informative_groups / health/groups``) is below its
      first-steps mean. Skipped while ``reward/success >= saturated`` (0.9): uniform groups of a
      solved task set are saturation, not collapse.
    * **entropy collapse without gain**: ``health/neg_logprob`` below ``entropy_ratio`` (30%) of
      its mean over the first ``warmup`` steps (the RL-start value) for ``patience`` consecutive
      steps while the train-batch ``reward/success`` of the last ``warmup`` steps is no higher
      than over the first ones. Healthy GRPO runs lose entropy gradually (often to about half);
      a fall to under a third is the collapse DAPO's clip-higher was made for — unless success
      rose with it: on make train's math task, runs whose held-out success rose most sharpened
      their answers to under a third of the start entropy (BENCHMARKS.md, issue 23), which is
      the policy getting sure of the right call, not the echo trap.
    * **gradient spike**: ``grad_norm`` above ``grad_spike`` (5x) the median of the previous (up
      to ``window`` = 50) values, once there are ``warmup`` of them (one step suffices: a spike
      is one step).

    Rows without a key skip that check (older runs, other learners); non-finite values are
    ignored. ``state_dict`` / ``load_state_dict`` make it a checkpoint part ("health"): a resumed
    run keeps its first-steps baselines and its once-per-run promise.
    """

    optional_in_checkpoint = True
    """Telemetry only: a checkpoint from before the monitor existed resumes with a fresh one."""

    def __init__(self, warmup: int = 3, patience: int = 2, std_ratio: float = 0.3,
                 entropy_ratio: float = 0.3, grad_spike: float = 5.0, window: int = 50,
                 saturated: float = 0.9) -> None:
        if warmup < 1 or patience < 1:
            raise ValueError(f"HealthMonitor warmup and patience must be >= 1, got {warmup}, "
                             f"{patience}")
        self.warmup, self.patience, self.window = warmup, patience, window
        self.std_ratio, self.entropy_ratio = std_ratio, entropy_ratio
        self.grad_spike, self.saturated = grad_spike, saturated
        self.first: dict[str, list[float]] = {"std": [], "share": [], "entropy": []}
        self.low = {"std": 0, "entropy": 0}  # consecutive steps below the threshold
        self.grad_norms: list[float] = []
        self.recent_success: list[float] = []  # train-batch success of the last warmup steps
        self.warned = False

    def observe(self, step: int, row: dict[str, Any]) -> list[str]:
        moved = [m for m in (self._spread(row), self._entropy(row), self._grad(row)) if m]
        if not moved or self.warned:
            return []
        self.warned = True
        return [f"[turnrl] WARNING: step {step}: learning may be collapsing (RAGEN's echo "
                f"trap): {'; '.join(moved)}. Try a lower learner.lr, a higher "
                "algorithm.loss.kl_coef, a higher rollout.temperature or more "
                "trainer.tasks_per_step; the best policy so far is the best periodic-eval "
                "checkpoint (eval.every). Warned once per run."]

    def _spread(self, row: dict[str, Any]) -> str | None:
        std = metric_value(row, "health/group_reward_std")
        inf, groups = (metric_value(row, k) for k in ("health/informative_groups",
                                                     "health/groups"))
        if std is None or inf is None or not groups:
            return None
        share = inf / groups
        if len(self.first["std"]) < self.warmup:
            self.first["std"].append(std)
            self.first["share"].append(share)
            return None
        base, base_share = _mean(self.first["std"]), _mean(self.first["share"])
        success = metric_value(row, "reward/success")
        low = (base > 0 and std < self.std_ratio * base and share < base_share
               and (success is None or success < self.saturated))
        self.low["std"] = self.low["std"] + 1 if low else 0
        if self.low["std"] < self.patience:
            return None
        return (f"within-group reward std {std:.3f} < {self.std_ratio:.0%} of its first-steps "
                f"{base:.3f} for {self.low['std']} steps, informative groups {inf:.0f}/"
                f"{groups:.0f} (first steps {base_share:.0%})")

    def _entropy(self, row: dict[str, Any]) -> str | None:
        h = metric_value(row, "health/neg_logprob")
        if h is None:
            return None
        if len(self.first["entropy"]) < self.warmup:
            self.first["entropy"].append(h)
            success = metric_value(row, "reward/success")
            if success is not None:
                self.first.setdefault("success", []).append(success)
                self.recent_success = (self.recent_success + [success])[-self.warmup:]
            return None
        base = _mean(self.first["entropy"])
        success = metric_value(row, "reward/success")
        first_s, recent_s = self.first.setdefault("success", []), self.recent_success
        if success is not None:
            if len(first_s) < self.warmup:
                first_s.append(success)
            self.recent_success = (recent_s + [success])[-self.warmup:]
        gained = (len(first_s) == self.warmup and len(self.recent_success) == self.warmup
                  and _mean(self.recent_success) > _mean(first_s))
        self.low["entropy"] = self.low["entropy"] + 1 if base > 0 and h < (
            self.entropy_ratio * base) and not gained else 0
        if self.low["entropy"] < self.patience:
            return None
        return (f"entropy proxy (-logprob/token) {h:.3f} < {self.entropy_ratio:.0%} of its "
                f"RL-start {base:.3f} for {self.low['entropy']} steps, train success not rising")

    def _grad(self, row: dict[str, Any]) -> str | None:
        g = metric_value(row, "grad_norm")
        if g is None:
            return None
        past, self.grad_norms = self.grad_norms, (self.grad_norms + [g])[-self.window:]
        if len(past) < self.warmup:
            return None
        med = statistics.median(past)
        if med <= 0 or g <= self.grad_spike * med:
            return None
        return f"grad norm {g:.3g} > {self.grad_spike:g}x the running median {med:.3g}"

    # a checkpoint part: a resumed run keeps its baselines and warns at most once overall
    def state_dict(self) -> dict[str, Any]:
        return {"first": {k: list(v) for k, v in self.first.items()}, "low": dict(self.low),
                "grad_norms": list(self.grad_norms), "warned": self.warned,
                "recent_success": list(self.recent_success)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first = {k: [float(x) for x in v] for k, v in state["first"].items()}
        self.low = {k: int(v) for k, v in state["low"].items()}
        self.grad_norms = [float(x) for x in state["grad_norms"]]
        self.warned = bool(state["warned"])
        self.recent_success = [float(x) for x in state.get("recent_success", [])]


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)
