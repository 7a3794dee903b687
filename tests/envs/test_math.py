"""The math env: task generators (reproducible, disjoint splits, correct answers) and
demonstrations that replay through the env to a full outcome reward."""

from __future__ import annotations

import asyncio
import re

import pytest

from envs.base import make_env, replay_actions
from envs.tasks.draw import split_of
from envs.tasks.math import MathEnv, make_tasks, math_sources
from envs.tools.calculator import evaluate, format_number
from rewards.compose import compose
from rl.types import Task, ToolCall, Trajectory, Turn

OWN = ["word", "arith", "mixed"]
RG_WITH_EXPR = ["basic_arithmetic", "chain_sum"]


def _ops(expr: str) -> int:
    return len(re.findall(r"(?<=[\d)])[-+*/]", expr))


def test_sources_registered() -> None:
    assert set(math_sources()) == {*OWN, *RG_WITH_EXPR, "gsm_symbolic"}
    with pytest.raises(KeyError, match="valid names"):
        make_tasks("nope", "train", 1)
    with pytest.raises(ValueError, match="split"):
        make_tasks("word", "validation", 1)
    with pytest.raises(ValueError, match="max_ops"):
        make_tasks("word", "train", 1, max_ops=4)


@pytest.mark.parametrize("source", [*OWN, *RG_WITH_EXPR])
def test_reproducible_and_prefix_stable(source: str) -> None:
    a = make_tasks(source, "train", 40, seed=3)
    assert a == make_tasks(source, "train", 40, seed=3)
    assert a[:10] == make_tasks(source, "train", 10, seed=3)
    assert [t.prompt for t in a] != [t.prompt for t in make_tasks(source, "train", 40, seed=4)]
    assert len({t.prompt for t in a}) == len(a) and len({t.id for t in a}) == len(a)


@pytest.mark.parametrize("source", [*OWN, *RG_WITH_EXPR])
def test_splits_are_disjoint(source: str) -> None:
    train = make_tasks(source, "train", 300, seed=0) + make_tasks(source, "train", 300, seed=1)
    test = make_tasks(source, "test", 100, seed=0)
    assert {t.data["expression"] for t in train}.isdisjoint({t.data["expression"] for t in test})
    assert {t.prompt for t in train}.isdisjoint({t.prompt for t in test})
    assert all(split_of(t.data["expression"]) == "test" for t in test)


@pytest.mark.parametrize("source", [*OWN, *RG_WITH_EXPR])
def test_answers_equal_expressions(source: str) -> None:
    for t in make_tasks(source, "train", 200, seed=0):
        assert isinstance(t.answer, (int, float))
        assert float(evaluate(t.data["expression"])) == pytest.approx(float(t.answer)), t


def test_own_generators_difficulty() -> None:
    word = make_tasks("word", "train", 300, seed=0)
    assert {t.data["template"] for t in word} == {
        "shopping",
        "sharing",
        "rates",
        "ages",
        "savings",
        "boxes",
        "tanks",
    }
    for t in word:  # word problems: whole non-negative answers, ops as declared
        assert isinstance(t.answer, int) and t.answer >= 0, t
        assert _ops(t.data["expression"]) == t.data["ops"], t
    assert {t.data["ops"] for t in word} == {1, 2, 3}
    for t in make_tasks("arith", "train", 200, seed=0, min_ops=2, max_ops=2, max_value=9):
        assert _ops(t.data["expression"]) == 2 and isinstance(t.answer, int), t
        assert all(int(n) <= 12 for n in re.findall(r"\d+", t.data["expression"])), t
    one = make_tasks("word", "train", 50, seed=0, min_ops=1, max_ops=1)
    assert all(_ops(t.data["expression"]) == 1 for t in one)


def _trajectory(task: Task, actions: list[str], results: list, answer: str | None) -> Trajectory:
    turns = [
        Turn(start=0, end=0, text=a, finish_reason="stop", tool_calls=r.info["tool_calls"])
        for a, r in zip(actions, results, strict=True)
    ]
    return Trajectory(
        task=task,
        token_ids=[],
        loss_mask=[],
        logprobs=[],
        prompt_len=0,
        turns=turns,
        info={"final_answer": answer},
    )


