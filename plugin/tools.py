"""Finding and running the host's firewall tools, even with an empty environment.

Runtimes may exec the plugin with nothing but the CNI variables set, so PATH is
not to be relied upon: the usual system directories are searched after it.
"""

import os
import subprocess

SYSTEM_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin")
_ENV = {"PATH": ":".join(SYSTEM_DIRS), "LC_ALL": "C"}


def find(name: str) -> str | None:
    dirs = [d for d in os.environ.get("PATH", "").split(":") if d] + list(SYSTEM_DIRS)
    for d in dirs:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def start(argv: list[str], stdin: str | None = None) -> subprocess.Popen:
    """Start a tool with a clean environment; pair with finish()."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_ENV,
        text=True,
        close_fds=True,
    )


def finish(proc: subprocess.Popen, stdin: str | None = None) -> tuple[int, str, str]:
    out, err = proc.communicate(stdin)
    return proc.returncode, out, err


def run_all(jobs: list[tuple[list[str], str | None]]) -> list[tuple[int, str, str]]:
    """Run several tools at once (e.g. the IPv4 and IPv6 variants) and collect their results."""
    procs = [(start(argv, stdin), stdin) for argv, stdin in jobs]
    return [finish(proc, stdin) for proc, stdin in procs]
