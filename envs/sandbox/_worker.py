"""Sandbox worker: a pre-started process that forks one isolated child per call.

Run by the trainer as ``python -E -s _worker.py '<json config>'`` (optionally inside bwrap).
Standard library only, and it never imports the ``envs`` package: the trainer's modules, objects
and secrets are not in this process, so nothing of them can leak into a fork.

Why fork: a warm interpreter (standard library and ``preload`` modules already imported) forks
in well under a millisecond; starting Python takes tens. Each child then, before running any
model code: starts a new session (own process group, no terminal), points fds 0-2 at /dev/null
and two output pipes, sets resource limits, enters a fresh working directory, drops to a
per-slot uid when the worker is root, becomes non-dumpable and a child subreaper, sets
no_new_privs, applies Landlock and seccomp (when probed available), closes every other fd and
replaces the environment. A target layer that fails in a child fails closed (exit 125).

The worker is an event loop (``selectors``): it supervises many children at once, enforces
wall-clock deadlines by killing process groups, caps output, and after every call kills any
process that escaped its group (they are re-parented to this subreaper). Persistent sessions
are long-lived children running a small read-eval loop; they are SIGSTOPped between calls.

Protocol on stdin/stdout: frames of a 4-byte big-endian length and UTF-8 JSON.
"""

from __future__ import annotations

import ast
import builtins
import errno
import fcntl
import gc
import json
import os
import resource
import selectors
import shutil
import signal
import sys
import tempfile
import time
import traceback
import types
from dataclasses import dataclass, field
from typing import Any

try:  # imported as part of the package (tests, type checking)
    from . import _kernel as K
except ImportError:  # run as a script: this directory is sys.path[0]
    import _kernel as K  # type: ignore[no-redef]

HDR = 4
SETUP_FAILED = 125
FLOOD_FACTOR = 16  # kill a call once it printed this many times the output cap
FLOOD_MIN = 1 << 20
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


def _frame(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj).encode()
    return len(data).to_bytes(HDR, "big") + data


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


# --------------------------------------------------------------------------- child side


def _run_code(code: str, echo: bool, module: types.ModuleType) -> int:
    """Execute ``code`` in ``module``'s namespace like ``python -c`` (notebook-style echo of a
    final expression when ``echo``). Returns the exit status."""
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
        try:
            traceback.print_exception(type(e), e, e.__traceback__.tb_next if e.__traceback__
                                      else None)  # fmt: skip
        except BaseException:  # noqa: BLE001 - e.g. MemoryError while formatting
            os.write(2, f"{type(e).__name__}\n".encode())
        return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001, S110 - nothing sensible to do
            pass


@dataclass
class Limits:
    memory_mb: int
    cpu_seconds: float
    file_size_mb: int
    open_files: int
    processes: int


