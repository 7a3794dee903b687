"""The guessing game: data, oracle, progress rewards by hand, episode ends, demonstrations."""

from __future__ import annotations

import asyncio
import json

import pytest

from envs.base import replay_actions
from envs.checker import check_env
from envs.tasks.guess import DATA, GuessEnv, load_world, make_tasks, read_question
from rl.types import Task

WORLD = load_world()
# hidden cat among 8; attributes (data/objects.json): animals cat, hamster, goldfish, parrot;
# of those, pets: all four; with legs: cat, hamster, parrot; fitting in a hand: hamster, goldfish
CANDS = ["cat", "hamster", "goldfish", "parrot", "car", "apple", "hammer", "chair"]
TASK = Task(id="g", prompt="?", answer="cat", data={"candidates": CANDS, "max_turns": 5})


def run(env: GuessEnv, task: Task, actions: list[str]):
    return asyncio.run(replay_actions(env, task, actions))


def test_world_data() -> None:
    assert len(WORLD.objects) == 109 and len(WORLD.attributes) == 22
    assert len({WORLD.truth[o] for o in WORLD.objects}) == 109  # every object told apart
    assert WORLD.answer("cat", "is_animal") and not WORLD.answer("car", "is_animal")
    assert WORLD.answer("car", "has_wheels") and WORLD.answer("car", "bigger_than_a_person")


