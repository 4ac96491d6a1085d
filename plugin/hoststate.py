"""Per-host-network-namespace state directory and the host-wide lock.

Firewall rules live in a network namespace, so everything the plugin keeps about
them is keyed by that namespace: two plugin runs in different namespaces never
share a lock or state. The key is the namespace cookie (SO_NETNS_COOKIE), which
the kernel never reuses during a boot; /run is emptied at boot, like the rules.
Kernels without the cookie fall back to the namespace inode.

What is kept there decides the rules (a cached `ingressPolicy`, the registry, the
agent's socket), so nothing in it is trusted unless this process's user (root) owns
it and nobody else can write it: directories are created 0700 whatever the umask,
files 0600, and a path owned by someone else, writable by group or others, or a
symlink where a directory or file belongs is refused (error 5) instead of used.
"""

import errno
import fcntl
import os
import stat
import _socket  # the C module: `socket` would import selectors and enum (~1.5 ms) per start
import time

from plugin import trace
from plugin.errors import IO_FAILURE, TRY_AGAIN_LATER, CniError

STATE_ROOT = "/run/isolation"
SO_NETNS_COOKIE = 71
LOCK_TIMEOUT_S = 30.0  # ISOLATION_LOCK_TIMEOUT_S overrides it (seconds)


def netns_key() -> str:
    """A string naming the network namespace this process runs in."""
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            cookie = int.from_bytes(sock.getsockopt(_socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
        finally:
            sock.close()
        return f"ns-{cookie}"
    except OSError:
        return f"ino-{os.stat('/proc/self/ns/net').st_ino}"


def refuse(path: str, problem: str) -> CniError:
    return CniError(IO_FAILURE, f"refusing to use {path}: {problem}",
                    "the plugin's state must be owned by root and writable by nobody else; "
                    "remove it (it is rebuilt) after finding out who changed it")


def trust(path: str, st: os.stat_result, kind: int) -> None:
    """Raise unless `st` (an lstat or fstat of `path`) is a `kind` (stat.S_IFDIR, S_IFREG, S_IFSOCK)
    owned by this process's user and writable by nobody else."""
    if stat.S_ISLNK(st.st_mode):
        raise refuse(path, "it is a symbolic link")
    if stat.S_IFMT(st.st_mode) != kind:
        raise refuse(path, f"it is not a {KINDS.get(kind, 'file')}")
    if st.st_uid != os.geteuid():
        raise refuse(path, f"it is owned by uid {st.st_uid}, not {os.geteuid()}")
    if st.st_mode & 0o022:
        raise refuse(path, f"it is writable by {'group and others' if st.st_mode & 0o022 == 0o022 else 'group' if st.st_mode & 0o020 else 'others'} (mode {stat.S_IMODE(st.st_mode):04o})")


KINDS = {stat.S_IFDIR: "directory", stat.S_IFREG: "regular file", stat.S_IFSOCK: "socket"}


def private_dir(path: str) -> str:
    """`path` as a directory only we can write: made 0700 (whatever the umask) if missing,
    checked if present. Its parent must have been checked already."""
    try:
        os.mkdir(path, 0o700)  # the umask can only take bits away from 0700
    except FileExistsError:
        pass
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot create state directory {path}: {exc.strerror}") from None
    try:
        trust(path, os.lstat(path), stat.S_IFDIR)
    except FileNotFoundError:
        raise CniError(IO_FAILURE, f"state directory {path} vanished while it was being checked") from None
    return path


def open_private(path: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """A descriptor of the regular file `path` (never through a symlink), refused unless it is
    ours and writable by nobody else. FileNotFoundError when it is missing (and not created)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    try:
        trust(path, os.fstat(fd), stat.S_IFREG)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private(path: str, binary: bool = False) -> str | bytes:
    """The text (or bytes) of `path`, checked as open_private does (FileNotFoundError when missing)."""
    try:
        fd = open_private(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise refuse(path, "it is a symbolic link") from None
        raise
    with os.fdopen(fd, "rb" if binary else "r") as f:
        return f.read()


def write_private(path: str, data: bytes) -> None:
    """Replace the file `path` with `data` atomically: written to a temporary file beside it
    (created exclusively, never through a symlink, mode 0600 whatever the umask), fsynced,
    renamed over `path` (a rename replaces a symlink there, never follows it). Readers see
    the old file or the new one, never a torn one. Only in a directory checked to be ours."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp)  # left by a killed run whose pid this one reuses (unlink follows no link)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


_STATE_DIR: list[str] = []  # one run never changes namespace: ask the kernel and check once, not per use


def state_dir() -> str:
    """The private (0700) state directory of this network namespace, created on demand; it
    and STATE_ROOT are checked to be root's alone (CniError 5 otherwise). Remembered once
    made (functools.cache would import collections: ~3 ms a run)."""
    if not _STATE_DIR:
        private_dir(STATE_ROOT)
        _STATE_DIR.append(private_dir(os.path.join(STATE_ROOT, netns_key())))
    return _STATE_DIR[0]


state_dir.cache_clear = _STATE_DIR.clear  # as functools.cache offers it (the tests move between namespaces)


class Abandoned(CniError):
    """The client of this request (the plugin, talking to the agent) stopped waiting for it:
    it does the work itself, so applying the request now could undo a newer one."""

    def __init__(self, msg: str):
        super().__init__(TRY_AGAIN_LATER, msg)


class HostLock:
    """An exclusive flock held around every read-modify-write of the firewall.

    `deadline` (time.monotonic(), shared by every process of the host) is when the client
    of an agent's request gives up: the lock is not waited for past it, and once held it is
    checked again, so nothing starts after the client has moved on (Abandoned)."""

    def __init__(self, timeout: float | None = None, deadline: float | None = None):
        if timeout is None:
            try:
                timeout = float(os.environ.get("ISOLATION_LOCK_TIMEOUT_S", LOCK_TIMEOUT_S))
            except ValueError:
                timeout = LOCK_TIMEOUT_S
        self.timeout = timeout
        self.deadline = deadline
        self.fd = -1

    def __enter__(self) -> "HostLock":
        path = os.path.join(state_dir(), "lock")
        try:
            self.fd = open_private(path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise refuse(path, "it is a symbolic link") from None
            raise CniError(IO_FAILURE, f"cannot open lock {path}: {exc.strerror}") from None
        give_up = time.monotonic() + self.timeout
        if self.deadline is not None:
            give_up = min(give_up, self.deadline)
        pause = 0.001
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(self.fd)
                    raise CniError(IO_FAILURE, f"cannot lock {path}: {exc.strerror}") from None
            if time.monotonic() >= give_up:
                os.close(self.fd)
                if self.deadline is not None and give_up == self.deadline:
                    raise Abandoned("the client stopped waiting before the lock was free: nothing was done")
                raise CniError(TRY_AGAIN_LATER, f"timed out after {self.timeout:.0f}s waiting for {path}")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            os.close(self.fd)  # checked under the lock: whatever the client did since is already done
            raise Abandoned("the client stopped waiting for this request: nothing was done")
        trace.stamp("locked")
        return self

    def __exit__(self, *exc_info) -> None:
        os.close(self.fd)  # closing releases the flock
        trace.stamp("unlocked")
