"""What isolation this machine supports, found by trying each layer — independently of the
sandbox's own start-up (so a test can tell "the machine cannot" from "the sandbox did not").

    >>> from envs.sandbox.probe import supported_level
    >>> supported_level().level  # e.g. 'namespace'

Each layer is tried in a throw-away forked child (or, for bubblewrap, a short ``bwrap ...
true``): Landlock (an ABI and a ruleset that applies), seccomp (libseccomp builds the filter
and a child installs it), per-call namespaces (mount + IPC namespaces and a tmpfs, as root or
in a user namespace) and worker namespaces (bubblewrap, else unshare(2) of pid + net).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache

from envs.sandbox import _kernel as K
from envs.sandbox import _seccomp as S


@dataclass(frozen=True)
class Support:
    level: str
    """The strongest level a sandbox can reach here: process | kernel | namespace."""
    layers: dict[str, bool] = field(default_factory=dict)
    """landlock, seccomp, callns (per-call namespaces + tmpfs quota), bwrap, unshare."""


def _in_child(fn: object) -> bool:
    """Run ``fn`` in a forked child; True when it returned without raising."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()  # type: ignore[operator]
            code = 0
        except BaseException:  # noqa: BLE001, S110 - any failure means "not supported"
            pass
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _landlock() -> None:
    abi = K.landlock_abi()
    K.no_new_privs()
    K.landlock_restrict(abi, K.open_paths(["/usr"]), K.open_paths([os.devnull]))


def _seccomp() -> None:
    program = S.build_filter([])
    K.no_new_privs()
    S.install(program)


def _callns(workdir: str) -> None:
    if os.geteuid() == 0:
        K.private_mount_namespace()
    K.call_namespaces(workdir, None, 1 << 20, 64, 1 << 20)


def _unshare() -> None:
    flags = K.CLONE_NEWPID | K.CLONE_NEWNET | K.CLONE_NEWNS | K.CLONE_NEWIPC
    K.unshare(flags if os.geteuid() == 0 else flags | K.CLONE_NEWUSER)


def _bwrap(path: str | None) -> bool:
    if not path:
        return False
    argv = [path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid",
            "--unshare-net", "--unshare-ipc", "true"]  # fmt: skip
    if os.geteuid() != 0:
        argv.insert(1, "--unshare-user")
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@lru_cache(maxsize=1)
def supported_level(bwrap: str | None = "bwrap") -> Support:
    """The strongest isolation level this machine supports (cached per process)."""
    from envs.sandbox.host import bwrap_path

    workdir = tempfile.mkdtemp(prefix="turnrl-probe-")
    layers = {
        "landlock": K.landlock_abi() >= 1 and _in_child(_landlock),
        "seccomp": S.supported() and _in_child(_seccomp),
        "callns": _in_child(lambda: _callns(workdir)),
        "bwrap": _bwrap(bwrap_path(bwrap)),
        "unshare": _in_child(_unshare),
    }
    os.rmdir(workdir)
    level = "process"
    if layers["landlock"] and layers["seccomp"]:
        level = "namespace" if layers["bwrap"] or layers["unshare"] else "kernel"
    return Support(level, layers)


__all__ = ["Support", "supported_level"]
