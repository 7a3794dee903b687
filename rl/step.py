"""One RL step and one run, shared by every driver (local ``Trainer``, Ray ``RayController``).

A driver decides *where* work runs (this process and its torchrun peers, or Ray actors); this
module decides *what* a run is:

* the stage machine, :func:`fit`: base eval -> cold-start SFT -> eval -> RL steps -> eval, with
  the save cadence, resume and the best-checkpoint guard (``eval.every``); a driver supplies
  the phases (:class:`Driver`);
* a step's tasks and rollout seeds (:meth:`StepCore.task_batch`, :meth:`StepCore.rollout_seed`),
  so the same config gives the same trajectories under either driver;
* scoring, credit assignment (``algorithm.credit``, rl/algos/credit.py), the update batch;
* the SFT batches, and the step's metrics row (one set of keys for every driver).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from rl.algos.credit import Credit, CreditContext, make_credit
from rl.config import Config, LossConfig
from rl.types import Batch, Task, Trajectory


@dataclass
class RunState:
    """Where a run is: what a checkpoint restores besides weights and optimizer."""

    step: int = 0
    stage: str = "start"
    """"start" (before the pre-RL stages) or "rl"."""
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    """Held-out evaluation per stage label (base, sft, <algorithm>, <algorithm> best@step<k>)."""
    best_step: int | None = None
    """RL step of the best guard evaluation so far (``eval.every``); None before the first."""
    best_guard: float | None = None
    """Guard success at ``best_step``."""

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint's ``state.pt`` records of the run (drivers add their own keys)."""
        return {"step": self.step, "stage": self.stage, "results": self.results,
                "best_step": self.best_step, "best_guard": self.best_guard}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> RunState:
        """The run state of a ``state.pt`` (one written before the guard existed has no best)."""
        return cls(state["step"], state["stage"], state["results"], state.get("best_step"),
                   state.get("best_guard"))


class Driver(Protocol):
    """The phases :func:`fit` runs; each driver implements them where its work lives."""

    state: RunState
    guard_tasks: list[Task]
    """The best-checkpoint guard's validation tasks (rl.tasks.build_guard_tasks; empty when
    ``eval.every`` is 0)."""

    def resume(self) -> None: ...

    def evaluate(self, label: str, tasks: list[Task] | None = None) -> dict[str, float]:
        """Greedy evaluation of the current policy on ``tasks`` (default: the held-out tasks),
        logged as ``eval_<label>/<metric>``; every process gets the results."""
        ...

    def log_metrics(self, row: dict[str, float]) -> None:
        """One row of the run's metrics at the current step (written once, by rank 0)."""
        ...

    def mark_best(self, step: int) -> Any:
        """Point ``checkpoints/best`` at the checkpoint of ``step`` (retention keeps it);
        returns the link, or None when this run has no checkpoint of ``step``."""
        ...

    def load_checkpoint_weights(self, path: Any) -> None:
        """A checkpoint's policy weights into the learner and the rollout engine (nothing
        else: optimizer, RNG and step stay)."""
        ...

    def run_sft(self) -> None: ...

    def start_rl(self) -> None:
        """Once, when RL begins: fresh optimizer moments, the KL reference snapshot."""
        ...

    def train_step(self, step: int) -> None: ...

    def save(self) -> Any: ...

    def finish(self) -> None: ...

    def progress(self, steps: range) -> Any: ...


def fit(driver: Driver, cfg: Config) -> dict[str, dict[str, float]]:
    """The whole run: the stage machine both drivers share.

    With ``eval.every`` the best-checkpoint guard runs inside it: a guard evaluation at step 0,
    every ``eval.every`` steps and at the last step; a new best is saved (if its step is not
    saved anyway) and linked as ``checkpoints/best``; at the end :func:`report_best`.
    """
    driver.resume()
    s = driver.state
    if cfg.eval.every > 0 and s.best_step is not None:  # a link a killed run left behind
        driver.mark_best(s.best_step)
    if s.stage == "rl" and s.step == 0:
        # resumed from the cold-start checkpoint: RL starts here, with this run's learner
        # settings (lr, warm-up, KL reference), not the saved schedule of the run that made it
        driver.start_rl()
        start = "sft" if cfg.sft.enabled else "base"
        if cfg.eval.compare_stages and not s.results:  # the checkpoint's run did not evaluate
            s.results[start] = driver.evaluate(start)  # it: the paired gain needs the start
    if s.stage == "start":
        if cfg.eval.compare_stages:
            s.results["base"] = driver.evaluate("base")
        if cfg.sft.enabled:
            driver.run_sft()
            if cfg.eval.compare_stages:
                s.results["sft"] = driver.evaluate("sft")
                warn_no_tool_use_after_sft(driver, s.results["sft"])
        s.stage = "rl"
        driver.start_rl()
        best = guard_due(cfg, s.step) and guard(driver, cfg)  # the policy RL starts from
        # the cold-start policy (step 0), or the guard's best so far
        if (cfg.sft.enabled and should_save(cfg, s.step)) or (best and s.step < cfg.trainer.steps):
            save_and_mark(driver, cfg)
    for step in driver.progress(range(s.step, cfg.trainer.steps)):
        driver.train_step(step)
        s.step = step + 1
        best = guard_due(cfg, s.step) and guard(driver, cfg)
        if should_save(cfg, s.step) or (best and s.step < cfg.trainer.steps):
            save_and_mark(driver, cfg)
    if cfg.eval.compare_stages:
        s.results[cfg.algorithm.name] = driver.evaluate(cfg.algorithm.name)
    last = save_and_mark(driver, cfg)
    report_best(driver, cfg, last)
    driver.finish()
    return s.results


