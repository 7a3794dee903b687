"""Pieces of rl/distributed that need no Ray: the per-trajectory time limit, placement bundles,
launcher config validation, what a remote env's proxy learns at reset."""

from __future__ import annotations

import asyncio

import pytest

from envs.base import StepResult
from rl.config import LauncherConfig
from rl.distributed.envs import TimeLimitEnv, with_time_limit
from rl.distributed.pool import bundles
from rl.types import Task


class _SlowEnv:
    tools: list = []

    def __init__(self, step_s: float) -> None:
        self.step_s, self.steps, self.closed = step_s, 0, False

    async def reset(self, task, *, seed=None):
        return [{"role": "user", "content": task.prompt}], {}

    async def step(self, action_text):
        await asyncio.sleep(self.step_s)
        self.steps += 1
        return StepResult([{"role": "tool", "content": "ok"}], reward=1.0)

    async def close(self):
        self.closed = True


def test_time_limit_truncates_a_hanging_step_and_skips_steps_after_the_deadline():
    async def run():
        inner = _SlowEnv(step_s=0.05)
        env = TimeLimitEnv(inner, limit_s=0.2)
        await env.reset(Task("t", "hi"))
        first = await env.step("a")  # within budget: runs normally
        assert not first.truncated and first.reward == 1.0
        inner.step_s = 10.0  # a tool that hangs: cut at the deadline, not after 10 s
        t0 = asyncio.get_running_loop().time()
        hung = await env.step("b")
        assert hung.truncated and hung.info["time_limit"]
        assert asyncio.get_running_loop().time() - t0 < 1.0
        after = await env.step("c")  # past the deadline: the action does not run at all
        assert after.truncated and inner.steps == 1
        await env.close()
        assert inner.closed

    asyncio.run(run())


def test_no_limit_returns_the_factory_itself():
    def factory():
        return _SlowEnv(0.0)

    assert with_time_limit(factory, 0.0) is factory
    assert isinstance(with_time_limit(factory, 5.0)(), TimeLimitEnv)


def test_a_remote_env_proxy_gets_the_tools_and_format_of_its_env():
    """The agent loop reads ``env.format`` (stop tokens, structured turns): a proxy has it."""
    import envs.tasks  # noqa: F401  (registers the envs)
    from envs.base import make_env
    from rl.distributed.envs import EnvWorker, RemoteEnv

    worker = EnvWorker.__new__(EnvWorker)  # without its config: only the env factory matters
    worker.factory, worker.envs = (lambda: make_env("math", tool_format="harmony")), {}

    class Method:  # what an actor handle's method looks like: .remote(...) -> awaitable
        def __init__(self, fn):
            self.remote = fn

    actor = type("Actor", (), {"reset": Method(worker.reset)})()
    env = RemoteEnv(actor, "r0")
    assert env.format is None
    asyncio.run(env.reset(Task("t", "hi")))
    assert env.format.name == "harmony" and env.format.stop_tokens == ("<|call|>", "<|return|>")
    assert [t["function"]["name"] for t in env.tools] == ["calculator"]
    assert TimeLimitEnv(env, 5.0).format is env.format  # the wrapper the workers put around it


def test_placement_bundles():
    lc = LauncherConfig(learner_ranks=2, num_rollout_workers=3, cpus_per_learner=2,
                        gpus_per_learner=1, cpus_per_rollout_worker=1, gpus_per_rollout_worker=1)
    specs, lb, rb = bundles(lc)
    assert specs == [{"CPU": 2, "GPU": 1}] * 2 + [{"CPU": 1, "GPU": 1}] * 3
    assert lb == [0, 1] and rb == [2, 3, 4]
    lc.placement, lc.gpus_per_learner, lc.gpus_per_rollout_worker = "colocated", 0.5, 0.5
    specs, lb, rb = bundles(lc)  # rollout worker i shares learner rank i's device
    assert specs == [{"CPU": 3, "GPU": 1.0}] * 2 + [{"CPU": 1, "GPU": 0.5}]
    assert lb == [0, 1] and rb == [0, 1, 2]


@pytest.mark.parametrize("field,value,match", [
    ("kind", "slurm", "kind"), ("mode", "fast", "mode"), ("placement", "x", "placement"),
    ("max_staleness", -1, "max_staleness"), ("num_rollout_workers", 0, "num_rollout_workers"),
    ("partial_fraction", 0.0, "partial_fraction"),
])
def test_bad_launcher_config_is_refused_with_its_name(field, value, match):
    lc = LauncherConfig()
    setattr(lc, field, value)
    with pytest.raises(ValueError, match=match):
        lc.validate()


def test_sync_mode_means_bound_zero():
    assert LauncherConfig(mode="sync", max_staleness=3).staleness_bound == 0
    assert LauncherConfig(mode="async", max_staleness=3).staleness_bound == 3
