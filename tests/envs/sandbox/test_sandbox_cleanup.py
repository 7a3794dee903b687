"""The depth-proof delete behind the sandbox's background deleter (``_kernel.remove_tree``):
no recursion limit, no PATH_MAX limit, never follows a symlink out of the tree, copes with
directories their owner made unreadable. Runs on /dev/shm (RAM) where it exists, so a deep
tree costs milliseconds instead of one journal write per directory."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

from envs.sandbox._kernel import remove_tree

DEPTH = 2_000


def _scratch() -> str:
    return tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)


def _deep_tree(top: str, depth: int) -> None:
    """``top/dir/dir/.../dir`` with a file, a symlink and a FIFO at every level, built through
    directory descriptors (the full path is far beyond PATH_MAX)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("dir", dir_fd=fd)
        with open(os.open("f", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd), "w") as f:
            f.write("x")
        os.symlink("/etc/passwd", "link", dir_fd=fd)
        os.mkfifo("fifo", dir_fd=fd)
        nxt = os.open("dir", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)


def test_deep_tree_beyond_recursion_and_path_limits() -> None:
    top = _scratch()
    try:
        tree = os.path.join(top, "t")
        os.mkdir(tree)
        _deep_tree(tree, DEPTH)
        assert DEPTH * len("dir/") > 4096 and DEPTH > sys.getrecursionlimit()  # both exceeded
        outside = os.path.join(top, "outside")
        os.mkdir(outside)
        open(os.path.join(outside, "keep"), "w").close()
        os.symlink(outside, os.path.join(tree, "escape"))  # a link to a directory
        remove_tree(tree)
        assert not os.path.exists(tree)
        assert os.path.exists(os.path.join(outside, "keep"))  # not followed
        assert os.path.exists("/etc/passwd")
        remove_tree(tree)  # already gone: fine
    finally:
        remove_tree(top)
    assert not os.path.exists(top)


def test_unreadable_directories_of_a_non_root_owner() -> None:
    """As the owner (not root): a mode-000 directory and a read-only one are still removed."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged uid for the test")
    top = _scratch()
    os.chmod(top, 0o777)  # the unprivileged child creates the tree in it
    tree = os.path.join(top, "t")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            os.makedirs(os.path.join(tree, "closed", "inner"))
            open(os.path.join(tree, "closed", "inner", "f"), "w").close()
            os.makedirs(os.path.join(tree, "readonly"))
            open(os.path.join(tree, "readonly", "g"), "w").close()
            os.chmod(os.path.join(tree, "readonly"), 0o500)
            os.chmod(os.path.join(tree, "closed"), 0o000)
            remove_tree(tree)
            code = 0 if not os.path.exists(tree) else 2
        except BaseException as e:  # noqa: BLE001 - report through the exit status
            os.write(2, f"{e!r}\n".encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        remove_tree(top)
