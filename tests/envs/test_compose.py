"""env=compose: generation, demonstrations, the per-turn scorer's near-misses, conformance."""

from __future__ import annotations

import asyncio
import json

import pytest

from envs.base import replay_actions
from envs.checker import check_env
from envs.tasks.compose import CANNOT, ComposeEnv, Knobs, make_tasks, mentions
from envs.tasks.compose_lib import FUNCTIONS, Backend
from rl.types import Task

LEVELS = [
    {"depth": 1, "width": 1, "turns": 1, "distractors": 0, "unanswerable": 0.0},
    {},  # the defaults
    {"depth": 3, "width": 3, "turns": 4, "distractors": 6, "unanswerable": 0.3},
]

WORLD = {"seed": 7,
         "products": {"desk lamp": {"sku": "SKU-1111", "price": 20.0, "stock": 10},
                      "yoga mat": {"sku": "SKU-2222", "price": 35.5, "stock": 4}},
         "members": {"Ana": {"id": "M-101", "city": "Oslo", "points": 100},
                     "Ben": {"id": "M-102", "city": "Riga", "points": 250}}}


def c(fn: str, /, **args: object) -> dict:
    return {"name": fn, "arguments": args}


T1 = {"text": "Ship 2 units of the desk lamp to Ana. How many points does member M-102 have?",
      "steps": [[c("lookup_sku", product="desk lamp"), c("find_member", name="Ana"),
                 c("member_points", member_id="M-102")],
                [c("create_shipment", sku="SKU-1111", units=2, member_id="M-101")]],
      "answers": [250], "answer_calls": [[0, 2]], "required": ["desk lamp", "Ana", "M-102", "2"]}
T2 = {"text": "What is the price of the yoga mat in EUR?",
      "steps": [[c("lookup_sku", product="yoga mat")], [c("sku_price", sku="SKU-2222")],
                [c("exchange_amount", amount=35.5, currency="EUR")]],
      "answers": [31.95], "answer_calls": [[2, 0]], "required": ["yoga mat", "EUR"]}
T3 = {"text": "Cancel shipment SH-001.", "steps": [], "answers": [], "answer_calls": [],
      "required": ["SH-001"], "missing": None}
TOOLS = ["lookup_sku", "find_member", "member_points", "create_shipment", "sku_price",
         "exchange_amount", "sku_stock", "rain_chance"]


def hand_task(*turns: dict) -> Task:
    turns = turns or (T1, T2, T3)
    refs = [x for t in turns for s in t["steps"] for x in s]
    return Task(id="hand", prompt=turns[0]["text"], data={
        "world": WORLD, "tools": TOOLS, "turns": list(turns), "reference_calls": refs})


def call(fn: str, /, **args: object) -> str:
    return f"<tool_call>{json.dumps({'name': fn, 'arguments': args})}</tool_call>"


def play(task: Task, actions: list[str], env: ComposeEnv | None = None):
    return asyncio.run(replay_actions(env or ComposeEnv(), task, actions))


GOOD_T1 = [call("lookup_sku", product="desk lamp") + call("find_member", name="Ana")
           + call("member_points", member_id="M-102"),
           call("create_shipment", sku="SKU-1111", units=2, member_id="M-101"),
           "Shipped. Ben has 250 points."]


def closing(results) -> list:
    return [r for r in results if "turn_passed" in r.info]


# ---------------------------------------------------------------------------------------------


def test_hand_task_demonstration_and_rewards() -> None:
    task = hand_task()
    actions = ComposeEnv().demonstration(task)
    assert actions[-1] == CANNOT and actions[-2] == "Here you go: 31.95."
    msgs, res = play(task, actions)
    tool_out = [m["content"] for m in msgs if m["role"] == "tool"]
    assert tool_out[:4] == ["<tool_response>SKU-1111</tool_response>",
                            "<tool_response>M-101</tool_response>",
                            "<tool_response>250</tool_response>",
                            "<tool_response>SH-001</tool_response>"]
    assert "<tool_response>31.95</tool_response>" in tool_out
    assert [r.reward for r in res] == pytest.approx([0, 0, 1 / 3, 0, 0, 0, 1 / 3, 1 / 3])
    assert res[-1].terminated and res[-1].info["success"] is True
    assert [m["content"] for m in msgs if m["role"] == "user"] == [T1["text"], T2["text"],
                                                                  T3["text"]]


def test_argument_order_and_integral_floats_pass() -> None:
    swapped = ('<tool_call>{"name": "create_shipment", "arguments": {"member_id": "M-101", '
               '"units": 2.0, "sku": "SKU-1111"}}</tool_call>')
    _, res = play(hand_task(T1), [GOOD_T1[0], swapped, GOOD_T1[2]])
    assert res[-1].info["turn_passed"] and res[-1].reward == pytest.approx(1.0)


