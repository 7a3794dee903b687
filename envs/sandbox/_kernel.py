"""Kernel isolation primitives through ctypes: credentials, capabilities, Landlock, seccomp.

Standard library only: the sandbox worker imports this file by path (it never imports the
``envs`` package, so nothing of the trainer is loaded into a process that forks model code).
Every function either succeeds or raises ``OSError``; callers decide what a failure means
(the worker probes each layer once at start-up by *trying* it in a throw-away child).

x86_64 and aarch64 are supported; on any other architecture seccomp reports unavailable.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import struct
from collections.abc import Iterable, Sequence

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
CAP_DAC_READ_SEARCH = 2

# Syscalls added after 4.x share numbers on every architecture.
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
SYS_CLOSE_RANGE = 436

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
_CLONE_NS_MASK = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
    | CLONE_NEWTIME
)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def close_fds_from(lowfd: int) -> None:
    """Close every descriptor >= ``lowfd`` (close_range, else a bounded loop)."""
    if _libc.syscall(SYS_CLOSE_RANGE, ctypes.c_uint(lowfd), ctypes.c_uint(0xFFFFFFFF), 0) == 0:
        return
    os.closerange(lowfd, 65536)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _check(
        _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), None),
        f"mount {target}",
    )


# --------------------------------------------------------------------------- credentials


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_to_uid(uid: int, gid: int, keep_dac_read: bool = False) -> None:
    """Become ``uid``/``gid`` with no supplementary groups and no capabilities.

    ``keep_dac_read`` keeps only CAP_DAC_READ_SEARCH (effective, inherited, ambient), for hosts
    whose Python lives below a private directory (e.g. pyenv under /root): the child can then
    import the standard library; Landlock (required for this mode) still limits what it reads.
    """
    if keep_dac_read:
        prctl(PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    bits = (1 << CAP_DAC_READ_SEARCH) if keep_dac_read else 0
    hdr = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)(_CapData(bits, bits, bits), _CapData(0, 0, 0))
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")
    if keep_dac_read:
        prctl(PR_SET_KEEPCAPS, 0)
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH)


def no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


# --------------------------------------------------------------------------- Landlock

# Filesystem access rights by ABI version (include/uapi/linux/landlock.h).
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_ALL_V1 = (1 << 13) - 1
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_ONLY = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1, 2
_O_PATH = getattr(os, "O_PATH", 0o10000000)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    ret = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(ret), 0)


def _fs_rights(abi: int) -> int:
    rights = _FS_ALL_V1
    if abi >= 2:
        rights |= _FS_REFER
    if abi >= 3:
        rights |= _FS_TRUNCATE
    if abi >= 5:
        rights |= _FS_IOCTL_DEV
    return rights


def open_paths(paths: Iterable[str]) -> list[tuple[int, bool]]:
    """O_PATH descriptors (and is-directory flags) for the paths that exist; opened once in the
    worker so each child only issues add_rule calls."""
    out: list[tuple[int, bool]] = []
    for p in dict.fromkeys(paths):
        try:
            fd = os.open(p, _O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        out.append((fd, os.path.isdir(p)))
    return out


def _ruleset(abi: int, fs: int, net: int, scoped: int) -> int:
    attr = struct.pack("=QQQ", fs, net, scoped)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    buf = ctypes.create_string_buffer(attr[:size], size)
    call = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_size_t(size), 0)
    return _check(call, "landlock_create_ruleset")


def _add_rules(rs: int, handled: int, fds: Sequence[tuple[int, bool]], rights: int) -> None:
    for fd, is_dir in fds:
        allowed = (rights if is_dir else rights & _FILE_ONLY) & handled
        rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd), 12)
        _check(_libc.syscall(SYS_LANDLOCK_ADD_RULE, rs, 1, rule, 0), "landlock_add_rule")


def landlock_base(
    abi: int, read_fds: Sequence[tuple[int, bool]], write_fds: Sequence[tuple[int, bool]]
) -> int:
    """A ruleset fd (built once, applied by every child): read/execute beneath ``read_fds``,
    everything beneath ``write_fds``, no TCP bind/connect (ABI >= 4), no signals or abstract
    unix sockets out of the domain (ABI >= 6)."""
    if abi < 1:
        raise OSError(38, "landlock unavailable")
    fs = _fs_rights(abi)
    net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL if abi >= 6 else 0
    rs = _ruleset(abi, fs, net, scoped)
    try:
        _add_rules(rs, fs, read_fds, _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR)
        _add_rules(rs, fs, write_fds, fs)
    except OSError:
        os.close(rs)
        raise
    return rs


def landlock_restrict(abi: int, base: int, write_fds: Sequence[tuple[int, bool]]) -> None:
    """Enforce the ``base`` ruleset, then a second layer that allows writes beneath
    ``write_fds`` only. Layers intersect, so the base may allow writing to the parent of all
    work directories while each call can write only to its own; two layers cost a handful of
    syscalls instead of one rule per readable path per call."""
    _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, base, 0), "landlock_restrict_self")
    writes = _fs_rights(abi) & ~(_FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR | _FS_IOCTL_DEV)
    rs = _ruleset(abi, writes, 0, 0)
    try:
        _add_rules(rs, writes, write_fds, writes)
        _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, rs, 0), "landlock_restrict_self")
    finally:
        os.close(rs)


# --------------------------------------------------------------------------- seccomp

# Syscalls a sandboxed call never needs and that reach outside it: other processes' memory,
# mounts and namespaces, kernel modules and BPF, keyrings, io_uring (bypasses seccomp), clock
# and host settings, handle-based opens (the classic container escape), pidfds.
_DENY = (
    "ptrace process_vm_readv process_vm_writev process_madvise process_mrelease kcmp "
    "mount umount2 pivot_root chroot unshare setns open_tree move_mount fsopen fsconfig "
    "fsmount fspick mount_setattr bpf perf_event_open kexec_load kexec_file_load init_module "
    "finit_module delete_module add_key request_key keyctl userfaultfd io_uring_setup "
    "io_uring_enter io_uring_register open_by_handle_at name_to_handle_at swapon swapoff "
    "reboot settimeofday clock_settime clock_adjtime adjtimex acct quotactl quotactl_fd syslog "
    "fanotify_init pidfd_open pidfd_getfd pidfd_send_signal lookup_dcookie vhangup move_pages "
    "migrate_pages sethostname setdomainname iopl ioperm modify_ldt uselib _sysctl "
    "rt_sigqueueinfo rt_tgsigqueueinfo"
).split()

# name: x86_64 number, aarch64 number (0 = no such syscall there).
_NR_TABLE = """
ptrace 101 117  process_vm_readv 310 270  process_vm_writev 311 271  process_madvise 440 440
process_mrelease 448 448  kcmp 312 272  mount 165 40  umount2 166 39  pivot_root 155 41
chroot 161 51  unshare 272 97  setns 308 268  open_tree 428 428  move_mount 429 429
fsopen 430 430  fsconfig 431 431  fsmount 432 432  fspick 433 433  mount_setattr 442 442
bpf 321 280  perf_event_open 298 241  kexec_load 246 104  kexec_file_load 320 294
init_module 175 105  finit_module 313 273  delete_module 176 106  add_key 248 217
request_key 249 218  keyctl 250 219  userfaultfd 323 282  io_uring_setup 425 425
io_uring_enter 426 426  io_uring_register 427 427  open_by_handle_at 304 265
name_to_handle_at 303 264  swapon 167 224  swapoff 168 225  reboot 169 142
settimeofday 164 170  clock_settime 227 112  clock_adjtime 305 266  adjtimex 159 171
acct 163 89  quotactl 179 60  quotactl_fd 443 443  syslog 103 116  fanotify_init 300 262
pidfd_open 434 434  pidfd_getfd 438 438  pidfd_send_signal 424 424  lookup_dcookie 212 18
vhangup 153 58  move_pages 279 239  migrate_pages 256 238  sethostname 170 161
setdomainname 171 162  iopl 172 0  ioperm 173 0  modify_ldt 154 0  uselib 134 0
_sysctl 156 0  rt_sigqueueinfo 129 138  rt_tgsigqueueinfo 297 240  socket 41 198
socketpair 53 199  clone 56 220  clone3 435 435  kill 62 129  tkill 200 130  tgkill 234 131
ioctl 16 29
""".split()
_NR = {
    arch: {
        name: int(nrs[col])
        for name, *nrs in zip(_NR_TABLE[::3], _NR_TABLE[1::3], _NR_TABLE[2::3], strict=True)
        if int(nrs[col])
    }
    for col, arch in enumerate(("x86_64", "aarch64"))
}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# BPF opcodes (linux/filter.h) and seccomp return values.
_LD_W_ABS, _JEQ, _JSET, _RET = 0x20, 0x15, 0x45, 0x06
_RET_KILL_PROCESS, _RET_ALLOW, _RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
_EPERM, _EACCES, _ENOSYS = 1, 13, 38
_AF_UNIX = 1
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C
_OFF_NR, _OFF_ARCH = 0, 4


def _arg(i: int) -> int:
    """Offset of the low 32 bits of syscall argument ``i`` in struct seccomp_data (int-typed
    arguments use only those bits, whatever the upper half of the register holds)."""
    return 16 + 8 * i + (0 if struct.pack("=H", 1)[0] == 1 else 4)


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def _when_nr(nr: int, body: list[bytes]) -> list[bytes]:
    """``if (nr == N) { body }``: body must end in a return; reloads nr afterwards is not needed
    because bodies never fall through."""
    return [_insn(_JEQ, nr, 0, len(body)), *body]


def _arg_in(i: int, values: Sequence[int], action: int) -> list[bytes]:
    """Load argument ``i``; return ``action`` if it equals any of ``values``; else allow."""
    body = [_insn(_LD_W_ABS, _arg(i))]
    for v in values:
        body += [_insn(_JEQ, v, 0, 1), _insn(_RET, action)]
    return [*body, _insn(_RET, _RET_ALLOW)]


def seccomp_supported() -> bool:
    return platform.machine() in _NR


def build_seccomp_filter(protected_pids: Sequence[int]) -> bytes:
    """The sandbox's seccomp-BPF program (deny-list; errno instead of kill so code sees an
    ``OSError`` it can report).

    Beyond the plain deny-list: no socket() at all (socketpair only for AF_UNIX), no clone with
    namespace flags, clone3 answers ENOSYS (its flags sit in memory BPF cannot read; libc then
    falls back to clone), no signals to ``protected_pids`` (worker, trainer) or to -1, no
    TIOCSTI/TIOCLINUX terminal injection.
    """
    arch = platform.machine()
    nr = _NR[arch]
    eperm = _RET_ERRNO | _EPERM
    prog = [
        _insn(_LD_W_ABS, _OFF_ARCH),
        _insn(_JEQ, _AUDIT_ARCH[arch], 1, 0),
        _insn(_RET, _RET_KILL_PROCESS),
        _insn(_LD_W_ABS, _OFF_NR),
    ]
    if arch == "x86_64":  # x32 ABI syscalls carry bit 30: refuse them all
        prog += [_insn(0x35, 0x40000000, 0, 1), _insn(_RET, eperm)]  # JGE
    for name in _DENY:
        if name in nr:
            prog += [_insn(_JEQ, nr[name], 0, 1), _insn(_RET, eperm)]
    prog += [_insn(_JEQ, nr["socket"], 0, 1), _insn(_RET, _RET_ERRNO | _EACCES)]
    prog += [_insn(_JEQ, nr["clone3"], 0, 1), _insn(_RET, _RET_ERRNO | _ENOSYS)]
    prog += _when_nr(
        nr["socketpair"],
        [
            _insn(_LD_W_ABS, _arg(0)),
            _insn(_JEQ, _AF_UNIX, 0, 1),
            _insn(_RET, _RET_ALLOW),
            _insn(_RET, _RET_ERRNO | _EACCES),
        ],
    )
    prog += _when_nr(
        nr["clone"],
        [
            _insn(_LD_W_ABS, _arg(0)),
            _insn(_JSET, _CLONE_NS_MASK, 0, 1),
            _insn(_RET, eperm),
            _insn(_RET, _RET_ALLOW),
        ],
    )
    pids = [p for p in protected_pids if p > 0]
    kill_targets = [-1, *pids, *(-p for p in pids)]
    prog += _when_nr(nr["kill"], _arg_in(0, kill_targets, eperm))
    prog += _when_nr(nr["tkill"], _arg_in(0, pids, eperm))
    prog += _when_nr(nr["tgkill"], _arg_in(0, pids, eperm))
    prog += _when_nr(nr["ioctl"], _arg_in(1, [_TIOCSTI, _TIOCLINUX], eperm))
    prog.append(_insn(_RET, _RET_ALLOW))
    if len(prog) > 4096:
        raise ValueError("seccomp program too long")
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_install(program: bytes) -> None:
    """Install ``program`` for this thread (requires no_new_privs or CAP_SYS_ADMIN)."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    _check(_libc.prctl(PR_SET_SECCOMP, 2, ctypes.addressof(fprog), 0, 0), "seccomp")


