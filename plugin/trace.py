"""Monotonic timestamps of one plugin run's phases, for bench/profile.py.

Off unless ISOLATION_TRACE names a file: then each run appends one line, its pid and
the phases it passed with their CLOCK_MONOTONIC time in ns (the clock every process
of the host shares, so the profiler can put them next to the moment it started the
run). The profiler turns them into the per-phase breakdown the README's Performance
section shows. Off, a stamp costs one call and one comparison.
"""

import os
import time

_PATH = os.environ.get("ISOLATION_TRACE") or None
_stamps: list = []


def stamp(phase: str) -> None:
    if _PATH is not None and len(_stamps) < 64:  # the agent runs many requests and never flushes
        _stamps.append((phase, time.monotonic_ns()))


def flush() -> None:
    """Append this run's line (one write, O_APPEND); never fails the run."""
    if _PATH is None or not _stamps:
        return
    stamp("exit")
    line = f"{os.getpid()} " + " ".join(f"{p}={t}" for p, t in _stamps) + "\n"
    try:
        fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass
