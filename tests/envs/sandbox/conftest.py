"""Sandboxes shared by the sandbox tests: one per isolation mode, started once per module.

The pools are loop-agnostic (they run on their own thread), so the tests call ``run_sync``;
the async API has its own tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sandbox_helpers import expected_level, make_config

from envs.sandbox import Sandbox, level_rank
from envs.sandbox.probe import supported_level

_REACHED: dict[str, str] = {}


@pytest.fixture(scope="module", params=["default", "process", "namespace"])
def sb(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """The default sandbox, the process-level one (what the default degrades to without
    Landlock/seccomp) and the strong (namespace) one where this machine provides it."""
    box = Sandbox(make_config(request.param))
    box.run_sync("pass")
    _REACHED[request.param] = f"{box.isolation} ({'+'.join(box.layers)})"
    want = expected_level(box.config.isolation)
    if level_rank(box.isolation) < level_rank(want):
        box.close_sync()
        pytest.fail(
            f"the {request.param!r} pool reached only {box.isolation!r} ({'+'.join(box.layers)})"
            f" but this machine supports {want!r} ({supported_level().layers})"
        )
    if request.param == "namespace" and level_rank(box.isolation) < level_rank("namespace"):
        box.close_sync()
        pytest.skip(f"this machine cannot provide namespace isolation: {supported_level()}")
    yield box
    box.close_sync()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the isolation the sandbox tests ran under, next to what the machine supports."""
    if not _REACHED:
        return
    s = supported_level()
    terminalreporter.write_sep("-", "sandbox isolation")
    terminalreporter.write_line(f"machine supports: {s.level} {s.layers}")
    for mode, reached in _REACHED.items():
        terminalreporter.write_line(f"pool {mode!r} reached: {reached}")
