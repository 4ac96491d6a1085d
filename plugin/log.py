"""One line per invocation (verb, container, network, bridge, backend, result, duration):
off unless a destination is configured.

Runtimes show a plugin's stderr to users (Podman prints it on the terminal) and
stdout is the protocol, so the line goes to a file of the operator's choosing, in
one O_APPEND write that cannot interleave with a concurrent run's line, or to the
local syslog socket. The conflist's `logFile`/`logLevel` win; the environment
(`ISOLATION_LOG_FILE`, `ISOLATION_LOG_LEVEL`) gives defaults for every network,
and also covers invocations whose configuration never validated. Logging never
fails an invocation.
"""

import os
import socket
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


def record(where: str | None, level: str, command: str, fields: dict, started: float) -> None:
    failed = fields.get("result") == "error" or bool(fields.get("teardown"))
    if not where or level == "off" or (level == "error" and not failed):
        return
    parts = [f"{k}={_quote(v)}" for k, v in fields.items() if v not in (None, "")]
    parts.append(f"duration_ms={(time.monotonic() - started) * 1000:.1f}")
    message = f"isolation[{os.getpid()}]: {command} " + " ".join(parts)
    try:
        if where == SYSLOG:
            priority = FACILITY_DAEMON * 8 + SEVERITY["error" if failed else "ok"]
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(f"<{priority}>{message}".encode(errors="replace"), SYSLOG_SOCKET)
            return
        append_line(where, f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}Z {message}")
    except OSError:
        pass


def append_line(path: str, line: str) -> None:
    """One O_APPEND write (lines of concurrent writers never interleave); file mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"{line}\n".encode(errors="replace"))
    finally:
        os.close(fd)


def _quote(value) -> str:
    text = str(value).replace("\n", " ")
    return f'"{text}"' if (" " in text or '"' in text or not text) else text
