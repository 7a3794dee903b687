"""The trainer-side sandbox service: a pool of pre-started workers behind an async API.

The pool lives on its own event loop in a daemon thread, so one ``Sandbox`` serves coroutines
on any loop (agent loops, Ray actors) and plain threads (``run_sync``) alike. Nothing from the
trainer process reaches a worker: workers are started with ``python -E -s`` and a minimal
environment, in a new session, and they never import the ``envs`` package.

Every failure becomes an ``ExecResult`` with ``error`` set (timeouts, limits, a worker that
died or hung: it is killed and replaced). Only misuse raises: a closed sandbox, and a
``require``d isolation level the machine cannot provide (``SandboxUnavailable``, fail closed).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from envs.sandbox._kernel import namespace_ids, remove_tree
from envs.sandbox.config import LEVELS, SandboxConfig, level_rank
from envs.sandbox.host import UidBlock, bwrap_argv, bwrap_path, python_dirs, read_paths
from envs.sandbox.result import ExecResult

T = TypeVar("T")
log = logging.getLogger(__name__)
_WARNED: set[str] = set()
WORKER_PATH = str(Path(__file__).with_name("_worker.py"))
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
BACKSTOP_GRACE = 5.0  # seconds past a call's timeout before the worker itself is presumed hung
START_TIMEOUT = 60.0  # preloading heavy modules can take a while on a busy machine


_SPAWN_ERRORS = (OSError, RuntimeError, ValueError, KeyError, asyncio.IncompleteReadError,
                 asyncio.TimeoutError)  # fmt: skip


class SandboxUnavailable(RuntimeError):
    """The required isolation level cannot be provided here (or the sandbox is closed)."""


class _Worker:
    """Trainer-side handle of one worker process."""

    def __init__(self, proc: asyncio.subprocess.Process, block: UidBlock, mode: str) -> None:
        self.proc = proc
        self.block = block
        self.mode = mode
        self.base = ""
        self.level = "process"
        self.layers: list[str] = []
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.inflight = 0
        self.calls = 0
        self.sessions: set[str] = set()
        self.draining = False
        self.retiring: asyncio.Future[None] | None = None
        self.dead = False
        self.reader: asyncio.Task[None] | None = None

    def send(self, msg: dict[str, Any]) -> None:
        data = json.dumps(msg).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(len(data).to_bytes(4, "big") + data)

    async def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        n = int.from_bytes(await self.proc.stdout.readexactly(4), "big")
        return dict(json.loads(await self.proc.stdout.readexactly(n)))

    def kill(self) -> None:
        self.dead = True
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class Sandbox:
    """Execution service for model-written code.

    >>> async with Sandbox(SandboxConfig(timeout=2)) as sb:
    ...     r = await sb.run("print(6 * 7)")
    ...     r.stdout, r.isolation
    ('42\\n', 'kernel')
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started: concurrent.futures.Future[None] | None = None
        self._closed = False
        self._workers: list[_Worker] = []
        self._sessions: dict[str, _Worker] = {}
        self._lost_sessions: set[str] = set()
        self._ids = itertools.count(1)
        self._sem: asyncio.Semaphore | None = None
        self._mode = "plain"
        self._level = "process"
        self._layers: list[str] = []
        self._counts: Counter[str] = Counter()
        self._latency: list[float] = []
        self._spawning: set[asyncio.Task[Any]] = set()
        self._ready = False
        self._last_error = ""
        self._session_locks: dict[str, asyncio.Lock] = {}

    # ---- public API -----------------------------------------------------------------

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> Sandbox:
        """Start the workers (idempotent; ``run`` starts them on first use)."""
        await asyncio.wrap_future(self._ensure_started())
        return self

    async def run(
        self,
        code: str,
        *,
        session: str | None = None,
        timeout: float | None = None,
        language: str = "python",
    ) -> ExecResult:
        """Run ``code`` in a fresh sandboxed child (or in persistent ``session``, whose variables
        survive across calls until ``close_session``). ``language`` is "python" or "shell"
        (``sh -c``; not for sessions). Never raises for anything the code does."""
        await self.start()
        return await asyncio.wrap_future(self._submit(self._run(code, session, timeout, language)))

    def run_sync(
        self,
        code: str,
        *,
        session: str | None = None,
        timeout: float | None = None,
        language: str = "python",
    ) -> ExecResult:
        """Blocking ``run`` for synchronous callers (not from inside a running event loop of
        the same thread if that loop must keep serving)."""
        return self._submit(self._run(code, session, timeout, language)).result()

    async def close_session(self, session: str) -> None:
        """End a persistent session: its processes are killed and its directory removed."""
        if self._started is None or self._closed:
            return
        await self.start()
        await asyncio.wrap_future(self._submit(self._close_session(session)))

    async def close(self) -> None:
        """Stop every worker (calls in flight end as cancelled)."""
        fut = self._shutdown()
        if fut is not None:
            await asyncio.wrap_future(fut)
        self._join()

    def close_sync(self) -> None:
        fut = self._shutdown()
        if fut is not None:
            fut.result()
        self._join()

    @property
    def isolation(self) -> str:
        """The level calls run under (valid after ``start``): see ``config.LEVELS``."""
        return self._level

    @property
    def layers(self) -> tuple[str, ...]:
        """The mechanisms the workers' probe found working, e.g. ``("rlimits", "uid",
        "landlock", "seccomp")`` (plus ``pidns``, ``netns``... at namespace level)."""
        return tuple(self._layers)

    def metrics(self) -> dict[str, float]:
        """Numbers for logging: calls, errors, timeouts, truncations, lost calls, worker
        starts/deaths/recycles, open sessions, calls in flight, latency p50/p99 (ms), and the
        isolation level reached and requested as ranks (0 process, 1 kernel, 2 namespace), with
        ``isolation_degraded`` 1.0 when the reached one is lower."""
        lat = sorted(self._latency[-2048:])
        out: dict[str, float] = {k: float(v) for k, v in self._counts.items()}
        out.update(
            isolation_rank=float(level_rank(self._level)),
            isolation_requested_rank=float(level_rank(self.config.isolation)),
            isolation_degraded=float(level_rank(self._level) < level_rank(self.config.isolation)),
            workers=float(sum(not w.dead for w in self._workers)),
            sessions=float(len(self._sessions)),
            inflight=float(sum(w.inflight for w in self._workers)),
        )
        if lat:
            out["latency_p50_ms"] = 1000 * lat[len(lat) // 2]
            out["latency_p99_ms"] = 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return out

    # ---- service thread -------------------------------------------------------------

    def _ensure_started(self) -> concurrent.futures.Future[None]:
        with self._lock:
            if self._closed:
                raise SandboxUnavailable("the sandbox is closed")
            if self._started is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()
                    loop.close()

                self._thread = threading.Thread(target=serve, name="turnrl-sandbox", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
                self._started = asyncio.run_coroutine_threadsafe(self._astart(), loop)
            return self._started

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        try:
            self._ensure_started().result()
        except BaseException:
            coro.close()
            raise
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _shutdown(self) -> concurrent.futures.Future[None] | None:
        with self._lock:
            if self._closed or self._loop is None:
                self._closed = True
                return None
            self._closed = True
            return asyncio.run_coroutine_threadsafe(self._aclose(), self._loop)

    def _join(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._thread = None

    # ---- inside the service loop ----------------------------------------------------

    async def _astart(self) -> None:
        cfg = self.config
        self._sem = asyncio.Semaphore(cfg.max_concurrency)
        modes = ["plain"]
        if cfg.isolation == "namespace":
            modes = (["bwrap"] if bwrap_path(cfg.bwrap) else []) + ["unshare", "plain"]
        best: _Worker | None = None
        # Detect by trying: the first mode whose worker reaches the target wins.
        for mode in modes:
            try:
                w = await self._spawn(mode)
            except _SPAWN_ERRORS as e:
                self._counts[f"start_failed_{mode}"] += 1
                self._last_error = repr(e)
                continue
            if best is None or level_rank(w.level) > level_rank(best.level):
                if best is not None:
                    await self._retire(best)
                best = w
            else:
                await self._retire(w)
            if level_rank(best.level) >= level_rank(cfg.isolation):
                break
        if best is None:
            raise SandboxUnavailable(f"no sandbox worker could start: {self._last_error}")
        self._mode, self._level, self._layers = best.mode, best.level, best.layers
        if level_rank(self._level) < level_rank(cfg.isolation):
            self._warn_degraded()
        if cfg.require is not None and level_rank(self._level) < level_rank(cfg.require):
            await self._retire(best)
            raise SandboxUnavailable(
                f"isolation '{cfg.require}' required but only '{self._level}' is available "
                f"here (layers: {'+'.join(self._layers) or 'none'})"
            )
        self._workers.append(best)
        more = [self._spawn(self._mode) for _ in range(cfg.workers - 1)]
        self._workers += await asyncio.gather(*more)
        self._ready = True

    def _warn_degraded(self) -> None:
        """One loud warning per process and (requested, reached) pair; ``metrics()`` carries
        the reached and requested levels on every logging step."""
        cfg = self.config
        failed = sorted(
            k[len("start_failed_") :] for k in self._counts if k.startswith("start_failed_")
        )
        key = f"{cfg.isolation}->{self._level}"
        if key in _WARNED:
            return
        _WARNED.add(key)
        why = f"; failed modes: {', '.join(failed)} ({self._last_error})" if failed else ""
        log.warning(
            "SANDBOX ISOLATION DEGRADED: '%s' was requested but only '%s' is available here "
            "(layers: %s)%s. Set SandboxConfig.require='%s' to refuse to run instead.",
            cfg.isolation,
            self._level,
            "+".join(self._layers) or "none",
            why,
            cfg.isolation,
        )

    def _worker_config(self, block: int, mode: str) -> dict[str, Any]:
        cfg = self.config
        return {
            "uid_block": block,
            "slots": cfg.slots_per_worker,
            "uid_base": cfg.uid_base,
            "isolation": cfg.isolation
            if cfg.isolation != "namespace" or mode != "plain"
            else "kernel",
            "unshare": mode == "unshare",
            "limits": {
                "memory_mb": cfg.memory_mb,
                "cpu_seconds": cfg.cpu_seconds or 0,
                "file_size_mb": cfg.file_size_mb,
                "open_files": cfg.open_files,
                "processes": cfg.processes,
            },
            "max_output_bytes": cfg.max_output_bytes,
            "prefork": cfg.prefork,
            "show_last_expression": cfg.show_last_expression,
            "session_idle_timeout": cfg.session_idle_timeout,
            "session_cpu_seconds": cfg.session_cpu_seconds,
            "preload": list(cfg.preload),
            "read_paths": read_paths(cfg),
            "expose_paths": [*python_dirs(cfg.python), *cfg.read_paths],
            "tmpfs_workdirs": cfg.tmpfs_workdirs,
            "call_disk_mb": cfg.call_disk_mb,
            "call_files": cfg.call_files,
            "session_disk_mb": cfg.session_disk_mb,
            "session_files": cfg.session_files,
            "trainer_pid": os.getpid(),
            "parent_namespaces": namespace_ids(),
        }

    async def _spawn(self, mode: str) -> _Worker:
        """Start a worker and wait for its hello (bounded: a start-up that hangs anywhere,
        even inside asyncio's subprocess machinery, fails like any other)."""
        block = UidBlock.acquire(self.config)
        try:
            return await asyncio.wait_for(self._start_worker(mode, block), START_TIMEOUT + 15)
        except BaseException:
            block.release()
            raise

    async def _start_worker(self, mode: str, block: UidBlock) -> _Worker:
        python = self.config.python or sys.executable
        argv = [python, "-E", "-s", WORKER_PATH]
        if mode == "bwrap":
            argv = [*bwrap_argv(self.config, python, os.path.dirname(WORKER_PATH)), "--", *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"},
            cwd="/",
            start_new_session=True,
            limit=1 << 22,
        )
        w = _Worker(proc, block, mode)
        try:
            w.send(self._worker_config(block.index, mode))  # the first frame configures it
            hello = await asyncio.wait_for(w.recv(), START_TIMEOUT)
        except BaseException:
            w.kill()
            await _wait_exit(proc)
            raise
        if hello.get("type") != "hello":
            w.kill()
            raise RuntimeError(f"sandbox worker failed: {hello.get('message', hello)}")
        w.level, w.layers = str(hello["level"]), list(hello["layers"])
        w.base = str(hello.get("base", "")) if mode != "bwrap" else ""  # bwrap's /tmp is private
        for text in hello.get("warnings", []):
            if text not in _WARNED:  # once per process, not per sandbox
                _WARNED.add(text)
                log.warning("sandbox: %s", text)
        w.reader = asyncio.ensure_future(self._read_loop(w))
        self._counts["workers_started"] += 1
        return w

    async def _read_loop(self, w: _Worker) -> None:
        try:
            while True:
                msg = await w.recv()
                fut = w.pending.pop(int(msg.get("id", 0)), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            was_dead = w.dead
            w.dead = True
            for fut in w.pending.values():
                if not fut.done():
                    fut.set_result({"type": "died"})
            w.pending.clear()
            await _wait_exit(w.proc)
            if not was_dead and not w.draining and not self._closed:
                self._counts["worker_deaths"] += 1
            self._forget(w)

    def _forget(self, w: _Worker) -> None:
        """A worker is gone: its sessions are lost, what it left is removed, the pool is
        refilled."""
        for name in w.sessions:
            if self._sessions.get(name) is w:
                del self._sessions[name]
                self._lost_sessions.add(name)
        w.sessions.clear()
        if w in self._workers:
            self._workers.remove(w)
        _cleanup_after(w)
        if self._ready and not self._closed:
            self._ensure_pool()

    def _ensure_pool(self) -> None:
        live = [w for w in self._workers if not w.dead and not w.draining]
        missing = self.config.workers - len(live) - len(self._spawning)
        for _ in range(max(0, missing)):
            task = asyncio.ensure_future(self._add_worker())
            self._spawning.add(task)
            task.add_done_callback(self._spawning.discard)

    async def _add_worker(self) -> _Worker | None:
        try:
            w = await self._spawn(self._mode)
        except _SPAWN_ERRORS as e:
            self._counts["worker_start_failures"] += 1
            self._last_error = repr(e)
            return None
        if self._closed:
            await self._retire(w)
            return None
        self._workers.append(w)
        self._counts["worker_restarts"] += 1
        return w

    async def _pick(self, session: str | None) -> _Worker:
        if session is not None:
            w = self._sessions.get(session)
            if w is not None and not w.dead:
                return w
        for _ in range(3):
            live = [w for w in self._workers if not w.dead and not w.draining]
            if live:
                w = min(live, key=lambda w: (w.inflight, w.calls))
                if session is not None:
                    self._sessions[session] = w
                    w.sessions.add(session)
                return w
            self._ensure_pool()
            if self._spawning:
                await asyncio.wait(set(self._spawning))
        raise SandboxUnavailable(f"no sandbox worker available: {self._last_error}")

    async def _run(
        self, code: str, session: str | None, timeout: float | None, language: str
    ) -> ExecResult:
        t0 = time.monotonic()
        timeout = float(timeout if timeout is not None else self.config.timeout)
        if language not in ("python", "shell"):
            raise ValueError(f"unknown language {language!r} (python | shell)")
        if language != "python" and session is not None:
            raise ValueError("sessions run Python only")
        refused = _refuse(code, language, self.config.max_code_bytes)
        if refused is not None:
            return self._done(ExecResult.failure(refused, self._level), t0, rejected=True)
        assert self._sem is not None
        if session is not None:  # one cell at a time per session, in call order
            lock = self._session_locks.setdefault(session, asyncio.Lock())
            async with lock:
                return await self._run_one(code, session, timeout, language, t0)
        return await self._run_one(code, session, timeout, language, t0)

    async def _run_one(
        self, code: str, session: str | None, timeout: float, language: str, t0: float
    ) -> ExecResult:
        assert self._sem is not None
        async with self._sem:
            try:
                w = await self._pick(session)
            except SandboxUnavailable as e:
                return self._done(ExecResult.failure(str(e), self._level), t0)
            lost = session is not None and session in self._lost_sessions
            self._lost_sessions.discard(session or "")
            rid = next(self._ids)
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            w.pending[rid] = fut
            w.inflight += 1
            w.calls += 1
            try:
                w.send(
                    {
                        "op": "run",
                        "id": rid,
                        "code": code,
                        "timeout": timeout,
                        "session": session,
                        "language": language,
                    }
                )
                msg = await asyncio.wait_for(asyncio.shield(fut), timeout + BACKSTOP_GRACE)
            except asyncio.TimeoutError:
                self._counts["worker_hung"] += 1
                w.kill()
                msg = {"type": "died", "hung": True}
            except asyncio.CancelledError:
                w.pending.pop(rid, None)
                if not w.dead:
                    w.send({"op": "cancel", "id": rid})
                raise
            except (ConnectionError, RuntimeError):  # stdin of a dying worker
                msg = {"type": "died"}
            finally:
                w.inflight -= 1
                self._maybe_recycle(w)
        if msg.get("type") != "result":
            what = "stopped responding and was restarted" if msg.get("hung") else "died"
            return self._done(
                ExecResult.failure(
                    f"the sandbox worker {what}; the call was lost", w.level, time.monotonic() - t0
                ),
                t0,
            )
        stderr = str(msg["stderr"])
        if lost:
            stderr = "[sandbox] the session's earlier state was lost (worker restarted)\n" + stderr
        result = ExecResult(
            stdout=str(msg["stdout"]),
            stderr=stderr,
            exit_code=msg["exit_code"],
            error=msg["error"],
            timed_out=bool(msg["timed_out"]),
            isolation=w.level,
            duration=float(msg["duration"]),
            truncated=bool(msg["truncated"]),
        )
        if result.error and "session was restarted" in result.error and session is not None:
            self._sessions.pop(session, None)
            w.sessions.discard(session)
        return self._done(result, t0)

    def _done(self, r: ExecResult, t0: float, rejected: bool = False) -> ExecResult:
        c = self._counts
        c["calls"] += 1
        if r.error is not None:
            c["errors"] += 1
        if r.timed_out:
            c["timeouts"] += 1
        if r.truncated:
            c["truncated"] += 1
        if rejected:
            c["rejected"] += 1
        elif r.exit_code is None and not r.timed_out:
            c["lost"] += 1
        self._latency.append(time.monotonic() - t0)
        if len(self._latency) > 8192:
            del self._latency[:4096]
        return r

    def _maybe_recycle(self, w: _Worker) -> None:
        if w.dead:
            return
        if not w.draining and w.calls >= self.config.recycle_after:
            w.draining = True
            self._counts["recycled"] += 1
            self._ensure_pool()
        if w.draining and w.inflight == 0 and not w.sessions:
            asyncio.ensure_future(self._retire(w))

    async def _retire(self, w: _Worker) -> None:
        """Ask a worker to exit (it kills its sessions and cleans its directory); concurrent
        callers wait for the same exit."""
        w.draining = True
        if w.retiring is None:
            w.retiring = asyncio.ensure_future(self._exit_worker(w))
        await asyncio.shield(w.retiring)

    async def _exit_worker(self, w: _Worker) -> None:
        if w.proc.returncode is None and not w.dead:
            try:
                w.send({"op": "exit"})
                assert w.proc.stdin is not None
                w.proc.stdin.close()
                await asyncio.wait_for(w.proc.wait(), 5)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                w.kill()
        w.dead = True
        if w.reader is None:
            await _wait_exit(w.proc)
            _cleanup_after(w)

    async def _close_session(self, session: str) -> None:
        self._lost_sessions.discard(session)
        self._session_locks.pop(session, None)
        w = self._sessions.pop(session, None)
        if w is None or w.dead:
            return
        w.sessions.discard(session)
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        w.pending[rid] = fut
        try:
            w.send({"op": "close", "id": rid, "session": session})
            await asyncio.wait_for(fut, 5)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            w.pending.pop(rid, None)
        self._maybe_recycle(w)

    async def _aclose(self) -> None:
        spawning = list(self._spawning)
        for task in spawning:
            task.cancel()
        await asyncio.gather(*spawning, return_exceptions=True)
        await asyncio.gather(
            *(self._retire(w) for w in list(self._workers)), return_exceptions=True
        )
        for w in list(self._workers):
            if w.reader is not None:
                await asyncio.gather(w.reader, return_exceptions=True)
        self._workers.clear()


# --------------------------------------------------------------------------- helpers


def _refuse(code: str, language: str, max_bytes: int) -> str | None:
    """Why ``code`` cannot be run at all (None: it can), as an error for the model.

    Any ``str`` can arrive here: JSON allows a lone surrogate (``"\\ud800"``), which is not
    Unicode text, cannot be encoded as UTF-8 and cannot be compiled by Python either, so the call
    is answered here rather than sent on (a worker that met one used to drop the call and hang).
    A shell command is an argv string, which cannot hold a NUL byte."""
    try:
        size = len(code.encode("utf-8"))
    except UnicodeEncodeError as e:
        line = code.count("\n", 0, e.start) + 1
        col = e.start - (code.rfind("\n", 0, e.start) + 1) + 1
        return (
            f"the code contains a lone surrogate (U+{ord(code[e.start]):04X}) at line {line}, "
            f"column {col}: it is not valid Unicode text, so it was not run"
        )
    if size > max_bytes:
        return f"code too long (max {max_bytes} bytes)"
    if language == "shell" and "\x00" in code:
        return "a shell command cannot contain NUL bytes (\\x00), so it was not run"
    return None


async def _wait_exit(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> None:
    """Wait for a worker to exit, never forever: SIGKILL after ``timeout``, and reap it
    ourselves if asyncio's child watcher never reports it."""
    try:
        await asyncio.wait_for(proc.wait(), timeout)
        return
    except asyncio.TimeoutError:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        log.warning("sandbox: worker %d did not report its exit", proc.pid)
        try:
            os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _cleanup_after(w: _Worker) -> None:
    """After a worker exited: kill what runs under its uids, remove a directory it could not
    (it was killed), give its uid block back."""
    w.block.kill_processes()
    if w.base and os.path.isdir(w.base):  # off the service loop: it may be a huge tree
        threading.Thread(target=_remove_quietly, args=(w.base,), daemon=True).start()
    w.block.release()


def _remove_quietly(path: str) -> None:
    try:
        remove_tree(path)
    except OSError as e:
        log.warning("sandbox: could not remove %s: %s", path, e)


# --------------------------------------------------------------------------- shared default

_DEFAULT: Sandbox | None = None
_DEFAULT_LOCK = threading.Lock()


def get_sandbox() -> Sandbox:
    """The process-wide sandbox for tools (config from ``configure_sandbox`` or the
    environment, see ``SandboxConfig.from_env``); started on first use, closed at exit."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT._closed:
            _DEFAULT = Sandbox(SandboxConfig.from_env())
            atexit.register(_DEFAULT.close_sync)
        return _DEFAULT


def configure_sandbox(config: SandboxConfig) -> Sandbox:
    """Replace the shared default (closing the previous one) with one using ``config``."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        old, _DEFAULT = _DEFAULT, Sandbox(config)
        atexit.register(_DEFAULT.close_sync)
    if old is not None:
        old.close_sync()
    return _DEFAULT


def sandbox_metrics(prefix: str = "sandbox/") -> dict[str, float]:
    """The shared sandbox's ``metrics()`` with ``prefix`` (isolation reached and requested,
    ``isolation_degraded``, calls, errors, latency...), or {} when no tool started it: for a
    trainer's per-step metrics row. Never starts a sandbox."""
    with _DEFAULT_LOCK:
        box = _DEFAULT
    if box is None or box._started is None or not box._ready:
        return {}
    return {prefix + k: v for k, v in box.metrics().items()}


__all__ = [
    "LEVELS",
    "Sandbox",
    "SandboxUnavailable",
    "configure_sandbox",
    "get_sandbox",
    "sandbox_metrics",
]
