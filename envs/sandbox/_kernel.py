"""Kernel isolation primitives through ctypes: credentials, capabilities, Landlock, mount and
IPC namespaces, a depth-proof delete (the seccomp filter is in ``_seccomp``).

Standard library only: the sandbox worker imports this file by path (it never imports the
``envs`` package, so nothing of the trainer is loaded into a process that forks model code).
Every function either succeeds or raises ``OSError``; callers decide what a failure means
(the worker probes each layer once at start-up by *trying* it in a throw-away child).
"""

from __future__ import annotations

import ctypes
import os
import signal
import stat
import struct
import time
from collections.abc import Iterable, Sequence

_libc = ctypes.CDLL(None, use_errno=True)
for _name in ("unshare", "mount", "capset"):  # resolved once here, not by dlsym in each child
    getattr(_libc, _name)
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
PR_CAP_AMBIENT_CLEAR_ALL = 4

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


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 32, 4096, 16384, 1 << 18,
)  # fmt: skip


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _check(
        _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
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


def drop_to_uid(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` with no supplementary groups and no capabilities at all."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    drop_caps()


def drop_caps() -> None:
    """Clear every capability set (a process that keeps its uid, e.g. in a user namespace)."""
    hdr = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)(_CapData(0, 0, 0), _CapData(0, 0, 0))
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


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


def landlock_restrict(
    abi: int, read_fds: Sequence[tuple[int, bool]], rw_fds: Sequence[tuple[int, bool]]
) -> None:
    """Enforce one ruleset for this process: read/execute beneath ``read_fds``, everything
    beneath ``rw_fds`` (the call's own work dir and /dev/null), no TCP bind/connect (ABI >= 4),
    no signals or abstract unix sockets out of the domain (ABI >= 6). Built per call, so a
    call cannot even read the directories of the calls beside it (a score of add_rule calls,
    tens of microseconds)."""
    if abi < 1:
        raise OSError(38, "landlock unavailable")
    fs = _fs_rights(abi)
    net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL if abi >= 6 else 0
    rs = _ruleset(abi, fs, net, scoped)
    try:
        _add_rules(rs, fs, read_fds, _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR)
        _add_rules(rs, fs, rw_fds, fs)
        _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, rs, 0), "landlock_restrict_self")
    finally:
        os.close(rs)


def landlock_base(
    abi: int, read_fds: Sequence[tuple[int, bool]], rw_fds: Sequence[tuple[int, bool]]
) -> int:
    """A ruleset fd built once by the worker: read beneath ``read_fds``, everything beneath
    ``rw_fds`` (the directory holding all work dirs), no TCP, no signals out (as above). Each
    call then adds only a write-restricting layer (``landlock_layered``): a dozen syscalls
    fewer per call. Used only where each work dir is a per-call tmpfs in the call's own mount
    namespace, so reading "beneath all work dirs" shows other calls nothing (their files are
    in mounts this call cannot see)."""
    fs = _fs_rights(abi)
    net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL if abi >= 6 else 0
    rs = _ruleset(abi, fs, net, scoped)
    try:
        _add_rules(rs, fs, read_fds, _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR)
        _add_rules(rs, fs, rw_fds, fs)
    except OSError:
        os.close(rs)
        raise
    return rs


def landlock_layered(abi: int, base: int, write_fds: Sequence[tuple[int, bool]]) -> None:
    """Enforce the ``base`` ruleset, then a layer allowing writes beneath ``write_fds`` only
    (layers intersect: the call can write only to its own work dir)."""
    _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, base, 0), "landlock_restrict_self")
    writes = _fs_rights(abi) & ~(_FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR | _FS_IOCTL_DEV)
    rs = _ruleset(abi, writes, 0, 0)
    try:
        _add_rules(rs, writes, write_fds, writes)
        _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, rs, 0), "landlock_restrict_self")
    finally:
        os.close(rs)


# --------------------------------------------------------------------------- mount views


def private_mount_namespace() -> None:
    """Give this process its own mount namespace in which nothing propagates to or from the
    host, so mounts made here (and in the per-call namespaces copied from it) stay here."""
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def expose_paths(paths: Iterable[str]) -> list[str]:
    """Make ``paths`` readable by every uid in this (private) mount namespace without giving
    anyone a read-any-file capability: the topmost ancestor others cannot traverse (e.g.
    /root holding a pyenv Python) is covered by an empty tmpfs into which read-only binds of
    the paths are placed. Returns the covered ancestors. Root only."""
    todo: dict[str, list[str]] = {}
    for p in dict.fromkeys(os.path.realpath(p) for p in paths):
        parts, cur = p.strip("/").split("/"), ""
        for name in parts[:-1]:
            cur += "/" + name
            try:
                if not os.stat(cur).st_mode & 0o001:
                    todo.setdefault(cur, []).append(p)
                    break
            except OSError:
                break
    for top, keep in todo.items():
        fds = [os.open(k, _O_PATH | os.O_CLOEXEC) for k in keep]  # before the tmpfs hides them
        try:
            mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
            for k, fd in zip(keep, fds):
                cur = top
                for name in k[len(top) + 1 :].split("/"):
                    cur += "/" + name
                    os.makedirs(cur, 0o755, exist_ok=True)
                mount(f"/proc/self/fd/{fd}", k, None, MS_BIND | MS_REC)
                mount(None, k, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
            mount(None, top, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        finally:
            for fd in fds:
                os.close(fd)
    return list(todo)


def call_namespaces(
    workdir: str, uid: int | None, size_bytes: int, inodes: int, shm_bytes: int | None
) -> None:
    """Per-call mount and IPC namespaces (in a fresh user namespace too when this process has
    no CAP_SYS_ADMIN): the call's System V objects vanish with it, and its work dir becomes a
    tmpfs of ``size_bytes`` and ``inodes`` (the call's disk and file quota) that the kernel
    frees when the call's last process exits, however many or deep its files. In the new IPC
    namespace, System V shared memory is capped at ``shm_bytes`` (the call's memory limit; it
    is not charged to RLIMIT_AS) and message queues are off (best effort: kernels that refuse
    these sysctls in a user namespace keep their defaults, private to the call all the same).
    ``shm_bytes=None``: no IPC namespace (seccomp already denies every System V and POSIX
    message-queue syscall; an IPC namespace per call costs a few hundred microseconds).
    Must run before the uid switch (``uid`` owns the tmpfs) and before ``chdir(workdir)``."""
    flags = CLONE_NEWNS | (CLONE_NEWIPC if shm_bytes is not None else 0)
    try:
        unshare(flags)
    except PermissionError:
        outer_uid, outer_gid = os.getuid(), os.getgid()
        unshare(flags | CLONE_NEWUSER)
        write_id_maps(os.getpid(), outer_uid, outer_gid, outer_uid, outer_gid)
    sysctls = {}
    if shm_bytes is not None:
        sysctls = {"shmall": max(1, shm_bytes // 4096), "shmmax": shm_bytes, "msgmni": 0}
    for key, value in sysctls.items():
        try:
            fd = os.open(f"/proc/sys/kernel/{key}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(value).encode())
            finally:
                os.close(fd)
        except OSError:
            pass
    owner = uid if uid is not None else os.getuid()
    opts = f"size={size_bytes},nr_inodes={inodes},mode=0700,uid={owner},gid={owner}"
    mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, opts)


# --------------------------------------------------------------------------- deleting


def remove_tree(path: str) -> None:
    """Delete ``path`` and everything beneath it: iterative (no recursion limit), through
    directory descriptors (no PATH_MAX limit), holding one descriptor at a time (any depth
    fits RLIMIT_NOFILE), never following symlinks. Meant for trees nobody writes any more
    (the call's processes are dead): climbing back up uses "..", checked against the inode
    it came from. Missing entries are fine; other errors raise ``OSError``."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        pfd = os.open(parent or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _remove_below(pfd, name)
    finally:
        os.close(pfd)


def _open_dir(dirfd: int, name: str) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=dirfd)
    except PermissionError:  # a mode-000 directory of our own uid
        os.chmod(name, 0o700, dir_fd=dirfd)
        return os.open(name, flags, dir_fd=dirfd)


def _unlink(dirfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dirfd)
    except FileNotFoundError:
        pass
    except PermissionError:  # a directory without write permission for its owner
        os.chmod(dirfd, 0o700)
        os.unlink(name, dir_fd=dirfd)


def _remove_below(pfd: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _unlink(pfd, name)
        return
    cur = _open_dir(pfd, name)
    names = [name]  # the path from pfd down to cur
    ids = [(st.st_dev, st.st_ino)]
    todo: list[list[str] | None] = [None]  # per level: subdirectories left to visit
    try:
        while True:
            if todo[-1] is None:
                subdirs = []
                with os.scandir(cur) as entries:
                    for e in entries:
                        if e.is_dir(follow_symlinks=False):
                            subdirs.append(e.name)
                        else:
                            _unlink(cur, e.name)
                todo[-1] = subdirs
            left = todo[-1]
            if left:
                sub = left.pop()
                try:
                    nxt = _open_dir(cur, sub)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                st = os.fstat(nxt)
                os.close(cur)
                cur = nxt
                names.append(sub)
                ids.append((st.st_dev, st.st_ino))
                todo.append(None)
                continue
            if len(names) == 1:
                break
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = up
            st = os.fstat(cur)
            if (st.st_dev, st.st_ino) != ids[-2]:
                raise OSError(16, f"remove_tree: {path_of(names)} moved while being deleted")
            ids.pop()
            todo.pop()
            try:
                os.rmdir(names.pop(), dir_fd=cur)
            except FileNotFoundError:
                pass
    finally:
        os.close(cur)
    try:
        os.rmdir(name, dir_fd=pfd)
    except FileNotFoundError:
        pass


def path_of(names: list[str]) -> str:
    joined = "/".join(names)
    return joined if len(joined) < 200 else joined[:90] + "/.../" + joined[-90:]


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
    if pid <= 0:  # 0 and -1 would signal the worker's own group, or everything
        return
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def killpg(pgid: int) -> None:
    if pgid <= 1:
        return
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


def kill_orphans(parent: int, known: set[int], since_pid: int = 0) -> None:
    """SIGKILL the live children of ``parent`` not in ``known``: read from ``parent``'s own
    children list (one file, whatever else runs on the machine), else from the process table
    (only pids > ``since_pid`` there). ``parent`` must be single-threaded (the fork server)."""
    kids = _children(parent)
    if kids is not None:
        for p in kids:
            if p not in known and _state(p) not in ("Z", ""):
                kill(p, signal.SIGKILL)
        return
    for p, pp, state in proc_table(since_pid):
        if pp == parent and p not in known and state != "Z":
            kill(p, signal.SIGKILL)


def _children(pid: int) -> list[int] | None:
    """Children of ``pid`` from /proc/<pid>/task/*/children; None when the kernel does not
    offer that file (the caller then scans the process table)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            if os.path.isdir(f"/proc/{pid}/task/{tid}"):
                return None
        except OSError:
            return None
    return out


def _live_descendants(root: int) -> set[int]:
    """Live (non-zombie) descendants of ``root``: by walking the children lists (cost grows
    with the tree, not with every process started on the machine since ``root``), else by
    scanning the process table for pids above ``root``."""
    desc: set[int] = set()
    todo = [root]
    while todo:
        kids = _children(todo.pop())
        if kids is None:
            break
        for k in kids:
            if k not in desc:
                desc.add(k)
                todo.append(k)
    else:
        return {p for p in desc if _state(p) not in ("Z", "")}
    procs = proc_table(root)
    desc, grew = {root}, True
    while grew:
        grew = False
        for p, pp, state in procs:
            if pp in desc and p not in desc and state != "Z":
                desc.add(p)
                grew = True
    desc.discard(root)
    return desc


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data[data.rindex(b")") + 2 :].split(None, 1)[0].decode()


def kill_descendants(root: int) -> None:
    """Kill every live descendant of ``root`` (a session between two calls)."""
    for _ in range(64):
        desc = _live_descendants(root)
        if not desc:
            return
        for p in desc:
            kill(p, signal.SIGKILL)
        time.sleep(0.001)


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
