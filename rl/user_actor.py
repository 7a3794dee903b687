"""The LLM-simulated user under ``launcher=ray``: one actor holds the frozen user model.

With ``env.kwargs.user_model=<model>`` (envs/tasks/llm_user.py), the local driver loads the user
model once per process. Under Ray every rollout worker and env worker builds its own envs, so
each would load its own copy; instead :func:`shared_user` (called by
``rl.build.build_user_model`` when ``launcher.kind=ray`` and Ray is up, with the builder the
actor loads the model with) finds or creates ONE
named :class:`UserModelActor` per (model, seed) in the run's Ray namespace and hands the envs a
:class:`RemoteUser` proxy with the same ``async reply(goal, conversation) -> str`` as
:class:`envs.tasks.llm_user.LLMUser`.

* The driver's controller builds its env factory first (``RayController.__init__``), so the
  driver creates and owns the actor: it outlives rollout / env worker restarts and ends with the
  driver's job. Workers look it up by name (``get_if_exists``: atomic get-or-create).
* The actor is async: concurrent replies from many episodes and workers overlap, and its
  ``LLMUser`` batches greedy requests that arrive together (``max_batch``, ``batch_wait_s``).
* It never trains: it has no ``update_weights`` / weight method, the controller never publishes
  to it, its model is in eval mode with ``requires_grad`` off
  (``rl.build.build_local_user_model``), and :meth:`UserModelActor.trainable_parameters` says so.
  Its replies reach the policy only as ``user`` messages, i.e. observation tokens with loss
  mask 0 (tests/rl/distributed/test_user_actor.py asserts both).
* Resources: the actor asks for its own ``launcher.cpus_per_user_model`` /
  ``launcher.gpus_per_user_model`` (default 1 CPU, no GPU), outside the run's placement group.

The hidden goal travels from the env to the actor only (in the ``reply`` call); the agent's
context gets nothing but the reply text, as in-process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from rl.types import Message

ACTOR_PREFIX = "turnrl-user-model"


class UserModelActor:
    """Ray actor (async), one role: write user turns with a frozen LLM user.

    ``build`` is a picklable zero-argument callable that returns the
    :class:`envs.tasks.llm_user.LLMUser` (engine and tokenizer included) inside the actor.
    """

    def __init__(self, build: Callable[[], Any]) -> None:
        self.user = build()
        if not callable(getattr(self.user, "reply", None)):
            raise TypeError(f"UserModelActor: build() must return an object with an async "
                            f"reply(goal, conversation), got {type(self.user).__name__}")

    async def reply(self, goal: str, conversation: list[Message]) -> str:
        return str(await self.user.reply(goal, conversation))

    def ping(self) -> int:
        """Replies generated so far."""
        return int(getattr(self.user, "calls", 0))

    def stats(self) -> dict[str, int]:
        return {"replies": int(getattr(self.user, "calls", 0)),
                "engine_calls": int(getattr(self.user, "engine_calls", 0))}

    def trainable_parameters(self) -> int:
        """Parameters of the user model with ``requires_grad`` (0: frozen). An engine without a
        torch model (a scripted stand-in) has none."""
        model = getattr(getattr(self.user, "engine", None), "model", None)
        params = getattr(model, "parameters", None)
        if params is None:
            return 0
        return sum(p.numel() for p in params() if p.requires_grad)


class RemoteUser:
    """What the envs of a Ray worker hold instead of an ``LLMUser``: the same ``reply``, served
    by the shared :class:`UserModelActor`."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def reply(self, goal: str, conversation: Sequence[Message]) -> str:
        # An ObjectRef is awaitable from any asyncio loop (the agent loop's, an env actor's).
        return str(await self.actor.reply.remote(goal, [dict(m) for m in conversation]))


def actor_name(name: str, seed: int) -> str:
    """One actor per (user model, sampling seed) in a Ray namespace."""
    return f"{ACTOR_PREFIX}-{hashlib.sha256(f'{name}/{seed}'.encode()).hexdigest()[:12]}"


def get_user_actor(name: str, build: Callable[[], Any], *, num_cpus: float = 0.0,
                   num_gpus: float = 0.0) -> Any:
    """The named :class:`UserModelActor` ``name``, created with ``build`` if it does not exist
    yet (atomic in Ray: concurrent callers get the same actor)."""
    import ray

    cls = ray.remote(UserModelActor)
    return cls.options(name=name, get_if_exists=True, num_cpus=num_cpus,
                       num_gpus=num_gpus).remote(build)


def shared_user(cfg: Any, name: str, build: Callable[[], Any]) -> RemoteUser | None:
    """``env.kwargs.user_model=<name>`` under ``launcher=ray``: a proxy to the run's one user
    model actor, which ``build`` (picklable, zero arguments: the wiring's
    ``rl.build.build_local_user_model`` with its arguments bound) creates inside the actor the
    first time; None when Ray is not initialised in this process (the caller then loads the
    model in process, as under ``launcher=local``)."""
    import ray

    if not ray.is_initialized():
        return None
    lc = cfg.launcher
    actor = get_user_actor(actor_name(name, cfg.trainer.seed), build,
                           num_cpus=lc.cpus_per_user_model,
                           num_gpus=lc.gpus_per_user_model)
    ray.get(actor.ping.remote())  # built (a model that cannot load fails the run here)
    return RemoteUser(actor)