def _address_space() -> int:
    """This process's current virtual size in bytes (the fork baseline)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _set_rlimits(lim: Limits, base_as: int, cpu_soft: int, cpu_hard: int, nproc: int) -> None:
    def setl(res: int, value: int) -> None:
        _soft, hard = resource.getrlimit(res)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(res, (value, value))

    mb = 1 << 20
    setl(resource.RLIMIT_AS, base_as + lim.memory_mb * mb)
    setl(resource.RLIMIT_FSIZE, lim.file_size_mb * mb)
    setl(resource.RLIMIT_NOFILE, lim.open_files)
    setl(resource.RLIMIT_NPROC, nproc)
    setl(resource.RLIMIT_CORE, 0)
    setl(resource.RLIMIT_MEMLOCK, 0)
    setl(resource.RLIMIT_MSGQUEUE, 0)
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        cpu_hard = min(cpu_hard, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (min(cpu_soft, cpu_hard), cpu_hard))


# --------------------------------------------------------------------------- worker side


@dataclass
class Call:
    id: int
    pid: int
    timeout: float
    started: float
    deadline: float
    session: str | None = None
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    seen: int = 0
    timed_out: bool = False
    flooded: bool = False
    cancelled: bool = False
    workdir: str | None = None
    slot: int | None = None
    pipes: dict[int, str] = field(default_factory=dict)


@dataclass
class Session:
    name: str
    pid: int
    workdir: str
    slot: int | None
    cmd_w: int
    res_r: int
    out_r: int
    err_r: int
    created: float
    last_used: float
    res_buf: bytearray = field(default_factory=bytearray)
    call: Call | None = None
    cpu_used: float = 0.0


class Worker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.lim = Limits(**cfg["limits"])
        self.max_out: int = cfg["max_output_bytes"]
        self.flood = max(FLOOD_MIN, FLOOD_FACTOR * self.max_out)
        self.echo: bool = cfg["show_last_expression"]
        self.session_idle: float = cfg["session_idle_timeout"]
        self.pid = os.getpid()
        self.root = os.geteuid() == 0
        self.base = tempfile.mkdtemp(prefix=f"turnrl-sbx-{cfg['index']}-")
        os.chmod(self.base, 0o711)
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.sel = selectors.DefaultSelector()
        self.calls: dict[int, Call] = {}
        self.by_pid: dict[int, Call] = {}
        self.sessions: dict[str, Session] = {}
        self.session_pids: dict[int, Session] = {}
        self.free_slots = list(range(cfg["slots"] - 1, -1, -1))
        self.ctl_buf = bytearray()
        self.served = 0
        self.layers: list[str] = []
        self.dac_read = False
        self.ll_abi = 0
        self.ll_read: list[tuple[int, bool]] = []
        self.seccomp_prog = b""
        self.nproc = self.lim.processes
        self.closing = False
        self.base_as = _address_space()
        self.last_pid = 0
        self.wrapped = False
        self.last_scan = time.monotonic()

    # ---- start-up -------------------------------------------------------------------

    def setup_control(self) -> None:
        """Move the protocol pipes off fds 0/1 so stray prints cannot corrupt frames."""
        self.ctl_r = os.dup(0)
        self.ctl_w = os.dup(1)
        os.dup2(self.devnull, 0)
        os.dup2(self.devnull, 1)
        os.set_blocking(self.ctl_r, False)
        self.sel.register(self.ctl_r, selectors.EVENT_READ, self._on_control)
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._on_wakeup)
        K.prctl(K.PR_SET_CHILD_SUBREAPER, 1)

    def send(self, obj: dict[str, Any]) -> None:
        view = memoryview(_frame(obj))
        try:
            while view:
                view = view[os.write(self.ctl_w, view) :]
        except OSError:  # the trainer is gone: finish up
            self.closing = True

    def probe(self) -> None:
        """Find the layers that work here by trying them in throw-away children."""
        target = self.cfg["isolation"]
        want_kernel = target in ("kernel", "namespace")
        self.ll_abi = K.landlock_abi() if want_kernel else 0
        self.ll_read = K.open_paths(self.cfg["read_paths"])
        self.ll_read_fine = K.open_paths(self.cfg["read_paths_fine"])
        if want_kernel and K.seccomp_supported():
            protect = [self.pid, os.getppid(), int(self.cfg.get("trainer_pid", 0))]
            self.seccomp_prog = K.build_seccomp_filter(protect)
        if not self.root:
            self.nproc = _count_own_tasks() + self.lim.processes + 64
        layers = self._probe_child(dac_read=False)
        if self.root and "uid" in layers and "stdlib" not in layers and "landlock" in layers:
            again = self._probe_child(dac_read=True)
            if "stdlib" in again:
                self.dac_read, layers = True, again
                # With CAP_DAC_READ_SEARCH the file modes no longer protect anything: read only
                # what everyone may read (/etc without shadow and the like).
                for fd, _ in self.ll_read:
                    os.close(fd)
                self.ll_read = self.ll_read_fine
        self.layers = [x for x in layers if x != "stdlib"]
        if self.dac_read:
            self.layers.append("dac_read")
        mine, theirs = _namespace_ids(), self.cfg.get("parent_namespaces", {})
        self.layers += [f"{ns}ns" for ns in sorted(mine) if ns in theirs and mine[ns] != theirs[ns]]
        if "landlock" not in self.layers:
            self.ll_abi = 0
        if "seccomp" not in self.layers:
            self.seccomp_prog = b""

    def _probe_child(self, dac_read: bool) -> list[str]:
        r, w = os.pipe()
        workdir = tempfile.mkdtemp(dir=self.base)
        slot = self.free_slots[-1]
        self._own(workdir, slot)
        pid = os.fork()
        if pid == 0:
            os.close(r)
            got: list[str] = []
            try:
                self.dac_read = dac_read
                if dac_read:
                    self.ll_read = self.ll_read_fine
                got = self._enter(workdir, slot, cpu=5, strict=False, keep=[w])
                try:  # can this uid read the standard library? (lazy imports need it)
                    with open(os.__file__, "rb"):
                        got.append("stdlib")
                except OSError:
                    pass
            finally:
                os.write(3 if got else w, json.dumps(got).encode())
                os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        shutil.rmtree(workdir, ignore_errors=True)
        return list(json.loads(data or b"[]"))

    def level(self) -> str:
        have = set(self.layers)
        if {"landlock", "seccomp"} <= have:
            if {"pidns", "netns"} <= have:
                return "namespace"
            return "kernel"
        return "process"

    # ---- the child side of a fork ---------------------------------------------------

    def _cpu(self, timeout: float) -> int:
        """CPU-seconds limit of a call: the configured one, else its wall-clock timeout."""
        return max(1, int((self.lim.cpu_seconds or timeout) + 0.999))

    def _uid(self, slot: int | None) -> int:
        if slot is None:
            return os.getuid()
        return int(self.cfg["uid_base"]) + int(self.cfg["seat"]) * int(self.cfg["slots"]) + slot

    def _own(self, path: str, slot: int | None) -> None:
        os.chmod(path, 0o700)
        if self.root and slot is not None:
            uid = self._uid(slot)
            os.chown(path, uid, uid)

    def _enter(self, workdir: str, slot: int | None, cpu: int, strict: bool,
               keep: list[int], cpu_hard: int | None = None) -> list[str]:  # fmt: skip
        """Isolate the current (freshly forked) process. Returns the layers applied; with
        ``strict`` a failing layer from the probe aborts the child (fail closed)."""
        got = ["rlimits"]
        os.setsid()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.set_wakeup_fd(-1)
        hard = cpu_hard if cpu_hard is not None else cpu + 1
        _set_rlimits(self.lim, self.base_as, cpu, hard, self.nproc)
        os.chdir(workdir)

        def layer(name: str, fn: Any) -> None:
            try:
                fn()
                got.append(name)
            except OSError as e:
                if strict and name in self.layers:
                    os.write(2, f"sandbox setup failed ({name}): {e}\n".encode())
                    os._exit(SETUP_FAILED)

        if self.root and slot is not None:
            uid = self._uid(slot)
            layer("uid", lambda: K.drop_to_uid(uid, uid, keep_dac_read=self.dac_read))
        K.prctl(K.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.pid:  # the worker died before the line above
            os._exit(SETUP_FAILED)
        K.prctl(K.PR_SET_DUMPABLE, 0)
        K.prctl(K.PR_SET_CHILD_SUBREAPER, 1)
        K.no_new_privs()
        if self.ll_abi:
            wd = K.open_paths([workdir])
            dn = K.open_paths([os.devnull])
            layer("landlock", lambda: K.landlock_restrict(self.ll_abi, self.ll_read, wd + dn))
        if self.seccomp_prog:
            layer("seccomp", lambda: K.seccomp_install(self.seccomp_prog))
        # Keep only what the call needs, at fixed numbers 3.. (non-inheritable); go through
        # numbers above the targets first so that no kept fd overwrites another.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + len(keep)) for fd in keep]
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i, inheritable=False)
        K.close_fds_from(3 + len(keep))
        env = {"PATH": SAFE_PATH, "HOME": workdir, "TMPDIR": workdir, "PWD": workdir,
               "LANG": "C.UTF-8", "USER": "sandbox", "LOGNAME": "sandbox",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "MPLBACKEND": "Agg", "MPLCONFIGDIR": workdir}  # fmt: skip
        os.environ.clear()
        os.environ.update(env)
        tempfile.tempdir = workdir
        sys.argv = ["-c"]
        return got

    def _child_io(self, out_w: int, err_w: int) -> None:
        os.dup2(self.devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)

    # ---- calls ----------------------------------------------------------------------

    def _pipes(self, call: Call) -> tuple[int, int]:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd, which in ((out_r, "out"), (err_r, "err")):
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, lambda fd, w=which: self._on_output(fd, w))
        call.pipes = {out_r: "out", err_r: "err"}
        return out_w, err_w

    def start_call(self, req: dict[str, Any]) -> None:
        now = time.monotonic()
        timeout = float(req["timeout"])
        call = Call(id=req["id"], pid=0, timeout=timeout, started=now, deadline=now + timeout,
                    session=req.get("session"))  # fmt: skip
        self.served += 1
        if call.session is not None:
            self._session_call(call, req["code"])
            return
        if not self.free_slots:
            self._reply(call, error="sandbox busy: no free slot")
            return
        call.slot = self.free_slots.pop()
        call.workdir = tempfile.mkdtemp(dir=self.base)
        self._own(call.workdir, call.slot)
        out_w, err_w = self._pipes(call)
        code, language = req["code"], req.get("language", "python")
        cpu = self._cpu(timeout)
        _flush()
        pid = os.fork()
        if pid == 0:  # ---- child: never returns
            status = SETUP_FAILED
            try:
                self._child_io(out_w, err_w)
                self._enter(call.workdir, call.slot, cpu=cpu, strict=True, keep=[])
                if language == "shell":
                    os.execve("/bin/sh", ["sh", "-c", code], dict(os.environ))
                module = types.ModuleType("__main__")
                module.__dict__["__builtins__"] = builtins
                sys.modules["__main__"] = module
                status = _run_code(code, self.echo, module)
                _flush()
            except BaseException as e:  # noqa: BLE001 - a setup bug must not reach the worker
                os.write(2, f"sandbox setup failed: {e!r}\n".encode())
            finally:
                os._exit(status)
        self._forked(pid)
        os.close(out_w)
        os.close(err_w)
        call.pid = pid
        self.calls[call.id] = call
        self.by_pid[pid] = call

    def _forked(self, pid: int) -> None:
        if pid < self.last_pid:
            self.wrapped = True
        self.last_pid = pid

    def _on_output(self, fd: int, which: str) -> None:
        call = self._call_for_pipe(fd)
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(fd)
            if call is not None and fd in call.pipes:
                del call.pipes[fd]
                os.close(fd)
            return
        if call is None:  # idle session chatter
            return
        call.seen += len(data)
        buf = call.out if which == "out" else call.err
        room = self.max_out + 1 - len(buf)
        if room > 0:
            buf += data[:room]
        if call.seen > self.flood and not call.flooded:
            call.flooded = True
            self._kill_call(call)

    def _call_for_pipe(self, fd: int) -> Call | None:
        for s in self.sessions.values():
            if fd in (s.out_r, s.err_r):
                return s.call
        for c in self.calls.values():
            if fd in c.pipes:
                return c
        return None

    def _kill_call(self, call: Call) -> None:
        if call.session is not None and call.session in self.sessions:
            self._kill_session(self.sessions[call.session])
            return
        _killpg(call.pid)

    def _finish(self, call: Call, status: int | None) -> None:
        """The runner (or session process) exited: collect output, clean up, reply."""
        self.calls.pop(call.id, None)
        self.by_pid.pop(call.pid, None)
        _killpg(call.pid)
        self._kill_strays(call.pid)
        for fd, which in list(call.pipes.items()):
            self._drain_into(fd, call.out if which == "out" else call.err)
            self.sel.unregister(fd)
            os.close(fd)
        call.pipes.clear()
        if call.workdir is not None:  # before replying: disk is freed before more work comes
            shutil.rmtree(call.workdir, ignore_errors=True)
        self._reply(call, status=status)
        if call.slot is not None:
            self.free_slots.append(call.slot)

    def _reply(self, call: Call, status: int | None = None, error: str | None = None,
               reset: bool = False) -> None:  # fmt: skip
        truncated = len(call.out) > self.max_out or len(call.err) > self.max_out
        stdout = bytes(call.out[: self.max_out]).decode("utf-8", "replace")
        stderr = bytes(call.err[: self.max_out]).decode("utf-8", "replace")
        exit_code: int | None = None
        if status is not None:
            exit_code = os.waitstatus_to_exitcode(status)
        if error is None:
            error = self._explain(call, exit_code, stderr)
        if reset and call.session is not None:
            error = f"{error}; the session was restarted (its variables are lost)"
        self.send({
            "type": "result", "id": call.id, "stdout": stdout, "stderr": stderr,
            "exit_code": exit_code, "error": error, "timed_out": call.timed_out,
            "truncated": truncated, "duration": time.monotonic() - call.started,
        })  # fmt: skip

    def _explain(self, call: Call, code: int | None, stderr: str) -> str | None:
        if call.cancelled:
            return "cancelled"
        if call.timed_out:
            return f"timed out after {call.timeout:g} s (wall clock); the process was killed"
        if call.flooded:
            return f"output limit exceeded (more than {self.flood} bytes); the process was killed"
        if code is None or code == 0:
            return None
        if code == SETUP_FAILED and "sandbox setup failed" in stderr:
            return stderr.strip().splitlines()[-1]
        if code < 0:
            sig = -code
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and _cpu_hit(call, self.lim)):
                cpu = self.lim.cpu_seconds or call.timeout
                return f"CPU time limit exceeded ({cpu:g} s); the process was killed"
            if sig == signal.SIGXFSZ:
                return f"file size limit exceeded ({self.lim.file_size_mb} MiB)"
            return f"killed by {name}"
        last = next((ln for ln in reversed(stderr.splitlines()) if ln.strip()), "")
        if last.startswith("MemoryError"):
            return f"MemoryError (memory limit {self.lim.memory_mb} MiB)"
        if last and not last.startswith(" "):
            return last[:300]
        return f"exited with status {code}"

    # ---- sessions -------------------------------------------------------------------

    def _session_call(self, call: Call, code: str) -> None:
        assert call.session is not None
        s = self.sessions.get(call.session)
        if s is None:
            s = self._new_session(call.session)
            if s is None:
                self._reply(call, error="sandbox busy: no free slot")
                return
        if s.call is not None:
            self._reply(call, error="session is busy with another call")
            return
        s.call = call
        s.last_used = call.started
        call.pid, call.slot = s.pid, None
        self.calls[call.id] = call
        cpu = self._cpu(call.timeout)
        msg = _frame({"code": code, "cpu": cpu, "echo": self.echo})
        _kill(s.pid, signal.SIGCONT)
        try:
            os.write(s.cmd_w, msg)
        except OSError:
            self._kill_session(s)

    def _new_session(self, name: str) -> Session | None:
        if not self.free_slots:
            return None
        slot = self.free_slots.pop()
        workdir = tempfile.mkdtemp(dir=self.base)
        self._own(workdir, slot)
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (cmd_w, res_w):
            try:
                K.fcntl_pipe_size(fd, 1 << 20)
            except OSError:
                pass
        cpu_total = int(self.cfg["session_cpu_seconds"])
        _flush()
        pid = os.fork()
        if pid == 0:
            status = SETUP_FAILED
            try:
                self._child_io(out_w, err_w)
                self._enter(workdir, slot, cpu=cpu_total, cpu_hard=cpu_total, strict=True,
                            keep=[cmd_r, res_w])  # fmt: skip
                status = _session_loop(3, 4)
            except BaseException as e:  # noqa: BLE001 - a setup bug must not reach the worker
                os.write(2, f"sandbox setup failed: {e!r}\n".encode())
            finally:
                os._exit(status)
        self._forked(pid)
        for fd in (cmd_r, res_w, out_w, err_w):
            os.close(fd)
        now = time.monotonic()
        s = Session(name=name, pid=pid, workdir=workdir, slot=slot, cmd_w=cmd_w, res_r=res_r,
                    out_r=out_r, err_r=err_r, created=now, last_used=now)  # fmt: skip
        for fd, which in ((out_r, "out"), (err_r, "err")):
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, lambda fd, w=which: self._on_output(fd, w))
        os.set_blocking(res_r, False)
        self.sel.register(res_r, selectors.EVENT_READ, lambda fd, s=s: self._on_session_result(s))
        self.sessions[name] = s
        self.session_pids[pid] = s
        return s

    def _on_session_result(self, s: Session) -> None:
        try:
            data = os.read(s.res_r, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(s.res_r)
            os.close(s.res_r)
            s.res_r = -1
            return
        s.res_buf += data
        if len(s.res_buf) < HDR:
            return
        n = int.from_bytes(s.res_buf[:HDR], "big")
        if len(s.res_buf) < HDR + n:
            return
        try:
            res = json.loads(bytes(s.res_buf[HDR : HDR + n]))
            exit_code = int(res["exit"])
        except (ValueError, KeyError, TypeError):
            self._kill_session(s)  # protocol forged by the code: treat as a crash
            return
        del s.res_buf[: HDR + n]
        call = s.call
        if call is None:
            return
        _kill(s.pid, signal.SIGSTOP)
        self._kill_descendants(s.pid)
        self._drain_into(s.out_r, call.out)
        self._drain_into(s.err_r, call.err)
        s.call = None
        self.calls.pop(call.id, None)
        self._reply(call, status=(exit_code & 0xFF) << 8)

    def _kill_session(self, s: Session) -> None:
        _kill(s.pid, signal.SIGKILL)
        _killpg(s.pid)

    def _session_died(self, s: Session, status: int) -> None:
        self._kill_descendants(s.pid)
        self._kill_strays(s.pid)
        self.sessions.pop(s.name, None)
        self.session_pids.pop(s.pid, None)
        for fd in (s.cmd_w, s.res_r, s.out_r, s.err_r):
            if fd < 0:
                continue
            if s.call is not None and fd in (s.out_r, s.err_r):
                self._drain_into(fd, s.call.out if fd == s.out_r else s.call.err)
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass
            os.close(fd)
        if s.call is not None:
            call, s.call = s.call, None
            self.calls.pop(call.id, None)
            closing = call.id < 0
            if not closing:
                error = self._explain(call, os.waitstatus_to_exitcode(status), "")
                if error is None or not (call.timed_out or call.flooded or call.cancelled):
                    error = f"the session process exited ({error or 'status 0'})"
                self._reply(call, status=status, error=error, reset=True)
        shutil.rmtree(s.workdir, ignore_errors=True)
        if s.slot is not None:
            self.free_slots.append(s.slot)

    def _drain_into(self, fd: int, buf: bytearray) -> None:
        while len(buf) <= self.max_out:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk[: self.max_out + 1 - len(buf)]

    def close_session(self, req: dict[str, Any]) -> None:
        s = self.sessions.get(req["session"])
        if s is not None:
            if s.call is None:
                s.call = Call(id=-1, pid=s.pid, timeout=0, started=0, deadline=float("inf"))
            self._kill_session(s)
        self.send({"type": "closed", "id": req["id"]})

    # ---- process hygiene ------------------------------------------------------------

    def _kill_strays(self, since_pid: int) -> None:
        """Kill processes re-parented to this worker (they escaped a call's process group
        with setsid and outlived their parent). New pids are larger than their ancestors' until
        the pid counter wraps, so only those are read; ``serve`` also scans everything every
        few seconds, which catches strays born after a wrap."""
        if self.wrapped:
            since_pid, self.wrapped = 0, False
        known = set(self.by_pid) | set(self.session_pids)
        for _ in range(64):
            strays = [p for p, pp, _ in _proc_table(since_pid) if pp == self.pid and p not in known]
            if not strays:
                return
            for p in strays:
                _kill(p, signal.SIGKILL)
            self._reap(only=strays)

    def _kill_descendants(self, root: int) -> None:
        for _ in range(64):
            procs = _proc_table(root)
            desc, grew = {root}, True
            while grew:
                grew = False
                for p, pp, state in procs:
                    if pp in desc and p not in desc and state != "Z":
                        desc.add(p)
                        grew = True
            desc.discard(root)
            if not desc:
                return
            for p in desc:
                _kill(p, signal.SIGKILL)
            time.sleep(0.001)

    def _reap(self, only: list[int] | None = None) -> None:
        if only is not None:
            for p in only:
                try:
                    pid, status = os.waitpid(p, 0)
                except ChildProcessError:
                    continue
                self._exited(pid, status)
            return
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._exited(pid, status)

    def _exited(self, pid: int, status: int) -> None:
        call = self.by_pid.get(pid)
        if call is not None:
            self._finish(call, status)
            return
        s = self.session_pids.get(pid)
        if s is not None:
            self._session_died(s, status)

    # ---- loop -----------------------------------------------------------------------

    def _on_wakeup(self, fd: int) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass
        self._reap()

    def _on_control(self, fd: int) -> None:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            self.closing = True
            return
        self.ctl_buf += data
        while len(self.ctl_buf) >= HDR:
            n = int.from_bytes(self.ctl_buf[:HDR], "big")
            if len(self.ctl_buf) < HDR + n:
                break
            req = json.loads(bytes(self.ctl_buf[HDR : HDR + n]))
            del self.ctl_buf[: HDR + n]
            self._handle(req)

    def _handle(self, req: dict[str, Any]) -> None:
        op = req["op"]
        if op == "run":
            self.start_call(req)
        elif op == "close":
            self.close_session(req)
        elif op == "cancel":
            call = self.calls.get(req["id"])
            if call is not None:
                call.cancelled = True
                self._kill_call(call)
        elif op == "exit":
            self.closing = True

    def _check_deadlines(self) -> float:
        now = time.monotonic()
        nearest = 1.0
        for call in list(self.calls.values()):
            if call.timed_out or call.id < 0:
                continue
            if now >= call.deadline:
                call.timed_out = True
                self._kill_call(call)
            else:
                nearest = min(nearest, call.deadline - now)
        for s in list(self.sessions.values()):
            if s.call is None and now - s.last_used > self.session_idle:
                s.call = Call(id=-1, pid=s.pid, timeout=0, started=0, deadline=float("inf"))
                self._kill_session(s)
        return max(nearest, 0.0)

    def serve(self) -> None:
        while not (self.closing and not self.calls):
            if self.closing:
                for call in list(self.calls.values()):
                    call.cancelled = True
                    self._kill_call(call)
            timeout = self._check_deadlines()
            for key, _mask in self.sel.select(timeout):
                key.data(key.fd)
            self._reap()
            if time.monotonic() - self.last_scan > 2.0:
                self.last_scan = time.monotonic()
                self._kill_strays(0)
        for s in list(self.sessions.values()):
            self._kill_session(s)
        deadline = time.monotonic() + 2
        while self.sessions and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.005)
        shutil.rmtree(self.base, ignore_errors=True)


def _cpu_hit(call: Call, lim: Limits) -> bool:
    cpu = lim.cpu_seconds or call.timeout
    return time.monotonic() - call.started >= min(call.timeout, cpu) * 0.9


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _stat(pid: int) -> tuple[int, str] | None:
    """(ppid, state) from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split(None, 2)
    return int(fields[1]), fields[0].decode()


