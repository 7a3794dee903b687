"""env=search: the fictional world, BM25 retrieval, EM/F1 scoring, demonstrations, conformance."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from envs.base import replay_actions
from envs.checker import check_env
from envs.tasks.search import (
    SearchEnv,
    exact_match,
    f1_score,
    majority_baseline,
    make_tasks,
    normalize_answer,
)
from envs.tasks.search_world import QUESTION_TYPES, make_world
from envs.tools.search import BM25Index


@pytest.fixture(scope="module")
def env() -> SearchEnv:
    return SearchEnv()


def test_world_is_reproducible_and_sized() -> None:
    w = make_world(0)
    assert (len(w.countries), len(w.cities), len(w.people), len(w.companies)) == (30, 150, 600, 250)
    assert len(w.docs) == 1030
    make_world.cache_clear()
    again = make_world(0)
    assert again.docs == w.docs  # a pure function of the seed, not of the cache
    assert make_world(1).docs != w.docs
    # every company has its own founder, who names it on their page
    assert len({c["founder"] for c in w.companies.values()}) == 250
    for c, f in w.companies.items():
        assert w.people[f["founder"]]["company"] == c
        assert c in w.docs[w.doc_of[f["founder"]]][1]


def test_every_page_is_the_top_hit_for_its_own_name() -> None:
    w = make_world(0)
    index = BM25Index(w.docs)
    misses = [name for name, i in w.doc_of.items() if index.search(name, 1)[0][0] != i]
    assert misses == []


def test_bm25_ranks_by_term_statistics() -> None:
    index = BM25Index([("Alpha", "red apples grow here"), ("Beta", "red red red cars"),
                       ("Gamma", "blue sky")])
    assert [i for i, _ in index.search("red", 3)] == [1, 0]  # tf: Beta first; Gamma scores 0
    assert index.search("the of", 3) == []  # stopwords only: no query terms
    assert index.search("zebra", 3) == []
    assert index.render("zebra") == "No results."
    assert index.render("sky").startswith("[1] Gamma: blue sky")


def test_scoring_near_misses() -> None:
    assert normalize_answer("The  Quorvale!") == "quorvale"
    assert exact_match("the Quorvale.", "Quorvale")
    # an answer with extra words: no exact match, partial F1 (1 of 3 tokens: P=1/3, R=1)
    assert not exact_match("It is Quorvale", "Quorvale")
    assert f1_score("It is Quorvale", "Quorvale") == pytest.approx(0.5)
    assert f1_score("Velar", "Velar Quintash") == pytest.approx(2 / 3)  # P=1, R=1/2
    assert f1_score("Brivale", "Quorvale") == 0.0
    assert f1_score(None, "Quorvale") == 0.0 and not exact_match(None, "Quorvale")
    assert f1_score("1987", "1987") == 1.0 and f1_score("1988", "1987") == 0.0


def test_env_rewards_em_and_f1(env) -> None:
    task = make_tasks("mixed", "train", 1, 0, hops=1)[0]
    fmt = env.format

    async def final(answer_text: str):
        await env.reset(task)
        return await env.step(answer_text)

    res = asyncio.run(final(fmt.format_answer(f"It is {task.answer}")))
    assert res.terminated and res.info["success"] is False
    expected = f1_score(f"It is {task.answer}", task.answer)
    assert 0 < expected < 1 and res.reward == pytest.approx(expected)
    assert res.info["score"] == res.reward
    res = asyncio.run(final(fmt.format_answer(task.answer.upper())))
    assert res.info["success"] is True and res.reward == 1.0
    res = asyncio.run(final("I do not know."))  # no answer, no call: ends with 0
    assert res.terminated and res.reward == 0.0 and res.info["success"] is False


def test_tasks_deterministic_split_and_hops() -> None:
    a = make_tasks("mixed", "train", 40, 3)
    assert [t.prompt for t in a] == [t.prompt for t in make_tasks("mixed", "train", 40, 3)]
    test = make_tasks("mixed", "test", 40, 3)
    assert not {t.prompt for t in a} & {t.prompt for t in test}
    assert {t.data["hops"] for t in make_tasks("mixed", "train", 30, 0, hops=2)} == {2}
    counts = Counter(t.data["hops"] for t in make_tasks("mixed", "train", 300, 0))
    assert set(counts) == {1, 2, 3} and min(counts.values()) > 60
    with pytest.raises(ValueError, match="hops"):
        make_tasks("mixed", "train", 1, 0, hops=4)
    with pytest.raises(KeyError, match="mixed"):
        make_tasks("wiki", "train", 1, 0)


def test_demonstrations_score_one_and_find_every_hop(env) -> None:
    """Every demonstration's searches return the page of each entity on the chain (so the
    answer is read, not known), and it scores EM 1 / F1 1."""
    w = make_world(0)
    tasks = make_tasks("mixed", "train", 120, 0) + make_tasks("mixed", "test", 40, 0)

    async def run():
        for task in tasks:
            actions = env.demonstration(task)
            assert len(actions) == task.data["hops"] + 1
            msgs, results = await replay_actions(env, task, actions)
            observations = [m["content"] for m in msgs if m["role"] == "tool"]
            for entity, obs in zip(task.data["chain"], observations):
                assert f"{entity}: {w.docs[w.doc_of[entity]][1]}" in obs
            assert results[-1].terminated and results[-1].reward == 1.0
            assert results[-1].info["success"] is True
            assert results[-1].info["searches"] == task.data["hops"]

    asyncio.run(run())


def test_multi_hop_answers_are_not_on_the_first_page() -> None:
    """A 2-3 hop question's answer is absent from the start entity's page (so one lookup of
    the named entity cannot answer it)."""
    w = make_world(0)
    for task in make_tasks("mixed", "train", 300, 0, hops=(2, 3)):
        for entity in task.data["chain"][:-2]:  # every page before the last hop's
            assert task.answer not in w.docs[w.doc_of[entity]][1], task.prompt


def test_no_search_guesser_is_low() -> None:
    train = make_tasks("mixed", "train", 2000, 0)
    out = majority_baseline(train, make_tasks("mixed", "test", 500, 0))
    assert out["em"] < 0.05, out  # measured 0.012 on seed 0 (500 test questions)


def test_conformance_registry_and_no_search_variant() -> None:
    import envs.tasks
    from envs.base import make_env

    env = make_env("search")
    task = env.example_tasks(1)[0]
    asyncio.run(check_env(env, task))
    assert envs.tasks.make_tasks("search", "mixed", "test", 2, 0)[0].id.startswith("search-test")
    plain = SearchEnv(allow_search=False)
    assert plain.tools == [] and "search" not in plain.system_prompt
    asyncio.run(check_env(plain, task))
    json.dumps([t.data for t in make_tasks("mixed", "train", 5, 0)])  # tasks serialise
    for qtype, (path, _) in QUESTION_TYPES.items():
        assert 1 <= len(path) <= 3, qtype
