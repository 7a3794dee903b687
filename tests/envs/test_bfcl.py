"""BFCL env: data, splits, the AST scorer against hand-made right and wrong answers and against
BFCL's rules where ours once differed, multi-turn execution, the reference call of every entry of
every category replayed to 1.0 (except the data errors listed in bfcl_data.UNSATISFIABLE),
isolation of concurrent episodes, conformance, and a 2-step training run (slow)."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import pytest

pytest.importorskip("bfcl_eval", reason="pip install --no-deps bfcl-eval")

from envs.base import make_env, replay_actions  # noqa: E402
from envs.checker import check_env  # noqa: E402
from envs.formats import get_format  # noqa: E402
from envs.tasks import make_tasks as make_any_tasks  # noqa: E402
from envs.tasks.bfcl import REFUSAL, TURN_DONE, BFCLEnv  # noqa: E402
from envs.tasks.bfcl_check import check_single_turn, standardize  # noqa: E402
from envs.tasks.bfcl_data import (  # noqa: E402
    UNSATISFIABLE,
    UNSUPPORTED,
    bfcl_categories,
    is_multi_turn,
    make_tasks,
    split_of,
)
from rl.types import Task  # noqa: E402

FMT = get_format("hermes-prompt")
MULTI = ("multi_turn_base", "multi_turn_long_context", "multi_turn_miss_func",
         "multi_turn_miss_param")


def run(coro):
    return asyncio.run(coro)


def task(category: str, entry_id: str) -> Task:
    (t,) = [t for t in make_tasks(category, "test", 10_000, test_percent=100)
            if t.data["entry_id"] == entry_id]
    return t


def call(name: str, **args) -> str:
    return FMT.format_call(name, args)


def score(t: Task, action: str) -> tuple[bool, str]:
    env = BFCLEnv()
    run(env.reset(t))
    res = run(env.step(action))
    assert res.terminated and res.reward == float(res.info["success"])
    return res.info["success"], res.info["check"]


# ---------------------------------------------------------------------------------------------
# Data and splits


def test_categories_and_unsupported_ones_are_refused_with_the_reason() -> None:
    cats = bfcl_categories()
    for c in ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance",
              *MULTI, "live_simple", "simple_java"):
        assert c in cats
    assert not set(UNSUPPORTED) & set(cats)
    with pytest.raises(ValueError, match="web_search.*html2text"):
        make_tasks("web_search", "test", 1)
    with pytest.raises(KeyError, match="unknown BFCL category 'simple_pyhton'.*simple_python"):
        make_tasks("simple_pyhton", "test", 1)


def test_split_is_fixed_by_entry_id_disjoint_and_complete() -> None:
    train = make_tasks("simple_python", "train", 10_000)
    test = make_tasks("simple_python", "test", 10_000)
    ids_train = {t.data["entry_id"] for t in train}
    ids_test = {t.data["entry_id"] for t in test}
    assert not ids_train & ids_test and len(ids_train | ids_test) == 400
    assert 150 < len(ids_test) < 250  # test_percent=50
    assert all(split_of(i) == "test" for i in ids_test)
    # the split does not depend on the seed; the order (and so a small sample) does
    other = make_tasks("simple_python", "test", 10_000, seed=3)
    assert {t.data["entry_id"] for t in other} == ids_test
    assert [t.id for t in other[:5]] != [t.id for t in test[:5]]
    assert [t.id for t in make_tasks("simple_python", "test", 5)] == [t.id for t in test[:5]]
    assert len(make_tasks("multi_turn_base", "test", 10_000, test_percent=100)) == 200
    with pytest.raises(ValueError, match="no train entries"):
        make_tasks("multi_turn_base", "train", 1, test_percent=100)
    # registered for the trainer (envs.tasks.make_tasks / build_tasks)
    assert [t.id for t in make_any_tasks("bfcl", "parallel", "test", 3)] == \
        [t.id for t in make_tasks("parallel", "test", 3)]


def test_tool_schemas_use_json_types() -> None:
    env = BFCLEnv()
    run(env.reset(task("parallel_multiple", "parallel_multiple_0")))
    fn = env.tools[0]["function"]
    assert fn["name"] == "math_toolkit.sum_of_multiples"
    assert fn["parameters"]["type"] == "object"  # BFCL's "dict"
    assert fn["parameters"]["properties"]["multiples"] == {
        "type": "array", "description": "The numbers to find multiples of.",
        "items": {"type": "integer"}}
    run(env.reset(task("multiple", "multiple_0")))
    circle = next(t for t in env.tools if t["function"]["name"] == "circle_properties.get")
    assert circle["function"]["parameters"]["properties"]["radius"]["type"] == "number"  # float
    run(env.reset(task("simple_java", "simple_java_0")))  # Java values are strings
    props = env.tools[0]["function"]["parameters"]["properties"]
    assert props["controller"]["type"] == "string" and "Java" in props["controller"]["description"]


# ---------------------------------------------------------------------------------------------
# Single-turn AST scorer: hand-made right answers and near misses


def test_simple_right_answers_and_near_misses() -> None:
    # simple_python_0: calculate_triangle_area(base=10, height=5, unit optional "units")
    t = task("simple_python", "simple_python_0")
    assert t.data["possible_answer"] == [{"calculate_triangle_area": {
        "base": [10], "height": [5], "unit": ["units", ""]}}]
    ok = [
        call("calculate_triangle_area", base=10, height=5),  # optional parameter omitted
        call("calculate_triangle_area", height=5, base=10),  # argument order is free
        call("calculate_triangle_area", base=10, height=5, unit="units"),
        call("calculate_triangle_area", base=10, height=5, unit=" Units"),  # case, spaces
    ]
    for action in ok:
        assert score(t, action) == (True, ""), action
    wrong = {
        call("calculate_triangle_area", base="10", height=5): "wrong type str",
        call("calculate_triangle_area", base=10.0, height=5): "wrong type float",
        call("calculate_triangle_area", base=True, height=5): "wrong type bool",
        call("calculate_triangle_area", base=10, height=6): "value 6",
        call("calculate_triangle_area", base=10): "missing required parameter 'height'",
        call("calculate_triangle_area", base=10, height=5, unit="cm"): "value 'cm'",
        call("calculate_triangle_area", base=10, height=5, color="red"): "unexpected parameter",
        call("calculate_area", base=10, height=5): "wrong function",
        call("calculate_triangle_area", base=10, height=5) * 2: "2 call(s), expected 1",
        "The area is 25.": "0 call(s), expected 1",
        "<tool_call>{not json</tool_call>": "malformed",
    }
    for action, why in wrong.items():
        success, check = score(t, action)
        assert not success and why in check, (action, check)


def test_float_parameter_accepts_int_and_a_missing_non_optional_answer_fails() -> None:
    # parallel_multiple_12: calculate_magnetic_field(current=4.0, distance=2.0) (floats)
    t = task("parallel_multiple", "parallel_multiple_12")
    mf = call("calculate_magnetic_field", current=4, distance=2)  # int for float: allowed
    vd = call("calculate_voltage_difference", electric_field=5.0, distance=3.0)
    assert score(t, mf + vd) == (True, "")
    assert not score(t, call("calculate_magnetic_field", current="4", distance=2) + vd)[0]
    data = copy.deepcopy(t.data)
    data["possible_answer"][0]["calculate_magnetic_field"]["permeability"] = [0.1]  # required
    res = check_single_turn([{"name": "calculate_magnetic_field",
                              "arguments": {"current": 4.0, "distance": 2.0}},
                             {"name": "calculate_voltage_difference",
                              "arguments": {"electric_field": 5.0, "distance": 3.0}}], 0, data)
    assert not res.success and res.matched == 1


def test_parallel_any_order_missing_element_and_extra_call() -> None:
    t = task("parallel", "parallel_0")  # spotify.play x2: Taylor Swift 20, Maroon 5 15
    ts = call("spotify.play", artist="Taylor Swift", duration=20)
    m5 = call("spotify.play", artist="Maroon 5", duration=15)
    assert score(t, ts + m5) == (True, "")
    assert score(t, m5 + "\n" + ts) == (True, "")  # order-free
    assert score(t, call("spotify_play", artist="Maroon 5", duration=15) + ts)[0]  # a_b for a.b
    assert score(t, ts) == (False, "1 call(s), expected 2")  # one element missing
    assert score(t, ts + m5 + ts) == (False, "3 call(s), expected 2")  # an extra call
    swapped = call("spotify.play", artist="Taylor Swift", duration=15) + \
        call("spotify.play", artist="Maroon 5", duration=20)  # durations crossed
    assert score(t, swapped) == (False, "only 0 of 2 calls match")
    assert score(t, ts + ts) == (False, "only 1 of 2 calls match")  # one answer twice


def test_parallel_pairing_is_optimal_not_greedy() -> None:
    """Answer 0 accepts x in {1, 2}, answer 1 only x = 1; calls [x=1, x=2]. BFCL's greedy
    pairing gives call x=1 to answer 0 and then finds no match for answer 1; a valid pairing
    (answer 0 <- x=2, answer 1 <- x=1) exists, and the matching finds it."""
    doc = {"name": "f", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}},
                                       "required": ["x"]}}
    data = {"kind": "parallel", "language": "python", "functions": [doc],
            "possible_answer": [{"f": {"x": [1, 2]}}, {"f": {"x": [1]}}]}
    calls = [{"name": "f", "arguments": {"x": 1}}, {"name": "f", "arguments": {"x": 2}}]
    assert check_single_turn(calls, 0, data).success
    assert not check_single_turn([calls[1], calls[1]], 0, data).success


def test_dict_and_list_values() -> None:
    doc = {"name": "g", "parameters": {"type": "dict", "properties": {
        "d": {"type": "dict", "properties": {}}, "xs": {"type": "array",
                                                       "items": {"type": "string"}}},
        "required": ["d"]}}
    data = {"kind": "simple", "language": "python", "functions": [doc], "possible_answer": [
        {"g": {"d": [{"city": ["New York", "NYC"], "unit": ["", "C"]}],
               "xs": [["San Francisco", "LA"], ""]}}]}

    def ok(args) -> bool:
        return check_single_turn([{"name": "g", "arguments": args}], 0, data).success

    assert ok({"d": {"city": "new york"}})  # optional key omitted, string normalised
    assert ok({"d": {"city": "NYC", "unit": "C"}, "xs": ["san-francisco", "la"]})
    assert not ok({"d": {"city": "Boston"}})
    assert not ok({"d": {"city": "NYC", "zip": "1"}})  # unexpected key
    assert not ok({"d": {"unit": "C"}})  # required key missing
    assert not ok({"d": {"city": "NYC"}, "xs": ["LA", "San Francisco"]})  # list order matters
    assert not ok({"d": {"city": "NYC"}, "xs": ["San Francisco", 3]})  # item type
    assert standardize("April 1, 2024") == standardize("april 1 2024")


def test_irrelevance_and_java() -> None:
    t = task("irrelevance", "irrelevance_0")
    assert score(t, REFUSAL) == (True, "")
    assert score(t, call("determine_body_mass_index", weight=70.0, height=1.8))[0] is False
    j = task("simple_java", "simple_java_32")  # waitTime: long (Java literal in a string)
    good = call("RedissonPermitExpirableSemaphore.tryAcquireAsync",
                waitTime="5L", leaseTime="120L", unit="SECONDS")
    assert score(j, good) == (True, "")
    bad = call("RedissonPermitExpirableSemaphore.tryAcquireAsync",
               waitTime=5, leaseTime="120L", unit="SECONDS")
    assert not score(j, bad)[0]  # a Java value must be a string


# Entries whose possible answers hold "" (optional) but not [] for an array parameter: BFCL
# accepts [] there ("" has no elements, so it equals the empty list element by element).
OPTIONAL_ARRAYS = [
    ("simple_python", "simple_python_178", "get_lawsuit_details", "additional_details"),
    ("simple_python", "simple_python_335", "find_card_in_deck", "deck"),  # array of dicts
    ("simple_python", "simple_python_353", "find_recipes", "ingredients"),
    ("simple_python", "simple_python_354", "get_vegan_recipe", "ingredient_preference"),
    ("multiple", "multiple_178", "find_card_in_deck", "deck"),
    ("parallel", "parallel_44", "concert.find_nearby", "amenities"),
    ("parallel", "parallel_52", "restaurant_finder", "preferences"),
    ("parallel_multiple", "parallel_multiple_117", "concert.book_ticket", "add_ons"),
    ("parallel_multiple", "parallel_multiple_126", "restaurant.find", "price"),
    ("parallel_multiple", "parallel_multiple_132", "get_personality_traits", "traits"),
    ("parallel_multiple", "parallel_multiple_189", "find_card_in_deck", "deck"),
    ("parallel_multiple", "parallel_multiple_191", "find_card_in_deck", "deck"),
]


@pytest.mark.parametrize(("category", "entry", "fn", "param"), OPTIONAL_ARRAYS,
                         ids=[e for _, e, _, _ in OPTIONAL_ARRAYS])
def test_empty_list_for_an_optional_array_is_accepted(category: str, entry: str, fn: str,
                                                      param: str) -> None:
    t = task(category, entry)
    # the reference calls follow the possible answers in order: [] where the answer allows ""
    optional = [fn in a and "" in a[fn][param] for a in t.data["possible_answer"]]
    assert any(optional) and all([] not in a[fn][param]
                                 for a, o in zip(t.data["possible_answer"], optional) if o)
    refs = [dict(r, arguments={**r["arguments"], param: []}) if o else r
            for r, o in zip(t.data["reference_calls"], optional, strict=True)]
    action = "\n".join(FMT.format_call(r["name"], r["arguments"]) for r in refs)
    assert score(t, action) == (True, "")


def test_empty_list_for_a_required_array_is_still_wrong() -> None:
    t = task("multiple", "multiple_3")  # pointA, pointB: required integer arrays
    assert not score(t, call("EuclideanDistance.calculate", pointA=[], pointB=[1, 2]))[0]
    assert score(t, call("EuclideanDistance.calculate", pointA=[3, 4], pointB=[1, 2]))[0]


def test_ints_for_a_float_array() -> None:
    """An optional float array (options hold "") given as ints passes, as in BFCL: its item
    type check lets any items through an option that is not a list, and values compare with ==
    (1 == 1.0). A required one is item-checked against its list options: ints fail there, also
    in BFCL (its int -> float promotion applies to a float value, not to array items)."""
    doc = {"name": "f", "parameters": {"type": "dict", "properties": {
        "xs": {"type": "array", "items": {"type": "float"}}, "n": {"type": "integer"}},
        "required": ["n"]}}

    def ok(xs_options: list, xs: list) -> bool:
        data = {"kind": "simple", "language": "python", "functions": [doc],
                "possible_answer": [{"f": {"n": [1], "xs": xs_options}}]}
        return check_single_turn([{"name": "f", "arguments": {"n": 1, "xs": xs}}], 0,
                                 data).success

    optional, required = [[1.0, 2.5], ""], [[1.0, 2.5]]
    assert ok(optional, [1, 2.5]) and ok(optional, [1.0, 2.5]) and ok(optional, [])
    assert not ok(optional, [1, 3]) and not ok(optional, ["1", "2.5"])
    assert ok(required, [1.0, 2.5])
    assert not ok(required, [1, 2.5]) and not ok(required, [])


def test_java_long_array_items_carry_the_suffix() -> None:
    t = task("simple_java", "simple_java_22")  # ids: ArrayList of long
    (ref,) = t.data["reference_calls"]
    assert ref["arguments"]["ids"] == "new ArrayList<>(Arrays.asList(101L, 202L, 303L))"
    assert score(t, FMT.format_call(ref["name"], ref["arguments"])) == (True, "")
    # without the suffix the package's converter reads the items as strings: wrong, as in BFCL
    bare = {**ref["arguments"], "ids": "new ArrayList<>(Arrays.asList(101, 202, 303))"}
    assert not score(t, FMT.format_call(ref["name"], bare))[0]


def test_required_parameter_whose_only_option_is_empty_gets_an_empty_string() -> None:
    t = task("live_multiple", "live_multiple_507-149-4")  # origin_airport: required, [""]
    (ref,) = t.data["reference_calls"]
    assert ref["arguments"]["origin_airport"] == ""
    assert score(t, FMT.format_call(ref["name"], ref["arguments"])) == (True, "")


SINGLE = [c for c in bfcl_categories() if not is_multi_turn(c)]


def test_every_category_is_replayed() -> None:
    assert sorted(SINGLE + list(MULTI)) == bfcl_categories()


@pytest.mark.parametrize("category", SINGLE)
def test_reference_calls_of_every_entry_score_one(category: str) -> None:
    """Every entry's demonstration (its reference calls) scores 1.0; the entries no call can
    satisfy (data errors, bfcl_data.UNSATISFIABLE) score 0, and that list is exact."""
    async def sweep() -> tuple[int, list[str]]:
        bad = []
        tasks = make_tasks(category, "test", 10_000, test_percent=100)
        for t in tasks:
            env = BFCLEnv()
            _, res = await replay_actions(env, t, env.demonstration(t))
            assert res[-1].reward == float(res[-1].info["success"])
            if not res[-1].info["success"]:
                bad.append(t.data["entry_id"])
        return len(tasks), bad

    n, bad = run(sweep())
    assert n > 0
    assert sorted(bad) == sorted(e for e in UNSATISFIABLE if e.rsplit("_", 1)[0] == category)


# ---------------------------------------------------------------------------------------------
# Multi-turn


def _replay(t: Task, actions: list[str]):
    env = BFCLEnv()
    return run(replay_actions(env, t, actions))[1]


def _turn_rewards(results) -> list[float]:
    return [r.reward for r in results if "turn" in r.info]


@pytest.mark.parametrize("category", MULTI)
def test_ground_truth_of_every_multi_turn_entry_scores_one(category: str) -> None:
    tasks = make_tasks(category, "test", 10_000, test_percent=100)
    assert len(tasks) == 200
    for t in tasks:
        results = _replay(t, BFCLEnv().demonstration(t))
        last = results[-1]
        assert last.terminated and last.info["success"], (t.id, last.info.get("check"))
        assert _turn_rewards(results) == [1.0] * len(t.data["turns"]), t.id
        assert last.info["turns_passed"] == len(t.data["turns"])


def _base0_calls() -> tuple[str, str]:
    t0 = "\n".join([call("cd", folder="document"), call("mkdir", dir_name="temp"),
                    call("mv", source="final_report.pdf", destination="temp")])
    t1 = "\n".join([call("cd", folder="temp"),
                    call("grep", file_name="final_report.pdf", pattern="budget analysis")])
    return t0, t1


def test_multi_turn_observations_rewards_and_wrong_arguments() -> None:
    t = task("multi_turn_base", "multi_turn_base_0")
    assert len(t.data["turns"]) == 4
    env = BFCLEnv()
    msgs, _ = run(env.reset(t))
    assert msgs[-1]["content"].startswith("Move 'final_report.pdf'")
    assert {"mkdir", "mv", "post_tweet"} <= {x["function"]["name"] for x in env.tools}
    t0, _ = _base0_calls()
    res = run(env.step(t0))
    assert not res.terminated and res.reward == 0.0 and len(res.messages) == 3
    assert res.messages[2]["role"] == "tool" and "turn" not in res.info
    res = run(env.step(TURN_DONE))  # ends user turn 0: checked, next user turn comes back
    assert res.info["turn"] == 0 and res.info["turn_passed"] and res.reward == 1.0
    assert res.messages == [{"role": "user", "content": t.data["turns"][1][0]["content"]}]
    # a wrong argument changes the file system: the state check fails the turn
    bad = t0.replace('"temp"}}', '"tmp"}}', 1)
    assert bad != t0
    results = _replay(t, [bad, TURN_DONE])
    assert results[-1].info["turn_passed"] is False
    assert "GorillaFileSystem.root" in results[-1].info["check"]
    # a failing API call is an observation, not an exception
    env2 = BFCLEnv()
    run(env2.reset(t))
    res = run(env2.step(call("cd", folder="nowhere") + call("no_such_fn", x=1)))
    assert res.info["tool_errors"] == 1 and not res.terminated  # the unknown function
    assert '"error"' in res.messages[0]["content"]  # the API's own error answer to cd
    assert "Error during execution: unknown function 'no_such_fn'" in res.messages[1]["content"]


def test_right_calls_in_the_wrong_turn_fail_that_turn() -> None:
    t = task("multi_turn_base", "multi_turn_base_0")
    demo = BFCLEnv().demonstration(t)  # [calls0, Done, calls1, Done, calls2, Done, ...]
    t0, t1 = _base0_calls()
    assert demo[0] == t0 and demo[2] == t1
    # turn 1's calls made early, in turn 0: turn 1 then has no call and fails
    early = _replay(t, [t0 + t1, TURN_DONE, TURN_DONE, *demo[4:]])
    assert _turn_rewards(early) == [1.0, 0.0, 1.0, 1.0]
    assert early[-1].info["success"] is False
    # turn 0's calls made late, in turn 1: turn 0 had no call and fails
    late = _replay(t, [TURN_DONE, t0 + t1, TURN_DONE, *demo[4:]])
    assert _turn_rewards(late)[0] == 0.0 and late[-1].info["success"] is False


def test_turn_without_ground_truth_passes_only_without_calls() -> None:
    t = make_tasks("multi_turn_miss_param", "test", 1, test_percent=100)[0]
    demo = BFCLEnv().demonstration(t)
    empty = [i for i, gt in enumerate(t.data["ground_truth"]) if not gt]
    assert empty and REFUSAL in demo
    # replace the refusal with a call to some function: that turn fails
    k = demo.index(REFUSAL)
    results = _replay(t, [*demo[:k], call("ls"), REFUSAL, *demo[k + 1:]])
    assert _turn_rewards(results)[empty[0]] == 0.0 and results[-1].info["success"] is False


def test_miss_func_adds_the_function_at_its_turn() -> None:
    t = make_tasks("multi_turn_miss_func", "test", 1, test_percent=100)[0]
    (turn, names), = t.data["missed_function"].items()
    env = BFCLEnv()
    run(env.reset(t))
    assert not set(names) & {x["function"]["name"] for x in env.tools}
    results = _replay(t, BFCLEnv().demonstration(t))
    added = [r for r in results if r.info.get("turn") == int(turn) - 1][0].messages
    assert added[0]["role"] == "user" and all(f'"name":"{n}"' in added[0]["content"]
                                              for n in names)


def test_concurrent_episodes_of_one_entry_do_not_share_state() -> None:
    t = task("multi_turn_base", "multi_turn_base_0")

    async def two() -> tuple[str, str]:
        a, b = BFCLEnv(), BFCLEnv()
        await asyncio.gather(a.reset(t), b.reset(t))
        await a.step(call("cd", folder="document") + call("mkdir", dir_name="zzz_only_a"))
        ra, rb = await asyncio.gather(a.step(call("ls")), b.step(call("cd", folder="document")
                                                                 + call("ls")))
        return ra.messages[0]["content"], rb.messages[1]["content"]

    seen_a, seen_b = run(two())
    assert "zzz_only_a" in seen_a and "zzz_only_a" not in seen_b

    async def many() -> list[bool]:
        envs = [BFCLEnv() for _ in range(6)]
        demo = envs[0].demonstration(t)
        outs = await asyncio.gather(*(replay_actions(e, t, demo) for e in envs))
        return [res[-1].info["success"] for _, res in outs]

    assert run(many()) == [True] * 6
    # the package's module-level instance cache is never used
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    assert not [k for k in vars(multi_turn_utils) if k.endswith("_instance")]


def test_conformance() -> None:
    for category, entry in [("multi_turn_base", "multi_turn_base_0"),
                            ("multi_turn_miss_func", "multi_turn_miss_func_0"),
                            ("simple_python", "simple_python_0"), ("parallel", "parallel_0"),
                            ("irrelevance", "irrelevance_0"), ("live_simple", None)]:
        t = task(category, entry) if entry else make_tasks(category, "test", 1)[0]
        run(check_env(make_env("bfcl"), t))
        run(check_env(make_env("bfcl", tool_format="hermes"), t))


def test_step_before_reset_and_bad_task_are_clear_errors() -> None:
    env = BFCLEnv()
    with pytest.raises(RuntimeError, match="before reset"):
        run(env.step("hi"))
    with pytest.raises(ValueError, match="not a BFCL task"):
        run(env.reset(Task(id="x", prompt="hi")))


# ---------------------------------------------------------------------------------------------
# Training


@pytest.mark.slow
@pytest.mark.heavy
def test_two_step_training_run(tmp_path: Path) -> None:
    from rl.cli import main

    run_dir = tmp_path / "run"
    # Multi-turn prompts carry 2-5k tokens of function docs, so every rollout prefill and
    # learner sequence is long: one model action per episode, short generations, no SFT stage
    # (demonstrations are replayed in the tests above). tasks.seed=7 draws entries with one API
    # class (TradingBot, ~2k tokens of docs) for train steps 0-1 and the eval.
    main(["train", "env=bfcl", "tasks.source=multi_turn_base", "tasks.seed=7",
          f"trainer.run_dir={run_dir}", "engine=hf",
          "trainer.steps=2", "trainer.tasks_per_step=1", "algorithm.group_size=2",
          "algorithm.drop_uniform_groups=false", "sft.enabled=false",
          "eval.compare_stages=false", "tasks.eval_size=1", "trainer.wandb=disabled",
          "trainer.num_threads=1", "rollout.max_turns=1", "rollout.max_tokens_per_turn=8",
          "rollout.max_total_tokens=6144"])
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("stage") == "rl"] == [0, 1]
    assert (run_dir / "checkpoints" / "step_000002" / "manifest.json").exists()
