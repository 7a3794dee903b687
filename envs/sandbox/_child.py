"""What runs inside a forked sandbox child: isolation set-up, then the model's code.

Standard library only (imported by the worker by path, see ``_worker.py``).
"""

from __future__ import annotations

import ast
import builtins
import fcntl
import json
import os
import resource
import signal
import sys
import tempfile
import traceback
import types
from dataclasses import dataclass, field
from typing import Any

try:  # imported as part of the package (tests, type checking)
    from . import _kernel as K
    from . import _seccomp as S
except ImportError:  # loaded by the worker script: this directory is on sys.path
    import _kernel as K  # type: ignore[no-redef]
    import _seccomp as S  # type: ignore[no-redef]

HDR = 4
SETUP_FAILED = 125
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


def frame(obj: dict[str, Any]) -> bytes:
    """One protocol frame: 4-byte big-endian length, then UTF-8 JSON."""
    data = json.dumps(obj).encode()
    return len(data).to_bytes(HDR, "big") + data


def read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


@dataclass
class Limits:
    memory_mb: int
    cpu_seconds: float
    file_size_mb: int
    open_files: int
    processes: int


@dataclass
class Spec:
    """Everything a child needs to isolate itself (fixed by the worker's start-up probe)."""

    limits: Limits
    worker_pid: int
    """The process that forks calls (the fork server); a child whose parent is another
    process by the time it checks has lost its parent and exits."""
    base_as: int = 0
    """Address space of the fork server; RLIMIT_AS is this plus ``memory_mb``."""
    nproc: int = 32
    root: bool = False
    layers: list[str] = field(default_factory=list)
    """Layers the probe found working: one failing in a call fails that call closed."""
    ll_abi: int = 0
    ll_read: list[tuple[int, bool]] = field(default_factory=list)
    """O_PATH descriptors (opened once by the worker) of what calls may read."""
    ll_base: int = -1
    """Prebuilt Landlock ruleset (``_kernel.landlock_base``), used when the call's work dir is
    a per-call tmpfs; otherwise each call builds its full ruleset from ``ll_read``."""
    seccomp: bytes = b""
    """The filter each child installs; empty where there is none or it is inherited."""
    seccomp_inherited: bool = False
    """The fork server installed the filter on itself once, so every child starts under it."""
    seccomp_in_server: bool = False
    """The worker's probe found the fork server may install it (see ``_seccomp.build_filter``)."""
    callns: bool = False
    """Per-call mount + IPC namespaces with a quota-limited tmpfs work dir."""


