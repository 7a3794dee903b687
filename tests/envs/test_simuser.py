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
    # PARTIAL_WEIGHT (0.5) * 2/3: a near miss earns less than half of the right call
    assert terms == pytest.approx({"env_success": 0.0, "call_match_outcome": 1 / 3})
    assert total == pytest.approx(1 / 6)
    per_turn, terms = compose_turns(traj, {"env_progress": 1.0, "call_match": 1.0,
                                           "tool_success": 1.0})
    assert per_turn == pytest.approx([1 / 3, 1 / 3 + 1.0])
    good = replay(tokenizer, SimUserEnv, TASK, SimUserEnv().demonstration(TASK))
    assert compose(good, {"env_success": 1.0, "call_match_outcome": 1.0})[1] == {
        "env_success": 1.0, "call_match_outcome": 1.0}


@pytest.mark.parametrize("env, source", [("simuser", "mixed"), ("guess", "listed"),
                                         ("math", "mixed")])
def test_build_tasks_asks_the_configured_env(env: str, source: str) -> None:
    from envs.base import make_env
    from rl.config import load_config, to_dataclass
    from rl.tasks import build_tasks

    cfg = to_dataclass(load_config([f"env={env}"]))
    assert cfg.tasks.source == source
    tasks = build_tasks(cfg, "test", 3)
    assert len(tasks) == 3
    fresh = make_env(env)  # each env resets with its own tasks and demonstrates them
    asyncio.run(check_env(fresh, tasks[0]))
    cfg.tasks.source = "nope"
    with pytest.raises(KeyError, match="nope"):
        build_tasks(cfg, "test", 1)


# ---------------------------------------------------------------------------------------------
# The LLM-simulated user (envs/tasks/llm_user.py), with a scripted stand-in engine


class ScriptedUserEngine:
    """Engine-protocol stand-in: records the user model's prompts, returns scripted replies."""

    def __init__(self, tokenizer, replies: list[str]) -> None:
        self.tok, self.replies = tokenizer, list(replies)
        self.prompts: list[str] = []
        self.samplings: list = []

    def generate(self, requests, sampling):
        from types import SimpleNamespace

        self.samplings.append(sampling)
        out = []
        for r in requests:
            self.prompts.append(self.tok.decode(r.prompt_ids))
            ids = self.tok(self.replies.pop(0), add_special_tokens=False)["input_ids"]
            ids.append(self.tok.eos_token_id)
            out.append(SimpleNamespace(token_ids=ids, logprobs=[0.0] * len(ids),
                                       finish_reason="stop"))
        return out

    def update_weights(self, named_tensors) -> None:
        raise AssertionError("the user model never trains")


def test_llm_user_goal_reaches_the_user_prompt_not_the_agent(tokenizer) -> None:
    from envs.tasks.llm_user import LLMUser

    engine = ScriptedUserEngine(tokenizer, ["I want to eat out.", "At Sakura.",
                                            "Friday, please.", "We are 4."])
    env = SimUserEnv(user_model=LLMUser(engine, tokenizer))
    msgs, res = asyncio.run(replay_actions(env, TASK, [
        "Which restaurant?", "Which day?", "How many people?",
        call("book_table", restaurant="Sakura", day="Friday", people=4)]))
    goal = "Details: restaurant = Sakura, day = Friday, people = 4."
    assert len(engine.prompts) == 4 and all(goal in p for p in engine.prompts)
    agent_context = json.dumps(msgs)
    assert "Details:" not in agent_context and "Your goal" not in agent_context
    assert [m["content"] for m in msgs if m["role"] == "user"] == [
        "I want to eat out.", "At Sakura.", "Friday, please.", "We are 4."]
    # the user model sees the agent's question as the user side, its own opening as assistant
    assert "<|im_start|>user\nWhich restaurant?" in engine.prompts[1]
    assert "<|im_start|>assistant\nI want to eat out." in engine.prompts[1]
    assert "tool_call" not in "".join(engine.prompts)  # neither the agent's system prompt
    assert [r.reward for r in res] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])
    assert res[-1].info["success"] is True
    assert all(s.temperature == 0.0 for s in engine.samplings)  # greedy by default


