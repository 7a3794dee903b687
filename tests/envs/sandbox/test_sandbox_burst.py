"""Issue 25 item 5: any string the model can produce gets a clear result, and a burst of hostile
calls in flight together loses none of them and hangs no worker.

A lone surrogate (``"\\ud800"``: legal JSON, so a tool call can carry it) used to reach the
worker, which could not encode it, dropped the call and stopped answering until the trainer's
backstop killed it, taking every other call in flight on that worker with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from sandbox_helpers import SET_TAG, assert_serves, survivors

from envs.sandbox import ExecResult, Sandbox, SandboxConfig

LOST = "the call was lost"


def _clear_error(r: ExecResult) -> bool:
    """An error result the model can read (not a lost call, not a restarted worker)."""
    return bool(r.error) and LOST not in (r.error or "") and "restarted" not in (r.error or "")


@pytest.fixture(scope="module")
def box() -> Sandbox:
    sb = Sandbox(SandboxConfig(workers=2, timeout=10.0))
    sb.run_sync("pass")
    yield sb  # type: ignore[misc]
    sb.close_sync()


@pytest.mark.parametrize(
    "code",
    [
        "print('\ud800')",  # a lone high surrogate inside a string literal
        "x = 1\n\udfff",  # a lone low surrogate in the program text
        "print('\udc80')",  # inside the range Python's surrogateescape maps to bytes
        "print('ok')  # \ud83d trailing half of an emoji",
    ],
)
def test_lone_surrogate_in_code_is_a_clear_error(box: Sandbox, code: str) -> None:
    t0 = time.monotonic()
    r = box.run_sync(code, timeout=5)
    assert time.monotonic() - t0 < 4, "the call waited for the trainer's backstop"
    assert _clear_error(r), r
    assert "surrogate" in (r.error or ""), r
    assert box.metrics().get("worker_hung", 0) == 0
    assert box.metrics().get("worker_deaths", 0) == 0
    assert_serves(box)


def test_lone_surrogate_in_a_session_and_in_shell_code(box: Sandbox) -> None:
    assert box.run_sync("x = 41", session="sur").ok
    r = box.run_sync("y = '\ud800'", session="sur")
    assert _clear_error(r) and "surrogate" in (r.error or ""), r
    r = box.run_sync("print(x + 1)", session="sur")  # the session kept its state
    assert r.stdout == "42\n", r
    r = box.run_sync("echo '\udcff'", language="shell")
    assert _clear_error(r) and "surrogate" in (r.error or ""), r
    assert box.metrics().get("worker_hung", 0) == 0


def test_worker_answers_a_program_it_cannot_encode(box: Sandbox) -> None:
    """The worker guards its protocol too: a request the trainer would refuse, sent straight to
    the worker (bypassing ``Sandbox.run``'s check), is answered at once, not dropped."""
    assert box._loop is not None
    t0 = time.monotonic()
    r = asyncio.run_coroutine_threadsafe(
        box._run_one("print('\ud800')", None, 5.0, "python", t0), box._loop
    ).result(30)
    assert time.monotonic() - t0 < 4, "the call waited for the trainer's backstop"
    assert _clear_error(r) and "surrogate" in (r.error or ""), r
    assert box.metrics().get("worker_hung", 0) == 0
    assert_serves(box)


def test_nul_in_code_is_a_clear_error(box: Sandbox) -> None:
    r = box.run_sync("print(1)\x00print(2)")
    assert _clear_error(r) and "null" in (r.error or "").lower(), r
    r = box.run_sync("echo a\x00b", language="shell")
    assert _clear_error(r) and "NUL" in (r.error or ""), r
    assert_serves(box)


@dataclass
class Kind:
    code: Callable[[int], str]
    check: Callable[[int, ExecResult], bool]
    timeout: float = 20.0
    language: str = "python"
    session: bool = False


def _ok(i: int, r: ExecResult) -> bool:
    return r.ok and r.stdout == f"tok-{i}\n"


def _timed_out_or_cpu(i: int, r: ExecResult) -> bool:
    return r.timed_out or "CPU time limit" in (r.error or "")


BOMB = SET_TAG + (
    "import os, time\n"
    "for _ in range(200):\n"
    "    try:\n"
    "        if os.fork() == 0:\n"
    "            time.sleep(60)\n"  # sleeping children: bounded by RLIMIT_NPROC, not by CPU
    "    except OSError:\n"
    "        break\n"
    "time.sleep(60)\n"
)
ESCAPE = SET_TAG + "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"

KINDS = [
    Kind(lambda i: f"print('tok-{i}')", _ok),
    Kind(lambda i: f"print('tok-{i}')  # \ud800", lambda i, r: "surrogate" in (r.error or "")),
    Kind(lambda i: f"x = '\udcff{i}'", lambda i, r: "surrogate" in (r.error or "")),
    Kind(lambda i: f"print({i})\x00", lambda i, r: "null" in (r.error or "").lower()),
    Kind(
        lambda i: f"import sys\nsys.stdout.buffer.write(b'a\\x00\\xff\\xfe{i}\\x1b[2Jb\\n')",
        lambda i, r: (
            r.ok and "\x00" not in r.stdout and r.stdout.startswith("a") and f"{i}" in r.stdout
        ),
    ),
    Kind(lambda i: "print('\\ud800')", lambda i, r: "UnicodeEncodeError" in (r.error or "")),
    Kind(lambda i: "print('x' * 10**7)", lambda i, r: r.truncated and not r.ok),
    Kind(lambda i: "while True:\n    pass", _timed_out_or_cpu, timeout=0.5),
    Kind(lambda i: "import time\ntime.sleep(60)", lambda i, r: r.timed_out, timeout=0.5),
    Kind(lambda i: BOMB, lambda i, r: r.timed_out, timeout=1.0),
    Kind(lambda i: ESCAPE + f"print('tok-{i}')", _ok),
    Kind(lambda i: "x = bytearray(10 * 2**30)", lambda i, r: "MemoryError" in (r.error or "")),
    Kind(lambda i: f"raise SystemExit({i % 7 + 1})", lambda i, r: r.exit_code == i % 7 + 1),
    Kind(lambda i: f"echo tok-{i}", _ok, language="shell"),
    Kind(lambda i: f"echo a\x00{i}", lambda i, r: "NUL" in (r.error or ""), language="shell"),
    Kind(lambda i: f"print('tok-{i}')", _ok, session=True),
    Kind(lambda i: f"z = '\ud800{i}'", lambda i, r: "surrogate" in (r.error or ""), session=True),
]
N_CALLS = 200


def test_burst_of_hostile_calls_every_call_gets_a_result() -> None:
    """200 calls in flight together, mixing everything above (plus floods, loops, fork bombs,
    escapes, invalid UTF-8 output): each ends with the result its kind expects, none is lost,
    no worker hangs or dies, nothing survives, and the pool still serves."""
    kinds = [KINDS[i % len(KINDS)] for i in range(N_CALLS)]
    light = sum(k.timeout >= 20 for k in kinds)
    assert light > N_CALLS // 2  # mostly cheap calls: the burst stays small on a 2-core CI box

    async def main(sb: Sandbox) -> list[ExecResult]:
        calls = [
            sb.run(
                k.code(i),
                timeout=k.timeout,
                language=k.language,
                session=f"burst-{i % 5}" if k.session else None,
            )
            for i, k in enumerate(kinds)
        ]
        return await asyncio.wait_for(asyncio.gather(*calls), 120)

    sb = Sandbox(SandboxConfig(workers=2, max_concurrency=48, timeout=20.0))
    try:
        t0 = time.monotonic()
        results = asyncio.run(main(sb))
        elapsed = time.monotonic() - t0
        bad = [
            (i, kinds[i].code(i)[:60], r)
            for i, r in enumerate(results)
            if LOST in (r.error or "") or not kinds[i].check(i, r)
        ]
        assert not bad, f"{len(bad)} calls without their expected result: {bad[:5]}"
        m = sb.metrics()
        assert m.get("worker_hung", 0) == 0 and m.get("worker_deaths", 0) == 0, m
        assert m.get("lost", 0) == 0, m
        assert elapsed < 60, elapsed
        assert survivors() == []
        assert_serves(sb)
    finally:
        sb.close_sync()
