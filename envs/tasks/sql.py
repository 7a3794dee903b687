"""Text-to-SQL on real SQLite files (SkyRL-Gym style): ``env=sql``.

Each task names a generated database (``domain``, ``db_seed``: :mod:`envs.tasks.sql_data`) and a
question; the prompt shows the schema. ``reset`` copies the database file into a fresh episode
directory (built once per process into a cache directory, then copied with SQLite's backup API),
so an episode's writes never reach another episode; ``close`` closes the connections and
deletes the directory. Tools (:mod:`envs.tools.sql`): ``query`` (read-only connection) and
``execute`` (read-write), both with a statement timeout (``statement_timeout_s``).

The final answer is a SQL query in ``<answer>...</answer>`` (a ```sql fence inside is fine). It is
run read-only on the episode's database, with the same timeout, and its rows are compared with
the reference query's rows on the pristine database (**execution match**,
:func:`envs.tools.sql.results_match`): as multisets unless the question asks for an order, then as
sequences; numbers compare after rounding to 6 decimals, columns in order, names ignored. Terminal
step: ``reward`` = ``info["score"]`` = 1.0 / 0.0, ``info["success"]``; an episode that ends
without an answer, or whose answer fails to run, scores 0.

Tasks: ``make_tasks("mixed" | "shop" | "school", split, n, seed, n_databases=20)``: task ``k``
draws a database seed in ``range(n_databases)`` and a question template, both from
``(seed, k)``; the split hashes ``(domain, db_seed, question)``.
"""

from __future__ import annotations

import random
import re
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any

from envs.base import StepResult, ToolEnv, ToolError, register_env
from envs.formats import ToolCallFormat, get_format
from envs.tasks.draw import SPLITS, Candidate, draw_tasks
from envs.tasks.sql_data import DOMAINS, SCHEMAS, build_database, make_question
from envs.tools.sql import SQLiteDB, results_match, sql_tools
from rl.types import Message, Task

INSTRUCTIONS = ("You answer questions about a SQLite database. Use the query tool to run SQL and "
                "inspect the data (execute may change your copy of the database). When done, give "
                "the single SQL query that answers the question as <answer>SQL</answer>.")

_CACHE_LOCK = threading.Lock()
_CACHE: dict[tuple[str, int], Path] = {}
_CACHE_DIR: Path | None = None


def database(domain: str, db_seed: int) -> Path:
    """The pristine file of ``(domain, db_seed)``, built on first use into a per-process cache
    directory (removed at exit). Treat it as read-only."""
    global _CACHE_DIR
    with _CACHE_LOCK:
        if (domain, db_seed) not in _CACHE:
            if _CACHE_DIR is None:
                _CACHE_DIR = Path(tempfile.mkdtemp(prefix="turnrl-sql-cache-"))
                import atexit

                atexit.register(shutil.rmtree, _CACHE_DIR, True)
            _CACHE[domain, db_seed] = build_database(
                domain, db_seed, _CACHE_DIR / f"{domain}-{db_seed}.sqlite")
        return _CACHE[domain, db_seed]


def reference_rows(task: Task) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{database(task.data['domain'], task.data['db_seed'])}?mode=ro",
                           uri=True)
    try:
        return conn.execute(task.data["sql"]).fetchall()
    finally:
        conn.close()


def schema_text(domain: str) -> str:
    return SCHEMAS[domain]


