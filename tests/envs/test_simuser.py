"""The simulated-user env: slot answers, progress by hand, the final call, episode ends."""

from __future__ import annotations

import asyncio
import json

import pytest

from envs.base import replay_actions
from envs.checker import check_env
from envs.tasks.simuser import DOMAINS, SimUserEnv, make_tasks, mentioned_slots
from rl.types import Task

REF = {"name": "book_table", "arguments": {"restaurant": "Sakura", "day": "Friday", "people": 4}}
TASK = Task(id="s", prompt="I'd like to book a table.", data={
    "domain": "restaurant", "slots": dict(REF["arguments"]), "revealed": [],
    "reference_calls": [REF], "max_turns": 6})


def call(name: str, **args: object) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"


def run(task: Task, actions: list[str]):
    return asyncio.run(replay_actions(SimUserEnv(), task, actions))


def test_mentioned_slots_in_text_order() -> None:
    d = DOMAINS["restaurant"]
    assert mentioned_slots(d, "Which day?") == ["day"]
    assert mentioned_slots(d, "How many guests, and when?") == ["people", "day"]
    assert mentioned_slots(d, "When, and how many people?") == ["day", "people"]
    assert mentioned_slots(d, "Hello!") == []
    assert mentioned_slots(DOMAINS["pizza"], "Which day?") == []  # not a pizza slot


def test_user_reveals_one_slot_per_question_with_progress() -> None:
    msgs, res = run(TASK, [
        "Which restaurant?",  # 1 of 3 hidden slots: 1/3
        "Which restaurant?",  # repeated: answered again, no progress
        "When, and for how many people?",  # two slots named: only the first (day) is revealed
        "How many people?",  # 1/3
        "Thanks!",  # nothing asked
        call("book_table", restaurant="sakura", day="Friday", people=4),
    ])
    replies = [m["content"] for m in msgs if m["role"] in ("user", "tool")][1:]
    assert replies[:5] == ["At Sakura.", "At Sakura.", "On Friday.", "4 people.",
                           "Ask me what you need to know."]
    assert [r.reward for r in res] == pytest.approx([1 / 3, 0, 1 / 3, 1 / 3, 0, 0])
    assert res[-1].terminated and res[-1].info["success"] is True
    assert "Booked a table at sakura" in replies[5]


def test_opening_reveal_changes_the_progress_unit() -> None:
    task = Task(id="s2", prompt="I'd like to book a table for 4 people.",
                data={**TASK.data, "revealed": ["people"]})
    _, res = run(task, ["How many people?", "Which day?", "Which restaurant?"])
    assert [r.reward for r in res] == pytest.approx([0.0, 0.5, 0.5])


def test_wrong_call_ends_the_episode_unsuccessfully() -> None:
    _, res = run(TASK, [call("book_table", restaurant="Sakura", day="Monday", people=4)])
    assert res[0].terminated and res[0].info["success"] is False
    (c,) = res[0].info["tool_calls"]
    assert c.error is None and c.arguments["day"] == "Monday"
    _, res = run(TASK, [call("order_pizza", size="large", topping="ham", quantity=1)])
    assert res[0].terminated and res[0].info["success"] is False


def test_bad_calls_are_errors_and_the_episode_goes_on() -> None:
    _, res = run(TASK, [
        call("book_table", restaurant="Sakura", day="Friday", people="four"),  # wrong type
        call("book_table", restaurant="Sakura"),  # missing arguments
        call("teleport", where="Mars"),  # unknown tool
        "<tool_call>{not json</tool_call>",
        call("book_table", restaurant="Sakura", day="Friday", people=4)
        + call("book_table", restaurant="Sakura", day="Friday", people=5),  # 2nd is not run
    ])
    assert [r.terminated for r in res] == [False] * 4 + [True]
    assert all(r.info["tool_errors"] == 1 for r in res)
    assert "must be integer" in res[0].messages[0]["content"]
    assert "missing required" in res[1].messages[0]["content"]
    assert "unknown tool 'teleport'" in res[2].messages[0]["content"]
    assert res[-1].info["success"] is True
    assert res[-1].info["tool_calls"][1].error.startswith("not run")


