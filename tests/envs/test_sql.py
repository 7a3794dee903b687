"""env=sql: generated SQLite databases, per-episode copies, read-only / read-write tools, the
statement timeout, execution-match scoring with near-misses, demonstrations, conformance."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections import Counter

import pytest

from envs.base import ToolError, replay_actions
from envs.checker import check_env
from envs.tasks.sql import SQLEnv, answer_sql, database, make_tasks, reference_rows
from envs.tasks.sql_data import build_database
from envs.tools.sql import SQLiteDB, results_match

RUNAWAY = ("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) "
           "SELECT COUNT(*) FROM r")


def _task(pred) -> object:
    return next(t for t in make_tasks("mixed", "train", 200, 0) if pred(t))


def _final(env: SQLEnv, task, sql: str):
    async def run():
        await env.reset(task)
        res = await env.step(env.format.format_answer(sql))
        await env.close()
        return res

    return asyncio.run(run())


def test_results_match_by_hand() -> None:
    a = [("Oslo", 3), ("Lyon", 2)]
    assert results_match([("Lyon", 2), ("Oslo", 3)], a, ordered=False)
    assert not results_match([("Lyon", 2), ("Oslo", 3)], a, ordered=True)
    assert results_match([("Oslo", 3.0), ("Lyon", 2)], a, ordered=True)  # 3.0 == 3
    assert results_match([(0.1 + 0.2,)], [(0.3,)], ordered=False)  # float noise of SUM
    assert not results_match([(0.31,)], [(0.3,)], ordered=False)
    assert not results_match([("Oslo", 3)], a, ordered=False)  # a missing row
    assert not results_match(a + a, a, ordered=False)  # duplicates count
    assert not results_match([(3, "Oslo"), (2, "Lyon")], a, ordered=False)  # column order counts
    assert results_match([(None, "x")], [(None, "x")], ordered=False)


def test_same_rows_in_another_order_match_unless_an_order_is_asked() -> None:
    env = SQLEnv()
    unordered = _task(lambda t: t.data["sql"].startswith("SELECT name FROM products WHERE category"))
    reversed_sql = unordered.data["sql"] + " ORDER BY name DESC"
    assert len(reference_rows(unordered)) >= 2
    res = _final(env, unordered, reversed_sql)
    assert res.terminated and res.info["success"] is True and res.reward == 1.0

    # "from the most expensive down": the right rows alphabetically are wrong
    ordered = _task(lambda t: t.data["ordered"] and "LIMIT" in t.data["sql"]
                    and sorted(reference_rows(t)) != reference_rows(t))
    assert "first" in ordered.data["question"] or "down" in ordered.data["question"]
    alphabetical = f"SELECT * FROM ({ordered.data['sql']}) AS t ORDER BY 1"
    assert _final(env, ordered, ordered.data["sql"]).reward == 1.0
    res = _final(env, ordered, alphabetical)
    assert res.terminated and res.reward == 0.0 and res.info["success"] is False
    wrong = ordered.data["sql"].replace(" DESC LIMIT", " ASC LIMIT")
    assert _final(env, ordered, wrong).reward == 0.0  # other rows
    # an extra column is a different result
    extra = ordered.data["sql"].replace("SELECT ", "SELECT 1, ", 1)
    assert _final(env, ordered, extra).reward == 0.0


def test_bad_answers_score_zero_with_the_reason() -> None:
    env = SQLEnv()
    task = make_tasks("mixed", "train", 1, 0)[0]
    res = _final(env, task, "SELEC nonsense")
    assert res.reward == 0.0 and "syntax error" in res.info["answer_error"]
    res = _final(env, task, "DELETE FROM " + ("customers" if task.data["domain"] == "shop"
                                              else "students"))
    assert res.reward == 0.0 and "readonly" in res.info["answer_error"]
    res = _final(env, task, f"```sql\n{task.data['sql']};\n```")  # fenced, semicolon: fine
    assert res.reward == 1.0
    assert answer_sql(" ```SQL\nSELECT 1;\n``` ") == "SELECT 1"


def test_tools_read_only_read_write_and_episode_copies(tmp_path) -> None:
    env = SQLEnv()
    task = _task(lambda t: t.data["domain"] == "shop")
    fmt = env.format

    async def run():
        await env.reset(task)
        workdir = env.workdir
        assert workdir and os.path.isdir(workdir)
        out = await env.step(fmt.format_call("query", {"sql": "DELETE FROM orders"}))
        assert "readonly" in out.messages[0]["content"] and out.info["tool_errors"] == 1
        out = await env.step(fmt.format_call("execute", {"sql": "DELETE FROM orders"}))
        assert "rows_changed\n120" in out.messages[0]["content"]
        out = await env.step(fmt.format_call("query", {"sql": "SELECT COUNT(*) FROM orders"}))
        assert "\n0\n" in out.messages[0]["content"]  # the episode's copy changed ...
        out = await env.step(fmt.format_call("query", {"sql": "SELECT 1; SELECT 2"}))
        assert "one statement" in out.messages[0]["content"]
        await env.close()
        assert not os.path.exists(workdir)  # ... and is gone after the episode
        await env.reset(task)  # ... and the next episode starts from the pristine file
        out = await env.step(fmt.format_call("query", {"sql": "SELECT COUNT(*) FROM orders"}))
        assert "\n120\n" in out.messages[0]["content"]
        res = await env.step(fmt.format_answer(task.data["sql"]))
        assert res.terminated and env.workdir is None  # released at the episode's end
        await env.close()

    asyncio.run(run())
    pristine = sqlite3.connect(database("shop", task.data["db_seed"]))
    assert pristine.execute("SELECT COUNT(*) FROM orders").fetchone() == (120,)
    pristine.close()


def test_statement_timeout_interrupts_a_runaway_query(tmp_path) -> None:
    db = SQLiteDB(build_database("shop", 0, tmp_path / "x.sqlite"), timeout_s=0.3)
    for readonly in (True, False):
        t0 = time.monotonic()
        with pytest.raises(ToolError, match="timed out after 0.3 s"):
            db.fetch(RUNAWAY, readonly=readonly)
        assert time.monotonic() - t0 < 3.0
    assert db.fetch("SELECT COUNT(*) FROM customers")[1] == [(30,)]  # usable afterwards
    db.close()


def test_databases_are_reproducible(tmp_path) -> None:
    a = sqlite3.connect(build_database("school", 3, tmp_path / "a.sqlite"))
    b = sqlite3.connect(build_database("school", 3, tmp_path / "b.sqlite"))
    c = sqlite3.connect(build_database("school", 4, tmp_path / "c.sqlite"))
    dump = lambda conn: list(conn.iterdump())  # noqa: E731
    assert dump(a) == dump(b) and dump(a) != dump(c)
    assert a.execute("SELECT COUNT(*) FROM enrollments").fetchone() == (120,)
    with pytest.raises(FileExistsError):
        build_database("school", 3, tmp_path / "a.sqlite")


def test_tasks_deterministic_split_and_no_ties() -> None:
    a = make_tasks("mixed", "train", 60, 1)
    assert [t.prompt for t in a] == [t.prompt for t in make_tasks("mixed", "train", 60, 1)]
    test = make_tasks("mixed", "test", 30, 1)
    key = lambda t: (t.data["domain"], t.data["db_seed"], t.data["question"])  # noqa: E731
    assert not {key(t) for t in a} & {key(t) for t in test}
    assert Counter(t.data["domain"] for t in a).keys() == {"shop", "school"}
    assert {t.data["domain"] for t in make_tasks("school", "train", 10, 0)} == {"school"}
    for t in make_tasks("mixed", "train", 150, 0):
        assert reference_rows(t), t.prompt  # never empty
        if "LIMIT 1" in t.data["sql"]:  # "the most": a unique winner
            conn = sqlite3.connect(database(t.data["domain"], t.data["db_seed"]))
            counts = conn.execute(t.data["sql"].replace("SELECT c.name", "SELECT COUNT(*)")
                                  .replace(" LIMIT 1", " LIMIT 2")).fetchall()
            assert len(counts) < 2 or counts[0] != counts[1], t.prompt
    with pytest.raises(KeyError, match="mixed"):
        make_tasks("bank", "train", 1, 0)


def test_demonstrations_score_one() -> None:
    env = SQLEnv()

    async def run():
        for task in make_tasks("mixed", "train", 60, 0) + make_tasks("mixed", "test", 20, 0):
            msgs, results = await replay_actions(env, task, env.demonstration(task))
            assert results[-1].terminated and results[-1].reward == 1.0, task.prompt
            assert msgs[3]["role"] == "tool" and "Error" not in msgs[3]["content"]
        await env.close()

    asyncio.run(run())


def test_conformance_and_registry() -> None:
    import envs.tasks
    from envs.base import make_env

    env = make_env("sql")
    asyncio.run(check_env(env, env.example_tasks(1)[0]))
    assert env.workdir is None
    plain = SQLEnv(writable=False)
    assert [t["function"]["name"] for t in plain.tools] == ["query"]
    assert envs.tasks.make_tasks("sql", "mixed", "test", 2, 0)[0].id.startswith("sql-test")
