"""rl/build.py: the best-checkpoint guard's validation tasks (eval.every) overlap neither the
held-out tasks the stage table reports nor the train tasks."""

from __future__ import annotations

import pytest

import rl.build
from rl.build import build_guard_tasks, build_tasks
from rl.config import Config
from rl.types import Task


def test_math_guard_tasks_are_disjoint_from_held_out_and_train() -> None:
    cfg = Config()
    cfg.tasks.eval_size, cfg.tasks.train_size, cfg.eval.guard_tasks = 16, 200, 12
    held, train = build_tasks(cfg, "test", 16), build_tasks(cfg, "train", 200)
    guard = build_guard_tasks(cfg, held, train)
    assert len(guard) == 12
    for other in (held, train):
        assert not {t.id for t in guard} & {t.id for t in other}
        assert not {t.prompt for t in guard} & {t.prompt for t in other}
    # the continuation of the held-out stream: the held-out set itself is unchanged by the guard
    assert [t.id for t in build_tasks(cfg, "test", 28)] == [t.id for t in held + guard]


def test_a_maker_that_repeats_held_out_tasks_has_them_dropped(monkeypatch, capsys) -> None:
    cfg = Config()
    cfg.eval.guard_tasks = 3
    held = [Task("a", "p1", 1), Task("b", "p2", 2)]
    # not prefix-stable: a held-out task again (other id, same content), then new ones
    pool = [Task("x", "p2", 2), Task("a", "p9", 9), Task("c", "p3", 3), Task("d", "p1", 5)]
    monkeypatch.setattr(rl.build, "build_tasks", lambda cfg, split, n: pool[:n])
    assert [t.id for t in build_guard_tasks(cfg, held)] == ["c", "d"]
    assert "only 2 test tasks are disjoint" in capsys.readouterr().out
    monkeypatch.setattr(rl.build, "build_tasks", lambda cfg, split, n: held)  # split exhausted
    with pytest.raises(ValueError, match="no tasks beyond the 2 held-out ones"):
        build_guard_tasks(cfg, held)