def write_id_maps(pid: int, uid: int, gid: int, inner_uid: int, inner_gid: int) -> None:
    """uid/gid maps for a fresh user namespace of ``pid`` (one id mapped, setgroups denied)."""
    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"{inner_uid} {uid} 1")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"{inner_gid} {gid} 1")


def fcntl_pipe_size(fd: int, size: int) -> None:
    """Grow a pipe buffer (F_SETPIPE_SZ) so a whole request fits without blocking."""
    import fcntl

    fcntl.fcntl(fd, 1031, size)


# --------------------------------------------------------------------------- processes


def kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def proc_table(since_pid: int = 0) -> list[tuple[int, int, str]]:
    """(pid, ppid, state) of the live processes with pid > since_pid, from /proc."""
    try:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []
    out = []
    for pid in pids:
        if pid <= since_pid:
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split(None, 2)
        out.append((pid, int(fields[1]), fields[0].decode()))
    return out


def count_own_tasks() -> int:
    """Tasks (threads included) owned by this uid: RLIMIT_NPROC counts them all."""
    uid, n = os.getuid(), 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    n += max(1, len(os.listdir(f"/proc/{name}/task")))
            except OSError:
                continue
    return n


def namespace_ids() -> dict[str, str]:
    """This process's namespaces (``pid:[4026531836]``...), to compare with another's."""
    out = {}
    for ns in ("pid", "net", "mnt", "user", "ipc"):
        try:
            out[ns] = os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            continue
    return out


def enter_namespaces() -> None:
    """Namespace mode without bubblewrap: new pid, net, mount, ipc and uts namespaces (plus a
    user namespace when not root). A pid namespace applies to children, so this forks: the
    child is pid 1 of the new namespace and returns; the parent waits and mirrors its exit.
    On failure nothing changes (the worker's hello then reports no namespaces)."""
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
    if uid != 0:
        flags |= CLONE_NEWUSER
    try:
        unshare(flags)
        if uid != 0:
            write_id_maps(os.getpid(), uid, gid, uid, gid)
    except OSError:
        return
    pid = os.fork()
    if pid:
        signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
        _, status = os.waitpid(pid, 0)
        os._exit(max(os.waitstatus_to_exitcode(status), 0))
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    try:  # a /proc of the new pid namespace (refused in some containers: then keep the old)
        mount(None, "/", None, 0x4000 | 0x40000)  # MS_REC | MS_PRIVATE
        mount("proc", "/proc", "proc", 0x2 | 0x4 | 0x8)  # nosuid, nodev, noexec
    except OSError:
        pass
