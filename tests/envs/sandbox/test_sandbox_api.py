"""The sandbox's behaviour as a service: results, sessions, concurrency, recycling, failure
modes, configuration, and the kernel layers it reports."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import pytest
from sandbox_helpers import HANG_TIMEOUT, assert_serves, expected_level

from envs.sandbox import (
    ExecResult,
    Sandbox,
    SandboxConfig,
    SandboxUnavailable,
    _seccomp,
    level_rank,
)
from envs.sandbox.probe import supported_level


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    b = Sandbox(SandboxConfig(timeout=5.0))
    yield b
    b.close_sync()


# ---- results -----------------------------------------------------------------------------


def test_result_fields_and_render(box: Sandbox) -> None:
    r = box.run_sync("import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert (r.stdout, r.stderr, r.exit_code, r.error, r.timed_out) == (
        "out\n",
        "err\n",
        0,
        None,
        False,
    )
    assert r.ok and r.isolation == box.isolation and 0 < r.duration < 5
    assert r.render() == "out\nerr"


def test_exception_becomes_error_observation(box: Sandbox) -> None:
    r = box.run_sync("x = 1\n1 / 0")
    assert r.exit_code == 1 and r.error == "ZeroDivisionError: division by zero"
    text = r.render()
    assert "Traceback" in text and text.count("ZeroDivisionError") == 1  # not repeated
    assert "_worker" not in text  # the sandbox's own frames are not shown


def test_syntax_error_and_exit_codes(box: Sandbox) -> None:
    assert "SyntaxError" in (box.run_sync("def f(:\n  pass").error or "")
    r = box.run_sync("import sys\nsys.exit(3)")
    assert r.exit_code == 3 and r.error == "exited with status 3"
    assert box.run_sync("raise SystemExit(0)").ok


def test_last_expression_is_echoed(box: Sandbox) -> None:
    assert box.run_sync("x = 6\nx * 7").stdout == "42\n"
    assert box.run_sync("None").stdout == ""


def test_no_output_render() -> None:
    r = ExecResult("", "", 0, None, False, "kernel", 0.01)
    assert r.render() == "(no output)"
    t = ExecResult("partial\n", "", -9, "timed out after 1 s", True, "kernel", 1.0)
    assert t.render() == "partial\nError: timed out after 1 s"
    assert len(ExecResult("x" * 500, "", 0, None, False, "k", 0).render(max_chars=100)) <= 100


def test_shell_language(box: Sandbox) -> None:
    r = box.run_sync("echo hi; pwd; exit 4", language="shell")
    assert r.stdout.startswith("hi\n") and r.exit_code == 4
    assert r.stdout.split()[1] != os.getcwd()


def test_code_size_limit_and_bad_arguments(box: Sandbox) -> None:
    r = box.run_sync("#" * (box.config.max_code_bytes + 1))
    assert not r.ok and "too long" in (r.error or "")
    with pytest.raises(ValueError):
        box.run_sync("echo", language="shell", session="s")
    with pytest.raises(ValueError):
        box.run_sync("x", language="cobol")


def test_fresh_workdir_per_call(box: Sandbox) -> None:
    a = box.run_sync("import os\nopen('f', 'w').write('x')\nprint(os.getcwd())")
    b = box.run_sync("import os\nprint(os.getcwd(), os.listdir('.'))")
    assert a.ok and b.ok
    assert "[]" in b.stdout
    # Nothing of the call is left on the host after it. Its dir is either its own (removed) or,
    # with per-call tmpfs work dirs, the mount point of its slot (kept, always empty: the files
    # were in the call's tmpfs). The worker replies when the program reports its status and
    # frees the dir when it reaps the process (_worker._on_status / _finish), which a loaded
    # machine delays, so give the reap the same grace as the survivors check (sandbox_helpers).
    path = a.stdout.strip()
    deadline = time.monotonic() + 5.0
    while os.path.exists(path) and os.listdir(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(path) or os.listdir(path) == []


# ---- sessions ------------------------------------------------------------------------------


def test_session_state_persists_and_is_private(box: Sandbox) -> None:
    assert box.run_sync("x = 20\nopen('note', 'w').write('kept')", session="a").ok
    assert box.run_sync("x = 1", session="b").ok
    r = box.run_sync("x += 22\nprint(x, open('note').read())", session="a")
    assert r.stdout == "42 kept\n"
    assert box.run_sync("print(x)", session="b").stdout == "1\n"
    assert "NameError" in (box.run_sync("print(x)").error or "")  # one-shot calls see nothing
    asyncio.run(box.close_session("a"))
    asyncio.run(box.close_session("b"))
    assert "NameError" in (box.run_sync("print(x)", session="a").error or "")
    asyncio.run(box.close_session("a"))


def test_session_forging_its_protocol_is_reset(box: Sandbox) -> None:
    r = box.run_sync("import os\nos.write(4, (2**31).to_bytes(4, 'big') + b'x' * 100)", session="f")
    assert not r.ok and "session was restarted" in (r.error or "")
    assert box.run_sync("print('fresh')", session="f").stdout == "fresh\n"
    asyncio.run(box.close_session("f"))


def test_session_exception_keeps_state(box: Sandbox) -> None:
    box.run_sync("y = 5", session="e")
    assert "KeyError" in (box.run_sync("{}['k']", session="e").error or "")
    assert box.run_sync("sys_exit_code = 0\ny", session="e").stdout == "5\n"
    asyncio.run(box.close_session("e"))


def test_parallel_calls_to_one_session_run_in_order(box: Sandbox) -> None:
    async def main() -> list[ExecResult]:
        cells = ["import time\nxs = []", "time.sleep(0.2)\nxs.append(1)", "xs.append(2)", "xs"]
        return list(await asyncio.gather(*(box.run(c, session="par") for c in cells)))

    rs = asyncio.run(main())
    assert all(r.ok for r in rs), rs
    assert rs[-1].stdout == "[1, 2]\n"
    asyncio.run(box.close_session("par"))


def test_session_timeout_resets_it(box: Sandbox) -> None:
    box.run_sync("z = 1", session="t")
    r = box.run_sync("while True: pass", session="t", timeout=HANG_TIMEOUT)
    assert r.timed_out and "session was restarted" in (r.error or "")
    assert "NameError" in (box.run_sync("z", session="t").error or "")
    asyncio.run(box.close_session("t"))
    assert_serves(box)


def test_idle_session_expires_and_says_so() -> None:
    sb = Sandbox(SandboxConfig(workers=1, session_idle_timeout=0.3))
    try:
        assert sb.run_sync("v = 1", session="idle").ok
        time.sleep(1.5)  # the worker checks idle sessions about once a second
        r = sb.run_sync("v", session="idle")
        assert "NameError" in (r.error or "") and "idle too long" in r.stderr
    finally:
        sb.close_sync()


def test_session_has_the_same_limits(box: Sandbox) -> None:
    r = box.run_sync("x = bytearray(10 * 2**30)", session="m")
    assert r.error and "MemoryError" in r.error
    assert box.run_sync("print('alive')", session="m").stdout == "alive\n"
    r = box.run_sync("import os\nfs = [open(os.devnull) for _ in range(10000)]", session="m")
    assert "Too many open files" in (r.error or "")
    asyncio.run(box.close_session("m"))


def test_session_background_process_does_not_survive_the_call(box: Sandbox) -> None:
    from sandbox_helpers import SET_TAG, survivors

    child = "    " + SET_TAG + "    os.setsid()\n    time.sleep(60)\n"  # only the child is tagged
    code = "import os, time\nif os.fork() == 0:\n" + child
    assert box.run_sync(code, session="bg").ok
    assert survivors() == []
    assert box.run_sync("print('ok')", session="bg").stdout == "ok\n"
    asyncio.run(box.close_session("bg"))


# ---- concurrency, async API, recycling, failures ----------------------------------------


def test_concurrent_calls_run_in_parallel() -> None:
    async def main() -> tuple[list[ExecResult], float]:
        async with Sandbox(SandboxConfig(timeout=5, max_concurrency=16)) as sb:
            t0 = time.monotonic()
            rs = await asyncio.gather(
                *(sb.run(f"import time\ntime.sleep(0.5)\nprint({i})") for i in range(16))
            )
            return rs, time.monotonic() - t0

    rs, elapsed = asyncio.run(main())
    assert [r.stdout for r in rs] == [f"{i}\n" for i in range(16)]
    assert elapsed < 3.5  # serially it would take 8 s


def test_bounded_concurrency() -> None:
    async def main() -> float:
        async with Sandbox(SandboxConfig(timeout=5, max_concurrency=2)) as sb:
            t0 = time.monotonic()
            await asyncio.gather(*(sb.run("import time\ntime.sleep(0.3)") for _ in range(4)))
            return time.monotonic() - t0

    assert asyncio.run(main()) >= 0.55  # two waves of two


def test_usable_from_several_event_loops_and_threads(box: Sandbox) -> None:
    async def one(i: int) -> str:
        return (await box.run(f"print({i})")).stdout

    assert asyncio.run(one(1)) == "1\n"
    assert asyncio.run(one(2)) == "2\n"  # a second, different loop
    assert box.run_sync("print(3)").stdout == "3\n"


def test_cancelled_call_is_killed(box: Sandbox) -> None:
    async def main() -> None:
        task = asyncio.ensure_future(box.run("import time\ntime.sleep(30)", timeout=60))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    t0 = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - t0 < 5
    assert_serves(box)


def test_two_sandboxes_do_not_share_uids_or_kill_each_other(box: Sandbox) -> None:
    """Uid blocks are claimed machine-wide: closing one sandbox (which kills what runs under
    its uids) cannot touch another's calls."""
    if os.geteuid() != 0:
        pytest.skip("uids are switched only when the trainer is root")
    other = Sandbox(SandboxConfig(workers=1))
    try:
        mine = int(box.run_sync("import os\nprint(os.getuid())").stdout)
        theirs = int(other.run_sync("import os\nprint(os.getuid())").stdout)
        base, per = box.config.uid_base, box.config.slots_per_worker
        assert (mine - base) // per != (theirs - base) // per  # different uid blocks

        async def long_call() -> ExecResult:
            return await box.run("import time\ntime.sleep(1)\nprint('survived')")

        async def main() -> ExecResult:
            task = asyncio.ensure_future(long_call())
            await asyncio.sleep(0.3)
            await other.close()
            return await task

        assert asyncio.run(main()).stdout == "survived\n"
    finally:
        other.close_sync()


