"""``turnrl eval`` builds the held-out split only: a source whose split is 100% test (BFCL with
``tasks.kwargs.test_percent=100``, for evidence on every entry) evaluates instead of failing on
its empty train split."""

from __future__ import annotations

import pytest

pytest.importorskip("bfcl_eval")


def test_eval_builds_only_the_eval_split(tiny_model_dir, monkeypatch) -> None:
    import rl.build
    from rl.config import load_config, to_dataclass

    cfg = to_dataclass(load_config([
        "env=bfcl", "tasks.source=multi_turn_base", "+tasks.kwargs.test_percent=100",
        "tasks.eval_size=2", f"model.name={tiny_model_dir}", "engine=hf", "rollout.max_turns=1",
        "rollout.max_tokens_per_turn=4", "trainer.num_threads=1", "trainer.wandb=disabled"]))
    with pytest.raises(ValueError, match="no train entries"):  # what failed before
        rl.build.build_tasks(cfg, "train", cfg.tasks.train_size)
    splits: list[str] = []
    real = rl.build.build_tasks

    def spy(cfg, split, n):
        splits.append(split)
        return real(cfg, split, n)

    monkeypatch.setattr(rl.build, "build_tasks", spy)
    res = rl.build.run_eval(cfg)
    assert splits == ["test"]
    assert len(res.trajectories) == 2 and res.settings["tasks"] == 2
    # training still builds both splits
    parts = rl.build.build_parts(to_dataclass(load_config([
        "env=bfcl", "tasks.source=multi_turn_base", "tasks.train_size=2", "tasks.eval_size=1",
        f"model.name={tiny_model_dir}", "engine=hf"])))
    assert parts.train_tasks is not None and len(parts.train_tasks.tasks) == 2
    assert splits[-2:] == ["train", "test"]
