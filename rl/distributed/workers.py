"""Ray actor classes, one role each. Plain classes here; :mod:`rl.distributed.pool` wraps them
with ``ray.remote`` and places them (importing this module needs no Ray).

* :class:`RolloutWorker`: an engine (HF or vLLM) and an agent loop; samples the task groups it is
  given with the newest weights it has, tagging each trajectory with that policy version.
* :class:`LearnerWorker`: one learner rank: a learner and checkpoint access. The controller
  sends every collective call (update, SFT step, weights, save, resume) to every rank; rank 0
  returns the weights the controller publishes.
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
        model = (load_model(cfg.model.name, cfg.model.dtype, cfg.model.device)
                 if cfg.engine == "hf" else None)
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


class _StateBox:
    """A checkpoint part whose state another process computed (the controller's credit and
    task stream, saved by learner rank 0 and handed back to the controller on resume)."""

    def __init__(self, state: Any = None) -> None:
        self.state = state

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: Any) -> None:
        self.state = state


class LearnerWorker:
    """One learner rank: a learner and checkpoint access, nothing else (no engine, no envs).

    Every call that is collective for the learner (update, SFT step, weights under ZeRO-3,
    save, resume) is sent by the controller to every rank. ``delay_s`` slows every update down
    (latency injection for the staleness test and benchmarks); 0 in real runs.
    """

    def __init__(self, cfg: Config, run_dir: str, rank: int, world_size: int,
                 master_addr: str = "127.0.0.1", master_port: int = 29500,
                 config_yaml: str = "", delay_s: float = 0.0) -> None:
        from rl.learner import dist, make_learner
        from rl.models import load_model, load_tokenizer
        from rl.step import resolved_loss, seed_everything

        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size),
                           "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": master_addr,
                           "MASTER_PORT": str(master_port)})
        dist.init_from_env(device=cfg.model.device)
        _set_threads(cfg.launcher.threads_per_actor)
        seed_everything(cfg.trainer.seed)
        self.cfg, self.run_dir, self.config_yaml = cfg, Path(run_dir), config_yaml
        self.rank, self.delay_s = rank, delay_s
        self.tokenizer = load_tokenizer(cfg.model.name)
        self.learner = make_learner(load_model(cfg.model.name, cfg.model.dtype, cfg.model.device),
                                    cfg.learner, device=cfg.model.device)
        self.loss_cfg = resolved_loss(cfg)

    def ping(self) -> int:
        return self.rank

    def set_delay(self, seconds: float) -> None:
        self.delay_s = seconds

    def memory_mb(self) -> float:
        """Resident memory of this actor's process (MiB)."""
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # -- training --------------------------------------------------------------------------------
    def update(self, batch) -> dict[str, float]:
        t0 = time.perf_counter()
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        m = self.learner.update(batch, self.loss_cfg, self.cfg.rollout.temperature)
        m["time/learner_update"] = time.perf_counter() - t0
        return m

    def sft_update(self, batch) -> dict[str, float]:
        return self.learner.sft_update(batch)

    def set_lr(self, lr: float, warmup_steps: int | None = None) -> None:
        self.learner.set_lr(lr, warmup_steps=warmup_steps)

    def start_rl(self, snapshot_reference: bool, lr: float, warmup_steps: int) -> None:
        """Fresh moments and RL's own warm-up (counted from RL's first step), the reference."""
        self.learner.reset_optimizer()
        self.learner.set_lr(lr, warmup_steps=warmup_steps)
        if snapshot_reference:
            self.learner.snapshot_reference()

    def weights(self) -> dict[str, torch.Tensor] | None:
        """Full policy weights (LoRA merged) as CPU tensors on rank 0, for the object store;
        None on the other ranks. Every rank must be called (collective under ZeRO-3)."""
        out = {}
        for k, v in self.learner.named_weights():
            if self.rank == 0:
                out[k] = v.detach().to("cpu", copy=True).contiguous()
        return out if self.rank == 0 else None

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, run_state: dict[str, Any], parts: dict[str, Any],
             run_dir: str | None = None) -> str:
        """Collective. ``parts``: the controller's stateful parts' states (rank 0 saves them);
        ``run_dir``: the controller's run (actors may serve several runs)."""
        from rl import checkpoint as ckpt

        if run_dir is not None:
            self.run_dir = Path(run_dir)
        boxes = {k: _StateBox(v) for k, v in parts.items()} if self.rank == 0 else {}
        return str(ckpt.save_checkpoint(
            self.run_dir / "checkpoints", int(run_state["step"]), learner=self.learner,
            tokenizer=self.tokenizer, trainer_state=run_state, parts=boxes,
            config_yaml=self.config_yaml, keep_last=self.cfg.trainer.keep_last))

    def resume(self, part_names: list[str], run_dir: str | None = None) -> dict[str, Any] | None:
        """Collective: load the checkpoint ``trainer.resume`` names. Returns ``{"state",
        "parts", "path"}`` (parts only on rank 0), or None when there is none."""
        from rl import checkpoint as ckpt

        if run_dir is not None:
            self.run_dir = Path(run_dir)
        spec = ckpt.config_resume(self.cfg)
        path = ckpt.resolve_resume(spec, self.run_dir)
        if path is None:
            return None
        boxes = {k: _StateBox() for k in part_names} if self.rank == 0 else {}
        state = ckpt.load_checkpoint(path, learner=self.learner, parts=boxes)
        ckpt.check_resume_config(path, state, self.cfg, self.config_yaml)
        return {"state": state, "parts": {k: b.state for k, b in boxes.items()},
                "path": str(path)}

    def load_weights(self, path: str) -> None:
        """Collective: a checkpoint's policy weights only (the guard's best, rl/step.py)."""
        self.learner.load_pretrained(Path(path) / "model")

    def parameter_digest(self) -> list[float]:
        """Sum and sum of squares of every weight (tests compare runs with it)."""
        s = sq = 0.0
        for _, v in self.learner.named_weights():
            s += float(v.double().sum())
            sq += float(v.double().pow(2).sum())
        return [s, sq]

    def close(self) -> None:
        pass