def test_llm_user_opening_reveals_and_tokens_carry_no_loss(tokenizer) -> None:
    from envs.tasks.llm_user import LLMUser
    from rl.sft import replay

    replies = ["Book a table at Sakura for 4 people.", "Friday."]
    engine = ScriptedUserEngine(tokenizer, replies)
    user = LLMUser(engine, tokenizer)
    actions = ["Which day?", call("book_table", restaurant="Sakura", day="Friday", people=4)]
    traj = replay(tokenizer, lambda: SimUserEnv(user_model=user), TASK, actions)
    assert [t.reward for t in traj.turns] == pytest.approx([1.0, 0.0])  # 1 of 1 hidden slot
    trained = tokenizer.decode([i for i, m in zip(traj.token_ids, traj.loss_mask) if m])
    assert "Which day?" in trained and "Friday." not in trained and "Sakura for 4" not in trained
    assert "Friday." in tokenizer.decode(traj.token_ids)


def test_compose_llm_user_paraphrases_and_falls_back(tokenizer) -> None:
    from envs.tasks.compose import ComposeEnv
    from envs.tasks.compose import make_tasks as compose_tasks
    from envs.tasks.llm_user import LLMUser

    task = compose_tasks("mixed", "train", 1, seed=5, turns=2, unanswerable=0.0)[0]
    t1, t2 = task.data["turns"]
    engine = ScriptedUserEngine(tokenizer, ["Hi! " + t1["text"], "Something else entirely."])
    env = ComposeEnv(user_model=LLMUser(engine, tokenizer))
    msgs, res = asyncio.run(replay_actions(env, task, env.demonstration(task)))
    users = [m["content"] for m in msgs if m["role"] == "user"]
    assert users == ["Hi! " + t1["text"], t2["text"]]  # the 2nd dropped the details: template
    assert res[-1].info["success"] and res[-1].info["user_fallbacks"] == 1
    assert all(t1["text"] in p for p in engine.prompts[:1])
    assert t2["text"] in engine.prompts[1] and "in your own words" not in json.dumps(msgs)


def test_llm_user_runs_on_the_hf_engine(tokenizer, tiny_model) -> None:
    from envs.tasks.llm_user import LLMUser
    from rl.rollout.engines.hf import HFEngine

    user = LLMUser(HFEngine(tiny_model, tokenizer), tokenizer, max_new_tokens=5, temperature=1.0)
    a = asyncio.run(user.reply("Order a large pizza.", [{"role": "assistant", "content": "Hi"}]))
    b = asyncio.run(user.reply("Order a large pizza.", [{"role": "assistant", "content": "Hi"}]))
    assert isinstance(a, str) and a == b and user.calls == 2  # seeded from the prompt
    with pytest.raises(TypeError, match="generate"):
        LLMUser(object(), tokenizer)
    with pytest.raises(TypeError, match="reply"):
        SimUserEnv(user_model="not a user")


def test_config_user_model_builds_a_frozen_llm_user(tiny_model_dir) -> None:
    from envs.tasks.llm_user import LLMUser
    from rl.build import build_env_factory
    from rl.config import load_config, to_dataclass

    cfg = to_dataclass(load_config(["env=simuser", f"+env.kwargs.user_model={tiny_model_dir}"]))
    factory, _ = build_env_factory(cfg)
    a, b = factory(), factory()
    assert isinstance(a.user_model, LLMUser) and a.user_model is b.user_model  # built once
    model = a.user_model.engine.model
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    msgs, _ = asyncio.run(a.reset(TASK))
    assert msgs[1]["role"] == "user" and isinstance(msgs[1]["content"], str)
