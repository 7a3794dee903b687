"""The sandbox's seccomp filter, built by libseccomp (through ctypes).

Reused: libseccomp (the system's ``libseccomp.so.2``) resolves syscall names for the native
architecture, compiles the rules to BPF and guards the architecture (a foreign-ABI syscall,
``int 0x80`` or x32, kills the process). No maintained Python binding of it is on PyPI for
this Python (``pyseccomp`` was last released in 2021; ``mephi42-seccomp`` ships no wheel for
it), so the few entry points are declared here. The worker builds the program once
(``build_filter``). Where a call's set-up needs no user namespace, the fork server installs it
on itself once and every child inherits it through fork (``for_setup=True``: see there);
otherwise each child installs the exported bytes with one ``prctl`` (``install``, about a
millisecond on a loaded 2-core machine).

Standard library only; imported by the worker by path, like ``_kernel``.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence

_ACT_ALLOW = 0x7FFF0000
_ACT_KILL_PROCESS = 0x80000000
_ATTR_ACT_BADARCH = 2
_CMP_NE, _CMP_MASKED_EQ = 1, 7
_AF_UNIX = 1
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C
_LOW32 = 0xFFFFFFFF
PR_SET_SECCOMP = 22

# Syscalls a sandboxed call never needs and that reach outside it: other processes' memory,
# mounts and namespaces, kernel modules and BPF, keyrings, io_uring (bypasses seccomp), clock
# and host settings, handle-based opens (the classic container escape), pidfds, and System V
# IPC and POSIX message queues (objects that outlive the call, can be shared between calls of
# different uids and are not charged to the call's memory limit).
DENY = (
    "ptrace process_vm_readv process_vm_writev process_madvise process_mrelease kcmp "
    "mount umount2 pivot_root chroot unshare setns open_tree move_mount fsopen fsconfig "
    "fsmount fspick mount_setattr bpf perf_event_open kexec_load kexec_file_load init_module "
    "finit_module delete_module add_key request_key keyctl userfaultfd io_uring_setup "
    "io_uring_enter io_uring_register open_by_handle_at name_to_handle_at swapon swapoff "
    "reboot settimeofday clock_settime clock_adjtime adjtimex acct quotactl quotactl_fd syslog "
    "fanotify_init pidfd_open pidfd_getfd pidfd_send_signal lookup_dcookie vhangup move_pages "
    "migrate_pages sethostname setdomainname iopl ioperm modify_ldt uselib _sysctl "
    "rt_sigqueueinfo rt_tgsigqueueinfo "
    "shmget shmat shmdt shmctl semget semop semtimedop semctl msgget msgsnd msgrcv msgctl "
    "mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr"
).split()
NAMESPACE_FLAGS = (
    0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000,
    0x00000080,
)  # fmt: skip
"""CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME."""
_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV = 2, 4


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError as e:
            raise OSError(errno.ENOSYS, f"libseccomp is not installed ({e})") from e
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p,
        ]  # fmt: skip
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        _lib = lib
    return _lib


def supported() -> bool:
    """libseccomp loads here (the kernel side is tried by the worker's probe)."""
    try:
        _load()
        return True
    except OSError:
        return False


def _errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def build_filter(protected_pids: Sequence[int], for_setup: bool = False) -> bytes:
    """The sandbox's seccomp-BPF program (a deny-list; errno rather than kill, so the code sees
    an ``OSError`` it can report).

    Beyond ``DENY``: no ``socket()`` at all (``socketpair`` for AF_UNIX only), no clone with a
    namespace flag, clone3 answers ENOSYS (its flags sit in memory BPF cannot read; libc then
    falls back to clone), no signals to ``protected_pids`` (worker, fork server, trainer) or to
    -1, no TIOCSTI/TIOCLINUX terminal injection. A syscall of another ABI kills the process.

    ``for_setup``: the program the fork server installs before forking children that still have
    to build their per-call mount namespace under it. It differs in two rules only: ``unshare``
    is allowed with ``CLONE_NEWNS`` (every other namespace flag, ``CLONE_NEWUSER`` above all,
    stays denied), and ``mount`` with exactly the flags of the work-dir tmpfs (nosuid, nodev).
    Both still need ``CAP_SYS_ADMIN``, which a call's code never holds: use it only where each
    child drops every capability (a per-call uid, or ``drop_caps``) and needs no user namespace
    of its own to mount its tmpfs (the caller checks; see ``_worker.Worker.probe``).
    """
    lib = _load()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")

    def rule(name: str, action: int, *cmps: tuple[int, int, int, int]) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr == -1:  # unknown to libseccomp (a pseudo number < -1 marks "not on this arch")
            return
        arr = (_ArgCmp * max(1, len(cmps)))(*(_ArgCmp(*c) for c in cmps))
        ret = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
        if ret < 0:
            raise OSError(-ret, f"seccomp rule for {name}: {os.strerror(-ret)}")

    try:
        if lib.seccomp_attr_set(ctx, _ATTR_ACT_BADARCH, _ACT_KILL_PROCESS) < 0:
            raise OSError(errno.EINVAL, "seccomp: cannot set the bad-architecture action")
        eperm = _errno(errno.EPERM)
        for name in DENY:
            if not (for_setup and name in ("mount", "unshare")):
                rule(name, eperm)
        if for_setup:
            rule("mount", eperm, (3, _CMP_NE, _MS_NOSUID | _MS_NODEV, 0))
            for flag in NAMESPACE_FLAGS:
                if flag != _CLONE_NEWNS:
                    rule("unshare", eperm, (0, _CMP_MASKED_EQ, flag, flag))
        rule("socket", _errno(errno.EACCES))
        rule("clone3", _errno(errno.ENOSYS))
        rule("socketpair", _errno(errno.EACCES), (0, _CMP_NE, _AF_UNIX, 0))
        for flag in NAMESPACE_FLAGS:
            rule("clone", eperm, (0, _CMP_MASKED_EQ, flag, flag))
        pids = [p for p in protected_pids if p > 0]
        for target in (-1, *pids, *(-p for p in pids)):
            rule("kill", eperm, (0, _CMP_MASKED_EQ, _LOW32, target & _LOW32))
        for pid in pids:
            rule("tkill", eperm, (0, _CMP_MASKED_EQ, _LOW32, pid))
            rule("tgkill", eperm, (0, _CMP_MASKED_EQ, _LOW32, pid))
        for request in (_TIOCSTI, _TIOCLINUX):
            rule("ioctl", eperm, (1, _CMP_MASKED_EQ, _LOW32, request))
        fd = os.memfd_create("turnrl-seccomp", os.MFD_CLOEXEC)
        try:
            ret = lib.seccomp_export_bpf(ctx, fd)
            if ret < 0:
                raise OSError(-ret, f"seccomp_export_bpf: {os.strerror(-ret)}")
            size = os.lseek(fd, 0, os.SEEK_CUR)
            program = os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    if not program or len(program) % 8:
        raise OSError(errno.EINVAL, "seccomp: libseccomp exported an empty program")
    return program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)


def install(program: bytes) -> None:
    """Install ``program`` for this thread (requires no_new_privs or CAP_SYS_ADMIN)."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    if _libc.prctl(PR_SET_SECCOMP, 2, ctypes.c_void_p(ctypes.addressof(fprog)), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp: {os.strerror(err)}")
