"""Builds the parts a run needs from a config, the stage's evaluation helper and ``turnrl
eval``'s policy and parts (the run's tasks are rl/tasks.py's, the SFT demonstrations rl/sft.py's,
the weight I/O of checkpoints rl/models.py's).

Kept out of trainer.py so the loop stays on one screen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from envs.base import Env, make_env
from rl.config import Config
from rl.models import load_model, load_policy, load_tokenizer
from rl.rollout.engines.base import Engine
from rl.tasks import TaskStream, build_guard_tasks, build_tasks
from rl.types import Task

if TYPE_CHECKING:
    from rl.evaluate import EvalResult


@dataclass
class Parts:
    tokenizer: Any
    model: torch.nn.Module
    env_factory: Callable[[], Env]
    native_tools: bool
    train_tasks: TaskStream | None
    """None when built for evaluation only (``build_parts(..., train=False)``: ``turnrl eval``
    builds the held-out split alone, so a split with no train entries still evaluates)."""
    eval_tasks: list[Task]
    make_engine: Callable[..., Engine]
    """``make_engine(policy, shared=True)``: shared = generate with the learner's own module."""
    guard_tasks: list[Task] = field(default_factory=list)
    """The best-checkpoint guard's validation tasks (``eval.every`` > 0; :func:`build_guard_tasks`),
    disjoint from ``eval_tasks`` and the train tasks; empty when the guard is off."""


def vllm_unusable(cfg: Config) -> str | None:
    """Why ``engine=auto`` cannot pick vLLM for this run, or None when it can: vLLM is
    installed, this is not one rank of a torchrun world (in-process vLLM under torchrun is not
    done: BENCHMARKS.md, GPU readiness), and vLLM imports and finds a device it supports (the
    CUDA build a GPU, the CPU build the CPU). Imports vLLM's platform module (seconds), never a
    model. Under ``launcher=ray`` the rollout workers run the engine, on nodes whose devices this
    driver cannot see: there, installed is enough."""
    import importlib.util
    import os

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed"
    world = os.environ.get("WORLD_SIZE", "1").strip()
    if world.isdigit() and int(world) > 1:
        return f"one of {world} torchrun ranks, where in-process vLLM is not supported"
    if cfg.launcher.kind == "ray":
        return None
    try:
        from vllm.platforms import current_platform

        if current_platform.is_unspecified():
            return "vllm finds no device it supports"
    except Exception as e:  # a broken install (e.g. a CUDA torchvision beside CPU torch)
        why = (str(e).strip().splitlines() or [""])[0][:160]
        return f"vllm does not import ({type(e).__name__}: {why})"
    return None


def resolve_engine(cfg: Config) -> str:
    """``engine=auto`` (the default): vLLM where it is installed and usable (the fast path; see
    :func:`vllm_unusable`), else the in-process HF engine. Sets ``cfg.engine`` to the choice and
    prints it with the reason, once (later calls see the concrete engine and print nothing)."""
    import os

    if cfg.engine == "auto":
        why = vllm_unusable(cfg)
        cfg.engine = "hf" if why else "vllm"
        if os.environ.get("RANK", "0") == "0":  # under torchrun: once, not once per rank
            print(f"[turnrl] engine: {cfg.engine} (engine=auto: "
                  f"{why or 'vllm is installed and usable'}; engine=hf / engine=vllm to "
                  "choose)", flush=True)
    return cfg.engine


def build_env_factory(cfg: Config) -> tuple[Callable[[], Env], bool]:
    from envs.formats import get_format, resolve_format

    fmt = cfg.env.format
    if fmt.partition("+")[0] == "auto":  # env.format=auto: picked from the chat template
        fmt, why = resolve_format(fmt, load_tokenizer(cfg.model.name))
        print(f"[turnrl] env.format=auto -> {fmt} ({why})")
    native = get_format(fmt).native_tools
    kwargs = dict(cfg.env.kwargs)
    if isinstance(kwargs.get("user_model"), str):  # a frozen LLM user, shared by every episode
        kwargs["user_model"] = build_user_model(cfg, kwargs["user_model"])

    def factory() -> Env:
        return make_env(cfg.env.name, tool_format=fmt, **kwargs)

    return factory, native


def build_user_model(cfg: Config, name: str) -> Any:
    """``env.kwargs.user_model=<model>``: an LLM-simulated user (envs.tasks.llm_user). Under
    ``launcher=ray`` (with Ray up) a proxy to the run's one user model actor
    (rl.user_actor); otherwise loaded in this process."""
    if cfg.launcher.kind == "ray":
        import functools

        from rl.user_actor import shared_user

        # the actor loads the model itself, with this (picklable) builder
        remote = shared_user(cfg, name, functools.partial(build_local_user_model, cfg, name,
                                                          max_batch=16))
        if remote is not None:
            return remote
    return build_local_user_model(cfg, name)


def build_local_user_model(cfg: Config, name: str, max_batch: int = 1) -> Any:
    """The LLM user on its own HF engine and frozen model; nothing ever updates its weights."""
    from envs.tasks.llm_user import LLMUser
    from rl.rollout.engines.hf import HFEngine

    tokenizer = load_tokenizer(name)
    model = load_model(name, cfg.model.dtype, cfg.model.device).eval().requires_grad_(False)
    return LLMUser(HFEngine(model, tokenizer, seed=cfg.trainer.seed), tokenizer,
                   seed=cfg.trainer.seed, max_batch=max_batch)