# -- the best-checkpoint guard (eval.every) ----------------------------------------------------------
def guard_due(cfg: Config, step: int) -> bool:
    """A guard evaluation after ``step`` RL steps: step 0, every ``eval.every``, the last."""
    every, steps = cfg.eval.every, cfg.trainer.steps
    return every > 0 and steps > 0 and (step % every == 0 or step == steps)


def guard(driver: Driver, cfg: Config) -> bool:
    """Evaluate the current policy on the guard's validation tasks; record it in the run state
    when it is the best so far (ties keep the earlier step). Logs ``guard/success``,
    ``guard/best_success`` and ``guard/best_step`` at the step. True for a new best."""
    s = driver.state
    score = float(driver.evaluate("guard", tasks=driver.guard_tasks)["success"])
    new = s.best_step is None or s.best_guard is None or score > s.best_guard
    if new:
        s.best_step, s.best_guard = s.step, score
    assert s.best_step is not None and s.best_guard is not None
    driver.log_metrics({"guard/success": score, "guard/best_success": s.best_guard,
                        "guard/best_step": float(s.best_step)})
    _say(f"[guard] step {s.step}: success {score:.3f} on {len(driver.guard_tasks)} validation "
         "tasks " + ("(new best)" if new else f"(best {s.best_guard:.3f} at step {s.best_step})"))
    return new


def save_and_mark(driver: Driver, cfg: Config) -> Any:
    """``driver.save()``; a checkpoint of the guard's best step is linked as ``best``."""
    path = driver.save()
    s = driver.state
    if cfg.eval.every > 0 and s.best_step == s.step:
        driver.mark_best(s.step)
    return path


def report_best(driver: Driver, cfg: Config, last: Any) -> None:
    """Where the guard's best checkpoint is; when it is not the last step's, its held-out
    evaluation becomes the stage-table row ``<algorithm> best@step<k>``. The best weights are
    loaded for that evaluation only: the run's last checkpoint (``last``) stays the last
    policy, and the learner and engine get its weights back."""
    s = driver.state
    if cfg.eval.every <= 0 or s.best_step is None:
        return
    k, name = s.best_step, cfg.algorithm.name
    link = driver.mark_best(k)
    where = (f"best checkpoint: {link}" if link is not None else
             f"this run holds no checkpoint of step {k} (resumed from another run's checkpoint?)")
    if k == s.step:
        _say(f"[guard] the last policy (step {k}) is the best on the guard set "
             f"(success {s.best_guard:.3f}); {where}")
        return
    _say(f"[guard] the best policy on the guard set is step {k} (success {s.best_guard:.3f}), "
         f"not the last step {s.step}; {where}")
    if link is None or not cfg.eval.compare_stages:
        return
    driver.load_checkpoint_weights(link)
    s.results[f"{name} best@step{k}"] = driver.evaluate(f"{name}_best")
    driver.load_checkpoint_weights(last)


def _say(line: str) -> None:
    from rl.learner import dist

    if dist.is_main():
        print(line, flush=True)


def warn_no_tool_use_after_sft(driver: Any, res: dict[str, Any]) -> None:
    """A cold start after which the model makes no successful tool call in an env that needs
    tools: RL from here would teach it to answer without them. Say so, loudly, once."""
    core = getattr(driver, "core", None)
    if core is not None and core.tools.needs_tools and res.get("tool_call_rate", 1.0) == 0.0:
        print(f"[turnrl] WARNING: after SFT, 0 of {int(res.get('n', 0))} held-out episodes made a "
              "successful tool call in an env whose tasks need tools; RL from here would learn "
              "to answer without them (check env.format / env.format=auto, raise sft.lr or "
              "sft.num_examples, see learner.lora.train_token_rows)", flush=True)


