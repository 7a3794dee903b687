"""Sandbox worker: a pre-started process that forks one isolated child per call.

Run by the trainer as ``python -E -s _worker.py`` (optionally inside bwrap); the first frame
on stdin is its configuration. Standard library only, and it never imports the ``envs``
package: the trainer's modules, objects and secrets are not in this process, so nothing of
them can leak into a fork.

Why fork: a warm interpreter (standard library and ``preload`` modules already imported)
forks in about a millisecond; starting Python takes tens. The children are forked by a fork
server (``_forkserver``) split off this process before it handled any call, so no child's
memory holds another call's code or output. Each child isolates itself (``_child.enter``:
new session, per-call mount and IPC namespaces with a quota-limited tmpfs work dir, resource
limits, per-slot uid when root, no capabilities, no_new_privs, per-call Landlock rules,
seccomp, no other fds, clean environment) before it reads its program. An idle worker keeps
``prefork`` call children forked and isolated ahead of their calls (``_spares``), so a call
that finds one costs a pipe write and the run; forks are asked for without waiting for their
pid (``_forkserver.ForkClient``), so the worker keeps serving while one is made.

The worker is an event loop (``selectors``): it supervises many children at once, enforces
wall-clock deadlines by killing process groups, caps output, and after every call kills any
process that escaped its group (orphans are re-parented to the fork server, a subreaper).
Finished work dirs go to a trash directory that a deleter process empties (``_forkserver``);
with per-call tmpfs work dirs there is nothing to delete (each slot keeps its mount point).
Persistent sessions (``_sessions``) are long-lived children running ``_child.session_loop``,
SIGSTOPped between calls.

Protocol on stdin/stdout: frames of a 4-byte big-endian length and UTF-8 JSON.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import selectors
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, NoReturn

try:  # imported as part of the package (tests, type checking)
    from . import _child as C
    from . import _forkserver as F
    from . import _kernel as K
    from . import _seccomp as S
    from . import _sessions as Z
    from . import _spares as P
except ImportError:  # run as a script: this directory is sys.path[0]
    import _child as C  # type: ignore[no-redef]
    import _forkserver as F  # type: ignore[no-redef]
    import _kernel as K  # type: ignore[no-redef]
    import _seccomp as S  # type: ignore[no-redef]
    import _sessions as Z  # type: ignore[no-redef]
    import _spares as P  # type: ignore[no-redef]

HDR = C.HDR
FLOOD_FACTOR = 16  # kill a call once it printed this many times the output cap...
FLOOD_MIN = 1 << 20  # ...and at least this many bytes
SCAN_EVERY = 2.0  # seconds between full scans for escaped processes


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
    note: str = ""
    """Prefixed to stderr (e.g. that a session expired and was started afresh)."""
    status_fd: int = -1
    """Read end of the pipe on which the program reports its exit status before exiting."""
    replied: bool = False


class Worker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.root = os.geteuid() == 0
        self.pid = os.getpid()
        self.spec = C.Spec(
            limits=C.Limits(**cfg["limits"]),
            worker_pid=self.pid,
            base_as=C.address_space(),
            nproc=int(cfg["limits"]["processes"]),
            root=self.root,
        )
        self.max_out: int = cfg["max_output_bytes"]
        self.flood = max(FLOOD_MIN, FLOOD_FACTOR * self.max_out)
        self.echo: bool = cfg["show_last_expression"]
        self.base = tempfile.mkdtemp(prefix=f"turnrl-sbx-{cfg['uid_block']}-")
        os.chmod(self.base, 0o711)
        self.trash = os.path.join(self.base, ".trash")
        os.mkdir(self.trash, 0o700)
        self.quota_call = (int(cfg["call_disk_mb"]) << 20, int(cfg["call_files"]))
        self.quota_session = (int(cfg["session_disk_mb"]) << 20, int(cfg["session_files"]))
        self.private_mounts = False
        self.zpid = 0
        self.del_w = -1
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.sel = selectors.DefaultSelector()
        self.calls: dict[int, Call] = {}
        self.by_pid: dict[int, Call] = {}
        self.sessions = Z.Sessions(self, float(cfg["session_idle_timeout"]))
        self.spares = P.Spares(self, int(cfg.get("prefork", 0)))
        self.slot_dirs: set[int] = set()
        self.free_slots = list(range(cfg["slots"] - 1, -1, -1))
        self.ctl_buf = bytearray()
        self.layers: list[str] = []
        self.warnings: list[str] = []
        self.closing = False
        self.last_pid = 0
        self.wrapped = False
        self.last_scan = time.monotonic()
        self.ev_buf = bytearray()

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
        view = memoryview(C.frame(obj))
        try:
            while view:
                view = view[os.write(self.ctl_w, view) :]
        except OSError:  # the trainer is gone: finish up
            self.closing = True

    def probe(self) -> None:
        """Find the layers that work here by trying them in a throw-away child."""
        spec, cfg = self.spec, self.cfg
        want_kernel = cfg["isolation"] in ("kernel", "namespace")
        # Per-call mounts are safe only where they cannot propagate to the host: in this
        # worker's private mount namespace, or in a per-call user namespace (non-root),
        # whose copy of the mounts the kernel turns into slaves.
        spec.callns = bool(cfg["tmpfs_workdirs"]) and (self.private_mounts or not self.root)
        spec.ll_abi = K.landlock_abi() if want_kernel else 0
        if spec.ll_abi:
            spec.ll_read = K.open_paths(cfg["read_paths"])
            if spec.callns:
                rw = K.open_paths([self.base, os.devnull])
                try:
                    spec.ll_base = K.landlock_base(spec.ll_abi, spec.ll_read, rw)
                except OSError:
                    spec.ll_base = -1
                for fd, _ in rw:
                    os.close(fd)
        if want_kernel:
            try:
                spec.seccomp = S.build_filter([self.pid, os.getppid(), cfg["trainer_pid"]])
            except OSError as e:
                self.warnings.append(f"no seccomp filter: {e}")
        if not self.root:  # the kernel counts every task of the uid, the trainer's included
            spec.nproc = K.count_own_tasks() + spec.limits.processes + 64
        layers = self._probe_child()
        userns = "userns" in layers  # the child needed its own user namespace to mount
        self.layers = [x for x in layers if x not in ("stdlib", "userns")]
        if "stdlib" not in layers:
            self.warnings.append(
                f"calls cannot read the Python standard library ({os.path.dirname(os.__file__)}"
                "): imports that are not preloaded will fail; install Python where every user "
                "can read it, or let the worker build its mount view (needs CAP_SYS_ADMIN)"
            )
        if spec.callns and "callns" not in self.layers:
            self.warnings.append("no per-call tmpfs work dirs: no file or disk quota per call")
        mine, theirs = K.namespace_ids(), cfg.get("parent_namespaces", {})
        self.layers += [f"{ns}ns" for ns in sorted(mine) if ns in theirs and mine[ns] != theirs[ns]]
        spec.layers = self.layers
        if "landlock" not in self.layers:
            spec.ll_abi = 0
        if "seccomp" not in self.layers:
            spec.seccomp = b""
        if "callns" not in self.layers:
            spec.callns = False
        if spec.ll_base >= 0 and not (spec.callns and spec.ll_abi):
            os.close(spec.ll_base)
            spec.ll_base = -1
        # The fork server may put itself (so every child) under the filter where no child
        # needs what it denies: a user namespace, or capabilities after its set-up.
        spec.seccomp_in_server = (
            bool(spec.seccomp)
            and not (spec.callns and userns)
            and ("uid" in self.layers or "nocaps" in self.layers)
        )

    def _probe_child(self) -> list[str]:
        r, w = os.pipe()
        workdir = tempfile.mkdtemp(dir=self.base)
        slot = self.free_slots[-1]
        self._own(workdir, slot)
        userns = os.readlink("/proc/self/ns/user")
        pid = os.fork()
        if pid == 0:
            os.close(r)
            got: list[str] = []
            try:
                got = C.enter(self.spec, workdir, self._uid(slot), 5, 6, strict=False, keep=[w],
                              quota=self.quota_call)  # fmt: skip
                try:  # did its mount namespace need a user namespace of its own?
                    own_userns = os.readlink("/proc/self/ns/user") != userns
                except OSError:
                    own_userns = True
                if "callns" in got and own_userns:
                    got.append("userns")
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
        K.remove_tree(workdir)
        return list(json.loads(data or b"[]"))

    def start_helpers(self) -> None:
        """Fork the deleter and the fork server (see ``_forkserver``): after the probe, before
        any call."""
        dpid, self.del_w = F.start_deleter(self.trash)
        protect = [self.pid, dpid, os.getppid(), int(self.cfg["trainer_pid"])]
        self.zpid, zsock, self.ev_r = F.start_fork_server(self.spec, protect, self.echo)
        self.forks = F.ForkClient(zsock)
        os.set_blocking(self.ev_r, False)
        self.sel.register(self.ev_r, selectors.EVENT_READ, self._on_events)
        self.sel.register(self.forks.fileno(), selectors.EVENT_READ, self._on_fork_replies)

    def _request_fork(self, req: dict[str, Any], fds: list[int], on_done: Any = None) -> F.Fork:
        """Ask the fork server for a child (``fds``: its stdout, stderr, then kept fds). A fork
        server that fails is fatal: the trainer replaces us."""
        try:
            return self.forks.request(req, fds, on_done)
        except OSError:
            self._fatal()

    def _settle_forks(self) -> None:
        """Wait for every pending fork's pid: afterwards every child of the fork server that
        the worker does not know of is a stray."""
        try:
            self.forks.settle()
        except OSError:
            self._fatal()

    def _on_fork_replies(self, fd: int = -1) -> None:
        try:
            self.forks.read_replies()
        except OSError:
            self._fatal()

    def _fork(self, req: dict[str, Any], fds: list[int]) -> int:
        """Fork a child and wait for its pid (sessions)."""
        fork = self._request_fork(req, fds)
        self._settle_forks()
        if not fork.pid:
            raise OSError(fork.error, f"fork failed: {os.strerror(fork.error)}")
        self._forked(fork.pid)
        return fork.pid

    def _closing_call(self, pid: int) -> Call:
        """Placeholder call of a session being closed (no reply is sent for it)."""
        return Call(id=-1, pid=pid, timeout=0, started=0, deadline=float("inf"))

    def _fatal(self) -> NoReturn:
        for call in list(self.calls.values()):
            K.killpg(call.pid)
        os._exit(3)

    def _on_events(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:  # the fork server died: its children died with it
            self._fatal()
        self._on_fork_replies()  # sent before any exit of those children: pids first
        self.ev_buf += data
        n = len(self.ev_buf) // F.EVENT.size * F.EVENT.size
        for pid, status in F.EVENT.iter_unpack(bytes(self.ev_buf[:n])):
            self._exited(pid, status)
        del self.ev_buf[:n]

    def _workdir(self, slot: int) -> str:
        """The work dir of a call or session on ``slot``. With per-call tmpfs work dirs, each
        slot has one mount point, made once: a call's files live in its own tmpfs, which only
        its mount namespace sees and the kernel frees with it, and nothing is ever written
        beneath the mount point itself (every call covers it). A mount point is not worth
        removing per call: its rmdir waits for the kernel to detach the dead namespace's mount
        (milliseconds on a busy machine). Otherwise a fresh directory per call, which
        ``_discard`` hands to the deleter."""
        if not self.spec.callns:
            path = tempfile.mkdtemp(dir=self.base)
            self._own(path, slot)
            return path
        path = os.path.join(self.base, f"slot-{slot}")
        if slot not in self.slot_dirs:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            self._own(path, slot)
            self.slot_dirs.add(slot)
        return path

    def _discard(self, path: str | None) -> None:
        """Remove a finished work dir without ever blocking: an empty one at once, anything
        else renamed into the trash for the deleter (a slot's mount point stays)."""
        if not path or self.spec.callns:
            return
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            pass
        try:
            os.rename(path, os.path.join(self.trash, os.path.basename(path)))
            os.write(self.del_w, b".")
        except OSError:  # a full wake-up pipe already wakes it; else the trainer sweeps base
            pass

    def level(self) -> str:
        have = set(self.layers)
        if {"landlock", "seccomp"} <= have:
            return "namespace" if {"pidns", "netns"} <= have else "kernel"
        return "process"

    # ---- helpers ----------------------------------------------------------------------

    def _cpu(self, timeout: float) -> int:
        """CPU-seconds limit of a call: the configured one, else its wall-clock timeout."""
        return max(1, int((self.spec.limits.cpu_seconds or timeout) + 0.999))

    def _uid(self, slot: int | None) -> int | None:
        """The uid a slot's processes run as (root workers only)."""
        if not self.root or slot is None:
            return None
        cfg = self.cfg
        return int(cfg["uid_base"]) + int(cfg["uid_block"]) * int(cfg["slots"]) + slot

    def _own(self, path: str, slot: int | None) -> None:
        os.chmod(path, 0o700)
        uid = self._uid(slot)
        if uid is not None:
            os.chown(path, uid, uid)

    def _watch_output(self, out_r: int, err_r: int) -> None:
        for fd, which in ((out_r, "out"), (err_r, "err")):
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, lambda fd, w=which: self._on_output(fd, w))

    def _forked(self, pid: int) -> None:
        if pid < self.last_pid:
            self.wrapped = True
        self.last_pid = pid

    # ---- one-shot calls -------------------------------------------------------------

    def start_call(self, req: dict[str, Any]) -> None:
        now = time.monotonic()
        timeout = float(req["timeout"])
        call = Call(id=req["id"], pid=0, timeout=timeout, started=now, deadline=now + timeout,
                    session=req.get("session"))  # fmt: skip
        if call.session is not None:
            self.sessions.call(call, req["code"])
            return
        try:
            data = _encode_program(req["code"])
        except ValueError as e:  # a program that is not Unicode text
            self._reply(call, error=f"sandbox could not start the call: {e}")
            return
        frame = C.frame({"cpu": self._cpu(timeout), "language": req.get("language", "python")})
        for _attempt in range(2):  # a spare that died unseen is replaced once
            try:
                spare = self.spares.take()
            except OSError as e:
                self._reply(call, error=f"sandbox could not start the call: {e}")
                return
            if spare is None:
                self._reply(call, error="sandbox busy: no free slot")
                return
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(spare.code_fd, view) :]
                os.write(spare.cmd_w, frame)  # a fresh pipe: never blocks
            except OSError:
                self.spares.drop(spare)
                continue
            self._assign(spare, call)
            return
        self._reply(call, error="sandbox could not start the call: its process died")

    def _assign(self, spare: P.Spare, call: Call) -> None:
        """Hand ``call`` (its program and frame already written) to ``spare``: the call now
        owns its pipes, work dir and slot."""
        call.slot, call.workdir, call.pid = spare.slot, spare.workdir, spare.pid
        call.pipes = {spare.out_r: "out", spare.err_r: "err"}
        self._watch_output(spare.out_r, spare.err_r)
        call.status_fd = spare.st_r
        os.set_blocking(spare.st_r, False)
        self.sel.register(spare.st_r, selectors.EVENT_READ,
                          lambda fd, c=call: self._on_status(c, fd))  # fmt: skip
        self.calls[call.id] = call
        if call.pid:
            self.by_pid[call.pid] = call
        self.spares.hand_over(spare, call)

    def call_forked(self, call: Call, fork: F.Fork) -> None:
        """The pid of a child that was handed its call before the pid was known."""
        if fork.pid:
            call.pid = fork.pid
            self.by_pid[call.pid] = call
            if call.timed_out or call.cancelled or call.flooded:  # while its pid was unknown
                self._kill_call(call)
            return
        if self.calls.pop(call.id, None) is None:
            return
        for fd in list(call.pipes):
            self.sel.unregister(fd)
            os.close(fd)
        call.pipes.clear()
        self._close_status(call)
        self._discard(call.workdir)
        if call.slot is not None:
            self.free_slots.append(call.slot)
        self._reply(call, error=f"sandbox could not start the call: fork failed: "
                                f"{os.strerror(fork.error)}")  # fmt: skip

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
        if call is None:  # an idle session's background chatter
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
        found, call = self.sessions.for_pipe(fd)
        if found:
            return call
        for c in self.calls.values():
            if fd in c.pipes:
                return c
        return None

    def _kill_call(self, call: Call) -> None:
        s = self.sessions.by_name.get(call.session or "")
        if call.session is not None and s is not None:
            self.sessions.kill(s)
        else:  # the process itself too: it may not have made its own group yet
            K.kill(call.pid, signal.SIGKILL)
            K.killpg(call.pid)

    def _complete(self, call: Call, status: int | None) -> None:
        """A call is over: kill its group, collect its output, reply. What escaped the group
        is killed when the process is reaped (``_finish``, before its slot is reused): until
        then its orphans are its own (it is their subreaper), and ``_on_status`` kills those."""
        self.calls.pop(call.id, None)
        K.killpg(call.pid)
        for fd, which in list(call.pipes.items()):
            self._drain_into(fd, call.out if which == "out" else call.err)
            self.sel.unregister(fd)
            os.close(fd)
        call.pipes.clear()
        self._reply(call, status=status)
        call.replied = True

    def _on_status(self, call: Call, fd: int) -> None:
        """The call's program ended and reported its status (``_child.report_status``): reply
        now. Its process may still be exiting — tearing down a mount namespace waits for an
        RCU grace period, milliseconds on a busy machine — and is reaped in ``_finish``. A
        program that forges this byte only ends its own call early."""
        try:
            data = os.read(fd, 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._close_status(call)
        if data and not call.replied and call.id in self.calls:
            K.kill_descendants(call.pid)  # its orphans are still its own (a subreaper)
            self._complete(call, (data[0] & 0xFF) << 8)

    def _close_status(self, call: Call) -> None:
        if call.status_fd >= 0:
            self.sel.unregister(call.status_fd)
            os.close(call.status_fd)
            call.status_fd = -1

    def _finish(self, call: Call, status: int | None) -> None:
        """A one-shot child was reaped: reply if not done yet, then free its dir and slot."""
        self.by_pid.pop(call.pid, None)
        if not call.replied:
            self._complete(call, status)
        else:  # anything started in its group between the reply and the exit
            K.killpg(call.pid)
        self._kill_strays(call.pid)  # after the reply: it may wait for a spare's pid
        self._close_status(call)
        self._discard(call.workdir)  # never blocks: a tmpfs is freed by the kernel
        if call.slot is not None:
            self.free_slots.append(call.slot)

    def _drain_into(self, fd: int, buf: bytearray) -> None:
        while len(buf) <= self.max_out:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk[: self.max_out + 1 - len(buf)]

    def _reply(self, call: Call, status: int | None = None, error: str | None = None,
               reset: bool = False) -> None:  # fmt: skip
        truncated = len(call.out) > self.max_out or len(call.err) > self.max_out
        stderr = call.note + bytes(call.err[: self.max_out]).decode("utf-8", "replace")
        exit_code = None if status is None else os.waitstatus_to_exitcode(status)
        if error is None:
            error = self._explain(call, exit_code, stderr)
        if reset and call.session is not None:
            error = f"{error}; the session was restarted (its variables are lost)"
        self.send({
            "type": "result", "id": call.id, "exit_code": exit_code, "error": error,
            "stdout": bytes(call.out[: self.max_out]).decode("utf-8", "replace"),
            "stderr": stderr, "timed_out": call.timed_out, "truncated": truncated,
            "duration": time.monotonic() - call.started,
        })  # fmt: skip

    def _explain(self, call: Call, code: int | None, stderr: str) -> str | None:
        """The short error message for the model (None: the call succeeded)."""
        if call.cancelled:
            return "cancelled"
        if call.timed_out:
            return f"timed out after {call.timeout:g} s (wall clock); the process was killed"
        if call.flooded:
            return f"output limit exceeded (more than {self.flood} bytes); the process was killed"
        elapsed = time.monotonic() - call.started
        return C.explain_exit(self.spec.limits, code, stderr, call.timeout, elapsed)

    # ---- process hygiene ------------------------------------------------------------

    def _kill_strays(self, since_pid: int) -> None:
        """Kill processes re-parented to the fork server: they escaped a call's process group
        (setsid) and outlived their parent (the fork server reaps them). A new pid is larger
        than its ancestors' until the pid counter wraps, so only those are read; ``serve``
        also scans everything every few seconds, which catches strays born after a wrap."""
        if self.wrapped:
            since_pid, self.wrapped = 0, False
        self._settle_forks()  # a child whose pid is still on its way is no stray
        known = set(self.by_pid) | set(self.sessions.by_pid) | set(self.spares.by_pid)
        K.kill_orphans(self.zpid, known, since_pid)

    def _reap(self) -> None:
        """Our own children are the fork server and the deleter: either dying is fatal."""
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if not self.closing:
                self._fatal()

    def _exited(self, pid: int, status: int) -> None:
        call = self.by_pid.get(pid)
        if call is not None:
            self._finish(call, status)
            return
        s = self.sessions.by_pid.get(pid)
        if s is not None:
            self.sessions.died(s, status)
            return
        self.spares.reaped(pid)

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
            try:
                self.start_call(req)
            except Exception as e:  # noqa: BLE001 - answer the call: a dropped one hangs the pool
                traceback.print_exc()
                if req["id"] not in self.calls:
                    now = time.monotonic()
                    lost = Call(id=req["id"], pid=0, timeout=0, started=now, deadline=now)
                    self._reply(lost, error=f"sandbox internal error: {e!r}")
        elif op == "close":
            self.sessions.close(req)
        elif op == "cancel":
            call = self.calls.get(req["id"])
            if call is not None:
                call.cancelled = True
                self._kill_call(call)
        elif op == "exit":
            self.closing = True

    def _check_deadlines(self) -> float:
        """Kill overdue calls and idle sessions; returns seconds until the next deadline."""
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
        self.sessions.expire_idle(now)
        return max(nearest, 0.0)

    def serve(self) -> None:
        while not (self.closing and not self.calls):
            if self.closing:
                for call in list(self.calls.values()):
                    call.cancelled = True
                    self._kill_call(call)
            elif not self.calls:  # keep spares while idle (see _spares)
                try:
                    self.spares.refill()
                except OSError:  # out of descriptors: calls fork on demand (and say why)
                    traceback.print_exc()
            for key, _mask in self.sel.select(self._check_deadlines()):
                # An earlier handler in this batch may have closed this fd (and a new pipe may
                # already reuse its number): only dispatch keys that are still registered.
                if self.sel.get_map().get(key.fd) is not key:
                    continue
                try:
                    key.data(key.fd)
                except Exception:  # noqa: BLE001 - a bug must cost one call, not the worker
                    traceback.print_exc()
            self._reap()
            if time.monotonic() - self.last_scan > SCAN_EVERY:
                self.last_scan = time.monotonic()
                self._kill_strays(0)
        self.sessions.kill_all()
        self._settle_forks()
        self.spares.drop_all()
        deadline = time.monotonic() + 2
        while (self.sessions.by_pid or self.spares.by_pid) and time.monotonic() < deadline:
            self._on_events(self.ev_r)
            time.sleep(0.005)
        slots = [os.path.join(self.base, f"slot-{n}") for n in sorted(self.slot_dirs)]
        for path in (*slots, self.trash, self.base):  # what is left: the trainer removes it
            try:
                os.rmdir(path)
            except OSError:
                pass


def _encode_program(code: str) -> bytes:
    """The program as UTF-8; a lone surrogate (valid JSON, not Unicode text) is refused with a
    message the model can act on (the trainer refuses it first: this guards the protocol)."""
    try:
        return code.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"the code contains a lone surrogate (U+{ord(code[e.start]):04X}) at offset "
            f"{e.start}: it is not valid Unicode text"
        ) from None


