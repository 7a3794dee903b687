"""Sandboxed execution of model-written code (issue 4): never in the trainer's process.

    from envs.sandbox import Sandbox, SandboxConfig, get_sandbox

    async with Sandbox(SandboxConfig(timeout=5)) as sb:
        r = await sb.run("x = 21")                    # a fresh child per call
        r = await sb.run("x = 2", session="traj-17")  # a persistent interpreter ...
        r = await sb.run("x * 21", session="traj-17")  # ... keeps its variables: "42"
        await sb.close_session("traj-17")
        print(r.render(), r.isolation, sb.metrics())

Layout: ``config.py`` (SandboxConfig, levels), ``result.py`` (ExecResult), ``sandbox.py`` (the
async pool on the trainer side), and, standard library only, ``_worker.py`` (the forking worker
process), ``_child.py`` (what a forked child does before and while running code) and
``_kernel.py`` (Landlock, seccomp, credentials, namespaces through ctypes). The README's
Security section says what each isolation level stops and what it does not.
"""

from envs.sandbox.config import LEVELS, SandboxConfig, level_rank
from envs.sandbox.result import ExecResult
from envs.sandbox.sandbox import Sandbox, SandboxUnavailable, configure_sandbox, get_sandbox

__all__ = [
    "LEVELS",
    "ExecResult",
    "Sandbox",
    "SandboxConfig",
    "SandboxUnavailable",
    "configure_sandbox",
    "get_sandbox",
    "level_rank",
]