def needs_reference(cfg: Config) -> bool:
    """Whether RL keeps a snapshot of its start policy: the KL penalty's reference, or the KL
    telemetry's (``learner.track_kl_to_start``; the torch learner's health probe reads it, the
    DeepSpeed learner has no probe and ZeRO-3 cannot snapshot), or a preference objective's
    (``algorithm.objective`` dpo / kto)."""
    from rl.algos.preference import PREFERENCE

    obj = cfg.algorithm.objective  # dpo / kto: their log-ratios' reference
    return cfg.algorithm.loss.kl_coef > 0 or (cfg.learner.track_kl_to_start
                                              and cfg.learner.backend == "torch") or (
        obj in PREFERENCE and PREFERENCE.get(obj).reference == "start")


def should_save(cfg: Config, step: int) -> bool:
    """Periodic checkpoints (the final one is always written by :func:`fit`); with SFT on, step 0
    is the cold-start policy (evaluable with ``turnrl eval --checkpoint``; a resume skips SFT)."""
    every = cfg.trainer.save_every
    return every > 0 and step % every == 0 and step < cfg.trainer.steps


def resolved_loss(cfg: Config) -> LossConfig:
    """``algorithm.loss`` with the Dr.GRPO normaliser filled in: ``max_tokens`` unset means the
    rollout's generation budget (model tokens only, a constant: never the padded width)."""
    from rl.algos.losses import generation_budget

    loss = copy.copy(cfg.algorithm.loss)
    if loss.max_tokens is None:
        r = cfg.rollout
        loss.max_tokens = generation_budget(r.max_turns, r.max_tokens_per_turn,
                                            r.max_total_tokens)
    return loss


def reseed_after_resume(seed: int) -> None:
    """A resume under another ``trainer.seed`` than the checkpoint's (e.g. several seeds of RL
    from one shared cold-start checkpoint): the checkpoint restored the process RNG streams
    that the saved run's seed made, and on CPU vLLM's sampler draws from that stream, so every
    seed would sample the saved run's rollouts. Re-seed them from this run's seed."""
    print(f"[turnrl] resume: trainer.seed={seed} differs from the checkpoint's: RNG streams "
          "re-seeded from it (this run samples its own rollouts)", flush=True)
    seed_everything(seed + 1_000_003)  # not the stream a fresh run of this seed starts with


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def preference_batch(trajs: list[Trajectory], a: Any, pad_id: int) -> Batch | None:
    """``algorithm.objective`` = dpo | kto | refuel: the rows that take part in a pair (or carry
    a KTO label) with their :class:`rl.types.PreferenceSpec`, formed group by group from the
    scored trajectories (rl/algos/preference.py); None when no group has a preference.
    ``a``: the ``AlgorithmConfig``."""
    from rl.algos.preference import preference_spec

    p = a.preference
    got = preference_spec(trajs, a.objective, p.pairing, p.beta, p.desirable_weight,
                          p.undesirable_weight)
    if got is None:
        return None
    rows, spec = got
    kept = [trajs[i] for i in rows]
    batch = Batch.from_trajectories(kept, torch.zeros(len(kept)), pad_id)
    batch.preference = spec
    return batch


