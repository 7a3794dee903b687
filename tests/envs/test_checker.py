"""Every registered env passes the conformance checker; the checker catches broken envs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import envs.tasks  # noqa: F401  (registers the task envs)
from envs.base import HasExampleTasks, StepResult, make_env, registered_envs
from envs.checker import check_env
from envs.tasks.math import MathEnv
from rl.types import Task


@pytest.mark.parametrize("name", registered_envs())
def test_every_registered_env_conforms(name: str) -> None:
    env = make_env(name)
    assert isinstance(env, HasExampleTasks), (
        f"env '{name}' must provide example_tasks(n, seed=...) for the conformance test"
    )
    for task in env.example_tasks(2, seed=0):
        asyncio.run(check_env(env, task))


def test_math_env_variants_conform() -> None:
    task = MathEnv().example_tasks(1)[0]
    for env in (MathEnv(tool_format="hermes"), MathEnv(tools=("calculator", "python"))):
        asyncio.run(check_env(env, task))


class GoodEnv:
    """A minimal env that passes; the tests below break one thing at a time."""

    def __init__(self) -> None:
        self.tools: list[dict[str, Any]] = [
            {
                "type": "function",
                "function": {
                    "name": "echo",
                    "description": "Echo.",
                    "parameters": {
                        "type": "object",
                        "properties": {"text": {"type": "string"}},
                        "required": ["text"],
                    },
                },
            }
        ]
        self.n = 0

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[dict], dict]:
        return [{"role": "user", "content": task.prompt}], {}

    async def step(self, action_text: str) -> StepResult:
        return StepResult(messages=[], terminated=True, success=action_text == "hi")

    async def close(self) -> None:
        pass


TASK = Task(id="x", prompt="hi")


def _fails(env: Any, match: str) -> None:
    with pytest.raises(AssertionError, match=match):
        asyncio.run(check_env(env, TASK))


def test_checker_accepts_good_env() -> None:
    asyncio.run(check_env(GoodEnv(), TASK))


def test_checker_catches_broken_envs() -> None:
    class RaisesOnGarbage(GoodEnv):
        async def step(self, action_text: str) -> StepResult:
            if "<tool_call>" in action_text:
                raise ValueError("cannot parse")
            return await super().step(action_text)

    class NonBoolTerminated(GoodEnv):
        async def step(self, action_text: str) -> StepResult:
            return StepResult(messages=[], terminated=1)  # type: ignore[arg-type]

    class NanReward(GoodEnv):
        async def step(self, action_text: str) -> StepResult:
            return StepResult(messages=[], reward=float("nan"), terminated=True)

    class BadMessage(GoodEnv):
        async def step(self, action_text: str) -> StepResult:
            return StepResult(messages=[{"role": "robot", "content": "x"}])

    class NotDeterministic(GoodEnv):
        async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[dict], dict]:
            self.n += 1
            return [{"role": "user", "content": f"{task.prompt} {self.n}"}], {}

    class BadSchema(GoodEnv):
        def __init__(self) -> None:
            super().__init__()
            self.tools[0]["function"]["parameters"]["required"] = ["missing"]

    class NoClose:
        tools: list[dict] = []

        async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[dict], dict]:
            return [], {}

    _fails(RaisesOnGarbage(), "raised ValueError: cannot parse")
    _fails(NonBoolTerminated(), "terminated must be a bool")
    _fails(NanReward(), "reward must be finite")
    _fails(BadMessage(), "role must be one of")
    _fails(NotDeterministic(), "same messages")
    _fails(BadSchema(), "required key 'missing'")
    _fails(NoClose(), "does not satisfy the Env protocol")


class _Forgets(GoodEnv):
    async def step(self, action_text: str) -> StepResult:
        return StepResult(messages=[], terminated=True)  # no verdict: would score 0 silently


class _BadTyped(GoodEnv):
    async def step(self, action_text: str) -> StepResult:
        return StepResult(messages=[], terminated=True, success=True,
                          info={"tool_calls": ["not a ToolCall"]})


class _LegacyInfo(GoodEnv):
    async def step(self, action_text: str) -> StepResult:
        return StepResult(messages=[], terminated=True,
                          info={"success": True, "final_answer": "4", "tool_errors": 0})


def test_checker_enforces_the_typed_step_contract() -> None:
    _fails(_Forgets(), "must carry the env's verdict")
    _fails(_BadTyped(), "tool_calls must be a list of ToolCall")
    asyncio.run(check_env(_LegacyInfo(), TASK))  # the older info keys fill the typed fields
    res = asyncio.run(_LegacyInfo().step(""))
    assert (res.success, res.final_answer, res.tool_errors) == (True, "4", 0)
