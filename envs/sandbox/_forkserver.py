"""The sandbox worker's two helper processes, both forked before the worker handles any call.

- **Fork server**: forks every call and session child. The worker forks it right after its
  start-up probe, so its memory holds the standard library, the preloaded modules and the
  configuration, and never any call's code or output: a forked child that walks its inherited
  interpreter state (frames, ``gc.get_objects()``) or scans its memory with ``ctypes`` finds
  nothing of the calls beside it. Where the probe allows, it installs the seccomp filter on
  itself once, so every child starts under it (``_filter_children``). Call children are
  forked ahead of their calls (the worker's spares): each isolates itself, then waits for its
  call frame; the program reaches it through a memfd it reads only after that; session cells
  go straight from the worker to the session's own pipe. The worker talks to it over a
  SOCK_SEQPACKET pair (a small JSON request plus the child's descriptors; the reply is the
  pid, answered in order: ``ForkClient``) and learns of exits from an event pipe (the fork
  server is the children's parent and the subreaper of their orphans).
- **Deleter**: removes work dirs the worker moved into its trash directory (an O(1) rename),
  with the depth-proof ``_kernel.remove_tree``, at low priority, so neither a 2,000-deep tree
  nor half a million files ever runs on the worker's request path.

Standard library only (imported by the worker by path, like ``_child``).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import selectors
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

try:  # imported as part of the package (tests, type checking)
    from . import _child as C
    from . import _kernel as K
    from . import _seccomp as S
except ImportError:  # loaded by the worker script: this directory is on sys.path
    import _child as C  # type: ignore[no-redef]
    import _kernel as K  # type: ignore[no-redef]
    import _seccomp as S  # type: ignore[no-redef]

EVENT = struct.Struct("=ii")
"""One exit event on the event pipe: pid, wait status."""
F_SETPIPE_SZ = 1031


@dataclass
class Fork:
    """One fork request; the fork server answers requests in the order they were sent."""

    on_done: Callable[[Fork], None] | None = None
    pid: int = 0
    """The child's pid once answered (0 before, and after a failure)."""
    error: int = 0
    """errno of a failed fork."""
    done: bool = False


class ForkClient:
    """The worker's end of the fork server's socket. Requests do not wait for their answer
    (a fork takes a millisecond or more on a loaded machine, which the worker spends serving
    other calls); ``read_replies`` takes the answers as they come, ``settle`` waits for all."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.pending: deque[Fork] = deque()

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(
        self, req: dict[str, Any], fds: list[int], on_done: Callable[[Fork], None] | None = None
    ) -> Fork:
        """Ask for a child (``fds``: its stdout, stderr, then the fds it keeps). OSError: the
        fork server is gone or stuck."""
        msg = [json.dumps(req).encode()]
        try:
            socket.send_fds(self.sock, msg, fds)
        except BlockingIOError:  # never in practice: hundreds of requests fit in the buffer
            if not select.select([], [self.sock], [], 30.0)[1]:
                raise OSError("the fork server stopped reading requests") from None
            socket.send_fds(self.sock, msg, fds)
        fork = Fork(on_done)
        self.pending.append(fork)
        return fork

    def read_replies(self) -> None:
        """Take every answer that has arrived. OSError: the fork server is gone."""
        while self.pending:
            try:
                data = self.sock.recv(16)
            except BlockingIOError:
                return
            if not data:
                raise OSError("the fork server closed its socket")
            fork = self.pending.popleft()
            pid = int.from_bytes(data, "big", signed=True)
            fork.pid, fork.error, fork.done = max(pid, 0), max(-pid, 0), True
            if fork.on_done is not None:
                fork.on_done(fork)

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until every request is answered (then every child of the fork server is one
        the worker knows of). OSError: the fork server is gone or stuck."""
        deadline = time.monotonic() + timeout
        while self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise OSError("the fork server stopped answering")
            self.read_replies()