def address_space() -> int:
    """This process's current virtual size in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def set_rlimits(spec: Spec, cpu_soft: int, cpu_hard: int) -> None:
    def setl(res: int, value: int) -> None:
        _soft, hard = resource.getrlimit(res)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(res, (value, value))

    lim, mb = spec.limits, 1 << 20
    setl(resource.RLIMIT_AS, spec.base_as + lim.memory_mb * mb)
    setl(resource.RLIMIT_FSIZE, lim.file_size_mb * mb)
    setl(resource.RLIMIT_NOFILE, lim.open_files)
    setl(resource.RLIMIT_NPROC, spec.nproc)
    setl(resource.RLIMIT_CORE, 0)
    setl(resource.RLIMIT_MEMLOCK, 0)
    setl(resource.RLIMIT_MSGQUEUE, 0)
    stack, _hard = resource.getrlimit(resource.RLIMIT_STACK)  # hard = soft: not raisable
    setl(resource.RLIMIT_STACK, stack if stack != resource.RLIM_INFINITY else 64 * mb)
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        cpu_hard = min(cpu_hard, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (min(cpu_soft, cpu_hard), cpu_hard))


def enter(
    spec: Spec,
    workdir: str,
    uid: int | None,
    cpu: int,
    cpu_hard: int,
    strict: bool,
    keep: list[int],
    quota: tuple[int, int] = (64 << 20, 4096),
) -> list[str]:
    """Isolate the current, freshly forked process; fds 0-2 are already in place.

    ``uid``: switch to it (root workers). ``keep``: fds moved to 3, 4, ... (all others are
    closed). ``quota``: (bytes, files) of the work dir when it is a per-call tmpfs. Returns
    the layers applied; with ``strict``, a layer the probe found working that fails now ends
    the process with status 125 (fail closed).
    """
    got = ["rlimits"]
    os.setsid()  # own session and process group, no controlling terminal
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.set_wakeup_fd(-1)

    def layer(name: str, fn: Any) -> None:
        try:
            fn()
            got.append(name)
        except OSError as e:
            if strict and name in spec.layers:
                os.write(2, f"sandbox setup failed ({name}): {e}\n".encode())
                os._exit(SETUP_FAILED)

    if spec.callns:  # before the uid switch (needs the worker's privileges) and the chdir
        filtered = bool(spec.seccomp) or spec.seccomp_inherited
        shm = None if filtered else spec.limits.memory_mb << 20  # seccomp denies SysV IPC
        layer("callns", lambda: K.call_namespaces(workdir, uid, quota[0], quota[1], shm))
    set_rlimits(spec, cpu, cpu_hard)
    os.chdir(workdir)
    if uid is not None:
        layer("uid", lambda: K.drop_to_uid(uid, uid))
    else:
        layer("nocaps", K.drop_caps)
    K.prctl(K.PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid switch, which clears it
    if os.getppid() != spec.worker_pid:  # the fork server died before the line above
        os._exit(SETUP_FAILED)
    K.prctl(K.PR_SET_DUMPABLE, 0)  # no ptrace or /proc/<pid>/mem by same-uid processes
    K.prctl(K.PR_SET_CHILD_SUBREAPER, 1)  # orphans of the call stay in the call
    K.no_new_privs()
    if spec.ll_abi:
        rw = K.open_paths([workdir, os.devnull])
        if spec.ll_base >= 0 and "callns" in got:
            layer("landlock", lambda: K.landlock_layered(spec.ll_abi, spec.ll_base, rw))
        else:
            layer("landlock", lambda: K.landlock_restrict(spec.ll_abi, spec.ll_read, rw))
    if spec.seccomp:
        layer("seccomp", lambda: S.install(spec.seccomp))
    # Move kept fds to 3.. via numbers above the targets (no kept fd overwrites another).
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + len(keep)) for fd in keep]
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i, inheritable=False)
    K.close_fds_from(3 + len(keep))
    os.environ.clear()
    os.environ.update(PATH=SAFE_PATH, HOME=workdir, TMPDIR=workdir, PWD=workdir, LANG="C.UTF-8",
                      USER="sandbox", LOGNAME="sandbox", OMP_NUM_THREADS="1",
                      OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg",
                      MPLCONFIGDIR=workdir)  # fmt: skip
    tempfile.tempdir = workdir
    sys.argv = ["-c"]
    return got


CPU_UNSET = 1 << 30
"""CPU seconds a child is forked with before its call is known (``await_call`` lowers it)."""


def await_call(cmd_fd: int) -> dict[str, Any] | None:
    """Block until the worker hands this child its call: children are forked (and isolate
    themselves) ahead of their calls, then wait here. The frame holds the call's CPU seconds
    and language; the program itself is in the memfd (``read_code``). Returns None when the
    worker closed the pipe instead (a spare child it no longer needs)."""
    try:
        n = int.from_bytes(read_exact(cmd_fd, HDR), "big")
        req: dict[str, Any] = json.loads(read_exact(cmd_fd, n))
    except (EOFError, OSError, ValueError):
        return None
    os.close(cmd_fd)
    # RLIMIT_CPU counts the life of the process: the call gets its own seconds from now on.
    # Lowering a limit needs no privilege (this process already runs as the call's uid).
    soft = int(sum(os.times()[:2])) + int(req["cpu"])
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard - 1)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))
    return req


def read_code(fd: int) -> str:
    """The call's program, from the memfd the worker wrote it to (the fork server never holds
    it: a call's memory image then has no other call's code or output in it)."""
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def fresh_main() -> types.ModuleType:
    """A new ``__main__`` module for the code (not the worker's own)."""
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    return module


def run_code(code: str, echo: bool, module: types.ModuleType) -> int:
    """Execute ``code`` in ``module``'s namespace like ``python -c`` (printing the repr of a
    final bare expression when ``echo``, like a notebook). Returns the exit status."""
    try:
        tree = ast.parse(code, "<cell>", "exec")
        last = None
        if echo and tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)  # type: ignore[attr-defined]
        exec(compile(tree, "<cell>", "exec"), module.__dict__)
        if last is not None:
            value = eval(compile(last, "<cell>", "eval"), module.__dict__)
            if value is not None:
                print(repr(value))
        return 0
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code & 0xFF
        print(e.code, file=sys.stderr)
        return 1
    except BaseException as e:  # noqa: BLE001 - report anything the code raised
        try:  # without our own frame: the model sees only its cell
            tb = e.__traceback__.tb_next if e.__traceback__ else None
            traceback.print_exception(type(e), e, tb)
        except BaseException:  # noqa: BLE001 - e.g. MemoryError while formatting
            os.write(2, f"{type(e).__name__}\n".encode())
        return 1


def explain_exit(
    lim: Limits, code: int | None, stderr: str, timeout: float, elapsed: float
) -> str | None:
    """The short error message for a program's exit ``code`` (None: it succeeded)."""
    if code is None or code == 0:
        return None
    if code == SETUP_FAILED and "sandbox setup failed" in stderr:
        return stderr.strip().splitlines()[-1]
    if code < 0:
        sig = -code
        cpu = lim.cpu_seconds or timeout
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and elapsed >= min(timeout, cpu) * 0.9):
            return f"CPU time limit exceeded ({cpu:g} s); the process was killed"
        if sig == signal.SIGXFSZ:
            return f"file size limit exceeded ({lim.file_size_mb} MiB)"
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    last = next((ln for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    if last.startswith("MemoryError"):
        return f"MemoryError (memory limit {lim.memory_mb} MiB)"
    if last and not last.startswith(" "):
        return last[:300]
    return f"exited with status {code}"


def report_status(fd: int, status: int) -> None:
    """Tell the worker the program ended (one byte), so it can answer before this process
    finishes exiting (see ``_worker.Worker._on_status``)."""
    try:
        os.write(fd, bytes([status & 0xFF]))
    except OSError:
        pass


def flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001, S110 - nothing sensible to do
            pass


def session_loop(cmd_fd: int, res_fd: int) -> int:
    """A persistent interpreter: run cells from ``cmd_fd`` in one namespace until EOF, and
    report each cell's status on ``res_fd``."""
    module = fresh_main()
    while True:
        try:
            n = int.from_bytes(read_exact(cmd_fd, HDR), "big")
            req = json.loads(read_exact(cmd_fd, n))
        except (EOFError, OSError, ValueError):
            return 0
        while True:  # reap children left by the previous cell (the worker killed them)
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        # RLIMIT_CPU counts the whole life of the process: give each cell its own budget.
        used = sum(os.times()[:2])
        _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(used) + int(req["cpu"]) + 1
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        status = run_code(req["code"], bool(req["echo"]), module)
        flush()
        try:
            os.write(res_fd, frame({"exit": status}))
        except OSError:
            return 1
