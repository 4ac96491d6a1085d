"""One line per invocation, appended to the configured `logFile`: off by default.

Runtimes show a plugin's stderr to users (Podman prints it on the terminal) and
stdout is the protocol, so the log goes to a file of the operator's choosing, in
one O_APPEND write that cannot interleave with a concurrent run's line. Logging
never fails an invocation.
"""

import os
import time


def record(path: str | None, command: str, fields: dict, started: float) -> None:
    if not path:
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    parts = [f"{k}={_quote(v)}" for k, v in fields.items() if v not in (None, "")]
    parts.append(f"duration_ms={(time.monotonic() - started) * 1000:.1f}")
    line = f"{stamp}Z isolation[{os.getpid()}] {command} " + " ".join(parts) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line.encode(errors="replace"))
        finally:
            os.close(fd)
    except OSError:
        pass


def _quote(value) -> str:
    text = str(value).replace("\n", " ")
    return f'"{text}"' if (" " in text or '"' in text or not text) else text
