"""The single controller for ``launcher=ray``: the driver owns the step loop, every heavy phase
runs in an actor (rollout workers, env workers, the learner group; rl/distributed/pool.py).

Pipeline. The learner's weights after ``k`` updates are policy version ``k``; a trajectory
records the version that sampled it, and its staleness is ``(learner version when it is trained)
- (its version)``. Rollouts of step ``s`` are submitted as soon as the newest published version
``P`` satisfies ``s - P <= bound`` (``bound = max_staleness`` in async mode, 0 in sync mode), so a
worker, which loads versions in order before its next rollout, samples step ``s`` with a version
``>= s - bound``. With ``bound = 1`` the rollout of step ``k+1`` runs while the learner updates on
step ``k``. The loss corrects for the gap with truncated importance sampling against the
sampler's logprobs (``algorithm.loss.tis_cap``; rl.algos.truncated_is_weights).

Long tail. ``launcher.trajectory_timeout_s`` truncates a slow episode (rl.distributed.envs);
turn limits are ``rollout.max_turns``. With ``launcher.carry_partial`` a step's task groups are
separate jobs and the step trains once ``partial_fraction`` of them are in; the rest keep
sampling and join the next step's batch (dropped, and counted, if staleness would exceed the
bound). Departure from token-level partial rollouts (Kimi k1.5, AReaL): the carried unit is a
whole group, finished under the weights it started with, because GRPO needs complete groups.

Faults. A rollout job whose worker died (or whose env worker died) is re-run on a fresh worker
with the same tasks and seeds: the step still gets all its trajectories (``dist/restarts``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rl.config import Config
from rl.distributed.pool import WorkerPool
from rl.distributed.workers import RolloutJob, RolloutResult
from rl.health import health_postfix
from rl.learner.dist import shard as dist_shard
from rl.step import (
    RunState,
    StepCore,
    build_credit,
    eval_line,
    fit,
    needs_reference,
    write_results,
)
from rl.tooluse import env_needs_tools
from rl.tracking import RunLogger, Timer
from rl.types import Batch, Task, Trajectory


@dataclass
class _Inflight:
    job: RolloutJob
    worker: int
    restarts_at_submit: int  # a failure after a later restart is the dead worker's, re-run it


class RayController:
    """The Ray driver: the shared stage machine and step core (rl/step.py) with the phases in
    actors.

    ``pool``: run on existing actors (several runs, e.g. tests, share one start-up; the caller
    shuts it down). ``learner_delay_s`` slows each learner update (latency injection: staleness
    test, bench); ``fault_hook(controller, step)`` runs right after a step's rollouts are
    submitted (fault injection in tests). Both are for tests and benchmarks; real runs leave
    them unset.
    """

    def __init__(self, cfg: Config, run_dir: Path, config_yaml: str = "", *,
                 pool: WorkerPool | None = None, learner_delay_s: float = 0.0,
                 fault_hook: Callable[[RayController, int], None] | None = None) -> None:
        import ray

        from rl.build import resolve_engine
        from rl.checks import validate
        from rl.distributed.pool import init_ray
        from rl.models import load_tokenizer
        from rl.tasks import TaskStream, build_guard_tasks, build_tasks

        validate(cfg)
        resolve_engine(cfg)  # engine=auto: decided once, here, for every worker
        self.cfg, self.run_dir, self.lc = cfg, Path(run_dir), cfg.launcher
        self.bound = self.lc.staleness_bound
        self._own_ray = not ray.is_initialized()
        init_ray(self.lc)
        self.tokenizer = load_tokenizer(cfg.model.name)
        self.tasks = TaskStream(build_tasks(cfg, "train", cfg.tasks.train_size))
        self.eval_tasks = build_tasks(cfg, "test", cfg.tasks.eval_size)
        self.guard_tasks = build_guard_tasks(cfg, self.eval_tasks, self.tasks.tasks
                                             ) if cfg.eval.every > 0 else []
        # Credit is assigned here, where the whole step is (an ArCHer encoder critic trains in
        # this process; the policy-backbone critic needs the policy and is refused).
        self.credit = build_credit(cfg, self.tokenizer)
        self.core = StepCore(cfg, self.tasks, self.tokenizer.pad_token_id, self.credit,
                             needs_tools=env_needs_tools(self._env_factory()))
        self._own_pool = pool is None
        self.pool = pool or WorkerPool(cfg, str(run_dir), config_yaml)
        ray.get([lr.set_delay.remote(learner_delay_s) for lr in self.pool.learners])
        self.restarts0 = self.pool.stats.restarts
        self.logger = RunLogger(self.run_dir, asdict(cfg), cfg.trainer.wandb,
                                cfg.trainer.wandb_project)
        self.fault_hook = fault_hook
        self.state = RunState()
        self.inflight: dict[Any, _Inflight] = {}
        self.next_submit = 0
        self.busy = {"rollout": 0.0, "learner": 0.0}
        self.counters = {"stale_dropped": 0, "carried_groups": 0, "regenerated_jobs": 0}
        self.history: list[dict[str, Any]] = []  # every logged RL row (tests, bench)
        self.last_trajectories: list[Trajectory] = []
        self.t_start = time.perf_counter()

    def fit(self) -> dict[str, dict[str, float]]:
        results = fit(self, self.cfg)
        return results

    def train_step(self, step: int) -> None:
        """One RL step: rollouts in workers -> reward, credit here -> update in the learner
        group -> weights to the workers."""
        if self.pool.latest is None or self.pool.latest.version != step:
            self.pool.publish(step)
        timer = Timer()
        self.pool.check_all()  # health check: ping every worker, restart the dead
        self.fill_pipeline(step)
        if self.fault_hook is not None:
            self.fault_hook(self, step)
        with timer("rollout_wait"):
            trajs, info = self.collect(step)
        self.last_trajectories = trajs
        with timer("reward"):
            rewards = self.core.score(trajs)
        with timer("advantage"):
            adv, credit_metrics = self.core.assign_credit(trajs)
            batch = self.core.make_batch(trajs, adv)
        with timer("update"):
            metrics = {**self.update(batch), **credit_metrics}
        with timer("sync"):
            w = self.pool.publish(step + 1)
        info["dist/weights_publish_s"] = w.publish_s
        self.log_step(step, trajs, rewards, metrics, timer, info)

    def progress(self, steps: range):
        self.next_submit, self.t_start = steps.start, time.perf_counter()
        return steps

    def fill_pipeline(self, step: int) -> None:
        """Submit rollouts of steps the staleness bound allows (always at least ``step``'s)."""
        assert self.pool.latest is not None
        published = self.pool.latest.version
        while (self.next_submit < self.cfg.trainer.steps
               and (self.next_submit <= step or self.next_submit - published <= self.bound)):
            for i, job in enumerate(self.jobs(self.next_submit)):
                self.submit(job, i % len(self.pool.rollouts))
            self.next_submit += 1

    def jobs(self, step: int) -> list[RolloutJob]:
        """A step's task groups as rollout jobs: one per worker, or one per group when partial
        rollouts are carried (finer long-tail and restart granularity, less batching)."""
        n, core = self.cfg.trainer.tasks_per_step, self.core
        tasks = core.task_batch(step)
        k = n if self.lc.carry_partial else min(n, len(self.pool.rollouts))
        bounds = [round(i * n / k) for i in range(k + 1)]
        return [RolloutJob(step, list(range(a, b)), tasks[a:b], self.cfg.algorithm.group_size,
                           seed=core.rollout_seed(step, a), group_offset=core.group_offset(step, a))
                for a, b in zip(bounds, bounds[1:]) if b > a]

    def submit(self, job: RolloutJob, worker: int) -> None:
        handle = self.pool.rollouts[worker]
        self.inflight[handle.rollout.remote(job)] = _Inflight(job, worker,
                                                              self.pool.stats.restarts)

    def collect(self, step: int) -> tuple[list[Trajectory], dict[str, float]]:
        """Wait for step ``step``'s groups (and carried ones); restart workers that die and
        re-run their jobs (same tasks and seeds: the step keeps its size)."""
        import ray

        n = self.cfg.trainer.tasks_per_step
        need = math.ceil(self.lc.partial_fraction * n) if self.lc.carry_partial else n
        results: list[RolloutResult] = []
        done_own = 0
        while done_own < need or not self.lc.carry_partial:
            mine = [r for r, x in self.inflight.items() if x.job.step <= step]
            if not mine:
                break
            ready, _ = ray.wait(mine, num_returns=1, timeout=self.lc.health_check_timeout_s)
            if not ready:  # nobody finished in a while: make sure everyone is alive
                self.pool.check_all()
                continue
            x = self.inflight.pop(ready[0])
            try:
                res: RolloutResult = ray.get(ready[0])
            except Exception:
                self.pool.check_all()
                if self.pool.stats.restarts == x.restarts_at_submit:
                    raise  # no worker died since it was sent: a real error in the rollout
                x.job.attempt += 1
                self.counters["regenerated_jobs"] += 1
                self.submit(x.job, x.worker)
                continue
            results.append(res)
            self.busy["rollout"] += res.busy_s
            if res.job.step == step:
                done_own += len(res.job.groups)
        carried = sum(len(x.job.groups) for x in self.inflight.values() if x.job.step <= step)
        self.counters["carried_groups"] += carried
        fresh = [r for r in results if step - r.policy_version <= self.bound]
        self.counters["stale_dropped"] += sum(len(r.job.groups) for r in results) - sum(
            len(r.job.groups) for r in fresh)
        trajs = [t for r in fresh for t in r.trajectories]
        stale = [step - t.info["policy_version"] for t in trajs]
        info = {"dist/staleness_mean": sum(stale) / max(len(stale), 1),
                "dist/staleness_max": float(max(stale, default=0)),
                "dist/carried_groups": float(carried),
                "dist/groups": float(sum(len(r.job.groups) for r in fresh)),
                "dist/trajectories": float(len(trajs))}
        return trajs, info

    def update(self, batch) -> dict[str, float]:
        """Every learner rank gets a shard (None for a rank without rows: it still joins the
        collective update)."""
        import ray

        if batch is None:  # every group uniform: no signal this step
            return {"update/trained_seqs": 0.0, "update/tokens": 0.0}
        ranks = self.pool.learners
        shards: list[Any] = list(batch.split(math.ceil(len(batch) / len(ranks))))
        shards += [None] * (len(ranks) - len(shards))
        outs = ray.get([lr.update.remote(s) for lr, s in zip(ranks, shards)])
        m = outs[0]
        self.busy["learner"] += m.pop("time/learner_update")
        return {**m, "update/trained_seqs": float(len(batch)),
                "update/tokens": float(batch.attention_mask.sum())}

    def run_sft(self) -> None:
        """The cold start: demonstrations built here (no model needed), each batch sharded over
        the learner ranks."""
        import ray

        from rl.sft import sft_trajectories

        ranks = self.pool.learners
        ray.get([lr.set_lr.remote(self.cfg.sft.effective_lr(self.cfg.learner.lora.enabled),
                                  self.cfg.sft.warmup_steps) for lr in ranks])
        factory = self._env_factory()  # sets self._native_tools
        # no generation_config: the model lives in the learner actors, not here
        demos = sft_trajectories(self.cfg.sft, self.tokenizer, factory,
                                 native_tools=self._native_tools, train_tasks=self.tasks.tasks)
        steps = 0
        for epoch, chunk in self.core.sft_batches(demos):
            shards = [dist_shard(chunk, r, len(ranks)) for r in range(len(ranks))]
            batches = [Batch.from_trajectories(s, torch.zeros(len(s)), self.tokenizer.pad_token_id)
                       if s else None for s in shards]
            m = ray.get([lr.sft_update.remote(b) for lr, b in zip(ranks, batches)])[0]
            steps += 1
            self.logger.log(-1, {"stage": "sft", "sft/step": steps, "sft/epoch": epoch, **m})
            print(f"[sft] epoch {epoch} step {steps}: nll {m['sft/nll']:.3f}", flush=True)
        ray.get([lr.set_lr.remote(self.cfg.learner.lr) for lr in ranks])
        self.pool.publish(self.state.step)

    def start_rl(self) -> None:
        import ray

        snap = needs_reference(self.cfg)
        ray.get([lr.start_rl.remote(snap, self.cfg.learner.lr, self.cfg.learner.warmup_steps)
                 for lr in self.pool.learners])

    def _env_factory(self):
        from rl.build import build_env_factory

        factory, self._native_tools = build_env_factory(self.cfg)
        return factory

    def evaluate(self, label: str, tasks: list[Task] | None = None) -> dict[str, float]:
        import ray

        t0 = time.perf_counter()
        res = ray.get(self.pool.rollouts[0].evaluate.remote(
            self.eval_tasks if tasks is None else list(tasks)))
        res["seconds"] = time.perf_counter() - t0
        self.logger.log(self.state.step, {f"eval_{label}/{k}": v for k, v in res.items()
                                          if isinstance(v, float)})
        print(eval_line(label, res), flush=True)
        return res

    # -- best-checkpoint guard (eval.every; rl/step.py) ------------------------------------------
    def log_metrics(self, row: dict[str, float]) -> None:
        self.logger.log(self.state.step, row)

    def mark_best(self, step: int) -> Path | None:
        from rl.checkpoint import mark_best

        # learner rank 0 writes the checkpoints here (the run dir is shared, as for results.md)
        return mark_best(self.run_dir / "checkpoints", step, self.cfg.trainer.keep_last)

    def load_checkpoint_weights(self, path: Path | str) -> None:
        """Collective on the learner ranks, then published to the rollout workers."""
        import ray

        ray.get([lr.load_weights.remote(str(path)) for lr in self.pool.learners])
        self.pool.publish(self.state.step)

    # -- bookkeeping -----------------------------------------------------------------------------
    def log_step(self, step: int, trajs: list[Trajectory], rewards: torch.Tensor,
                 metrics: dict[str, float], timer: Timer, info: dict[str, float]) -> None:
        wall = time.perf_counter() - self.t_start
        loads = self.pool.drain_acks()
        row: dict[str, Any] = {
            **self.core.metrics_row(trajs, rewards, metrics, timer.times), **info,
            "dist/policy_version": float(step + 1),
            "dist/restarts": float(self.pool.stats.restarts - self.restarts0),
            "dist/rollout_busy_frac": self.busy["rollout"] / (wall * len(self.pool.rollouts)),
            "dist/learner_busy_frac": self.busy["learner"] / wall,
            "dist/steps_per_s": (len(self.history) + 1) / wall,
            "dist/elapsed_s": wall,
            **{f"dist/{k}": float(v) for k, v in self.counters.items()},
        }
        for warning in self.core.tools.observe(step, trajs):
            print(warning, flush=True)
        if loads:
            row["dist/weights_load_s"] = max(loads)
        for warning in self.core.health.observe(step, row):  # once per run: collapse signs
            print(warning, flush=True)
        self.history.append(row)
        self.logger.log(step, row)
        self.logger.samples(step, trajs[: self.cfg.trainer.samples_to_log], self.tokenizer)
        health = "".join(f" {k}={v}" for k, v in health_postfix(row).items())
        print(f"[ray] step {step}: reward {row['reward/mean']:.3f} staleness "
              f"{info['dist/staleness_mean']:.2f} (max {info['dist/staleness_max']:.0f}) "
              f"restarts {row['dist/restarts']:.0f} step_s {sum(timer.times.values()):.1f}"
              f"{health}", flush=True)

    def parts_state(self) -> dict[str, Any]:
        return {"credit": self.credit.state_dict(), "data": self.tasks.state_dict(),
                "tools": self.core.tools.state_dict(), "health": self.core.health.state_dict()}

    def resume(self) -> None:
        import ray

        from rl.checkpoint import config_resume

        if not config_resume(self.cfg):  # trainer.resume or the top-level alias, "false" = off
            return
        out = ray.get([lr.resume.remote(["credit", "data", "tools", "health"], str(self.run_dir))
                       for lr in self.pool.learners])[0]
        if out is None:
            print("[turnrl] resume: no complete checkpoint found, starting fresh")
            return
        st, parts = out["state"], out["parts"]
        self.credit.load_state_dict(parts["credit"])
        self.tasks.load_state_dict(parts["data"])
        self.core.tools.load_state_dict(parts["tools"])
        self.core.health.load_state_dict(parts["health"])
        self.state = RunState.from_dict(st)  # step, stage, results, the guard's best
        self.pool.publish(self.state.step)
        print(f"[turnrl] resumed from {out['path']} at step {self.state.step} "
              f"({self.state.stage})")

    def save(self) -> str:
        """Collective: every learner rank writes its part; rank 0 also the controller's."""
        import ray

        from rl.checkpoint import log_offsets

        s = self.state
        run_state = {**s.to_dict(), "tasks_per_step": self.cfg.trainer.tasks_per_step,
                     "logs": log_offsets(self.run_dir)}
        parts = self.parts_state()
        return ray.get([lr.save.remote(run_state, parts, str(self.run_dir))
                        for lr in self.pool.learners])[0]

    def memory_mb(self) -> list[float]:
        """Peak resident memory of every learner rank (MiB)."""
        import ray

        return ray.get([lr.memory_mb.remote() for lr in self.pool.learners])

    def parameter_digest(self) -> list[float]:
        import ray

        return ray.get([lr.parameter_digest.remote() for lr in self.pool.learners])[0]

    def finish(self) -> None:
        import ray

        self.pool.drain_acks(wait=True)
        if self.state.results:
            print(write_results(self.run_dir, self.state.results), flush=True)
        self.logger.plot()
        self.logger.close()
        if self._own_pool:
            self.pool.shutdown()
        if self._own_ray:
            ray.shutdown()