def test_wrong_type_is_an_error_and_fails_the_turn() -> None:
    bad = call("create_shipment", sku="SKU-1111", units="2", member_id="M-101")
    _, res = play(hand_task(T1), [GOOD_T1[0], bad, GOOD_T1[2]])
    assert "must be integer" in res[1].messages[0]["content"]
    v = res[-1].info
    # 3 of 4 references matched exactly, 4 calls attempted; the shipment never happened
    assert v["call_score"] == pytest.approx(3 / 4) and not v["state_ok"] and v["reply_ok"]
    assert not v["turn_passed"] and res[-1].reward == pytest.approx(3 / 4 * (1 + 0 + 1) / 3)


def test_optional_parameters() -> None:
    explicit = call("create_shipment", sku="SKU-1111", units=2, member_id="M-101", express=False)
    _, res = play(hand_task(T1), [GOOD_T1[0], explicit, GOOD_T1[2]])
    assert res[-1].info["turn_passed"]  # the default written out is the same call
    express = call("create_shipment", sku="SKU-1111", units=2, member_id="M-101", express=True)
    _, res = play(hand_task(T1), [GOOD_T1[0], express, GOOD_T1[2]])
    v = res[-1].info  # 3 args of 4 agree: similarity PARTIAL_WEIGHT (0.5) * 3/4
    assert not v["turn_passed"] and not v["state_ok"]
    assert v["call_score"] == pytest.approx((3 + 0.375) / 4)


def test_extra_call_fails_with_partial_credit() -> None:
    extra = GOOD_T1[1] + call("sku_price", sku="SKU-1111")
    _, res = play(hand_task(T1), [GOOD_T1[0], extra, GOOD_T1[2]])
    v = res[-1].info
    assert v["call_score"] == pytest.approx(4 / 5) and v["state_ok"] and v["reply_ok"]
    assert not v["turn_passed"] and res[-1].reward == pytest.approx(4 / 5)


POINTS = {"text": "How many points do members M-101 and M-102 have?",
          "steps": [[c("member_points", member_id="M-101"), c("member_points", member_id="M-102")]],
          "answers": [100, 250], "answer_calls": [[0, 0], [0, 1]], "required": ["M-101", "M-102"]}


def test_turn_score_cannot_be_raised_by_extra_or_malformed_calls() -> None:
    """Issue 23's cases at the env's own verdict (2 reference calls, read-only, reply right)."""
    good, reply = call("member_points", member_id="M-101"), "100 and 250 points."
    bad = '<tool_call>{"name": "member_points", "arguments": {"member_id": "M-1</tool_call>'
    cases = {
        "1 good call": ([good], 1 / 2),
        "+ 10 malformed calls": ([good + bad * 3, bad * 4, bad * 3], 1 / 11),
        # the right tool, wrong argument (M-101 twice): earned 0.5 before, call_score 0.75
        "+ 1 wrong-argument call": ([good, good], 1 / 2),
        "both right": ([good + call("member_points", member_id="M-102")], 1.0),
        "both right + 1 extra": ([good + call("member_points", member_id="M-102") + good], 2 / 3),
    }
    for name, (actions, call_score) in cases.items():
        _, res = play(hand_task(POINTS), [*actions, reply])
        v = res[-1].info
        assert v["call_score"] == pytest.approx(call_score), name
        assert v["state_ok"] and v["reply_ok"], name  # so turn_score == call_score
        assert res[-1].reward == pytest.approx(call_score), name
        assert v["turn_passed"] == (name == "both right"), name


def test_parallel_call_missing_one_element() -> None:
    partial = call("lookup_sku", product="desk lamp") + call("find_member", name="Ana")
    _, res = play(hand_task(T1), [partial, GOOD_T1[1], "Shipped."])
    v = res[-1].info
    assert v["call_score"] == pytest.approx(3 / 4) and v["state_ok"] and not v["reply_ok"]
    assert not v["turn_passed"]


def test_right_call_in_the_wrong_turn() -> None:
    task = hand_task(T1, T2)
    early = GOOD_T1[0] + call("lookup_sku", product="yoga mat")  # turn 2's first call, in turn 1
    _, res = play(task, [early, GOOD_T1[1], GOOD_T1[2],
                         call("sku_price", sku="SKU-2222"),
                         call("exchange_amount", amount=35.5, currency="EUR"), "31.95 EUR"])
    t1, t2 = closing(res)
    assert not t1.info["turn_passed"] and t1.info["call_score"] == pytest.approx(4 / 5)
    assert not t2.info["turn_passed"] and t2.info["call_score"] == pytest.approx(2 / 3)
    assert res[-1].info["success"] is False and res[-1].info["turns_passed"] == 0


