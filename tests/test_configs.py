"""Every YAML under configs/ composes onto the typed defaults; bad keys fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl.config import Config, load_config, to_dataclass

CONFIGS = Path(__file__).resolve().parent.parent / "rl" / "configs"
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


def test_composed_defaults_match_the_reviewed_reference():
    """Any change to a default is a reviewed change: regenerate the reference with
    ``python -m rl.config > tests/config_reference.yaml`` and commit it with the change."""
    from rl.config import dump_defaults

    reference = Path(__file__).resolve().parent / "config_reference.yaml"
    assert dump_defaults() == reference.read_text(), (
        "the composed default config changed; review the diff of `python -m rl.config` "
        "against tests/config_reference.yaml and regenerate it")


def test_validate_reports_every_problem_one_line_each():
    """rl.checks.validate: the schema's problems and the names checked against the registries."""
    from rl.checks import validate
    from rl.config import ConfigError

    cfg = to_dataclass(load_config(["env.name=nope", "algorithm.credit=critic",
                                    "trainer.steps=-1", "learner.backend=jax"]))
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    lines = str(info.value).splitlines()
    assert len(lines) == 4
    assert any(line.startswith("env.name='nope' is not one of: ") and "math" in line
               for line in lines)
    assert any(line.startswith("algorithm.credit='critic' is not one of: archer, outcome, tree, turn")
               for line in lines)
    assert "trainer.steps=-1 must be >= 0" in lines
    assert any(line.startswith("learner.backend='jax'") for line in lines)
    validate(to_dataclass(load_config([])))  # the defaults are valid
    with pytest.raises(ConfigError) as info:  # the schema alone (Config.validate) knows no names
        cfg.validate()
    assert str(info.value).splitlines() == ["trainer.steps=-1 must be >= 0"]


def test_presets_pick_credit_with_one_knob():
    assert to_dataclass(load_config(["algorithm=archer"])).algorithm.credit == "archer"
    assert to_dataclass(load_config(["algorithm=grpo_turn"])).algorithm.credit == "turn"
    assert to_dataclass(load_config(["algorithm=grpo"])).algorithm.credit == "outcome"
    for old in ("algorithm.turn_level=true", "algorithm.archer.enabled=true"):
        with pytest.raises(Exception, match="turn_level|enabled"):
            to_dataclass(load_config([old]))


def test_advantage_settings_are_reachable_from_the_cli():
    from rl.algos.credit import advantage_config

    cfg = to_dataclass(load_config(["algorithm.std_unbiased=true", "algorithm.eps=0.01",
                                    "algorithm.batch_baseline=true"]))
    a = advantage_config(cfg.algorithm)
    assert (a.std_unbiased, a.eps, a.batch_baseline) == (True, 0.01, True)


@pytest.mark.slow
def test_the_wheel_ships_the_configs(tmp_path):
    """A non-editable install has configs: they are package data of ``rl``."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parent.parent
    had_build = (root / "build").exists()
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path), str(root)], check=True)
    finally:
        if not had_build:  # setuptools' scratch folder in the checkout
            shutil.rmtree(root / "build", ignore_errors=True)
    (wheel,) = tmp_path.glob("turnrl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "rl/configs/config.yaml" in names
    assert {"rl/configs/algorithm/grpo.yaml", "rl/configs/env/math.yaml"} <= names


def test_validate_rejects_a_negative_guard_cadence_and_an_empty_guard_set():
    from rl.config import ConfigError

    cfg = to_dataclass(load_config(["eval.every=-1", "eval.guard_tasks=0"]))
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert str(info.value).splitlines() == ["eval.every=-1 must be >= 0 (0 = off)",
                                            "eval.guard_tasks=0 must be >= 1"]
    to_dataclass(load_config(["eval.every=4", "eval.guard_tasks=8"])).validate()