class StepCore:
    """Tasks, seeds, scoring, credit and batching of a step; no process or actor knowledge.

    ``credit`` is None in a process that does not assign credit (a non-zero torchrun rank: rank
    0 assigns it for every rank's rows, rl/trainer.py).
    """

    def __init__(self, cfg: Config, train_tasks, pad_id: int, credit: Credit | None,
                 needs_tools: bool = False) -> None:
        from rl.health import HealthMonitor
        from rl.tooluse import ToolUseMonitor

        self.cfg, self.train_tasks, self.pad_id, self.credit = cfg, train_tasks, pad_id, credit
        # tool-use health: warns when an env whose tasks need tools sees no successful call
        self.tools = ToolUseMonitor(needs_tools)
        # learning health: warns once when the step rows move toward collapse (echo trap)
        self.health = HealthMonitor()

    # -- what the step samples ---------------------------------------------------------------------
    def task_batch(self, step: int) -> list[Task]:
        return self.train_tasks.batch(step, self.cfg.trainer.tasks_per_step)

    def rollout_seed(self, step: int, first: int) -> int:
        """Seed of the rollout of the step's tasks starting at index ``first`` (a rank's or a
        worker's share): the same tasks get the same seed under every driver."""
        return self.cfg.trainer.seed * 100_003 + step + 7919 * first

    def group_offset(self, step: int, first: int) -> int:
        """Group id of the step's task ``first`` (group ids are unique over the run)."""
        return step * self.cfg.trainer.tasks_per_step + first

    # -- what the step learns from -----------------------------------------------------------------
    def score(self, trajs: list[Trajectory]) -> torch.Tensor:
        """Compose each trajectory's rewards (sets outcome_reward / reward_terms /
        turn_rewards); ``(N,)`` outcome rewards."""
        from rewards.compose import score

        a = self.cfg.algorithm
        return torch.tensor([score(t, a.reward_weights, a.turn_reward_weights) for t in trajs],
                            dtype=torch.float32)

    def assign_credit(self, trajs: list[Trajectory]) -> tuple[torch.Tensor, dict[str, float]]:
        """Critic update, then ``(B, L)`` advantages of every (scored) trajectory."""
        assert self.credit is not None, "credit is assigned where all trajectories are"
        metrics = self.credit.critic_update(trajs)
        adv = self.credit.advantages(trajs, [t.group_id for t in trajs])
        return adv, metrics

    def make_batch(self, trajs: list[Trajectory], adv: torch.Tensor) -> Batch | None:
        """The update batch of ``trajs`` with advantages ``adv`` (``(B, L)``); None when no
        row carries signal.

        Rows whose advantages are all zero carry no policy gradient (a uniform GRPO group; a
        critic still warming up). They are left out when ``algorithm.drop_uniform_groups`` is
        on (DAPO's dynamic-sampling filter, without re-sampling), and always for non-outcome
        credit. A REINFORCE group that all succeeded has non-zero advantages and stays.
        """
        a = self.cfg.algorithm
        if a.objective != "policy":  # dpo / kto / refuel: pairs or labels from the groups
            return preference_batch(trajs, a, self.pad_id)
        if self.cfg.algorithm.truncated == "mask":  # cut episodes carry no gradient
            cut = [i for i, t in enumerate(trajs) if t.truncated]
            if cut:
                adv = adv.clone()
                adv[cut] = 0.0
        keep = list(range(len(trajs)))
        if self.cfg.algorithm.drop_uniform_groups or self.cfg.algorithm.credit != "outcome":
            keep = [i for i in keep if bool(adv[i].any())]
        if not keep:
            return None
        return Batch.from_trajectories([trajs[i] for i in keep], adv[keep], self.pad_id)

    def sft_batches(self, trajs: Sequence[Trajectory]) -> Iterator[tuple[int, list[Trajectory]]]:
        """``(epoch, chunk)`` for every SFT batch: a seeded shuffle per epoch."""
        c = self.cfg.sft
        rng = random.Random(self.cfg.trainer.seed)
        for epoch in range(c.epochs):
            order = list(range(len(trajs)))
            rng.shuffle(order)
            for s in range(0, len(order), c.batch_size):
                yield epoch, [trajs[i] for i in order[s : s + c.batch_size]]

    # -- what the step reports ---------------------------------------------------------------------
    def metrics_row(self, trajs: list[Trajectory], rewards: torch.Tensor,
                    update: dict[str, float], times: dict[str, float]) -> dict[str, Any]:
        """The step's metrics (same keys under every driver; drivers add their own extras)."""
        from envs.sandbox import sandbox_metrics
        from rewards.compose import reward_metrics
        from rewards.outcome import success as solved
        from rl.health import health_stats
        from rl.rollout.agent_loop import trajectory_stats
        from rl.rollout.tree import tree_stats
        from rl.tooluse import tool_use_stats

        n = max(len(trajs), 1)
        tree = tree_stats(trajs)  # tree branches copy their parents' tokens up to the fork
        gen_tokens = sum(t.num_model_tokens for t in trajs) - tree.get(
            "tree/replayed_model_tokens", 0.0)
        rollout_s = times.get("rollout", times.get("rollout_wait", 0.0))
        return {
            **reward_metrics(trajs),  # reward/<name>: mean of each episode and turn term
            "stage": "rl",
            "reward/mean": float(rewards.mean()) if len(rewards) else 0.0,
            "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "reward/success": sum(solved(t) for t in trajs) / n,  # the env's verdict
            **{f"episode/{k}": v for k, v in trajectory_stats(trajs).items()},
            **tree,  # error recovery; tree/ branch counts with rollout.tree
            **tool_use_stats(trajs),  # tools/call_rate, parse errors by kind, lenient calls
            **health_stats(trajs),  # health/: entropy proxy, informative groups, truncation
            **sandbox_metrics(),  # sandbox/: isolation reached vs requested, calls, latency
            "perf/rollout_tokens_per_s": gen_tokens / max(rollout_s, 1e-9),
            "perf/update_tokens_per_s": update.get("update/tokens", 0.0)
            / max(times.get("update", 0.0), 1e-9),
            **update, **{f"time/{k}": v for k, v in times.items()},
        }


