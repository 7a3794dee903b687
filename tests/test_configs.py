"""Every YAML under configs/ composes onto the typed defaults; bad keys fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl.config import Config, load_config, to_dataclass

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
OPTIONS = [
    (group.name, f.stem)
    for group in sorted(CONFIGS.iterdir()) if group.is_dir()
    for f in sorted(group.glob("*.yaml"))
]


def test_there_are_config_groups():
    groups = {g for g, _ in OPTIONS}
    assert {"algorithm", "env", "model", "rollout", "learner"} <= groups


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_yaml_composes(group, option):
    cfg = to_dataclass(load_config([f"{group}={option}"]))
    assert isinstance(cfg, Config)


def test_defaults_and_overrides():
    cfg = to_dataclass(load_config(["algorithm=drgrpo", "trainer.steps=3"]))
    assert cfg.algorithm.advantage == "drgrpo" and not cfg.algorithm.norm_std
    assert cfg.algorithm.loss.agg == "seq-mean-token-sum-norm"
    assert cfg.trainer.steps == 3


@pytest.mark.parametrize("bad", ["trainer.stepz=3", "algorithm=nope", "trainer.steps=abc"])
def test_malformed_config_is_an_error(bad):
    with pytest.raises(Exception) as info:
        to_dataclass(load_config([bad]))
    assert info.value.__class__.__name__ != "AttributeError"  # a config error, not a crash


def test_cli_reports_bad_config_without_traceback(capsys):
    from rl.cli import main

    with pytest.raises(SystemExit) as info:
        main(["train", "trainer.stepz=1"])
    assert "bad config" in str(info.value) and "stepz" in str(info.value)