def test_unanswerable_turn_wants_no_call_and_a_reply() -> None:
    _, res = play(hand_task(T3), [CANNOT])
    assert res[0].info["turn_passed"] and res[0].reward == pytest.approx(1.0)
    _, res = play(hand_task(T3), [call("rain_chance", city="Oslo", day="Friday"), "Done."])
    assert not res[-1].info["turn_passed"] and res[-1].info["call_score"] == 0.0
    _, res = play(hand_task(T3), [""])  # silence is no answer either
    assert not res[0].info["turn_passed"] and not res[0].info["reply_ok"]


def test_refusing_an_answerable_turn_earns_nothing() -> None:
    _, res = play(hand_task(T2), [CANNOT])  # read-only turn: the state is untouched, still 0
    v = res[0].info
    assert v["state_ok"] and v["call_score"] == 0.0 and res[0].reward == 0.0
    assert res[0].terminated and res[0].info["success"] is False


def test_state_check_is_per_turn_and_answers_follow_state() -> None:
    # turn 1 ships 3 instead of 2: its state check fails, turn 2 still passes on its own
    wrong = call("create_shipment", sku="SKU-1111", units=3, member_id="M-101")
    stock = {"text": "How many units of product SKU-1111 are in stock?",
             "steps": [[c("sku_stock", sku="SKU-1111")]], "answers": [8],
             "answer_calls": [[0, 0]], "required": ["SKU-1111"]}
    task = hand_task(T1, stock)
    _, res = play(task, [GOOD_T1[0], wrong, GOOD_T1[2], call("sku_stock", sku="SKU-1111"),
                         "7 units."])
    t1, t2 = closing(res)
    assert not t1.info["state_ok"] and t2.info["turn_passed"]  # 10 - 3 = 7 on the live state


def test_looping_on_calls_truncates() -> None:
    loop = [call("find_member", name="Ana")] * 6
    _, res = play(hand_task(T2), loop)
    assert len(res) == 6 and res[-1].truncated and not res[-1].terminated  # 3 calls + 2 allowed
    assert res[-1].info["success"] is False


def test_mentions() -> None:
    assert mentions("It costs 31.950 EUR", 31.95) and mentions("1,234 left", 1234)
    assert not mentions("It costs 31.9", 31.95) and not mentions("none", 0)
    assert mentions("zone utc+1", "UTC+1") and not mentions("Porto", "Oslo")
    assert mentions("To Eve.", "Eve") and not mentions("every day", "Eve")


@pytest.mark.parametrize("knobs", LEVELS)
def test_demonstrations_score_one_on_every_seed(knobs: dict) -> None:
    for seed in range(50):
        for task in make_tasks("mixed", "train", 1, seed, **knobs) + \
                make_tasks("mixed", "test", 1, seed, **knobs):
            env = ComposeEnv()
            _, res = play(task, env.demonstration(task), env)
            assert res[-1].terminated and res[-1].info["success"], task.id
            assert sum(r.reward for r in res) == pytest.approx(1.0), task.id


def test_generation_deterministic_split_and_knobs() -> None:
    a = make_tasks("mixed", "train", 40, seed=3)
    b = make_tasks("mixed", "train", 40, seed=3)
    assert [t.data for t in a] == [t.data for t in b]
    assert json.loads(json.dumps(a[0].data)) == a[0].data  # plain JSON
    assert [t.data for t in make_tasks("mixed", "train", 40, seed=4)] != [t.data for t in a]
    assert make_tasks("mixed", "train", 50, seed=3)[:40] == a  # prefix-stable stream
    test = make_tasks("mixed", "test", 20, seed=3)
    key = lambda t: json.dumps([u["text"] for u in t.data["turns"]])  # noqa: E731
    assert not {key(t) for t in a} & {key(t) for t in test}
    hard = make_tasks("mixed", "train", 40, seed=3, depth=3, width=3, turns=4, distractors=6)
    assert all(len(t.data["turns"]) == 4 for t in hard)
    assert max(len(u["steps"]) for t in hard for u in t.data["turns"]) == 3
    easy = make_tasks("mixed", "train", 40, seed=3, depth=1, width=1, turns=1, distractors=0,
                      unanswerable=0.0)
    for t in easy:
        (turn,) = t.data["turns"]
        assert len(turn["steps"]) == 1 and set(t.data["tools"]) == {
            x["name"] for x in turn["steps"][0]}
    with pytest.raises(ValueError, match="depth=5"):
        make_tasks("mixed", "train", 1, depth=5)
    with pytest.raises(ValueError, match="unexpected keyword"):
        make_tasks("mixed", "train", 1, deepness=2)
    with pytest.raises(KeyError, match="'mixed'"):
        make_tasks("store", "train", 1)
    with pytest.raises(ValueError, match="not a compose task"):
        asyncio.run(ComposeEnv().reset(Task(id="x", prompt="?")))


