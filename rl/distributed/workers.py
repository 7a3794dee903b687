"""Ray actor classes, one role each. Plain classes here; :mod:`rl.distributed.pool` wraps them
with ``ray.remote`` and places them (importing this module needs no Ray).

* :class:`RolloutWorker`: an engine (HF or vLLM) and an agent loop; samples the task groups it is
  given with the newest weights it has, tagging each trajectory with that policy version.
* :class:`LearnerWorker`: one learner rank. It wraps the local :class:`rl.trainer.Trainer`
  (without its rollout engine) so SFT, the RL update, checkpointing and resume are the exact code
  of the local path; rank 0 publishes its weights to the object store.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rl.config import Config
from rl.types import Task, Trajectory


@dataclass
class RolloutJob:
    """Task groups of one step for one worker. ``groups`` index into the step's task list."""

    step: int
    groups: list[int]
    tasks: list[Task]
    n_samples: int
    seed: int
    group_offset: int
    """Group id of ``tasks[0]``; the job's groups are contiguous."""
    attempt: int = 0
    """Re-submissions of this job after a worker died (regenerated trajectories)."""


@dataclass
class RolloutResult:
    job: RolloutJob
    trajectories: list[Trajectory]
    policy_version: int
    busy_s: float
    """Wall seconds the worker spent in this job."""
    worker_id: int = 0
    info: dict[str, Any] = field(default_factory=dict)


def _set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def build_rollout_engine(cfg: Config, tokenizer, model: torch.nn.Module, seed: int):
    """A rollout engine that owns its weights (never shared with a learner in this process)."""
    if cfg.engine == "hf":
        from rl.rollout.engines.hf import HFEngine

        return HFEngine(model, tokenizer, shared=False, seed=seed)
    if cfg.engine == "vllm":
        from rl.models import resolve_model_path
        from rl.rollout.engines.vllm import VLLMEngine

        vcfg = copy.copy(cfg.vllm)
        vcfg.seed = cfg.vllm.seed + seed
        return VLLMEngine(resolve_model_path(cfg.model.name), tokenizer, vcfg,
                          max_model_len=cfg.rollout.max_total_tokens, lora=False, policy=model)
    raise ValueError(f"unknown engine '{cfg.engine}' (available: hf, vllm)")


class RolloutWorker:
    """Samples trajectories. Weights arrive by version through :meth:`set_weights`; calls on one
    actor run in order, so a rollout submitted after ``set_weights(v)`` samples with ``>= v``."""

    def __init__(self, cfg: Config, worker_id: int, env_actors: list | None = None) -> None:
        import envs.tasks  # noqa: F401  (registers the envs)
        from rl.build import build_env_factory
        from rl.distributed.envs import RemoteEnvFactory, with_time_limit
        from rl.models import load_model, load_tokenizer
        from rl.rollout.agent_loop import AgentLoop

        _set_threads(cfg.launcher.threads_per_actor)
        self.cfg, self.worker_id = cfg, worker_id
        torch.manual_seed(cfg.trainer.seed + 7919 * worker_id)
        self.tokenizer = load_tokenizer(cfg.model.name)
        model = load_model(cfg.model.name, cfg.model.dtype) if cfg.engine == "hf" else None
        self.engine = build_rollout_engine(cfg, self.tokenizer, model,
                                           seed=cfg.trainer.seed + 1000 * worker_id)
        local_factory, self.native_tools = build_env_factory(cfg)
        self.remote_envs = RemoteEnvFactory(env_actors, f"r{worker_id}") if env_actors else None
        factory = self.remote_envs or local_factory
        self.env_factory = with_time_limit(factory, cfg.launcher.trajectory_timeout_s)
        self.loop = AgentLoop(self.engine, self.tokenizer, self.env_factory, cfg.rollout,
                              native_tools=self.native_tools)
        self.version = -1  # the base model's weights; the controller publishes version 0 next

    def ping(self) -> tuple[int, int]:
        return self.worker_id, self.version

    def set_env_actors(self, actors: list) -> None:
        """New env worker handles after an env worker restart."""
        if self.remote_envs is not None:
            self.remote_envs.actors = list(actors)

    def set_weights(self, version: int, weights_ref: list) -> dict[str, float]:
        """Pull weights ``version`` from the object store (``weights_ref = [ObjectRef]``, wrapped so
        Ray does not resolve it before the call) and load them into the engine."""
        import ray

        t0 = time.perf_counter()
        weights = ray.get(weights_ref[0])
        t1 = time.perf_counter()
        self.engine.update_weights(weights.items())
        self.version = version
        return {"version": float(version), "fetch_s": t1 - t0,
                "load_s": time.perf_counter() - t1}

    def rollout(self, job: RolloutJob) -> RolloutResult:
        t0 = time.perf_counter()
        trajs = self.loop.run(job.tasks, n_samples=job.n_samples, seed=job.seed,
                              group_offset=job.group_offset)
        for t in trajs:
            t.info["policy_version"] = self.version
            t.info["rollout_worker"] = self.worker_id
            t.info.pop("reset_info", None)  # env internals need not travel to the driver
        return RolloutResult(job, trajs, self.version, time.perf_counter() - t0, self.worker_id)

    def evaluate(self, tasks: list[Task]) -> dict[str, float]:
        """Held-out evaluation with this worker's engine (rl.build.evaluate)."""
        from types import SimpleNamespace

        from rl.build import evaluate

        parts = SimpleNamespace(tokenizer=self.tokenizer, env_factory=self.env_factory,
                                native_tools=self.native_tools, eval_tasks=tasks)
        return evaluate(self.cfg, parts, self.engine, tasks)  # type: ignore[arg-type]