def _proc_table(since_pid: int) -> list[tuple[int, int, str]]:
    """(pid, ppid, state) of the processes with pid > since_pid (0: all)."""
    try:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []
    cand = [p for p in pids if p > since_pid]
    out = []
    for p in cand:
        st = _stat(p)
        if st is not None:
            out.append((p, st[0], st[1]))
    return out


def _count_own_tasks() -> int:
    """Tasks (threads count) owned by this uid: RLIMIT_NPROC counts them all when not root."""
    uid, n = os.getuid(), 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                st = os.stat(f"/proc/{name}")
                if st.st_uid == uid:
                    n += max(1, len(os.listdir(f"/proc/{name}/task")))
            except OSError:
                continue
    return n


def _session_loop(cmd_fd: int, res_fd: int) -> int:
    """The persistent interpreter: run cells from ``cmd_fd`` in one namespace until EOF."""
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    while True:
        try:
            n = int.from_bytes(_read_exact(cmd_fd, HDR), "big")
            req = json.loads(_read_exact(cmd_fd, n))
        except (EOFError, OSError, ValueError):
            return 0
        while True:  # reap children left by the previous cell
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        used = sum(os.times()[:2])
        _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(used) + int(req["cpu"]) + 1
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        status = _run_code(req["code"], bool(req["echo"]), module)
        _flush()
        try:
            os.write(res_fd, _frame({"exit": status}))
        except OSError:
            return 1


