"""Attack suite: each attack is stopped or contained, and the pool serves the next call.

Runs against the default sandbox, the process-level one and the strong (namespace) one. An
attack that only a kernel layer can stop is skipped, with the reason, only when the pool was
not asked for that layer or the machine cannot provide it (``envs.sandbox.probe``); a pool that
fell short of what the machine supports fails. Attacks between calls (reading each other's
files and output, System V IPC, huge and deep trees) are in ``test_sandbox_cross_call.py``.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from sandbox_helpers import (
    FAKE_SECRET,
    HANG_TIMEOUT,
    SET_TAG,
    assert_serves,
    is_root,
    need_level,
    survivors,
)

from envs.sandbox import Sandbox, level_rank


def _kernel(sb: Sandbox) -> bool:
    return level_rank(sb.isolation) >= level_rank("kernel")


def _need_kernel(sb: Sandbox, why: str) -> None:
    need_level(sb, "kernel", why)


# ---- time ----------------------------------------------------------------------------


def test_infinite_loop_is_killed(sb: Sandbox) -> None:
    t0 = time.monotonic()
    r = sb.run_sync("while True:\n    pass", timeout=HANG_TIMEOUT)
    # A busy loop uses CPU as fast as wall time passes, so the wall-clock timeout and the CPU
    # rlimit (= the timeout by default) race: either one stopping it is the expected outcome.
    assert not r.ok
    assert r.timed_out or "CPU time limit exceeded" in (r.error or ""), r
    assert time.monotonic() - t0 < HANG_TIMEOUT + 3
    assert_serves(sb)


def test_sleeping_loop_is_killed(sb: Sandbox) -> None:
    r = sb.run_sync("import time\nwhile True:\n    time.sleep(0.05)", timeout=HANG_TIMEOUT)
    assert r.timed_out and "timed out" in r.render()
    assert_serves(sb)


# ---- memory, disk, descriptors, processes ------------------------------------------------


def test_10gib_allocation_fails(sb: Sandbox) -> None:
    r = sb.run_sync("x = bytearray(10 * 2**30)\nprint('allocated')")
    assert "allocated" not in r.stdout
    assert r.error and "MemoryError" in r.error
    assert_serves(sb)


def test_fork_bomb_is_bounded_and_cleaned_up(sb: Sandbox) -> None:
    code = SET_TAG + (
        "import os\n"
        "n = 0\n"
        "for _ in range(10000):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            while True: pass\n"  # every child burns CPU until killed
        "        n += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print('forked', n)\n"
        "while True: pass\n"
    )
    r = sb.run_sync(code, timeout=HANG_TIMEOUT)
    assert r.timed_out
    forked = int(r.stdout.split()[-1]) if r.stdout.startswith("forked") else 0
    assert forked <= sb.config.processes
    assert survivors() == []
    assert_serves(sb)


def test_huge_file_in_workdir_is_capped(sb: Sandbox) -> None:
    code = (
        "with open('big.bin', 'wb') as f:\n"
        "    for _ in range(1024):\n"
        "        f.write(b'0' * 2**20)\n"
        "print('wrote 1 GiB')"
    )
    r = sb.run_sync(code)
    assert "wrote" not in r.stdout
    assert r.error and ("File too large" in r.error or "file size" in r.error)
    assert_serves(sb)


def test_files_outside_workdir_cannot_be_written(sb: Sandbox, tmp_path: os.PathLike) -> None:
    private = os.path.join(str(tmp_path), "escape.txt")  # a directory of the trainer's user
    shared = f"/tmp/turnrl-escape-{os.getpid()}.txt"  # world-writable /tmp
    targets = [private] if (is_root() or _kernel(sb)) else []
    if _kernel(sb):
        targets.append(shared)
    if not targets:
        pytest.skip("same uid and no Landlock: process level cannot stop writes")
    for path in targets:
        r = sb.run_sync(f"open({path!r}, 'w').write('x' * 10**6)")
        # denied, or (namespace level) the path does not exist in the sandbox's private /tmp
        error = r.error or ""
        assert not r.ok and ("PermissionError" in error or "FileNotFound" in error)
        assert not os.path.exists(path)
    assert_serves(sb)


def test_cannot_write_next_to_its_workdir(sb: Sandbox) -> None:
    """The parent of all work directories (other calls' and sessions' live there)."""
    if not (is_root() or _kernel(sb)):
        pytest.skip("same uid and no Landlock: process level cannot separate calls")
    code = "import os\nopen(os.path.join(os.path.dirname(os.getcwd()), 'planted'), 'w')"
    r = sb.run_sync(code)
    assert r.error and "PermissionError" in r.error
    assert_serves(sb)


def test_huge_file_outside_workdir_is_refused(sb: Sandbox) -> None:
    _need_kernel(sb, "refusing writes to world-writable /tmp")
    path = f"/tmp/turnrl-huge-{os.getpid()}.bin"
    r = sb.run_sync(f"f = open({path!r}, 'wb')\nf.write(b'0' * 2**30)")
    assert not r.ok and not os.path.exists(path)
    assert_serves(sb)


def test_ten_thousand_open_files(sb: Sandbox) -> None:
    r = sb.run_sync("import os\nfs = [open(os.devnull) for _ in range(10000)]\nprint(len(fs))")
    assert r.error and "Too many open files" in r.error
    assert_serves(sb)


# ---- secrets -------------------------------------------------------------------------


def test_trainer_environment_does_not_leak(sb: Sandbox) -> None:
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        f"for pid in (os.getppid(), {os.getpid()}, 1):\n"
        "    try:\n"
        "        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as e:\n"
        "        print('denied', pid, type(e).__name__)\n"
    )
    r = sb.run_sync(code)
    assert FAKE_SECRET not in r.stdout + r.stderr
    assert "TURNRL_FAKE_SECRET" not in r.stdout
    if is_root() or _kernel(sb):
        assert f"denied {os.getpid()}" in r.stdout
    assert_serves(sb)


def test_etc_shadow_is_unreadable(sb: Sandbox) -> None:
    if not os.path.exists("/etc/shadow"):
        pytest.skip("no /etc/shadow on this machine")
    r = sb.run_sync("print(open('/etc/shadow').read()[:20])")
    assert not r.ok and "Permission" in (r.error or "")
    assert_serves(sb)


def test_home_and_private_files_are_unreadable(sb: Sandbox, tmp_path: os.PathLike) -> None:
    if not (is_root() or _kernel(sb)):
        pytest.skip("same uid and no Landlock: process level cannot hide the user's files")
    secret = os.path.join(str(tmp_path), "id_rsa")
    with open(secret, "w") as f:
        f.write(FAKE_SECRET)
    os.chmod(secret, 0o600)
    home = os.path.expanduser("~")
    r = sb.run_sync(f"print(open({secret!r}).read())")
    assert FAKE_SECRET not in r.stdout and not r.ok
    r = sb.run_sync(f"import os\nprint(os.listdir({home!r}))")
    if r.ok:  # namespace level or the worker's mount view (a root trainer with Python below
        # /root): the home is an empty tmpfs plus the Python installation
        assert sb.isolation == "namespace" or "mountview" in sb.layers
        assert set(eval(r.stdout)) <= {".pyenv", ".local", ".venv", ".cache"}
    assert_serves(sb)


# ---- network -------------------------------------------------------------------------


def test_tcp_and_udp_to_localhost_are_blocked(sb: Sandbox) -> None:
    _need_kernel(sb, "blocking sockets")
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(4)
    tcp.settimeout(0.5)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.5)
    ports = (tcp.getsockname()[1], udp.getsockname()[1])
    code = (
        "import socket\n"
        f"for kind, port in ((socket.SOCK_STREAM, {ports[0]}), (socket.SOCK_DGRAM, {ports[1]})):\n"
        "    try:\n"
        "        s = socket.socket(socket.AF_INET, kind)\n"
        "        s.connect(('127.0.0.1', port))\n"
        "        s.send(b'exfiltrated')\n"
        "        print('connected', kind)\n"
        "    except OSError as e:\n"
        "        print('blocked', kind, e.errno)\n"
    )
    try:
        r = sb.run_sync(code)
        assert "connected" not in r.stdout and r.stdout.count("blocked") == 2
        with pytest.raises(OSError):
            tcp.accept()
        with pytest.raises(OSError):
            udp.recv(64)
    finally:
        tcp.close()
        udp.close()
    assert_serves(sb)


def test_unix_socket_to_host_service_is_blocked(sb: Sandbox, tmp_path: os.PathLike) -> None:
    _need_kernel(sb, "blocking socket creation")
    r = sb.run_sync("import socket\nsocket.socket(socket.AF_UNIX).connect('/run/x.sock')")
    assert r.error and "PermissionError" in r.error
    assert_serves(sb)


# ---- processes that try to outlive the call or reach the trainer --------------------


def test_setsid_child_does_not_outlive_its_call(sb: Sandbox) -> None:
    code = SET_TAG + (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"  # the daemonised grandchild
        "    os._exit(0)\n"
        "if os.fork() == 0:\n"
        "    time.sleep(60)\n"  # a plain background child in the call's group
        "print('parent done')\n"
    )
    r = sb.run_sync(code)
    assert r.ok and "parent done" in r.stdout
    assert survivors() == []
    assert_serves(sb)


def test_setsid_child_is_killed_on_timeout(sb: Sandbox) -> None:
    code = SET_TAG + (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n"
    )
    r = sb.run_sync(code, timeout=HANG_TIMEOUT)
    assert r.timed_out
    assert survivors() == []
    assert_serves(sb)


def test_cannot_signal_or_ptrace_worker_or_trainer(sb: Sandbox) -> None:
    if not (is_root() or _kernel(sb)):
        pytest.skip("same uid and no seccomp/Landlock: process level cannot stop signals")
    deaths = sb.metrics().get("worker_deaths", 0)
    code = (
        "import ctypes, os, signal\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"for pid in (os.getppid(), {os.getpid()}):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL if pid == os.getppid() else 0)\n"
        "        print('signalled', pid)\n"
        "    except OSError as e:\n"
        "        print('kill denied', pid)\n"
        "    rc = libc.ptrace(16, pid, 0, 0)\n"  # PTRACE_ATTACH
        "    print('ptrace', pid, rc, ctypes.get_errno())\n"
        "try:\n"
        "    os.kill(-1, signal.SIGKILL)\n"
        "except OSError:\n"
        "    print('broadcast denied')\n"
    )
    r = sb.run_sync(code)
    assert "signalled" not in r.stdout, r.stdout
    assert r.stdout.count("kill denied") == 2
    assert " -1 " in r.stdout and "ptrace" in r.stdout
    assert all(
        line.split()[2] == "-1" for line in r.stdout.splitlines() if line.startswith("ptrace")
    )
    assert sb.metrics().get("worker_deaths", 0) == deaths
    assert_serves(sb)


def test_output_flood_is_capped_and_stopped(sb: Sandbox) -> None:
    t0 = time.monotonic()
    r = sb.run_sync("while True:\n    print('x' * 10000)", timeout=10)
    assert not r.timed_out and time.monotonic() - t0 < 8
    assert r.truncated and r.error and "output limit" in r.error
    assert len(r.stdout.encode()) <= sb.config.max_output_bytes
    assert_serves(sb)


def test_killed_worker_is_replaced(sb: Sandbox) -> None:
    """A worker that dies mid-call (here killed from outside) costs that call only."""
    box = sb
    done = threading.Event()
    result = {}

    def call() -> None:
        result["r"] = box.run_sync("import time\ntime.sleep(3)", timeout=10)
        done.set()

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.5)
    busy = [w for w in box._workers if w.inflight]
    assert busy
    busy[0].kill()
    t.join(10)
    r = result["r"]
    assert not r.ok and "worker died" in (r.error or "")
    assert_serves(box)
    assert survivors() == []