def test_answer_ends_without_success_and_truncation() -> None:
    _, res = run(TASK, ["<answer>done</answer>"])
    assert res[0].terminated and res[0].info["success"] is False
    _, res = run(TASK, ["Hi"] * 7)
    assert len(res) == 6 and res[-1].truncated and not res[-1].terminated
    assert [r.truncated for r in res[:-1]] == [False] * 5 and res[-1].info["success"] is False


def test_tasks_deterministic_split_and_sources() -> None:
    a, b = make_tasks("mixed", "train", 80, seed=1), make_tasks("mixed", "train", 80, seed=1)
    assert [(t.prompt, t.data) for t in a] == [(t.prompt, t.data) for t in b]
    test = make_tasks("mixed", "test", 40, seed=1)
    key = lambda t: json.dumps(t.data["reference_calls"], sort_keys=True)  # noqa: E731
    assert not {key(t) for t in a} & {key(t) for t in test}
    assert {t.data["domain"] for t in a} == {"restaurant", "pizza", "transfer"}
    assert {t.data["domain"] for t in make_tasks("pizza", "train", 10)} == {"pizza"}
    assert any(t.data["revealed"] for t in a) and any(not t.data["revealed"] for t in a)
    with pytest.raises(KeyError, match="'mixed', 'restaurant'"):
        make_tasks("hotel", "train", 1)
    with pytest.raises(ValueError, match="not a simuser task"):
        asyncio.run(SimUserEnv().reset(Task(id="x", prompt="?")))


def test_demonstrations_succeed_and_collect_all_progress() -> None:
    for task in make_tasks("mixed", "train", 60) + make_tasks("mixed", "test", 30):
        actions = SimUserEnv().demonstration(task)
        _, res = run(task, actions)
        assert res[-1].terminated and res[-1].info["success"], task.id
        assert sum(r.reward for r in res) == pytest.approx(1.0)


def test_conformance_with_both_formats() -> None:
    for fmt in ("hermes-prompt", "hermes"):
        env = SimUserEnv(tool_format=fmt)
        for task in make_tasks("mixed", "test", 3):
            asyncio.run(check_env(env, task))


def test_replayed_trajectory_scores(tokenizer) -> None:
    from rewards.compose import compose, compose_turns
    from rl.sft import replay

    near = call("book_table", restaurant="Sakura", day="Monday", people=4)  # 2 of 3 args right
    traj = replay(tokenizer, SimUserEnv, TASK, ["Which day?", near])
    total, terms = compose(traj, {"env_success": 1.0, "call_match_outcome": 0.5})
    assert terms == pytest.approx({"env_success": 0.0, "call_match_outcome": 5 / 6})
    assert total == pytest.approx(5 / 12)
    per_turn, terms = compose_turns(traj, {"env_progress": 1.0, "call_match": 1.0,
                                           "tool_success": 1.0})
    assert per_turn == pytest.approx([1 / 3, 5 / 6 + 1.0])
    good = replay(tokenizer, SimUserEnv, TASK, SimUserEnv().demonstration(TASK))
    assert compose(good, {"env_success": 1.0, "call_match_outcome": 1.0})[1] == {
        "env_success": 1.0, "call_match_outcome": 1.0}


@pytest.mark.parametrize("env, source", [("simuser", "mixed"), ("guess", "listed"),
                                         ("math", "mixed")])
def test_build_tasks_asks_the_configured_env(env: str, source: str) -> None:
    from envs.base import make_env
    from rl.build import build_tasks
    from rl.config import load_config, to_dataclass

    cfg = to_dataclass(load_config([f"env={env}"]))
    assert cfg.tasks.source == source
    tasks = build_tasks(cfg, "test", 3)
    assert len(tasks) == 3
    fresh = make_env(env)  # each env resets with its own tasks and demonstrates them
    asyncio.run(check_env(fresh, tasks[0]))
    cfg.tasks.source = "nope"
    with pytest.raises(KeyError, match="nope"):
        build_tasks(cfg, "test", 1)
