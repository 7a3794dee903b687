"""rl/tasks.py: the best-checkpoint guard's validation tasks (eval.every) overlap neither the
held-out tasks the stage table reports nor the train tasks."""

from __future__ import annotations

import pytest

import rl.build
import rl.tasks
from rl.config import Config
from rl.tasks import build_guard_tasks, build_tasks
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
    monkeypatch.setattr(rl.tasks, "build_tasks", lambda cfg, split, n: pool[:n])
    assert [t.id for t in build_guard_tasks(cfg, held)] == ["c", "d"]
    assert "only 2 test tasks are disjoint" in capsys.readouterr().out
    monkeypatch.setattr(rl.tasks, "build_tasks", lambda cfg, split, n: held)  # split exhausted
    with pytest.raises(ValueError, match="no tasks beyond the 2 held-out ones"):
        build_guard_tasks(cfg, held)


# -- engine=auto: the default of `turnrl train` and `turnrl eval` -------------------------------------
def test_the_default_engine_is_auto_and_the_choice_is_printed_once(monkeypatch, capsys) -> None:
    from rl.config import load_config, to_dataclass

    assert Config().engine == "auto"
    for why, engine in ((None, "vllm"), ("vllm is not installed", "hf")):
        cfg = to_dataclass(load_config([]))  # `turnrl train` without an override
        assert cfg.engine == "auto"
        monkeypatch.setattr(rl.build, "vllm_unusable", lambda cfg, why=why: why)
        capsys.readouterr()
        assert rl.build.resolve_engine(cfg) == engine == cfg.engine
        assert rl.build.resolve_engine(cfg) == engine  # decided: said once
        assert capsys.readouterr().out.splitlines() == [
            f"[turnrl] engine: {engine} (engine=auto: {why or 'vllm is installed and usable'}; "
            "engine=hf / engine=vllm to choose)"]

    def no_probe(cfg) -> str:
        raise AssertionError("an explicit engine needs no probe")

    monkeypatch.setattr(rl.build, "vllm_unusable", no_probe)
    for override, engine in (("engine=hf", "hf"), ("rollout=hf", "hf"), ("rollout=vllm", "vllm")):
        assert rl.build.resolve_engine(to_dataclass(load_config([override]))) == engine
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(rl.build, "vllm_unusable", lambda cfg: None)
    monkeypatch.setenv("RANK", "1")  # a torchrun rank other than 0 decides without a word
    assert rl.build.resolve_engine(Config()) == "vllm" and capsys.readouterr().out == ""


def test_auto_takes_hf_where_vllm_is_missing_or_under_torchrun(monkeypatch) -> None:
    """The probe's cheap answers (the platform check imports vLLM: not run here)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    cfg = Config()
    assert rl.build.vllm_unusable(cfg) == "vllm is not installed"
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else real(name, *a))
    cfg.launcher.kind = "ray"  # the workers' nodes have the devices: installed is enough
    assert rl.build.vllm_unusable(cfg) is None
    monkeypatch.setenv("WORLD_SIZE", "2")  # decided before vLLM is imported
    assert rl.build.vllm_unusable(cfg) == ("one of 2 torchrun ranks, where in-process vLLM is not "
                                           "supported")
