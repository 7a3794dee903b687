"""Issue 24's call path: children forked and isolated ahead of their calls ("spares"), the
seccomp filter installed once in the fork server and inherited, forks answered without the
worker waiting. Each is checked for what it must not weaken."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest
from sandbox_helpers import SET_TAG, assert_serves, need_level, survivors

from envs.sandbox import Sandbox, SandboxConfig, _seccomp


@pytest.fixture(scope="module", params=[2, 0], ids=["spares", "no-spares"])
def box(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    sb = Sandbox(SandboxConfig(workers=1, timeout=10.0, prefork=request.param))
    sb.run_sync("pass")
    yield sb
    sb.close_sync()


def test_each_call_gets_a_fresh_interpreter_and_dir(box: Sandbox) -> None:
    """A spare was forked before its call and waited: it must still hold nothing of the
    calls before it (state, files, process)."""
    code = (
        "import builtins, os, sys\n"
        "print(hasattr(builtins, 'left_by_a_call'), os.listdir('.'), os.getpid())\n"
        "builtins.left_by_a_call = 1\n"
        "sys.modules['os'].planted = 1\n"
        "open('file_of_a_call', 'w').write('x')\n"
    )
    seen = [box.run_sync(code) for _ in range(5)]
    assert all(r.ok for r in seen), seen
    assert all(r.stdout.startswith("False [] ") for r in seen), [r.stdout for r in seen]
    assert len({r.stdout.split()[2] for r in seen}) == 5  # five processes


def test_cpu_limit_holds_for_a_child_forked_before_its_call() -> None:
    """Children are forked before their call's limits are known and set the call's CPU
    seconds when it arrives (``_child.await_call``)."""
    sb = Sandbox(SandboxConfig(workers=1, cpu_seconds=1, timeout=20.0))
    try:
        sb.run_sync("pass")
        time.sleep(0.5)  # its spares are ready and waiting
        t0 = time.monotonic()
        r = sb.run_sync("while True:\n    pass")
        assert "CPU time limit exceeded" in (r.error or ""), r
        assert not r.timed_out and time.monotonic() - t0 < 10
    finally:
        sb.close_sync()


def test_timeouts_while_children_are_still_being_made(box: Sandbox) -> None:
    """Calls whose timeout may expire before their child has its pid or its own process group:
    every one ends timed out, none survives, the pool serves on."""

    async def main() -> list[object]:
        code = SET_TAG + "import time\ntime.sleep(30)"
        return list(await asyncio.gather(*(box.run(code, timeout=0.02) for _ in range(12))))

    results = asyncio.run(main())
    assert all(r.timed_out for r in results), results  # type: ignore[attr-defined]
    assert survivors() == []
    assert box.metrics().get("worker_deaths", 0) == 0 and box.metrics().get("lost", 0) == 0
    assert_serves(box)


def test_inherited_filter_still_denies_namespaces_and_mounts(box: Sandbox) -> None:
    """The fork server's filter lets a child make its mount namespace and mount its work dir
    before it drops its capabilities (``_seccomp.build_filter(for_setup=True)``); the code that
    runs afterwards must get neither, nor any other namespace."""
    need_level(box, "kernel", "the seccomp filter")
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('mode', libc.prctl(21, 0, 0, 0, 0))\n"  # PR_GET_SECCOMP: 2 = filter
        "for name, flags in (('ns', 0x20000), ('ipc', 0x08000000), ('user', 0x10000000),\n"
        "                    ('nsuser', 0x10020000), ('net', 0x40000000)):\n"
        "    print('unshare', name, libc.unshare(flags), ctypes.get_errno())\n"
        "for flags in (0, 6, 4096):\n"  # 6: nosuid|nodev, the work dir's; 4096: bind
        "    print('mount', flags, libc.mount(b'none', b'.', b'tmpfs', flags, None))\n"
    )
    r = box.run_sync(code)
    assert r.ok, r
    assert "mode 2" in r.stdout
    lines = r.stdout.splitlines()
    assert [ln.split()[2] for ln in lines if ln.startswith("unshare")] == ["-1"] * 5
    assert [ln.split()[2] for ln in lines if ln.startswith("mount")] == ["-1"] * 3


def test_setup_filter_is_well_formed() -> None:
    if not _seccomp.supported():
        pytest.skip("libseccomp is not installed here")
    full = _seccomp.build_filter([1234])
    setup = _seccomp.build_filter([1234], for_setup=True)
    assert len(setup) % 8 == 0 and 0 < len(setup) // 8 < 4096 and setup != full


def test_prefork_is_validated() -> None:
    with pytest.raises(ValueError):
        SandboxConfig(prefork=-1)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def _spares(sb: Sandbox) -> list[int]:
    """The idle worker's spares: the children of its fork server (its other child, the
    deleter, has none)."""
    return [p for c in _children(sb._workers[0].proc.pid) for p in _children(c)]


def _wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cond()


def test_spares_that_keep_dying_are_not_forked_in_a_loop() -> None:
    """Spares killed while idle are replaced, but not endlessly: after a few deaths the worker
    forks each call's child when it comes, and calls are unaffected."""
    sb = Sandbox(SandboxConfig(workers=1, prefork=2))
    try:
        sb.run_sync("pass")
        assert _wait_for(lambda: len(_spares(sb)) == 2)
        killed = 0
        for _ in range(4):
            for pid in _spares(sb):
                os.kill(pid, signal.SIGKILL)
                killed += 1
            time.sleep(0.3)
        assert killed >= 3
        assert _wait_for(lambda: _spares(sb) == [])  # it stopped forking ahead
        time.sleep(0.5)
        assert _spares(sb) == []
        assert_serves(sb)  # a call forks its own child, and the pool forks ahead again
        assert _wait_for(lambda: len(_spares(sb)) == 2)
        assert sb.metrics().get("worker_deaths", 0) == 0
    finally:
        sb.close_sync()


def test_closing_leaves_no_work_dirs() -> None:
    """Each slot keeps its mount point while the worker lives; the worker removes them (and its
    base dir) when it exits, so nothing is left even if the trainer's own clean-up thread dies
    with its process."""
    sb = Sandbox(SandboxConfig(workers=2, prefork=2))
    try:

        async def burst() -> list[object]:
            return list(
                await asyncio.gather(*(sb.run("import time; time.sleep(0.2)") for _ in range(6)))
            )

        asyncio.run(burst())
        bases = [w.base for w in sb._workers if w.base]
        assert bases and all(os.path.isdir(b) for b in bases)
    finally:
        sb.close_sync()
    assert [b for b in bases if os.path.exists(b)] == []
