"""Helpers shared by the sandbox tests (a uniquely named module: several test folders have
a ``conftest.py``, so tests import these from here, not from ``conftest``)."""

from __future__ import annotations

import os
import secrets
import time

import pytest

from envs.sandbox import Sandbox, SandboxConfig, level_rank
from envs.sandbox.probe import supported_level

FAKE_SECRET = "turnrl-fake-secret-" + secrets.token_hex(8)
os.environ["TURNRL_FAKE_SECRET"] = FAKE_SECRET  # set before any worker starts

HANG_TIMEOUT = 1.0  # seconds: short, so the hang attacks stay cheap


def make_config(mode: str) -> SandboxConfig:
    """``default`` (the shipped default), ``process`` or ``namespace``."""
    iso = SandboxConfig().isolation if mode == "default" else mode
    return SandboxConfig(isolation=iso, timeout=5.0, workers=2)


def assert_serves(box: Sandbox) -> None:
    """The pool still answers a normal call correctly after an attack."""
    r = box.run_sync("print('still serving')", timeout=10)
    assert r.ok, r
    assert r.stdout == "still serving\n"


TAG = "sbxattack"
SET_TAG = f"import ctypes; ctypes.CDLL(None).prctl(15, b'{TAG}', 0, 0, 0)\n"
"""Prepended to attack code: names the process (comm is inherited by forks) so the test can
look for survivors in /proc from outside, whatever pid namespace they are in."""


def survivors(wait: float = 2.0) -> list[int]:
    """Pids of tagged attack processes still alive after up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/comm") as f:
                    if f.read().strip() != TAG:
                        continue
                with open(f"/proc/{name}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue
            except OSError:
                continue
            found.append(int(name))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def is_root() -> bool:
    return os.geteuid() == 0


def expected_level(requested: str) -> str:
    """What a pool asked for ``requested`` must reach on this machine (the probe decides)."""
    supported = supported_level().level
    return min(requested, supported, key=level_rank)


def need_level(sb: Sandbox, level: str, why: str) -> None:
    """Skip a test that needs ``level`` only where this machine cannot provide it; where it
    can and the pool did not reach it, fail (a sandbox that silently degraded)."""
    if level_rank(sb.isolation) >= level_rank(level):
        return
    if level_rank(expected_level(sb.config.isolation)) >= level_rank(level):
        pytest.fail(
            f"{why} needs '{level}'; this machine supports "
            f"'{supported_level().level}' but the pool reached only '{sb.isolation}' "
            f"(layers {'+'.join(sb.layers)})"
        )
    pytest.skip(f"{why} needs '{level}'; this pool was asked for / reached {sb.isolation}")