def _close_all_but(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def start_fork_server(
    spec: C.Spec, protect: list[int], echo: bool
) -> tuple[int, socket.socket, int]:
    """Fork the fork server. ``protect``: pids calls may not signal (worker, deleter,
    trainer). Returns (its pid, the request socket, the read end of the event pipe)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ev_r, ev_w = os.pipe()
    try:  # room for many exit events: the fork server must never block on this pipe
        fcntl.fcntl(ev_w, F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    worker = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            keep = {theirs.fileno(), ev_w, spec.ll_base, *(fd for fd, _ in spec.ll_read)}
            _close_all_but(keep)
            _serve(spec, theirs, ev_w, worker, protect, echo)
        finally:
            os._exit(0)
    theirs.close()
    os.close(ev_w)
    mine.settimeout(30.0)
    return pid, mine, ev_r


def _serve(
    spec: C.Spec, sock: socket.socket, ev_w: int, worker: int, protect: list[int], echo: bool
) -> None:
    K.prctl(K.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != worker:
        return
    K.prctl(K.PR_SET_CHILD_SUBREAPER, 1)  # escaped orphans of calls come back here
    me = os.getpid()
    spec.worker_pid = me
    if spec.seccomp:  # the same rules, now also protecting this process
        _filter_children(spec, [*protect, me])
    spec.base_as = C.address_space()
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _mask in sel.select():
            if key.fd == wake_r:
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            try:
                msg, fds, _flags, _addr = socket.recv_fds(sock, 65536, 8)
            except OSError:
                return
            if not msg:
                return
            pid = _fork_child(spec, json.loads(msg), fds, echo)
            for fd in fds:
                os.close(fd)
            sock.send(pid.to_bytes(8, "big", signed=True))
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            os.write(ev_w, EVENT.pack(pid, status))


def _filter_children(spec: C.Spec, protect: list[int]) -> None:
    """Put every child under the seccomp filter: installed here once, so children inherit it
    through fork (the per-call install cost about a millisecond), where the worker's probe
    allows it; otherwise each child installs the program itself (``_child.enter``)."""
    if spec.seccomp_in_server:
        try:
            K.no_new_privs()  # needed without CAP_SYS_ADMIN; this process never execs
            S.install(S.build_filter(protect, for_setup=spec.callns))
            spec.seccomp, spec.seccomp_inherited = b"", True
            return
        except OSError:
            pass
    spec.seccomp = S.build_filter(protect)


def _fork_child(spec: C.Spec, req: dict[str, Any], fds: list[int], echo: bool) -> int:
    """Fork one call or session child; returns its pid (or -errno)."""
    C.flush()
    try:
        pid = os.fork()
    except OSError as e:
        return -(e.errno or 1)
    if pid:
        return pid
    status = C.SETUP_FAILED  # ---- child: never returns
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        C.enter(spec, req["workdir"], req["uid"], req["cpu"], req["cpu_hard"], True, fds[2:],
                (int(req["quota"][0]), int(req["quota"][1])))  # fmt: skip
        if req["kind"] == "session":
            status = C.session_loop(3, 4)
        else:  # fds: 3 the program's memfd, 4 the status pipe, 5 the call frame
            status = 0
            call = C.await_call(5)
            if call is not None:
                code = C.read_code(3)
                if call.get("language") == "shell":
                    status = 127  # if exec fails (e.g. a NUL byte): not a set-up failure
                    try:
                        os.execve("/bin/sh", ["sh", "-c", code], dict(os.environ))
                    except (OSError, ValueError) as e:
                        os.write(2, f"sh: cannot run the command: {e}\n".encode())
                else:
                    status = C.run_code(code, echo, C.fresh_main())
                    C.flush()
                    C.report_status(4, status)
    except BaseException as e:  # noqa: BLE001 - a set-up bug must not reach the fork server
        os.write(2, f"sandbox setup failed: {e!r}\n".encode())
    finally:
        os._exit(status)
    return 0  # unreachable


def start_deleter(trash: str) -> tuple[int, int]:
    """Fork the deleter; returns (its pid, the write end of its wake-up pipe: write a byte
    after moving something into ``trash``)."""
    r, w = os.pipe()
    worker = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            _close_all_but({r})
            K.prctl(K.PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() == worker:
                try:
                    os.nice(10)
                except OSError:
                    pass
                while os.read(r, 4096):
                    sweep(trash)
        finally:
            os._exit(0)
    os.close(r)
    os.set_blocking(w, False)
    return pid, w


def sweep(trash: str) -> None:
    """Delete everything in ``trash`` once (a failure is retried at the next wake-up)."""
    try:
        names = os.listdir(trash)
    except OSError:
        return
    for name in names:
        try:
            K.remove_tree(os.path.join(trash, name))
        except OSError:
            continue
