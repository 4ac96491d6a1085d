"""One line per invocation (verb, container, network, bridge, backend, result, duration):
off unless a destination is configured.

Runtimes show a plugin's stderr to users (Podman prints it on the terminal) and
stdout is the protocol, so the line goes to a file of the operator's choosing, in
one O_APPEND write that cannot interleave with a concurrent run's line, or to the
local syslog socket. The conflist's `logFile`/`logLevel` win; the environment
(`ISOLATION_LOG_FILE`, `ISOLATION_LOG_LEVEL`) gives defaults for every network,
and also covers invocations whose configuration never validated (then the
configuration's own `logFile`/`logLevel` are used when they are valid by themselves).

Logging never fails or delays an invocation, and the path is not trusted: the file is
opened without following a symlink and without blocking (a FIFO would otherwise hang
the run), only a regular file owned by us is written, and it is made 0600. Anything
else is skipped silently.
"""

import os
import stat
import time

SYSLOG = "syslog"
SYSLOG_SOCKET = "/dev/log"
LEVELS = ("info", "error", "off")  # info: every invocation; error: failed ones only
FACILITY_DAEMON = 3
SEVERITY = {"ok": 6, "error": 3}  # informational, error


def destination(env: dict, log_file: str | None, log_level: str | None) -> tuple[str | None, str]:
    """(where, level): the configuration's values, else the environment's, else nothing."""
    where = log_file or env.get("ISOLATION_LOG_FILE") or None
    level = log_level or env.get("ISOLATION_LOG_LEVEL") or "info"
    if where is not None and where != SYSLOG and not where.startswith("/"):
        where = None  # only the model validates the conflist; the environment is checked here
    return where, level if level in LEVELS else "info"


def from_raw(raw: dict) -> tuple[str | None, str | None]:
    """`logFile` and `logLevel` of a configuration that did not validate as a whole, each kept
    only if it is valid by itself (as plugin.model would accept it)."""
    where, level = raw.get("logFile"), raw.get("logLevel")
    if not (isinstance(where, str) and (where == SYSLOG or (where.startswith("/") and "\0" not in where))):
        where = None
    return where, level if level in LEVELS else None


def record(where: str | None, level: str, command: str, fields: dict, started: float) -> None:
    failed = fields.get("result") == "error" or bool(fields.get("teardown"))
    if not where or level == "off" or (level == "error" and not failed):
        return
    parts = [f"{k}={_quote(v)}" for k, v in fields.items() if v not in (None, "")]
    parts.append(f"duration_ms={(time.monotonic() - started) * 1000:.1f}")
    message = f"isolation[{os.getpid()}]: {command} " + " ".join(parts)
    try:
        if where == SYSLOG:
            import socket  # only here: it imports selectors and enum, ~4 ms a run on a slow machine

            priority = FACILITY_DAEMON * 8 + SEVERITY["error" if failed else "ok"]
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.setblocking(False)  # a stalled syslog daemon drops the line, never delays the run
                s.sendto(f"<{priority}>{message}".encode(errors="replace"), SYSLOG_SOCKET)
            return
        append_line(where, f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}Z {message}")
    except (OSError, ValueError):
        pass


def append_line(path: str, line: str) -> None:
    """One O_APPEND write (lines of concurrent writers never interleave) to a regular file of
    ours, made 0600; OSError for anything else (a symlink, a FIFO, a device, another's file)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise OSError(f"{path} is owned by uid {st.st_uid}")
        if st.st_nlink > 1:  # a hard link planted to another file of ours
            raise OSError(f"{path} has {st.st_nlink} links")
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        os.write(fd, f"{line}\n".encode(errors="replace"))
    finally:
        os.close(fd)


def _quote(value) -> str:
    text = str(value).replace("\n", " ")
    return f'"{text}"' if (" " in text or '"' in text or not text) else text