def make_tasks(source: str = "mixed", split: str = "train", n: int = 100, seed: int = 0,
               n_databases: int = 20) -> list[Task]:
    """``n`` questions (module docstring). ``Task.answer`` is the reference SQL; ``data``:
    ``domain``, ``db_seed``, ``sql``, ``ordered``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    if source not in ("mixed", *DOMAINS):
        raise KeyError(f"unknown sql task source {source!r}; valid names: "
                       f"{['mixed', *DOMAINS]}")
    if n_databases < 1:
        raise ValueError(f"sql tasks.kwargs.n_databases must be >= 1, got {n_databases}")
    domains = DOMAINS if source == "mixed" else (source,)

    def candidate(k: int) -> Candidate | None:
        rng = random.Random(f"sql/{seed}/{k}/{source}/{n_databases}")
        domain, db_seed = rng.choice(domains), rng.randrange(n_databases)
        conn = sqlite3.connect(f"file:{database(domain, db_seed)}?mode=ro", uri=True)
        try:
            q = make_question(domain, conn, rng)
        finally:
            conn.close()
        if q is None:
            return None
        text, sql, ordered, _ = q
        key = f"{domain}/{db_seed}/{text}"
        return key, f"sql/{key}", lambda: Task(
            id=f"sql-{split}-{seed}-{k}",
            prompt=f"Database schema:\n{schema_text(domain)}\n\nQuestion: {text}", answer=sql,
            data={"domain": domain, "db_seed": db_seed, "sql": sql, "ordered": ordered,
                  "question": text})

    tasks = draw_tasks(candidate, split, n, tries=50 * n + 1000)
    if len(tasks) < n:
        raise ValueError(f"sql: only {len(tasks)} unique {split} questions from {n_databases} "
                         "databases; raise tasks.kwargs.n_databases")
    return tasks


_FENCE = re.compile(r"^```(?:sql|sqlite)?\s*(.*?)\s*```$", re.S | re.I)


def answer_sql(answer: str) -> str:
    """The query in a final answer: fences and one trailing semicolon removed."""
    text = answer.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1).strip()
    return text[:-1].rstrip() if text.endswith(";") else text


@register_env("sql")
class SQLEnv:
    """Text-to-SQL with a per-episode copy of a real SQLite database (module docstring)."""

    def __init__(self, tool_format: str = "hermes-prompt", *, statement_timeout_s: float = 2.0,
                 max_rows: int = 30, writable: bool = True, tool_timeout_s: float = 10.0,
                 max_calls_per_turn: int = 4) -> None:
        self.format: ToolCallFormat = get_format(tool_format)
        self.statement_timeout_s, self.max_rows, self.writable = (
            statement_timeout_s, max_rows, writable)
        self.db: SQLiteDB | None = None
        self.workdir: str | None = None
        self.task: Task | None = None
        self.tool_env = ToolEnv(sql_tools(self._current_db, writable=writable), self.format,
                                timeout_s=tool_timeout_s, max_calls_per_turn=max_calls_per_turn)
        self.tools: list[dict[str, Any]] = self.tool_env.tools
        self.system_prompt = self.tool_env.system_prompt(INSTRUCTIONS)

    def _current_db(self) -> SQLiteDB:
        if self.db is None:
            raise ToolError("no database is open (the episode has ended)")
        return self.db

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict]:
        try:
            domain, db_seed = task.data["domain"], int(task.data["db_seed"])
            task.data["sql"], task.data["ordered"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"task {task.id} is not a sql task: missing {e}") from None
        self._release()
        self.workdir = tempfile.mkdtemp(prefix="turnrl-sql-")
        path = Path(self.workdir) / f"{domain}.sqlite"
        src = sqlite3.connect(f"file:{database(domain, db_seed)}?mode=ro", uri=True)
        dst = sqlite3.connect(path)
        try:
            src.backup(dst)  # a consistent copy, whatever state the source file is in
        finally:
            src.close()
            dst.close()
        self.db = SQLiteDB(path, timeout_s=self.statement_timeout_s, max_rows=self.max_rows)
        self.task = task
        messages: list[Message] = [{"role": "system", "content": self.system_prompt},
                                   {"role": "user", "content": task.prompt}]
        return messages, {"task_id": task.id, "domain": domain, "db_seed": db_seed}

    async def step(self, action_text: str) -> StepResult:
        if self.task is None or self.db is None:
            raise RuntimeError("step() before reset() or after close()")
        res = await self.tool_env.step(action_text)
        if res.terminated:
            answer = res.info.get("final_answer")
            ok, error = False, None
            if answer is not None:
                try:
                    _, rows = self.db.fetch(answer_sql(answer), readonly=True)
                    ok = results_match(rows, reference_rows(self.task),
                                       ordered=bool(self.task.data["ordered"]))
                except ToolError as e:
                    error = str(e)
            res.reward = float(ok)
            res.success, res.score = ok, float(ok)  # the typed verdict (envs.base.StepResult)
            res.info.update(success=ok, score=float(ok), answer_error=error)
            self._release()  # the episode is over: free the file now, not at close()
        return res

    def _release(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    async def close(self) -> None:
        self._release()
        self.task = None

    def __del__(self) -> None:  # a dropped env must not leave its directory behind
        if getattr(self, "workdir", None):
            shutil.rmtree(str(self.workdir), ignore_errors=True)

    def example_tasks(self, n: int, *, seed: int = 0) -> list[Task]:
        return make_tasks("mixed", "train", n, seed)

    def demonstration(self, task: Task) -> list[str]:
        """Run the reference query once with ``query`` (reading its rows), then answer with it."""
        sql = task.data["sql"]
        return [self.format.format_call("query", {"sql": sql}), self.format.format_answer(sql)]