def test_bad_data_is_refused(tmp_path) -> None:
    good = json.loads(DATA.read_text())
    dup = dict(good, objects=[*good["objects"], {"name": "kitty", "yes": ["has_legs", "is_a_pet",
                                                                         "is_animal"]}])
    (tmp_path / "dup.json").write_text(json.dumps(dup))
    with pytest.raises(ValueError, match="kitty and cat have the same attributes"):
        load_world(str(tmp_path / "dup.json"))
    clash = dict(good, objects=[*good["objects"], {"name": "sweet bun", "yes": ["is_food"]}])
    (tmp_path / "clash.json").write_text(json.dumps(clash))
    with pytest.raises(ValueError, match="keyword 'sweet' of is_sweet overlaps object 'sweet bun'"):
        load_world(str(tmp_path / "clash.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="bad guessing-game data"):
        load_world(str(tmp_path / "broken.json"))


@pytest.mark.parametrize("text, kind, name", [
    ("Is it an animal?", "attribute", "is_animal"),
    ("Can you EAT it?", "attribute", "is_food"),
    ("Does it swim in the sea?", "attribute", "found_in_water"),
    ("Is it a hot air balloon?", "guess", "hot air balloon"),
    ("Is it an ant?", "unknown", ""),  # no such object; "ant" is not "elephant"
    ("Is it a cat or a dog?", "guess", "cat"),  # one listed object named: a guess
    ("Is it a cat or a car?", "several", ""),
    ("Is it an animal that can fly?", "several", ""),
    ("Hello there", "unknown", ""),
])
def test_oracle_reads_questions(text: str, kind: str, name: str) -> None:
    r = read_question(WORLD, text)
    assert (r.kind, r.name) == (kind, name)


def test_answers_and_progress_by_hand() -> None:
    msgs, res = run(GuessEnv(), TASK, [
        "Is it an animal?",  # yes: 8 -> 4 candidates, progress 4/8
        "Is it an animal?",  # nothing new: 0
        "Does it fit in a hand?",  # no: hamster, goldfish out: 4 -> 2, progress 2/8
        "Is it a parrot?",  # a wrong guess-question: parrot out, 2 -> 1, progress 1/8
        "<answer>Cat</answer>",  # right final answer: terminated, success
    ])
    replies = [m["content"] for m in msgs if m["role"] == "user"][1:]
    assert replies == ["Yes.", "Yes.", "No.", "No, it is not parrot.", "Yes! It is cat."]
    assert [r.reward for r in res] == [0.5, 0.0, 0.25, 0.125, 0.0]
    assert [r.terminated for r in res] == [False] * 4 + [True]
    assert res[-1].info["success"] is True and res[-1].info["final_answer"] == "cat"


def test_guess_question_wins_and_wrong_answer_loses() -> None:
    _, res = run(GuessEnv(), TASK, ["Is it a cat?"])
    assert res[0].terminated and res[0].info["success"] and res[0].info["final_answer"] == "cat"
    _, res = run(GuessEnv(), TASK, ["<answer>a hamster</answer>"])
    assert res[0].terminated and not res[0].info["success"]
    assert res[0].info["final_answer"] == "hamster"
    _, res = run(GuessEnv(), TASK, ["<answer>unicorn</answer>"])
    assert not res[0].info["success"] and res[0].info["final_answer"] == "unicorn"


def test_truncated_after_max_turns() -> None:
    _, res = run(GuessEnv(), TASK, ["Is it green?"] * 6)
    assert len(res) == 5  # the episode ended at the task's max_turns
    assert [r.truncated for r in res] == [False] * 4 + [True]
    assert not any(r.terminated for r in res) and res[-1].info["success"] is False


@pytest.mark.parametrize("action", ["", "What?", "<tool_call>{bad</tool_call>", "<answer>",
                                    "Is it big or round?", "\x00\ufffd"])
def test_malformed_actions_get_an_error_observation(action: str) -> None:
    env = GuessEnv()
    asyncio.run(env.reset(TASK))
    res = asyncio.run(env.step(action))
    assert not res.terminated and not res.truncated and res.reward == 0.0
    assert res.messages[0]["role"] == "user"
    assert res.messages[0]["content"].startswith(("I only answer", "Please ask about one"))


def test_tool_calls_are_recorded_as_failed() -> None:
    env = GuessEnv()
    asyncio.run(env.reset(TASK))
    res = asyncio.run(env.step('<tool_call>{"name": "ask", "arguments": {"q": "animal"}}</tool_call>'))
    assert res.reward == 0.0 and res.messages[0]["content"].startswith("I only answer")
    (call,) = res.info["tool_calls"]
    assert call.name == "ask" and call.error == "this game has no tools"


def test_tasks_are_deterministic_and_splits_disjoint() -> None:
    a, b = make_tasks("listed", "train", 50, seed=3), make_tasks("listed", "train", 50, seed=3)
    assert [(t.id, t.prompt, t.answer) for t in a] == [(t.id, t.prompt, t.answer) for t in b]
    test = make_tasks("listed", "test", 50, seed=3)
    key = lambda t: (t.answer, tuple(sorted(t.data["candidates"])))  # noqa: E731
    assert not {key(t) for t in a} & {key(t) for t in test}
    assert all(t.answer in t.data["candidates"] and len(t.data["candidates"]) == 8 for t in a)
    assert all(t.answer in t.prompt for t in a)  # the list is in the prompt
    open_train, open_test = make_tasks("open", "train", 500), make_tasks("open", "test", 500)
    assert len(open_train) + len(open_test) == 109  # capped: one task per object
    assert not {t.answer for t in open_train} & {t.answer for t in open_test}
    with pytest.raises(KeyError, match="'listed', 'open'"):
        make_tasks("nope", "train", 1)
    with pytest.raises(ValueError, match="split"):
        make_tasks("listed", "dev", 1)


def test_demonstrations_succeed_within_the_turn_limit() -> None:
    env = GuessEnv()
    tasks = make_tasks("listed", "train", 100) + make_tasks("listed", "test", 40)
    tasks += make_tasks("open", "train", 200) + make_tasks("open", "test", 200)
    for task in tasks:
        actions = env.demonstration(task)
        assert len(actions) <= task.data["max_turns"]
        _, res = run(env, task, actions)
        assert res[-1].terminated and res[-1].info["success"], task.id
        assert sum(r.reward for r in res) == pytest.approx(1 - 1 / len(task.data["candidates"]))


def test_conformance_and_determinism_with_the_checker() -> None:
    env = GuessEnv(tool_format="hermes")
    for task in make_tasks("listed", "test", 2) + make_tasks("open", "test", 1):
        asyncio.run(check_env(env, task))
    r1 = run(GuessEnv(), TASK, ["Is it a pet?", "Is it round?"])
    r2 = run(GuessEnv(), TASK, ["Is it a pet?", "Is it round?"])
    assert r1[0] == r2[0] and [x.reward for x in r1[1]] == [x.reward for x in r2[1]]


def test_replayed_demonstration_scores(tokenizer) -> None:
    from rewards.compose import compose, compose_turns
    from rl.sft import replay

    task = make_tasks("listed", "train", 1)[0]
    traj = replay(tokenizer, GuessEnv, task, GuessEnv().demonstration(task))
    total, terms = compose(traj, {"outcome": 1.0, "env_success": 1.0})
    assert terms == {"outcome": 1.0, "env_success": 1.0}
    per_turn, _ = compose_turns(traj, {"env_progress": 1.0})
    assert len(per_turn) == len(traj.turns) and sum(per_turn) == pytest.approx(7 / 8)
    assert per_turn[-1] == 0.0  # the guess earns no progress


def test_train_env_guess_builds_its_parts(tmp_path, tiny_model_dir) -> None:
    """`turnrl train env=guess` with the tiny model: the parts, SFT data, one rollout scored at
    both levels (no training here)."""
    from rl.config import load_config, to_dataclass
    from rl.sft import sft_trajectories
    from rl.trainer import Trainer

    cfg = to_dataclass(load_config([
        "env=guess", f"model.name={tiny_model_dir}", "engine=hf", "trainer.wandb=disabled",
        "tasks.train_size=8", "tasks.eval_size=2", "sft.num_examples=2",
        "trainer.tasks_per_step=2", "algorithm.group_size=2", "rollout.max_tokens_per_turn=8",
    ]))
    trainer = Trainer(cfg, tmp_path)
    parts = trainer.parts
    assert isinstance(parts.env_factory(), GuessEnv)
    assert all(t.data["source"] == "listed" for t in parts.train_tasks.tasks + parts.eval_tasks)
    assert {t.id for t in parts.train_tasks.tasks}.isdisjoint(t.id for t in parts.eval_tasks)
    sft = sft_trajectories(cfg.sft, parts.tokenizer, parts.env_factory,
                           native_tools=parts.native_tools, train_tasks=parts.train_tasks.tasks)
    assert len(sft) == 2 and all(t.info["final_answer"] == t.task.answer for t in sft)
    trajs = trainer.rollout(0)
    rewards = trainer.core.score(trajs)
    assert rewards.shape == (4,)
    for t in trajs:
        assert len(t.turn_rewards) == len(t.turns) >= 1
        assert t.turn_rewards == [turn.reward for turn in t.turns]  # env_progress weight 1
        assert t.reward_terms.keys() == {"outcome"}


def test_which_questions_were_asked_decides_the_outcome() -> None:
    """Credit assignment is real: a player who asks 4 questions in a fixed order and then
    guesses right whenever it can loses about half the games the adaptive questioner wins."""
    from envs.tasks.guess import fixed_order_actions

    env, tasks = GuessEnv(), make_tasks("listed", "test", 100)
    fixed = [run(env, t, fixed_order_actions(WORLD, t, 4))[1][-1].info["success"] for t in tasks]
    assert 0.2 < sum(fixed) / len(tasks) < 0.8
    assert all(run(env, t, env.demonstration(t))[1][-1].info["success"] for t in tasks)
