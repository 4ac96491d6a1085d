"""Per-host-network-namespace state directory and the host-wide lock.

Firewall rules live in a network namespace, so everything the plugin keeps about
them is keyed by that namespace: two plugin runs in different namespaces never
share a lock or state. The key is the namespace cookie (SO_NETNS_COOKIE), which
the kernel never reuses during a boot; /run is emptied at boot, like the rules.
Kernels without the cookie fall back to the namespace inode.
"""

import errno
import fcntl
import functools
import os
import _socket  # the C module: `socket` would import selectors and enum (~1.5 ms) per start
import time

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


@functools.cache  # one run never changes namespace: ask the kernel and mkdir once, not per use
def state_dir() -> str:
    """The private (0700) state directory of this network namespace, created on demand."""
    path = os.path.join(STATE_ROOT, netns_key())
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot create state directory {path}: {exc.strerror}") from None
    return path


class HostLock:
    """An exclusive flock held around every read-modify-write of the firewall."""

    def __init__(self, timeout: float | None = None):
        if timeout is None:
            try:
                timeout = float(os.environ.get("ISOLATION_LOCK_TIMEOUT_S", LOCK_TIMEOUT_S))
            except ValueError:
                timeout = LOCK_TIMEOUT_S
        self.timeout = timeout
        self.fd = -1

    def __enter__(self) -> "HostLock":
        path = os.path.join(state_dir(), "lock")
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise CniError(IO_FAILURE, f"cannot open lock {path}: {exc.strerror}") from None
        deadline = time.monotonic() + self.timeout
        pause = 0.001
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise CniError(IO_FAILURE, f"cannot lock {path}: {exc.strerror}") from None
            if time.monotonic() >= deadline:
                os.close(self.fd)
                raise CniError(TRY_AGAIN_LATER, f"timed out after {self.timeout:.0f}s waiting for {path}")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def __exit__(self, *exc_info) -> None:
        os.close(self.fd)  # closing releases the flock
