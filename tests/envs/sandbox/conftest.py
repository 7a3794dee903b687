"""Sandboxes shared by the sandbox tests: one per isolation mode, started once per module.

The pools are loop-agnostic (they run on their own thread), so the tests call ``run_sync``;
the async API has its own tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sandbox_helpers import make_config

from envs.sandbox import Sandbox, level_rank


@pytest.fixture(scope="module", params=["default", "process", "namespace"])
def sb(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """The default sandbox, the process-level one (what the default degrades to without
    Landlock/seccomp) and the strong (namespace) one where this machine provides it."""
    box = Sandbox(make_config(request.param))
    box.run_sync("pass")
    if request.param == "namespace" and level_rank(box.isolation) < level_rank("namespace"):
        box.close_sync()
        pytest.skip(
            f"namespace isolation unavailable here (got {box.isolation}: "
            f"{'+'.join(box.layers)}); needs bwrap or unprivileged user namespaces"
        )
    yield box
    box.close_sync()