def main() -> None:
    cfg = json.loads(C.read_exact(0, int.from_bytes(C.read_exact(0, HDR), "big")))
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # calls must not import our private modules by name
    sys.dont_write_bytecode = True
    K.prctl(K.PR_SET_PDEATHSIG, signal.SIGKILL)  # never outlive the trainer (or bwrap)
    if cfg.get("unshare"):
        K.enter_namespaces()
    private, exposed = False, []
    try:  # a mount namespace of our own: per-call tmpfs mounts stay in it
        K.private_mount_namespace()
        private = True
        if os.geteuid() == 0:  # calls run as other uids: let them reach the Python install
            exposed = K.expose_paths(cfg["expose_paths"])
    except OSError:
        pass
    for name in cfg["preload"]:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001, S112 - a missing optional module is fine
            continue
    w = Worker(cfg)
    w.private_mounts = private
    w.setup_control()
    gc.collect()
    gc.freeze()  # children then leave the shared heap alone: fewer copy-on-write faults
    try:
        w.probe()
        w.start_helpers()
    except Exception as e:  # noqa: BLE001 - report it; the trainer decides
        w.send({"type": "fatal", "message": f"probe failed: {e!r}"})
        return
    if exposed:
        w.layers.append("mountview")
    w.send({"type": "hello", "level": w.level(), "layers": w.layers, "warnings": w.warnings,
            "base": w.base})  # fmt: skip
    w.serve()


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
