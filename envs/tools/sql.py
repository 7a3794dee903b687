"""SQL tools over one SQLite database file: ``query`` (read-only) and ``execute`` (read-write).

Reused: Python's ``sqlite3`` (the SQLite library itself). What is ours:

- **read-only** ``query``: a separate connection opened with the URI ``mode=ro`` and
  ``PRAGMA query_only=ON``, so no statement through it can change the file (SQLite refuses with
  "attempt to write a readonly database");
- **read-write** ``execute``: a normal connection, autocommit, for CREATE VIEW / INSERT / UPDATE...;
- a **statement timeout**: a progress handler (called every ``PROGRESS_OPS`` virtual-machine
  instructions) interrupts a statement past its deadline, so a runaway query (a cross join of
  cross joins, a recursive CTE) ends with "interrupted" instead of occupying a thread;
- one statement per call (sqlite3 refuses several), results rendered as a small text table capped
  at ``max_rows`` rows.

    db = SQLiteDB("/tmp/episode/shop.sqlite", timeout_s=2.0)
    cols, rows = db.fetch("SELECT COUNT(*) FROM customers", readonly=True)
    tools = db.tools()        # [query, execute] as envs.base.Tool
    db.close()
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from envs.base import Tool, ToolError

PROGRESS_OPS = 1000  # SQLite VM instructions between deadline checks (~tens of microseconds)
MAX_SQL_CHARS = 4000


class SQLiteDB:
    """Read-only and read-write connections to one database file, with a statement timeout."""

    def __init__(self, path: str | Path, *, timeout_s: float = 2.0, max_rows: int = 30) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no SQLite database at {self.path}")
        self.timeout_s, self.max_rows = timeout_s, max_rows
        self._lock = threading.Lock()  # the tools run in worker threads; one statement at a time
        self._deadline = 0.0
        # check_same_thread=False: ToolEnv runs sync tools via asyncio.to_thread (any thread);
        # the lock above serialises use.
        self.ro = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        self.ro.execute("PRAGMA query_only = ON")
        self.rw = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        for conn in (self.ro, self.rw):
            conn.set_progress_handler(self._past_deadline, PROGRESS_OPS)

    def _past_deadline(self) -> int:
        return int(time.monotonic() > self._deadline)  # non-zero: SQLite interrupts

    def fetch(self, sql: str, *, readonly: bool = True) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one statement; return ``(column names, rows)``. Raises :class:`ToolError` with
        SQLite's message (syntax errors, missing tables, writes through the read-only connection,
        "interrupted" past the timeout)."""
        if not isinstance(sql, str) or not sql.strip():
            raise ToolError("empty SQL statement")
        if len(sql) > MAX_SQL_CHARS:
            raise ToolError(f"SQL too long ({len(sql)} chars, max {MAX_SQL_CHARS})")
        conn = self.ro if readonly else self.rw
        with self._lock:
            self._deadline = time.monotonic() + self.timeout_s
            try:
                cur = conn.execute(sql)
                rows = cur.fetchall()
            except sqlite3.OperationalError as e:
                if "interrupted" in str(e):
                    raise ToolError(f"statement timed out after {self.timeout_s:g} s") from None
                raise ToolError(f"SQL error: {e}") from None
            except (sqlite3.Error, ValueError, OverflowError) as e:  # incl. "one statement at a time"
                raise ToolError(f"SQL error: {e}") from None
            cols = [d[0] for d in cur.description or []]
            changed = cur.rowcount
        if not readonly and not cols:
            return ["rows_changed"], [(max(changed, 0),)]
        return cols, rows

    def render(self, cols: list[str], rows: list[tuple[Any, ...]]) -> str:
        if not cols:
            return "OK (no result rows)"
        lines = [" | ".join(cols)]
        lines += [" | ".join("NULL" if v is None else str(v) for v in r)
                  for r in rows[: self.max_rows]]
        if len(rows) > self.max_rows:
            lines.append(f"... ({len(rows)} rows, first {self.max_rows} shown)")
        else:
            lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
        return "\n".join(lines)

    def tools(self, *, writable: bool = True) -> list[Tool]:
        """``query`` (read-only) and, when ``writable``, ``execute`` (read-write) on this file."""
        return sql_tools(lambda: self, writable=writable)

    def close(self) -> None:
        with self._lock:
            self.ro.close()
            self.rw.close()


def sql_tools(get_db: Callable[[], SQLiteDB], *, writable: bool = True) -> list[Tool]:
    """``query`` and (``writable``) ``execute`` on the database ``get_db()`` returns at call time
    (an env swaps its database per episode and keeps one set of tools)."""

    def query(sql: str) -> str:
        """Run one read-only SQL statement (e.g. SELECT) on the database and return the rows.

        Args:
            sql: One SQLite statement.
        """
        db = get_db()
        return db.render(*db.fetch(sql, readonly=True))

    def execute(sql: str) -> str:
        """Run one SQL statement that may change the database (CREATE VIEW, INSERT, UPDATE,
        DELETE, ...) and return its rows or the number of rows changed.

        Args:
            sql: One SQLite statement.
        """
        db = get_db()
        return db.render(*db.fetch(sql, readonly=False))

    out = [Tool.from_function(query)]
    return out + [Tool.from_function(execute)] if writable else out


def normalize_value(v: Any) -> Any:
    """Comparable form of one cell: numbers as floats rounded to 6 decimals (so 3 == 3.0 and
    float noise of SUM/AVG is ignored), bytes and text unchanged, NULL as None."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return round(float(v), 6)
    return v


def results_match(pred: list[tuple[Any, ...]], ref: list[tuple[Any, ...]], *,
                  ordered: bool) -> bool:
    """Execution match: the same rows (cells normalised by :func:`normalize_value`, columns in
    order); as sequences when ``ordered``, else as multisets (duplicates count)."""
    p = [tuple(normalize_value(v) for v in r) for r in pred]
    r = [tuple(normalize_value(v) for v in row) for row in ref]
    if ordered:
        return p == r
    key = repr  # mixed types (None, str, float) cannot be sorted directly
    return sorted(p, key=key) == sorted(r, key=key)
