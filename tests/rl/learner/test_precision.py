"""``learner.autocast=auto``: bf16 only where the learner's device computes it natively."""

from __future__ import annotations

import contextlib

import pytest
import torch

from rl.config import ConfigError, LearnerConfig, load_config, to_dataclass
from rl.learner import precision
from rl.learner.precision import choose_autocast, resolve_autocast

AVX512 = {"fpu", "sse2", "avx2", "avx512f", "avx512bw", "avx512vl"}  # no bf16 instructions


@pytest.mark.parametrize("flags, dtype", [
    (AVX512 | {"amx_tile", "amx_bf16"}, "bf16"),  # Sapphire Rapids
    (AVX512 | {"avx512_bf16"}, "bf16"),  # Cooper Lake, Zen 4
    (AVX512, "fp32"),  # bf16 would be emulated (2.7x slower)
    (set(), "fp32"),  # non-Linux or unreadable /proc/cpuinfo
])
def test_auto_on_cpu_follows_the_cpu_flags(flags, dtype):
    assert choose_autocast("auto", "cpu", flags)[0] == dtype


def test_auto_on_cuda_follows_bf16_support_not_the_host_cpu():
    assert choose_autocast("auto", "cuda", AVX512, cuda_bf16=True) == ("bf16", "CUDA supports bf16")
    assert choose_autocast("auto", "cuda", {"amx_bf16"}, cuda_bf16=False)[0] == "fp32"
    assert choose_autocast("auto", "meta", {"amx_bf16"}, cuda_bf16=True)[0] == "fp32"


@pytest.mark.parametrize("setting", ["bf16", "fp32"])
@pytest.mark.parametrize("device_type, flags", [("cpu", AVX512), ("cpu", {"amx_bf16"}),
                                                ("cuda", set())])
def test_explicit_settings_pass_through(setting, device_type, flags):
    assert choose_autocast(setting, device_type, flags, cuda_bf16=True) == (setting, "")
    assert resolve_autocast(setting, torch.device(device_type)) == (setting, "")


def test_invalid_setting_is_a_config_error():
    with pytest.raises(ValueError, match="learner.autocast='fp16' is not one of: auto, bf16, fp32"):
        choose_autocast("fp16", "cpu")
    cfg = to_dataclass(load_config(["learner.autocast=fp16"]))
    with pytest.raises(ConfigError, match="learner.autocast='fp16' is not one of: auto, bf16, fp32"):
        cfg.validate()
    assert LearnerConfig().autocast == "auto"
    to_dataclass(load_config(["learner.autocast=auto"])).validate()


def test_cpu_flags_empty_off_linux_or_when_unreadable(monkeypatch):
    read = precision.cpu_flags.__wrapped__  # uncached
    monkeypatch.setattr(precision.platform, "system", lambda: "Darwin")
    assert read() == frozenset()
    monkeypatch.setattr(precision.platform, "system", lambda: "Linux")

    def unreadable(*a, **k):
        raise PermissionError("/proc/cpuinfo")

    with monkeypatch.context() as m:
        m.setattr("builtins.open", unreadable)
        assert read() == frozenset()


def test_torch_learner_autocasts_as_the_cpu_flags_say(monkeypatch, tiny_model):
    from rl.learner.torch import TorchLearner

    learner = TorchLearner(tiny_model, LearnerConfig())  # auto, on the CPU
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(AVX512 | {"amx_bf16"}))
    ctx = learner._autocast()
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(AVX512))
    assert isinstance(learner._autocast(), contextlib.nullcontext)
    learner.cfg.autocast = "bf16"  # forced
    assert isinstance(learner._autocast(), torch.autocast)


def test_deepspeed_bf16_auto_follows_the_same_decision(monkeypatch):
    from rl.learner.deepspeed import resolve_bf16

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(AVX512 | {"avx512_bf16"}))
    assert resolve_bf16("auto", torch.device("cpu"))
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(AVX512))
    assert not resolve_bf16("auto", torch.device("cpu"))
    assert resolve_bf16("on", torch.device("cpu")) and not resolve_bf16("off")


def test_make_learner_prints_the_choice_once(monkeypatch, capsys, tiny_model):
    from rl.learner import make_learner

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(AVX512))
    make_learner(tiny_model, LearnerConfig())
    out = capsys.readouterr().out.splitlines()
    assert out == ["[turnrl] learner autocast: fp32 (learner.autocast=auto: this CPU has no native "
                   "bf16 (avx512_bf16/AMX); learner.autocast=bf16 to force)"]
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(AVX512 | {"amx_bf16"}))
    make_learner(tiny_model, LearnerConfig())
    assert capsys.readouterr().out.strip() == (
        "[turnrl] learner autocast: bf16 (learner.autocast=auto: this CPU computes bf16 natively "
        "(amx_bf16); learner.autocast=fp32 to force)")
    make_learner(tiny_model, LearnerConfig(autocast="fp32"))
    assert capsys.readouterr().out.strip() == "[turnrl] learner autocast: fp32"