def test_workers_are_recycled() -> None:
    sb = Sandbox(SandboxConfig(timeout=5, workers=1, recycle_after=4))
    try:
        results = [sb.run_sync(f"print({i})") for i in range(13)]
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(13)], results
        m = sb.metrics()
        assert m["recycled"] >= 3 and m["workers_started"] >= 4
        assert m.get("worker_deaths", 0) == 0
    finally:
        sb.close_sync()


def test_metrics(box: Sandbox) -> None:
    box.run_sync("1/0")
    m = box.metrics()
    assert m["calls"] >= 1 and m["errors"] >= 1 and m["latency_p50_ms"] > 0
    assert m["isolation_rank"] == level_rank(box.isolation) and "rlimits" in box.layers


def test_shared_default_sandbox() -> None:
    from envs.sandbox import configure_sandbox, get_sandbox, sandbox_metrics

    sb = configure_sandbox(SandboxConfig(workers=1, timeout=3))
    try:
        assert get_sandbox() is sb
        assert sandbox_metrics() == {}  # not started: nothing, and it does not start it
        assert get_sandbox().run_sync("print('shared')").stdout == "shared\n"
        m = sandbox_metrics()
        assert m["sandbox/calls"] == 1.0 and m["sandbox/isolation_degraded"] == 0.0
        assert m["sandbox/isolation_rank"] == level_rank(sb.isolation)
    finally:
        sb.close_sync()
    assert get_sandbox() is not sb  # a closed default is replaced on next use