def build_credit(cfg: Config, tokenizer, policy=None, engine=None, sampling=None) -> Credit:
    """The run's credit assigner (``algorithm.credit``). ``policy``: the policy module where the
    critic may use it as backbone; ``engine``/``sampling``: ArCHer's fresh-action sampler."""
    a = cfg.algorithm
    sampler = engine_action_sampler(engine, sampling) if (
        a.credit == "archer" and a.archer.fresh_actions and engine is not None) else None
    return make_credit(a, CreditContext(vocab_size=len(tokenizer), policy=policy,
                                        seed=cfg.trainer.seed, action_sampler=sampler))


def engine_action_sampler(engine, sampling):
    """``states -> actions``: one sampled turn per state from the rollout engine (fresh a')."""
    from rl.rollout.engines.base import GenerationRequest

    def sample(states: list[Any]) -> list[Any]:
        outs = engine.generate([GenerationRequest(list(s)) for s in states], sampling)
        return [tuple(o.token_ids) for o in outs]

    return sample


def eval_line(label: str, res: dict[str, float]) -> str:
    """One line per stage evaluation: the main metrics with their 95% intervals."""
    parts = []
    for k in ("success", "tool_call_rate", "tool_calls", "turns", "reward"):
        if k in res:
            iv = (f" [{res[f'{k}_lo']:.3f}, {res[f'{k}_hi']:.3f}]"
                  if f"{k}_lo" in res and k in ("success", "tool_call_rate") else "")
            parts.append(f"{k}={res[k]:.3f}{iv}")
    n = f" n={int(res['n'])}" if "n" in res else ""
    secs = f" ({res['seconds']:.0f} s)" if "seconds" in res else ""
    return f"[eval:{label}]{n} " + "  ".join(parts) + secs


def paired_gain(after: Sequence[float], before: Sequence[float]):
    """Mean per-task difference ``after - before`` on the same tasks with its 95% Student-t
    interval (a paired comparison: far tighter than two independent intervals when most
    tasks keep their verdict); None when the task lists differ."""
    if not after or len(after) != len(before):
        return None
    from rl.evaluate import t_interval

    return t_interval([a - b for a, b in zip(after, before)])


def write_results(run_dir, results: dict[str, dict[str, Any]]) -> str:
    """The run's stage evaluations: ``results.md`` (the table) and ``results.json`` (every
    figure, with each stage's per-task success for paired comparisons across runs). Returns
    the table."""
    import json
    from pathlib import Path

    table = stage_table(results)
    Path(run_dir, "results.md").write_text(table + "\n")
    Path(run_dir, "results.json").write_text(json.dumps(results, indent=1, default=float))
    return table


def stage_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the stage evaluations; ``<key>_lo`` / ``<key>_hi`` (95% intervals)
    are shown beside a value when the evaluation gives them, and each stage's success gain
    over the stage before it, paired on the same tasks, with its 95% interval."""
    cols = [("success", "held-out success"), ("tool_call_rate", "tool-call rate"),
            ("tool_calls", "tool calls/ep"), ("turns", "turns/ep"), ("reward", "mean reward")]
    lines = ["| stage | n | " + " | ".join(c[1] for c in cols)
             + " | success gain vs previous (paired) |",
             "|---" * (len(cols) + 3) + "|"]

    def cell(r: dict[str, Any], k: str) -> str:
        v = r.get(k, float("nan"))
        if f"{k}_lo" in r and f"{k}_hi" in r and k in ("success", "tool_call_rate"):
            return f"{v:.3f} [{r[f'{k}_lo']:.3f}, {r[f'{k}_hi']:.3f}]"
        return f"{v:.3f}"

    prev: dict[str, Any] | None = None
    for stage, r in results.items():
        n = r.get("n")
        gain = paired_gain(r.get("success_by_task", []), prev.get("success_by_task", [])
                           ) if prev else None
        g = f"{gain.value:+.3f} [{gain.low:+.3f}, {gain.high:+.3f}]" if gain else "-"
        lines.append(f"| {stage} | {int(n) if n is not None else '-'} | "
                     + " | ".join(cell(r, k) for k, _ in cols) + f" | {g} |")
        prev = r
    return "\n".join(lines)