class LearnerWorker:
    """One learner rank; ``update`` takes this rank's rows of the batch.

    ``delay_s`` slows every update down (latency injection for the staleness test and
    benchmarks); 0 in real runs.
    """

    def __init__(self, cfg: Config, run_dir: str, rank: int, world_size: int,
                 master_addr: str = "127.0.0.1", master_port: int = 29500,
                 config_yaml: str = "", delay_s: float = 0.0) -> None:
        from rl.learner import dist
        from rl.trainer import Trainer

        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size),
                           "LOCAL_RANK": "0", "MASTER_ADDR": master_addr,
                           "MASTER_PORT": str(master_port)})
        dist.init_from_env()
        _set_threads(cfg.launcher.threads_per_actor)
        local = copy.deepcopy(cfg)
        # The learner never samples: its Trainer gets the in-process HF engine sharing its
        # parameters (a no-op sync, no vLLM start-up here); the driver logs RL steps.
        local.engine, local.launcher.kind, local.trainer.num_threads = "hf", "local", 0
        local.trainer.wandb = "disabled"  # the driver owns the run's wandb
        self.trainer = Trainer(local, Path(run_dir), config_yaml)
        self.rank, self.delay_s = rank, delay_s

    def ping(self) -> int:
        return self.rank

    def set_delay(self, seconds: float) -> None:
        self.delay_s = seconds

    def resume(self) -> dict[str, Any]:
        self.trainer.maybe_resume()
        t = self.trainer
        return {"step": t.step, "stage": t.stage, "results": t.results}

    def run_sft(self) -> float:
        t0 = time.perf_counter()
        self.trainer.run_sft()
        return time.perf_counter() - t0

    def update(self, batch) -> dict[str, float]:
        t0 = time.perf_counter()
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        m = self.trainer.update(batch)
        m["time/learner_update"] = time.perf_counter() - t0
        return m

    def weights(self) -> dict[str, torch.Tensor]:
        """Full policy weights (LoRA merged) as CPU tensors, for the object store."""
        return {k: v.detach().to("cpu").contiguous()
                for k, v in self.trainer.learner.named_weights()}

    def save(self, step: int, stage: str, results: dict) -> str:
        t = self.trainer
        t.step, t.stage, t.results = step, stage, results
        return str(t.save())

    def close(self) -> None:
        self.trainer.logger.close()