def test_require_fails_closed() -> None:
    sb = Sandbox(SandboxConfig(isolation="process", require="kernel"))
    with pytest.raises(SandboxUnavailable, match="required"):
        sb.run_sync("print('must not run')")
    sb.close_sync()
    with pytest.raises(SandboxUnavailable):
        sb.run_sync("print(1)")  # closed


def test_require_met_runs(box: Sandbox) -> None:
    sb = Sandbox(SandboxConfig(require=box.isolation, isolation=box.isolation))
    try:
        assert sb.run_sync("print(1)").stdout == "1\n"
    finally:
        sb.close_sync()


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SandboxConfig(isolation="vm")
    with pytest.raises(ValueError):
        SandboxConfig(require="strong")


# ---- kernel layers -------------------------------------------------------------------------


def test_reported_level_matches_the_machine(box: Sandbox) -> None:
    """The default pool reaches what this machine supports (probed independently)."""
    assert box.isolation == expected_level(box.config.isolation), supported_level()
    if box.isolation == "kernel":
        assert {"landlock", "seccomp"} <= set(box.layers)
    if supported_level().layers["callns"]:
        assert "callns" in box.layers


def test_seccomp_denies_escape_syscalls(box: Sandbox) -> None:
    if level_rank(box.isolation) < level_rank("kernel"):
        assert supported_level().level == "process"
        pytest.skip(f"seccomp not active here ({'+'.join(box.layers)})")
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('unshare', libc.unshare(0x10000000))\n"  # CLONE_NEWUSER
        "print('mount', libc.mount(b'none', b'.', b'tmpfs', 0, None))\n"
        "print('bpf', libc.syscall(321 if os.uname().machine == 'x86_64' else 280, 0, 0, 0))\n"
        "print('io_uring', libc.syscall(425, 1, None))\n"
        "import socket\n"
        "a, b = socket.socketpair()\n"  # AF_UNIX pairs stay allowed (multiprocessing uses them)
        "a.send(b'ok'); print('pair', b.recv(2))\n"
        "import threading, subprocess\n"  # threads (clone3 -> ENOSYS -> clone) and fork+exec
        "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
        "print(subprocess.run(['echo', 'exec'], capture_output=True, text=True).stdout)\n"
    )
    r = box.run_sync(code)
    assert r.ok, r
    for name in ("unshare", "mount", "bpf", "io_uring"):
        assert f"{name} -1" in r.stdout
    assert "pair b'ok'" in r.stdout and "thread" in r.stdout and "exec" in r.stdout


