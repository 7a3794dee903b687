"""Attacks between calls (issue 13): one trajectory's call must not read another's files or
output, share System V IPC with it, escape its quotas, or break cleanup for the calls beside it.

Every pool here has ONE worker, so attacker and victim are children of the same worker (the
case the issue found leaking). Each test runs at every level: process, the default (kernel)
and namespace (where this machine supports it; ``conftest.sb``-style failure when a pool
falls short of what the machine supports).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from sandbox_helpers import assert_serves, expected_level

from envs.sandbox import ExecResult, Sandbox, SandboxConfig, level_rank
from envs.sandbox import sandbox as sandbox_mod
from envs.sandbox.probe import supported_level

BIG_SESSION_FILES = 200_000
"""Files of the "huge session" test. The issue's attack used 500k (860k on the worker that
stalled); 200k keeps this test at a few seconds on a 2-core CI machine and proves the same
thing: closing it costs the worker one kill and one rmdir (the kernel frees the tmpfs in the
dying session's own exit), so a concurrent call is not delayed."""
DEEP = 2_000
"""Depth of the nested-directory attack (the issue's broke cleanup at ~1,100)."""


def _pool(level: str, **kw: object) -> Sandbox:
    cfg = SandboxConfig(isolation=level, workers=1, timeout=20.0, **kw)  # type: ignore[arg-type]
    box = Sandbox(cfg)
    box.run_sync("pass")
    want = expected_level(level)
    if level_rank(box.isolation) < level_rank(want):
        box.close_sync()
        pytest.fail(f"pool asked for {level!r} reached {box.isolation!r}; machine: {want!r}")
    if level_rank(box.isolation) < level_rank(level):
        box.close_sync()
        pytest.skip(f"this machine cannot provide {level!r}: {supported_level()}")
    return box


@pytest.fixture(scope="module", params=["process", "kernel", "namespace"])
def one(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """A one-worker pool at each level (tmpfs work dirs where the machine allows)."""
    box = _pool(request.param)
    yield box
    box.close_sync()


def _concurrently(box: Sandbox, first: str, second: str, gap: float = 0.6) -> list[ExecResult]:
    """Start ``first``; ``gap`` seconds later (while it is still running) start ``second``."""

    async def main() -> list[ExecResult]:
        a = asyncio.ensure_future(box.run(first))
        await asyncio.sleep(gap)
        b = asyncio.ensure_future(box.run(second))
        return list(await asyncio.gather(a, b))

    return asyncio.run(main())


# ---- reading another call's files and output --------------------------------------------

# The attacker searches everything a forked child could inherit: the interpreter's objects and
# frames, its whole memory (ctypes over /proc/self/maps where readable), the work dirs next to
# its own, and other processes' cwd/fds. It never contains the victim's token: it looks for
# a marker built at run time and prints what follows each hit.
ATTACK = r"""
import ctypes, gc, os, sys
M = bytes([76, 69, 65, 75, 45]) + b"tok"  # the marker, assembled at run time
hits = set()
def look(b):
    i = b.find(M)
    while i >= 0:
        hits.add(b[i + len(M): i + len(M) + 32].split(b"\n")[0][:32])
        i = b.find(M, i + 1)
for o in gc.get_objects():
    try:
        if isinstance(o, (bytes, bytearray)): look(bytes(o))
        elif isinstance(o, str): look(o.encode("utf-8", "replace"))
        elif isinstance(o, dict): look(repr(o).encode("utf-8", "replace"))
    except Exception: pass
f = sys._getframe()
while f is not None:
    look(repr(f.f_locals).encode("utf-8", "replace")); f = f.f_back
try:
    for line in open("/proc/self/maps"):
        parts = line.split()
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if "r" in parts[1] and hi - lo < 1 << 30 and "[vvar" not in line:
            try: look(ctypes.string_at(lo, hi - lo))
            except Exception: pass
    print("scanned memory")
except OSError as e:
    print("maps denied", type(e).__name__)
cands = [os.path.dirname(os.getcwd())] + [p for p in VICTIM_DIRS]
for d in cands:
    try:
        for n in os.listdir(d):
            for sub in (os.path.join(d, n), os.path.join(d, n, "secret.txt")):
                try: look(open(sub, "rb").read())
                except OSError: pass
        print("listed", d)
    except OSError: pass
    try: look(open(os.path.join(d, "secret.txt"), "rb").read())
    except OSError: pass
try:
    for pid in os.listdir("/proc"):
        for p in ("cwd/secret.txt", "fd/1", "cmdline", "environ"):
            try:  # non-blocking: fd/1 of a process writing to a pipe opens that pipe
                fd = os.open(f"/proc/{pid}/{p}", os.O_RDONLY | os.O_NONBLOCK)
                try: look(os.read(fd, 1 << 20))
                finally: os.close(fd)
            except OSError: pass
except OSError: pass
print("HITS", sorted(h.decode("ascii", "replace") for h in hits))
"""


def _victim(token: str) -> str:
    # Its program text, its stdout so far, a file and a variable all hold the token.
    return (
        f"# LEAK-tok{token} in the program text\n"
        "import time, sys\n"
        f"open('secret.txt', 'w').write('LEAK-tok{token}')\n"
        f"print('LEAK-tok{token} printed'); sys.stdout.flush()\n"
        f"kept = 'LEAK-tok{token} in a variable'\n"
        "time.sleep(2.5)\n"
        "print('victim done')\n"
    )


def _victim_dirs(box: Sandbox) -> list[str]:
    """What the trainer (root) sees as the in-flight calls' work dirs: handed to the attacker
    so it need not guess paths."""
    dirs = []
    for w in box._workers:
        if w.base and os.path.isdir(w.base):
            dirs += [os.path.join(w.base, n) for n in os.listdir(w.base) if n != ".trash"]
    return dirs


def test_concurrent_call_cannot_read_another_calls_files_or_output(one: Sandbox) -> None:
    _attack_a_concurrent_call(one)


@pytest.mark.parametrize("level", ["process", "kernel"])
def test_concurrent_call_isolation_without_per_call_tmpfs(level: str) -> None:
    """Work dirs on disk (no per-call mount namespace): uids (root) and the per-call Landlock
    ruleset must keep the victim's files out of reach on their own."""
    if level == "process" and os.geteuid() != 0:
        pytest.skip("process level without root or per-call namespaces: one uid, no boundary")
    box = _pool(level, tmpfs_workdirs=False)
    try:
        assert "callns" not in box.layers
        _attack_a_concurrent_call(box)
    finally:
        box.close_sync()


def _attack_a_concurrent_call(one: Sandbox) -> None:
    token = secrets.token_hex(8)

    async def main() -> list[ExecResult]:
        victim = asyncio.ensure_future(one.run(_victim(token)))
        await asyncio.sleep(1.0)  # the victim has printed and written its file by now
        attack = ATTACK.replace("VICTIM_DIRS", repr(_victim_dirs(one)))
        return [await one.run(attack), await victim]

    attacker, victim = asyncio.run(main())
    assert victim.ok and "victim done" in victim.stdout, victim
    assert attacker.ok, attacker
    assert "HITS" in attacker.stdout
    assert token not in attacker.stdout + attacker.stderr, attacker.stdout
    if one.isolation == "process":  # no Landlock: the memory scan itself must have run
        assert "scanned memory" in attacker.stdout, attacker.stdout


def test_session_cannot_read_another_sessions_files_or_variables(one: Sandbox) -> None:
    token = secrets.token_hex(8)
    assert one.run_sync(_victim(token).replace("time.sleep(2.5)", ""), session="victim").ok
    attack = ATTACK.replace("VICTIM_DIRS", repr(_victim_dirs(one)))
    r = one.run_sync(attack, session="attacker")
    assert r.ok and "HITS" in r.stdout, r
    assert token not in r.stdout + r.stderr
    for name in ("victim", "attacker"):
        asyncio.run(one.close_session(name))


# ---- System V IPC -----------------------------------------------------------------------

SHM = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
made = 0
for i in range(6):  # 6 x 64 MiB against memory_mb=128
    sid = libc.shmget(KEY + i, 64 << 20, 0o1666)
    if sid < 0:
        print("shmget denied", ctypes.get_errno()); break
    addr = libc.shmat(sid, None, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        print("shmat denied", ctypes.get_errno()); break
    ctypes.memset(addr, 1, 64 << 20)
    libc.shmdt(ctypes.c_void_p(addr))
    made += 1
print("made", made)
"""
PEEK = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print("found", libc.shmget(KEY, 0, 0) >= 0, ctypes.get_errno())
"""


def test_sysv_shared_memory_is_denied_or_private_to_the_call(one: Sandbox) -> None:
    key = 0x7A000000 + secrets.randbelow(1 << 20)
    holder = SHM.replace("KEY", str(key)) + "import time\ntime.sleep(2)\n"
    made, peek = _concurrently(one, holder, PEEK.replace("KEY", str(key)), gap=1.2)
    assert made.ok and peek.ok, (made, peek)
    n = int(made.stdout.split("made")[-1])
    if level_rank(one.isolation) >= level_rank("kernel"):
        assert n == 0 and "shmget denied 1" in made.stdout  # seccomp: EPERM
    assert n * 64 <= one.config.memory_mb, made.stdout  # never more than the memory limit
    assert "found False" in peek.stdout  # the concurrent call cannot see it
    with open("/proc/sysvipc/shm") as f:  # nothing outlived the call on the host
        assert f"{key:10d}".strip() not in {line.split()[0] for line in f.readlines()[1:]}


# ---- quotas and cleanup -------------------------------------------------------------------


def test_file_and_byte_quotas_per_call_and_per_session() -> None:
    if not supported_level().layers["callns"]:
        pytest.skip("no per-call tmpfs here (needs root or user namespaces): no quotas")
    box = _pool("kernel", call_files=200, call_disk_mb=4, session_files=300, session_disk_mb=6)
    try:
        assert "callns" in box.layers
        many = "import os\nfor i in range(N):\n    open(str(i), 'w').close()\nprint('made', N)"
        r = box.run_sync(many.replace("N", "1000"))
        assert not r.ok and "No space left on device" in (r.error or ""), r
        big = "open('big', 'wb').write(b'x' * (M << 20))\nprint('wrote')"
        r = box.run_sync(big.replace("M", "5"))
        assert not r.ok and "No space left on device" in (r.error or ""), r
        assert box.run_sync(many.replace("N", "150")).ok  # under the quota: fine
        # A session's quota covers its whole life, across cells.
        assert box.run_sync(many.replace("N", "250").replace("str(i)", "'a%d' % i"), session="q").ok
        r = box.run_sync(many.replace("N", "250").replace("str(i)", "'b%d' % i"), session="q")
        assert "No space left on device" in (r.error or ""), r
        asyncio.run(box.close_session("q"))
        assert_serves(box)
    finally:
        box.close_sync()


DEEP_TREE = f"""
import os
for _ in range({DEEP}):
    os.mkdir("d")
    os.chdir("d")
    open("f", "w").write("x")
print("depth", {DEEP})
"""


@pytest.mark.parametrize("tmpfs", [True, False], ids=["tmpfs", "disk"])
def test_deep_tree_does_not_break_cleanup_or_a_concurrent_call(tmpfs: bool) -> None:
    box = _pool("kernel", tmpfs_workdirs=tmpfs, call_files=3 * DEEP)
    try:
        deep, innocent = _concurrently(
            box, DEEP_TREE, "import time\ntime.sleep(1)\nprint('innocent')", gap=0.05
        )
        assert deep.ok and f"depth {DEEP}" in deep.stdout, deep
        assert innocent.ok and innocent.stdout == "innocent\n", innocent
        if tmpfs:  # (on disk the session would repeat the call's case at ~4 ms per rmdir here)
            r = box.run_sync(DEEP_TREE, session="deep")
            assert r.ok, r
            asyncio.run(box.close_session("deep"))
        assert_serves(box)
        base = box._workers[0].base
        deadline = time.monotonic() + 60  # the deleter works in the background
        while time.monotonic() < deadline and _leftovers(base):
            time.sleep(0.2)
        assert _leftovers(base) == [], "work dirs left behind"
        m = box.metrics()
        assert m.get("worker_deaths", 0) == 0 and m.get("lost", 0) == 0, m
    finally:
        box.close_sync()


def _leftovers(base: str) -> list[str]:
    """What is left of finished calls: files or non-empty dirs beside the work dirs, anything in
    the trash. Empty dirs are expected: the work dirs of children forked ahead of their calls
    (``SandboxConfig.prefork``) and, with per-call tmpfs, each slot's mount point."""
    out = []
    for root, dirs, files in os.walk(base):
        out += [os.path.join(root, f) for f in files]
        out += [os.path.join(root, d) for d in dirs if d != ".trash" and os.listdir(root + "/" + d)]
        break
    trash = os.path.join(base, ".trash")
    return out + (os.listdir(trash) if os.path.isdir(trash) else [])


@pytest.mark.parametrize("tmpfs", [True, False], ids=["tmpfs", "disk"])
def test_closing_a_huge_session_does_not_stall_a_concurrent_call(tmpfs: bool) -> None:
    n = BIG_SESSION_FILES if tmpfs else BIG_SESSION_FILES // 10  # on disk: slower to create
    box = _pool("kernel", tmpfs_workdirs=tmpfs, session_files=n + 100, session_disk_mb=1024)
    try:
        make = f"import os\nfor i in range({n}):\n    os.close(os.open(str(i), os.O_CREAT | os.O_WRONLY))"
        r = box.run_sync(make + "\nprint(len(os.listdir('.')))", session="big", timeout=120)
        assert r.ok and r.stdout == f"{n}\n", r
        result: dict[str, object] = {}

        def innocent() -> None:
            t0 = time.monotonic()
            result["r"] = box.run_sync("import time\ntime.sleep(1)\nprint('innocent')")
            result["s"] = time.monotonic() - t0

        t = threading.Thread(target=innocent)
        t.start()
        time.sleep(0.2)  # the innocent call is running
        t0 = time.monotonic()
        asyncio.run(box.close_session("big"))
        closed_in = time.monotonic() - t0
        t.join(30)
        r = result["r"]
        assert isinstance(r, ExecResult) and r.ok and r.stdout == "innocent\n", r
        assert closed_in < 1.0, f"closing took {closed_in:.2f} s"
        assert float(result["s"]) < 3.0, f"the concurrent 1 s call took {result['s']:.2f} s"
        assert box.metrics().get("worker_deaths", 0) == 0
        assert_serves(box)
    finally:
        box.close_sync()


# ---- namespace level from a checkout under /tmp ----------------------------------------


def test_namespace_level_from_a_checkout_under_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout (worker script and venv) below /tmp, which bubblewrap replaces with a private
    tmpfs: the namespace level must still be reached, with bubblewrap where it works."""
    support = supported_level()
    root = f"/tmp/turnrl-checkout-{os.getpid()}"
    src = os.path.dirname(sandbox_mod.__file__)
    try:
        shutil.copytree(src, os.path.join(root, "envs", "sandbox"))
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", os.path.join(root, "venv")],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        monkeypatch.setattr(sandbox_mod, "WORKER_PATH", os.path.join(root, "envs", "sandbox",
                                                                     "_worker.py"))  # fmt: skip
        box = Sandbox(SandboxConfig(isolation="namespace", workers=1,
                                    python=os.path.join(root, "venv", "bin", "python")))  # fmt: skip
        try:
            r = box.run_sync("import os, sys\nprint(sys.prefix)")
            assert r.ok and r.stdout.strip() == os.path.join(root, "venv"), r
            assert box.isolation == expected_level("namespace"), (box.layers, support)
            if support.layers["bwrap"]:
                assert box._mode == "bwrap", box._mode
            assert box.metrics()["isolation_degraded"] == float(box.isolation != "namespace")
        finally:
            box.close_sync()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---- degraded levels, observations, rlimits ------------------------------------------------


def test_degraded_level_warns_once_and_shows_in_metrics(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = Sandbox._spawn

    async def no_namespaces(self: Sandbox, mode: str):  # type: ignore[no-untyped-def]
        if mode in ("bwrap", "unshare"):
            raise OSError(1, f"{mode} refused (test)")
        return await real(self, mode)

    monkeypatch.setattr(Sandbox, "_spawn", no_namespaces)
    monkeypatch.setattr(sandbox_mod, "_WARNED", set())
    with caplog.at_level("WARNING", logger="envs.sandbox.sandbox"):
        for _ in range(2):
            box = Sandbox(SandboxConfig(isolation="namespace", workers=1))
            try:
                assert box.run_sync("print(1)").ok
                m = box.metrics()
                assert m["isolation_degraded"] == 1.0
                assert m["isolation_requested_rank"] == 2.0
                assert m["isolation_rank"] == level_rank(expected_level("kernel"))
            finally:
                box.close_sync()
    loud = [r for r in caplog.records if "ISOLATION DEGRADED" in r.getMessage()]
    assert len(loud) == 1, [r.getMessage() for r in caplog.records]
    assert "refused (test)" in loud[0].getMessage()


def test_observation_has_no_nul_bytes_or_ansi_escapes(one: Sandbox) -> None:
    code = (
        "import sys\n"
        "print('a\\x00b \\x1b[31mred\\x1b[0m \\x1b]0;title\\x07ok\\r')\n"
        "_ = sys.stderr.write('\\x1b[2J\\x00err\\n')\n"
    )
    r = one.run_sync(code)
    assert r.stdout == "ab red ok\n" and r.stderr == "err\n", r
    text = r.render()
    assert "\x00" not in text and "\x1b" not in text


def test_python_tool_observation_is_clean() -> None:
    from envs.sandbox import configure_sandbox
    from envs.tools.python import execute

    box = configure_sandbox(SandboxConfig(workers=1))
    try:
        out = asyncio.run(execute("print('\\x1b[1mbold\\x1b[0m\\x00!')"))
        assert out == "bold!"
    finally:
        box.close_sync()


def test_stack_limit_cannot_be_raised(one: Sandbox) -> None:
    code = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_STACK)\n"
        "print(soft == hard)\n"
        "try:\n"
        "    resource.setrlimit(resource.RLIMIT_STACK, (resource.RLIM_INFINITY,) * 2)\n"
        "    print('raised')\n"
        "except (ValueError, OSError):\n"
        "    print('refused')\n"
    )
    r = one.run_sync(code)
    assert r.stdout == "True\nrefused\n", r


def test_foreign_abi_syscalls_kill_the_call(one: Sandbox) -> None:
    if level_rank(one.isolation) < level_rank("kernel") or os.uname().machine != "x86_64":
        pytest.skip("the architecture guard is part of the seccomp filter (x86_64 here)")
    r = one.run_sync("import ctypes\nprint(ctypes.CDLL(None).syscall(0x40000000 | 39))")
    assert r.exit_code == -31 and r.stdout == "", r  # SIGSYS before any x32 getpid returns
    assert_serves(one)


def test_reply_comes_from_the_status_report_not_the_reap(one: Sandbox) -> None:
    """The worker answers when the program reports its status (fd 4), before the process has
    finished exiting; a program that forges the report only ends its own call early."""
    t0 = time.monotonic()
    r = one.run_sync("import os, time\nos.write(4, bytes([7]))\ntime.sleep(5)\nprint('late')")
    assert r.exit_code == 7 and "late" not in r.stdout, r
    assert time.monotonic() - t0 < 4
    assert one.run_sync("import sys\nsys.exit(3)").exit_code == 3
    assert_serves(one)