async def _replay_all(env: MathEnv, tasks: list[Task]) -> list[tuple[float, dict[str, float]]]:
    scores = []
    for task in tasks:
        actions = env.demonstration(task)
        messages, results = await replay_actions(env, task, actions)
        assert results[-1].terminated and len(results) == len(actions)
        assert all(r.info["tool_errors"] == 0 for r in results)
        assert [m["role"] for m in messages][:2] == ["system", "user"]
        traj = _trajectory(task, actions, results, results[-1].info["final_answer"])
        scores.append(compose(traj, {"outcome": 1.0, "format": 1.0, "tool_use": 1.0}))
    return scores


@pytest.mark.parametrize("source", [*OWN, *RG_WITH_EXPR])
def test_demonstrations_replay_to_full_reward(source: str) -> None:
    env = MathEnv()
    tasks = make_tasks(source, "test", 30, seed=0)
    for _total, terms in asyncio.run(_replay_all(env, tasks)):
        assert terms == {"outcome": 1.0, "format": 1.0, "tool_use": 1.0}


def test_demonstration_shape() -> None:
    env = MathEnv()
    task = Task(id="t", prompt="What is 6*7?", answer=42, data={"expression": "6*7"})
    assert env.demonstration(task) == [
        '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>',
        "<answer>42</answer>",
    ]
    no_expr = Task(id="u", prompt="?", answer=5.0, data={"expression": None})
    assert env.demonstration(no_expr) == ["<answer>5</answer>"]


def test_python_tool_demonstrations() -> None:
    env = MathEnv(tools=("python",))
    tasks = make_tasks("word", "test", 3, seed=0)
    assert env.demonstration(tasks[0])[0].startswith('<tool_call>{"name": "python"')
    for _, terms in asyncio.run(_replay_all(env, tasks)):
        assert terms["outcome"] == 1.0 and terms["format"] == 1.0


def test_gsm_symbolic_answer_only() -> None:
    tasks = make_tasks("gsm_symbolic", "train", 3, seed=0)
    env = MathEnv()
    for t in tasks:
        assert t.data["expression"] is None and isinstance(t.answer, (int, float))
        assert env.demonstration(t) == [f"<answer>{format_number(t.answer)}</answer>"]
    for _, terms in asyncio.run(_replay_all(env, tasks)):
        assert terms == {"outcome": 1.0, "format": 1.0, "tool_use": 0.0}


def test_env_messages_and_formats() -> None:
    import envs.tasks  # noqa: F401  (registers "math")

    env = make_env("math")
    task = make_tasks("word", "train", 1)[0]
    messages, info = asyncio.run(env.reset(task, seed=0))
    assert messages[1] == {"role": "user", "content": task.prompt}
    system = messages[0]["content"]
    assert "calculator" in system and "<answer>" in system and "<tools>" in system
    native = make_env("math", tool_format="hermes")
    assert native.format.native_tools and "<tools>" not in native.system_prompt  # type: ignore[attr-defined]
    assert "<answer>" in native.system_prompt  # type: ignore[attr-defined]
    both = MathEnv(tools=("calculator", "python"))
    assert [t["function"]["name"] for t in both.tools] == ["calculator", "python"]


def test_wrong_answers_score_zero() -> None:
    env = MathEnv()
    task = Task(id="t", prompt="What is 6*7?", answer=42, data={"expression": "6*7"})
    actions = [env.demonstration(task)[0], "<answer>41</answer>"]
    _, results = asyncio.run(replay_actions(env, task, actions))
    traj = _trajectory(task, actions, results, results[-1].info["final_answer"])
    assert compose(traj, {"outcome": 1.0, "format": 0.5})[1] == {"outcome": 0.0, "format": 1.0}
    assert isinstance(results[0].info["tool_calls"][0], ToolCall)