def test_landlock_hides_proc_and_allows_the_stdlib(box: Sandbox) -> None:
    if level_rank(box.isolation) < level_rank("kernel"):
        assert supported_level().level == "process"
        pytest.skip("Landlock not active here")
    r = box.run_sync("import os\nos.listdir('/proc')")
    assert "PermissionError" in (r.error or "")
    r = box.run_sync("import sqlite3, email.mime.text, decimal\nprint('imports ok')")
    assert r.stdout == "imports ok\n", r


def test_seccomp_program_is_well_formed() -> None:
    if not _seccomp.supported():
        assert not supported_level().layers["seccomp"]
        pytest.skip("libseccomp is not installed here")
    prog = _seccomp.build_filter([1234, 5678])
    assert len(prog) % 8 == 0 and 0 < len(prog) // 8 < 4096


def test_namespace_mode_without_bwrap_uses_unshare() -> None:
    sb = Sandbox(SandboxConfig(isolation="namespace", bwrap=None, workers=1))
    try:
        r = sb.run_sync("import os\nprint(os.getpid())")
        if sb.isolation != "namespace":
            assert not supported_level().layers["unshare"], sb.layers
            pytest.skip(f"unshare(2) namespaces unavailable here ({'+'.join(sb.layers)})")
        assert r.ok and int(r.stdout) < 100  # pid in the worker's fresh pid namespace
        assert {"pidns", "netns"} <= set(sb.layers)
    finally:
        sb.close_sync()


def test_start_failure_is_reported() -> None:
    sb = Sandbox(SandboxConfig(python="/nonexistent/python"))
    with pytest.raises(SandboxUnavailable, match="could start"):
        sb.run_sync("print(1)")
    sb.close_sync()
