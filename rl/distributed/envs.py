"""Env placement for the Ray launcher: a per-trajectory time limit, env worker actors, and the
proxy a rollout worker uses to reach them.

Split (see README "Ray launcher"): by default (``launcher.num_env_workers = 0``) every rollout
worker hosts its own envs; their tools run model-written code in the sandbox's worker
processes, children of the rollout worker actor, never of the driver or the learner. With
``num_env_workers > 0`` the envs (and so their sandboxes) live in :class:`EnvWorker` actors and
rollout workers hold :class:`RemoteEnv` proxies that speak the same async Env protocol.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

from envs.base import Env, StepResult
from rl.types import Message, Task


class TimeLimitEnv:
    """Wraps an env with a wall-clock budget per episode, counted from ``reset``.

    Once the budget is spent, the next ``step`` ends the episode as truncated without running
    the action (its tool calls would start new work on an episode that is over); a ``step`` that
    is still running at the deadline is cancelled and also ends the episode truncated. So one
    slow trajectory cannot hold its whole step back by more than one model turn.
    """

    def __init__(self, env: Env, limit_s: float) -> None:
        self.env = env
        self.limit_s = limit_s
        self._deadline = float("inf")

    @property
    def tools(self) -> list[dict[str, Any]]:
        return self.env.tools

    def __getattr__(self, name: str) -> Any:  # demonstration(), etc. of the wrapped env
        return getattr(self.env, name)

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict]:
        self._deadline = time.monotonic() + self.limit_s
        return await self.env.reset(task, seed=seed)

    async def step(self, action_text: str) -> StepResult:
        left = self._deadline - time.monotonic()
        if left <= 0:
            return StepResult([], truncated=True, info={"time_limit": True})
        try:
            return await asyncio.wait_for(self.env.step(action_text), timeout=left)
        except asyncio.TimeoutError:
            return StepResult([], truncated=True, info={"time_limit": True})

    async def close(self) -> None:
        await self.env.close()


def with_time_limit(factory: Callable[[], Env], limit_s: float) -> Callable[[], Env]:
    """``factory`` whose envs carry a per-trajectory wall-clock limit (``limit_s <= 0``: none)."""
    if limit_s <= 0:
        return factory
    return lambda: TimeLimitEnv(factory(), limit_s)  # type: ignore[return-value]


class EnvWorker:
    """Ray actor (async): hosts envs by id. One role: run env resets and steps (tools, sandbox).

    Its methods are coroutines, so many episodes' slow tool calls overlap in one actor.
    """

    def __init__(self, cfg, worker_id: int = 0) -> None:
        import envs.tasks  # noqa: F401  (registers the envs)
        from rl.build import build_env_factory

        self.worker_id = worker_id
        self.factory, _ = build_env_factory(cfg)
        self.envs: dict[str, Env] = {}

    def ping(self) -> int:
        return self.worker_id

    async def reset(self, env_id: str, task: Task, seed: int | None):
        """``(messages, info, tools, format)``: the env's tools and tool-call format (or None)
        travel to its proxy, where the agent loop reads them."""
        env = self.envs[env_id] = self.factory()
        messages, info = await env.reset(task, seed=seed)
        return messages, info, list(getattr(env, "tools", []) or []), getattr(env, "format", None)

    async def step(self, env_id: str, action_text: str) -> StepResult:
        return await self.envs[env_id].step(action_text)

    async def close(self, env_id: str) -> None:
        env = self.envs.pop(env_id, None)
        if env is not None:
            await env.close()

    def num_envs(self) -> int:
        return len(self.envs)


class RemoteEnv:
    """The Env protocol on an :class:`EnvWorker` actor (``await`` on Ray object refs)."""

    _ids = itertools.count()

    def __init__(self, actor, owner: str) -> None:
        self.actor = actor
        self.env_id = f"{owner}-{next(self._ids)}"
        self.tools: list[dict[str, Any]] = []
        self.format: Any = None  # the remote env's tool-call format, known after reset

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict]:
        messages, info, self.tools, self.format = await self.actor.reset.remote(
            self.env_id, task, seed)
        return messages, info

    async def step(self, action_text: str) -> StepResult:
        return await self.actor.step.remote(self.env_id, action_text)

    async def close(self) -> None:
        await self.actor.close.remote(self.env_id)


class RemoteEnvFactory:
    """Env factory over env worker actors, round-robin. ``actors`` can be swapped on restart."""

    def __init__(self, actors: list, owner: str) -> None:
        self.actors = list(actors)
        self.owner = owner
        self._next = itertools.count()

    def __call__(self) -> Env:
        actor = self.actors[next(self._next) % len(self.actors)]
        return RemoteEnv(actor, self.owner)  # type: ignore[return-value]