def main() -> None:
    cfg = json.loads(sys.argv[1])
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # calls must not import our private modules by name
    sys.dont_write_bytecode = True
    if cfg.get("unshare"):
        _enter_namespaces(cfg)
    for name in cfg["preload"]:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001, S112 - a missing optional module is fine
            continue
    w = Worker(cfg)
    w.setup_control()
    gc.collect()
    gc.freeze()  # children then leave the shared heap alone: fewer copy-on-write faults
    try:
        w.probe()
    except Exception as e:  # noqa: BLE001 - report, the trainer decides
        w.send({"type": "fatal", "message": f"probe failed: {e!r}"})
        return
    w.send({"type": "hello", "pid": os.getpid(), "level": w.level(), "layers": w.layers,
            "uid": os.geteuid()})  # fmt: skip
    w.serve()


def _namespace_ids() -> dict[str, str]:
    out = {}
    for ns in ("pid", "net", "mnt", "user", "ipc"):
        try:
            out[ns] = os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            continue
    return out


def _enter_namespaces(cfg: dict[str, Any]) -> None:
    """Namespace mode without bubblewrap: new pid, net, mount, ipc, uts namespaces (plus a
    user namespace when not root). The pid namespace applies to children, so fork: the child
    is pid 1 and becomes the worker; this process waits and mirrors its exit status."""
    uid, gid = os.getuid(), os.getgid()
    flags = K.CLONE_NEWPID | K.CLONE_NEWNET | K.CLONE_NEWNS | K.CLONE_NEWIPC | K.CLONE_NEWUTS
    if uid != 0:
        flags |= K.CLONE_NEWUSER
    try:
        K.unshare(flags)
        if uid != 0:
            K.write_id_maps(os.getpid(), uid, gid, uid, gid)
    except OSError:
        return  # the hello reports no namespaces; the trainer decides
    pid = os.fork()
    if pid:
        signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
        _, status = os.waitpid(pid, 0)
        os._exit(max(os.waitstatus_to_exitcode(status), 0))
    K.prctl(K.PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        K.mount(None, "/", None, 0x4000 | 0x40000)  # MS_REC | MS_PRIVATE
        K.mount("proc", "/proc", "proc", 0x2 | 0x4 | 0x8)  # nosuid, nodev, noexec
    except OSError:
        pass


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
