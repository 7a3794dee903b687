"""Persistent sessions of one sandbox worker: long-lived children running
``_child.session_loop``, SIGSTOPped between calls, one cell at a time.

Standard library only (imported by the worker by path, like ``_child``).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import time
from dataclasses import dataclass, field
from typing import Any

try:  # imported as part of the package (tests, type checking)
    from . import _child as C
    from . import _kernel as K
except ImportError:  # loaded by the worker script: this directory is on sys.path
    import _child as C  # type: ignore[no-redef]
    import _kernel as K  # type: ignore[no-redef]

HDR = C.HDR


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
    last_used: float
    res_buf: bytearray = field(default_factory=bytearray)
    call: Any = None
    """The call it is running (a ``_worker.Call``); a placeholder with id -1 while it is
    being closed."""


class Sessions:
    """The sessions of one worker, by name and by pid. ``w``: the worker (its slots, fork
    server, selector, replies)."""

    def __init__(self, w: Any, idle_timeout: float) -> None:
        self.w = w
        self.idle_timeout = idle_timeout
        self.by_name: dict[str, Session] = {}
        self.by_pid: dict[int, Session] = {}
        self.expired: set[str] = set()

    def call(self, call: Any, code: str) -> None:
        w = self.w
        assert call.session is not None
        if call.session in self.expired:
            self.expired.discard(call.session)
            call.note = "[sandbox] the session had been idle too long and was restarted\n"
        s = self.by_name.get(call.session) or self._new(call.session)
        if s is None:
            w._reply(call, error="sandbox busy: no free slot")
            return
        if s.call is not None:
            w._reply(call, error="session is busy with another call")
            return
        s.call, s.last_used = call, call.started
        call.pid = s.pid
        w.calls[call.id] = call
        K.kill(s.pid, signal.SIGCONT)
        try:
            os.write(s.cmd_w, C.frame({"code": code, "cpu": w._cpu(call.timeout),
                                       "echo": w.echo}))  # fmt: skip
        except OSError:
            self.kill(s)

    def _new(self, name: str) -> Session | None:
        w = self.w
        if not w.free_slots:
            return None
        slot = w.free_slots.pop()
        workdir = w._workdir(slot)
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:  # a whole program fits in the pipe: the write never blocks the worker
            K.fcntl_pipe_size(cmd_w, 1 << 20)
        except OSError:
            pass
        cpu_total = int(w.cfg["session_cpu_seconds"])
        fork = {"kind": "session", "workdir": workdir, "uid": w._uid(slot), "cpu": cpu_total,
                "cpu_hard": cpu_total, "quota": w.quota_session}  # fmt: skip
        try:
            pid = w._fork(fork, [out_w, err_w, cmd_r, res_w])
        except OSError:
            pid = 0
        finally:
            for fd in (cmd_r, res_w, out_w, err_w):
                os.close(fd)
        if not pid:
            for fd in (cmd_w, res_r, out_r, err_r):
                os.close(fd)
            w._discard(workdir)
            w.free_slots.append(slot)
            return None
        s = Session(name=name, pid=pid, workdir=workdir, slot=slot, cmd_w=cmd_w, res_r=res_r,
                    out_r=out_r, err_r=err_r, last_used=time.monotonic())  # fmt: skip
        w._watch_output(out_r, err_r)
        os.set_blocking(res_r, False)
        w.sel.register(res_r, selectors.EVENT_READ, lambda fd, s=s: self._on_result(s))
        self.by_name[name] = s
        self.by_pid[pid] = s
        return s

    def _on_result(self, s: Session) -> None:
        w = self.w
        try:
            data = os.read(s.res_r, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            w.sel.unregister(s.res_r)
            os.close(s.res_r)
            s.res_r = -1
            return
        s.res_buf += data
        if len(s.res_buf) < HDR:
            return
        n = int.from_bytes(s.res_buf[:HDR], "big")
        if n > 4096:  # real status frames are tiny: the code is forging them
            self.kill(s)
            return
        if len(s.res_buf) < HDR + n:
            return
        try:
            exit_code = int(json.loads(bytes(s.res_buf[HDR : HDR + n]))["exit"])
        except (ValueError, KeyError, TypeError):
            self.kill(s)  # the code forged the protocol: treat it as a crash
            return
        del s.res_buf[: HDR + n]
        call = s.call
        if call is None:
            return
        K.kill(s.pid, signal.SIGSTOP)  # no background threads running between calls
        K.kill_descendants(s.pid)
        w._drain_into(s.out_r, call.out)
        w._drain_into(s.err_r, call.err)
        s.call = None
        w.calls.pop(call.id, None)
        w._reply(call, status=(exit_code & 0xFF) << 8)

    def kill(self, s: Session) -> None:
        K.kill(s.pid, signal.SIGKILL)
        K.killpg(s.pid)

    def kill_all(self) -> None:
        for s in list(self.by_name.values()):
            self.kill(s)

    def died(self, s: Session, status: int) -> None:
        w = self.w
        K.kill_descendants(s.pid)
        w._kill_strays(s.pid)
        self.by_name.pop(s.name, None)
        self.by_pid.pop(s.pid, None)
        call, s.call = s.call, None
        for fd in (s.cmd_w, s.res_r, s.out_r, s.err_r):
            if fd < 0:
                continue
            if call is not None and fd in (s.out_r, s.err_r):
                w._drain_into(fd, call.out if fd == s.out_r else call.err)
            if fd in w.sel.get_map():
                w.sel.unregister(fd)
            os.close(fd)
        if call is not None and call.id >= 0:
            w.calls.pop(call.id, None)
            error = w._explain(call, os.waitstatus_to_exitcode(status), "")
            if not (call.timed_out or call.flooded or call.cancelled):
                error = f"the session process exited ({error or 'status 0'})"
            w._reply(call, status=status, error=error, reset=True)
        w._discard(s.workdir)
        if s.slot is not None:
            w.free_slots.append(s.slot)

    def close(self, req: dict[str, Any]) -> None:
        s = self.by_name.get(req["session"])
        if s is not None:
            if s.call is None:
                s.call = self.w._closing_call(s.pid)
            self.kill(s)
        self.w.send({"type": "closed", "id": req["id"]})

    def expire_idle(self, now: float) -> None:
        """Close the sessions unused for longer than the idle timeout."""
        for s in list(self.by_name.values()):
            if s.call is None and now - s.last_used > self.idle_timeout:
                if len(self.expired) > 4096:  # names are only kept to explain a restart
                    self.expired.clear()
                self.expired.add(s.name)
                s.call = self.w._closing_call(s.pid)
                self.kill(s)

    def for_pipe(self, fd: int) -> tuple[bool, Any]:
        """(whether ``fd`` is a session's output pipe, the call that session is running)."""
        for s in self.by_name.values():
            if fd in (s.out_r, s.err_r):
                return True, s.call
        return False, None
