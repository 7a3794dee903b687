"""How the task makers of envs/tasks draw their tasks.

Candidates ``k = 0, 1, 2, ...`` are drawn one by one, each from its own seeded
``random.Random`` (so candidate ``k`` does not depend on how many tasks are asked for), and a
candidate is kept when it is new (its key unseen) and hashes into the asked split: the first
``n`` kept make the split. So every maker is prefix-stable (task ``k`` of ``n`` is task ``k`` of
``n + 1``), unique within a split, and its train and test splits are disjoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from rl.types import Task

SPLITS = ("train", "test")
TEST_PERCENT = 20

# (key, split key, make): ``make()`` builds the task, or returns None to drop it
Candidate = tuple[str, str, Callable[[], "Task | None"]]


def split_of(key: str) -> str:
    """Which split a problem belongs to: a stable hash of its canonical key."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    return "test" if bucket < TEST_PERCENT else "train"


def draw_tasks(candidate: Callable[[int], Candidate | None], split: str, n: int,
               tries: int) -> list[Task]:
    """The first ``n`` tasks among candidates ``k = 0 .. tries - 1`` that are new and in
    ``split`` (fewer when the candidates run out: the caller says what to widen).

    ``candidate(k)`` draws candidate ``k``, or returns None to skip it. ``key`` says which
    candidates are the same task (the first one counts); ``split_key`` is hashed into a split
    (:func:`split_of`); ``make()`` is called for a new candidate of the split only, and may drop
    it by returning None (its key stays taken: a later candidate with the same key is dropped too).
    """
    tasks: list[Task] = []
    seen: set[str] = set()
    for k in range(tries):
        if len(tasks) == n:
            break
        cand = candidate(k)
        if cand is None:
            continue
        key, split_key, make = cand
        if key in seen or split_of(split_key) != split:
            continue
        seen.add(key)
        task = make()
        if task is not None:
            tasks.append(task)
    return tasks