def test_generated_tasks_cover_the_kinds() -> None:
    tasks = make_tasks("mixed", "train", 200, seed=0)
    turns = [u for t in tasks for u in t.data["turns"]]
    assert any(not u["steps"] and u.get("missing") for u in turns)  # missing function
    assert any(not u["steps"] and u.get("missing") is None for u in turns)  # out of library
    assert any(len(u["steps"]) == 2 for u in turns)  # sequential
    assert any(len(u["steps"][0]) >= 2 for u in turns if u["steps"])  # parallel
    for t in tasks:  # a missing function is never offered; distractors are
        offered = set(t.data["tools"])
        assert all(u["missing"] not in offered for u in t.data["turns"] if u.get("missing"))
    assert Knobs() == Knobs(depth=2, width=2, turns=2, distractors=2, unanswerable=0.1)


def test_conformance_with_both_formats_and_registry() -> None:
    import envs.tasks
    from envs.base import make_env

    for fmt in ("hermes-prompt", "hermes"):
        env = make_env("compose", tool_format=fmt)
        for task in envs.tasks.make_tasks("compose", "mixed", "test", 3, 1, turns=3):
            asyncio.run(check_env(env, task))
    asyncio.run(check_env(ComposeEnv(), hand_task()))


def test_tools_are_the_tasks_and_backends_are_per_episode() -> None:
    task = hand_task(T1)
    env = ComposeEnv()
    assert [t["function"]["name"] for t in env.tools] == list(FUNCTIONS)  # before reset
    asyncio.run(env.reset(task))
    assert [t["function"]["name"] for t in env.tools] == TOOLS
    schema = {t["function"]["name"]: t["function"] for t in env.tools}["create_shipment"]
    assert schema["parameters"]["required"] == ["sku", "units", "member_id"]
    assert schema["parameters"]["properties"]["express"]["type"] == "boolean"
    play(task, GOOD_T1, env)
    assert env.backend.products["desk lamp"]["stock"] == 8
    assert Backend(WORLD).products["desk lamp"]["stock"] == 10  # the task's world is untouched
    assert task.data["world"]["products"]["desk lamp"]["stock"] == 10


def test_functions_are_disjoint_from_bfcl() -> None:
    from pathlib import Path

    bfcl = pytest.importorskip("bfcl_eval")
    names: set[str] = set()
    root = Path(bfcl.__file__).parent / "data"
    for f in [*root.glob("*.json"), *root.glob("multi_turn_func_doc/*.json")]:
        for line in f.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            names |= {fn["name"] for fn in row.get("function") or [] if isinstance(fn, dict)}
            if isinstance(row.get("name"), str):
                names.add(row["name"])
    assert len(names) > 500
    assert not set(FUNCTIONS) & names


@pytest.mark.slow
@pytest.mark.heavy
def test_two_training_steps_with_the_default_model(tmp_path) -> None:
    """`turnrl train env=compose` end to end, small: a cold start on 4 demonstrations, then 2 RL
    steps of 2 tasks x 2 samples with the embedded SmolLM2."""
    from rl.cli import main

    run = tmp_path / "run"
    main(["train", "env=compose", f"trainer.run_dir={run}", "engine=hf", "trainer.wandb=disabled",
          "trainer.num_threads=2", "trainer.steps=2", "trainer.tasks_per_step=2",
          "algorithm.group_size=2", "algorithm.advantage=reinforce",
          "algorithm.drop_uniform_groups=false", "sft.num_examples=4", "sft.batch_size=4",
          "eval.compare_stages=false", "tasks.train_size=16", "tasks.eval_size=2",
          "+tasks.kwargs.turns=1", "+tasks.kwargs.depth=1", "rollout.max_turns=3",
          "rollout.max_tokens_per_turn=48", "rollout.max_total_tokens=1024"])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rl_rows = [r for r in rows if r.get("stage") == "rl"]
    assert [r["step"] for r in rl_rows] == [0, 1]
    assert all("reward/env_success" in r and "reward/mean" in r for r in rl_rows)
    assert (run / "checkpoints" / "step_000002" / "manifest.json").exists()
    assert "compose" in (run / "config.yaml").read_text()


def test_scripted_players_separate() -> None:
    from envs.tasks.compose import SCRIPTED_PLAYERS

    tasks = make_tasks("mixed", "test", 30, seed=2)
    wins = {}
    for name, player in SCRIPTED_PLAYERS.items():
        wins[name] = 0
        for task in tasks:
            env = ComposeEnv()
            _, res = play(task, player(env, task), env)
            wins[name] += bool(res[-1].info.get("success"))
    assert wins["the demonstration"] == 30
    assert wins["demonstration, one call per message (no parallel merging)"] == 30
    assert wins["refuse every turn"] <= 3 and wins['demonstration calls, reply "Done." '
                                                    "(no results stated)"] < 15
