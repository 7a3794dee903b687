"""Learning health of a run: the trajectory side of the step metrics (:func:`health_stats`,
``health/...``), the keys and progress.png panels that show them, their progress-bar fields and
the collapse warning (:class:`HealthMonitor`). Read by the step core, the run logger, the HTML
report and the drivers."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from rl.types import Trajectory

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
