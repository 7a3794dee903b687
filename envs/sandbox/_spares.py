"""Call children forked ahead of their calls ("spares"), for one sandbox worker.

A spare is forked by the fork server like any call child, isolates itself (``_child.enter``),
then waits for its call on a pipe (``_child.await_call``). A call that takes a ready one costs
the worker a memfd write and a pipe write: no fork, no set-up on the call's own path. Each
spare is used by one call only, and was forked from the fork server's clean image, so it holds
nothing of any other call. An idle worker keeps ``prefork`` of them; during a burst each call
takes a fresh one as it comes (forked at once, its call frame already waiting in its pipe).

Standard library only (imported by the worker by path, like ``_child``).
"""

from __future__ import annotations

import os
import signal
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

try:  # imported as part of the package (tests, type checking)
    from . import _child as C
    from . import _forkserver as F
    from . import _kernel as K
except ImportError:  # loaded by the worker script: this directory is on sys.path
    import _child as C  # type: ignore[no-redef]
    import _forkserver as F  # type: ignore[no-redef]
    import _kernel as K  # type: ignore[no-redef]


MAX_IDLE_DEATHS = 3


@dataclass
class Spare:
    """One call child forked ahead of its call; the worker keeps the ends of its pipes."""

    slot: int | None
    workdir: str
    out_r: int
    err_r: int
    st_r: int
    cmd_w: int
    """Where the call frame goes (``_child.await_call``)."""
    code_fd: int
    """The memfd the call's program is written to (the child reads it after isolating)."""
    pid: int = 0
    """0 until the fork server answers."""
    call: Any = None
    """The call it was handed before its pid was known."""
    dropped: bool = False
    """To be killed instead of used (its slot is freed when it is reaped)."""


class Host(Protocol):
    """What the pool needs from its worker."""

    free_slots: list[int]
    quota_call: tuple[int, int]

    def _workdir(self, slot: int) -> str: ...
    def _discard(self, path: str | None) -> None: ...
    def _uid(self, slot: int | None) -> int | None: ...
    def _forked(self, pid: int) -> None: ...
    def _request_fork(self, req: dict[str, Any], fds: list[int], on_done: Any) -> F.Fork: ...
    def call_forked(self, call: Any, fork: F.Fork) -> None: ...


class Spares:
    """The spares of one worker: ``ready`` ones (pid known or not) and every live one by pid."""

    def __init__(self, host: Host, target: int) -> None:
        self.host = host
        self.target = target
        self.ready: deque[Spare] = deque()
        self.by_pid: dict[int, Spare] = {}
        self.idle_deaths = 0
        """Spares that died unused since a call last took one: at ``MAX_IDLE_DEATHS`` the
        pool stops forking ahead (a set-up failing every time must not fork in a loop)."""

    def take(self) -> Spare | None:
        """The oldest ready spare, else a new one; None: no free slot. OSError: see
        ``prepare``."""
        return self.ready.popleft() if self.ready else self.prepare()

    def refill(self) -> None:
        """Fork spares up to the target (the worker calls this while idle)."""
        while len(self.ready) < self.target and self.idle_deaths < MAX_IDLE_DEATHS:
            spare = self.prepare()
            if spare is None:
                return
            self.ready.append(spare)

    def prepare(self) -> Spare | None:
        """Ask for a new spare (its pid comes later); None: no free slot. OSError: no
        descriptors or work dir could be made (nothing is left behind)."""
        host = self.host
        if not host.free_slots:
            return None
        slot = host.free_slots.pop()
        fds: list[int] = []
        workdir = ""
        try:
            workdir = host._workdir(slot)
            for _ in range(4):
                fds += os.pipe()
            fds.append(os.memfd_create("cell", os.MFD_CLOEXEC))  # never in the fork server
        except OSError:
            for fd in fds:
                os.close(fd)
            host._discard(workdir)
            host.free_slots.append(slot)
            raise
        out_r, out_w, err_r, err_w, st_r, st_w, cmd_r, cmd_w, code = fds
        spare = Spare(slot=slot, workdir=workdir, out_r=out_r, err_r=err_r, st_r=st_r,
                      cmd_w=cmd_w, code_fd=code)  # fmt: skip
        req = {"kind": "call", "workdir": workdir, "uid": host._uid(slot), "cpu": C.CPU_UNSET,
               "cpu_hard": C.CPU_UNSET, "quota": host.quota_call}  # fmt: skip
        try:  # the child's fds: stdout, stderr, then 3 memfd, 4 status, 5 call frame
            host._request_fork(req, [out_w, err_w, code, st_w, cmd_r],
                               lambda fork, s=spare: self._forked(s, fork))  # fmt: skip
        finally:
            for fd in (out_w, err_w, st_w, cmd_r):
                os.close(fd)
        return spare

    def _forked(self, spare: Spare, fork: F.Fork) -> None:
        call = spare.call
        if not fork.pid:  # no process: free what it held now
            if spare in self.ready:
                self.ready.remove(spare)
            self.release(spare)
        else:
            self.host._forked(fork.pid)
            spare.pid = fork.pid
            if call is None:
                self.by_pid[spare.pid] = spare
                if spare.dropped:
                    K.kill(spare.pid, signal.SIGKILL)
        if call is not None:
            spare.call = None
            self.host.call_forked(call, fork)

    def hand_over(self, spare: Spare, call: Any) -> None:
        """``call`` (its program and frame written) now owns ``spare``'s pipes, work dir and
        slot (the caller took them); the spare is no longer tracked here."""
        for fd in (spare.code_fd, spare.cmd_w):
            os.close(fd)
        spare.code_fd = spare.cmd_w = spare.out_r = spare.err_r = spare.st_r = -1
        spare.slot, spare.workdir = None, ""
        self.idle_deaths = 0
        if spare.pid:
            self.by_pid.pop(spare.pid, None)
        else:  # its pid is still on its way: ``_forked`` passes it to the call
            spare.call = call

    def drop(self, spare: Spare) -> None:
        """Kill a spare that will not be used; what it holds is freed when it is reaped."""
        if spare in self.ready:
            self.ready.remove(spare)
        spare.dropped = True
        if spare.pid:
            K.kill(spare.pid, signal.SIGKILL)

    def drop_all(self) -> None:
        for spare in list(self.ready):
            self.drop(spare)

    def reaped(self, pid: int) -> bool:
        """The fork server reaped ``pid``: if it was a spare (killed, or a set-up that
        failed), free what it held."""
        spare = self.by_pid.get(pid)
        if spare is None:
            return False
        if spare in self.ready:
            self.ready.remove(spare)
        if not spare.dropped:
            self.idle_deaths += 1
        self.release(spare)
        return True

    def release(self, spare: Spare) -> None:
        """A spare without a process (reaped, or never forked): free what it held."""
        if spare.pid:
            self.by_pid.pop(spare.pid, None)
        for fd in (spare.out_r, spare.err_r, spare.st_r, spare.cmd_w, spare.code_fd):
            if fd >= 0:
                os.close(fd)
        self.host._discard(spare.workdir)
        if spare.slot is not None:
            self.host.free_slots.append(spare.slot)