def build_parts(cfg: Config, model: torch.nn.Module | None = None, *,
                train: bool = True) -> Parts:
    import envs.tasks  # noqa: F401  (registers the envs)

    resolve_engine(cfg)
    tokenizer = load_tokenizer(cfg.model.name)
    if model is None:
        model = load_model(cfg.model.name, cfg.model.dtype, cfg.model.device)
    env_factory, native = build_env_factory(cfg)

    def make_engine(policy: torch.nn.Module, shared: bool = True) -> Engine:
        if cfg.engine == "hf":
            from rl.rollout.engines.hf import HFEngine

            return HFEngine(policy, tokenizer, shared=shared, seed=cfg.trainer.seed)
        if cfg.engine == "vllm":
            from rl.models import resolve_model_path
            from rl.rollout.engines.vllm import VLLMEngine

            # Starts from the model's folder; a policy that already differs from it (resume,
            # SFT) reaches the engine through the trainer's update_weights calls. Its seed
            # follows trainer.seed as the Ray rollout workers' does (worker 0's): on CPU the
            # per-trajectory schedule samples from the stream vLLM seeds with it, so without
            # it every trainer.seed sampled the same rollouts.
            return VLLMEngine(
                resolve_model_path(cfg.model.name), tokenizer,
                replace(cfg.vllm, seed=cfg.vllm.seed + cfg.trainer.seed),
                max_model_len=cfg.rollout.max_total_tokens, lora=cfg.learner.lora.enabled,
                policy=policy,
            )
        raise ValueError(f"unknown engine '{cfg.engine}' (available: hf, vllm)")

    train_tasks = TaskStream(build_tasks(cfg, "train", cfg.tasks.train_size)) if train else None
    eval_tasks = build_tasks(cfg, "test", cfg.tasks.eval_size)
    return Parts(
        tokenizer=tokenizer, model=model, env_factory=env_factory, native_tools=native,
        train_tasks=train_tasks, eval_tasks=eval_tasks, make_engine=make_engine,
        guard_tasks=build_guard_tasks(cfg, eval_tasks, train_tasks.tasks)
        if train_tasks is not None and cfg.eval.every > 0 else [],
    )


def evaluate(cfg: Config, parts: Parts, engine: Engine,
             tasks: Sequence[Task] | None = None) -> dict[str, float]:
    """Held-out evaluation through the harness (rl/evaluate.py): every metric's value, its 95%
    interval as ``<name>_lo`` / ``<name>_hi`` (Wilson for rates, Student t for means) and
    ``n`` (episodes)."""
    from rl.evaluate import evaluate_tasks

    res = evaluate_tasks(cfg, parts, engine, list(tasks if tasks is not None
                                                  else parts.eval_tasks))
    out: dict[str, float] = {}
    for name, iv in res.metrics.items():
        out[name] = iv.value
        out[f"{name}_lo"], out[f"{name}_hi"] = iv.low, iv.high
    out["n"] = float(len(res.trajectories))
    from rewards.outcome import success as solved

    # per-task verdicts in task order: the stage table's paired comparison between stages
    out["success_by_task"] = [float(solved(t)) for t in res.trajectories]  # type: ignore[assignment]
    return out


def run_eval(cfg: Config, checkpoint: str | None = None, out_dir: Path | None = None,
             n_samples: int = 1, seeds: Sequence[int] = (10_007,)) -> EvalResult:
    """``turnrl eval``: load the policy (``model.name`` = hub name / exported folder / embedded
    model; ``checkpoint`` = a training checkpoint on top of it), build the held-out split and an
    engine, evaluate ``tasks.eval_size`` held-out tasks through the harness (rl/evaluate.py),
    write the eval folder when ``out_dir`` is given."""
    import time

    from rl.evaluate import evaluate_tasks, write_eval_folder

    t0 = time.perf_counter()
    resolve_engine(cfg)  # engine=auto decided before the LoRA choice below reads it
    if cfg.engine == "vllm" and checkpoint:
        # merged weights are pushed to the engine: it needs no LoRA support of its own
        cfg = replace(cfg, learner=replace(cfg.learner, lora=replace(cfg.learner.lora,
                                                                      enabled=False)))
    policy = load_policy(cfg, checkpoint)
    policy.eval()
    parts = build_parts(cfg, model=policy, train=False)  # the eval split only
    engine = _eval_engine(cfg, parts, policy, from_checkpoint=bool(checkpoint))
    res = evaluate_tasks(cfg, parts, engine, parts.eval_tasks, n_samples, seeds=list(seeds))
    res.settings.update(checkpoint=checkpoint, seconds=round(time.perf_counter() - t0, 1))
    if out_dir is not None:
        write_eval_folder(res, Path(out_dir), parts.tokenizer)
    return res


def _eval_engine(cfg: Config, parts: Parts, policy: torch.nn.Module,
                 from_checkpoint: bool) -> Engine:
    """An engine generating with ``policy``; vLLM starts from the model folder and receives
    the checkpoint's (merged) weights."""
    if cfg.engine != "vllm":
        return parts.make_engine(policy)
    if hasattr(policy, "merge_and_unload"):  # a PEFT checkpoint: serve merged weights
        policy = policy.merge_and_unload()
    engine = parts.make_engine(policy)
    if from_checkpoint:
        engine.update_weights((n, p.detach()) for n, p in policy.named_parameters())
    return engine
