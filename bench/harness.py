"""What the benchmarks in bench/ share: namespaces, the timing worker, cleanup, statistics.

bench/cni_latency.py and bench/scale.py both time a CNI plugin inside network
namespaces they make themselves, and need the same machinery around that. It lives here
once, so that both measure in exactly the same way and a fix reaches both; what each
benchmark measures, and why, is in its own docstring.

Why it works this way:

* Nothing touches the root network namespace. Every name carries the caller's random
  per-run prefix, and add_namespaces() records a namespace in `made` before it exists,
  so cleanup() removes whatever got made, also after a failure or Ctrl-C/SIGTERM.
* Only the plugin process is timed. A Worker is a forked, single-threaded process that
  enters one namespace once (ctypes setns in its main thread, which moves the whole
  process: every child, and every thread it starts later, is born there) and runs what
  the coordinator sends it with subprocess.run between two perf_counter_ns readings.
  `ip netns exec` (fork, unshare, remount of /sys) is never on the clock, and the pipe
  to the coordinator is not either. The coordinator is single-threaded, so a plain fork
  is safe and cheap; the child closes every descriptor but its own pipe end, so no
  worker holds the pipe of another open.
* The pipe protocol. The worker first answers ("ready", netns_key()), the namespace's
  name for our plugin's state directory under /run/isolation, or ("error", text). Then
  ("run", (argv, env, stdin)) -> ("done", result), and ("many", (jobs, parallel)) ->
  ("done", [result, ...]) with `parallel` jobs at a time on threads (untimed bulk work);
  None asks it to leave. A result is (duration ns, exit code, stdout, stderr), the exit
  code a string when the process could not run; the coordinator checks every one
  (check()) and the first failure aborts the run with the plugin's input and output:
  statistics of failures would be meaningless.
* Signals. Ctrl-C reaches the whole process group. A worker ignores SIGINT with a no-op
  Python handler (not SIG_IGN, which exec would hand down: the plugins still die on it)
  and leaves on SIGTERM: subprocess.run kills its child on the way out, and the threads
  of a "many" batch finish the run they are in (so none outlives it) and skip the rest.
  The coordinator (run()) turns the first SIGINT/SIGTERM into an exception that unwinds
  into the cleanup, and ignores later ones, so they cannot cut the cleanup short.
* cleanup() stops the workers first, since a process inside a namespace keeps it alive
  after `netns del`: asked to leave, then SIGTERM after 2 s, SIGKILL after 5 s more,
  each our own child, by pid. Then it deletes the namespaces, the state directories our
  plugin made for them (named by the cookie each worker read inside its namespace), and
  the temp dir, and warns about any namespace with the prefix left behind.
* The upstream bridge plugin's conf is tests/lab/netlab.py's bridge_plugin() (imported, not
  copied), so the benchmarks attach containers exactly as the end-to-end tests do.
* Statistics: median, and p95 by the nearest-rank method (of 50 samples: the 48th
  smallest; of 10: the largest).
"""

import ctypes
import datetime
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the plugin package
sys.path.append(os.path.join(REPO, "tests", "lab"))  # tests/lab/netlab.py, imported as the tests import it
from netlab import bridge_plugin  # noqa: E402
from plugin.hoststate import STATE_ROOT, netns_key  # noqa: E402  (where the plugin keeps its state)

CNI_DIR = "/usr/lib/cni"
OUR_PLUGIN = os.path.join(REPO, "dist", "isolation", "isolation")
BUILD_HINT = "cd /work/main && /opt/isolation-venv/bin/pyinstaller --noconfirm --log-level WARN build.spec"
CNI_VERSION = "1.0.0"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
IP = shutil.which("ip") or "/usr/sbin/ip"
CLONE_NEWNET = 0x40000000


class BenchError(RuntimeError):
    pass


class Interrupted(BaseException):
    """SIGINT or SIGTERM, turned into an exception so that `finally` cleans up."""


def logger(tag: str):
    """A log function writing "[tag] message" lines to stderr."""

    def log(msg: str) -> None:
        print(f"[{tag}] {msg}", file=sys.stderr, flush=True)

    return log


def sh(*argv: str, check: bool = True, stdin: str | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, check=check, capture_output=True, text=True, timeout=timeout)


# --- the worker process (runs inside its namespace) ---------------------------------------------


def enter_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


STOPPING = []  # set in a worker on SIGTERM: queued "many" jobs are skipped, running ones finish


def timed_run(argv: list[str], env: dict, stdin: bytes, timeout: float) -> tuple:
    """(duration ns, exit code, stdout, stderr) of one process; exit code is a str if it could not run."""
    if STOPPING:
        return 0, "skipped: worker stopping", b"", b""
    try:
        t0 = time.perf_counter_ns()
        proc = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=timeout)
        t1 = time.perf_counter_ns()
    except Exception as exc:
        return 0, f"could not run: {type(exc).__name__}: {exc}", b"", b""
    return t1 - t0, proc.returncode, proc.stdout, proc.stderr


def _on_term(*_) -> None:
    """In a worker: leave. subprocess.run in the main thread kills its child on the way out;
    "many" threads finish the plugin run they are in (so none outlives us) and skip the rest."""
    STOPPING.append(True)
    sys.exit(143)


def _serve(netns: str, conn, timeout: float) -> None:
    """Live in `netns` and run what the coordinator asks, timing each run (protocol: module docstring)."""
    signal.signal(signal.SIGINT, lambda *_: None)  # the coordinator handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, _on_term)
    try:
        enter_netns(netns)
        conn.send(("ready", netns_key()))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        req = conn.recv()
        if req is None:
            return
        kind, payload = req
        if kind == "run":
            conn.send(("done", timed_run(*payload, timeout)))
        elif kind == "rss":  # the peak resident set of any process run here so far, in KiB
            conn.send(("done", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
        else:
            jobs, parallel = payload
            if parallel <= 1:
                results = [timed_run(*job, timeout) for job in jobs]
            else:
                with ThreadPoolExecutor(parallel) as pool:
                    results = list(pool.map(lambda job: timed_run(*job, timeout), jobs))
            conn.send(("done", results))


# --- the coordinator's side ---------------------------------------------------------------------


def failure_text(what: str, stdin: bytes, result: tuple) -> str:
    _, rc, out, err = result
    return (
        f"{what} failed (exit {rc})\n--- stdin ---\n{stdin.decode(errors='replace')}\n"
        f"--- stdout ---\n{out.decode(errors='replace')}\n--- stderr ---\n{err.decode(errors='replace')}"
    )


def check(what: str, stdin: bytes, result: tuple, want_json: bool) -> tuple:
    """`result` if the process exited 0 (and, with want_json, printed JSON); else BenchError."""
    rc = result[1]
    if rc == 0 and want_json:
        try:
            json.loads(result[2])
        except ValueError:
            rc = "0 but stdout is not JSON"
    if rc != 0:
        raise BenchError(failure_text(what, stdin, (result[0], rc, result[2], result[3])))
    return result


class Worker:
    """The coordinator's handle on one namespace's worker process."""

    def __init__(self, key: str, netns: str, timeout: float):
        self.key = key
        self.netns = netns
        self.timeout = timeout  # seconds one process may run before the worker gives up on it
        self.pid = None
        self.conn = None
        self.state_key = None  # netns_key() inside the namespace

    def start(self) -> None:
        """Fork the worker. The coordinator is single-threaded, so a plain fork is safe and cheap."""
        self.conn, child = Pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                keep = child.fileno()  # nothing else of the coordinator's: no pipe ends of other workers
                os.closerange(3, keep)
                os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
                _serve(self.netns, child, self.timeout)
                code = 0
            finally:
                os._exit(code)
        self.pid = pid
        child.close()
        reply = self.conn.recv()
        if reply[0] != "ready":
            raise BenchError(f"worker for {self.netns}: {reply[1]}")
        self.state_key = reply[1]

    def send(self, argv: list[str], env: dict, stdin: bytes) -> None:
        """Start one process in the namespace; its result comes with result() or receive()."""
        self.conn.send(("run", (argv, env, stdin)))

    def result(self) -> tuple:
        """The unchecked (duration ns, exit code, stdout, stderr) of the last send()."""
        return self.conn.recv()[1]

    def receive(self, what: str, stdin: bytes, want_json: bool = False) -> tuple[int, bytes]:
        """The (duration ns, stdout) of the last send(); any failure raises with the process's output."""
        ns, _, out, _ = check(f"[{self.key}] {what}", stdin, self.result(), want_json)
        return ns, out

    def run(self, what: str, argv: list[str], env: dict | None = None, stdin: bytes = b"", want_json=False) -> tuple:
        """(duration ns, stdout) of one process in this namespace (env: PATH only by default)."""
        self.send(argv, {"PATH": SYSTEM_PATH} if env is None else env, stdin)
        return self.receive(what, stdin, want_json)

    def peak_rss_kib(self) -> int:
        """The largest peak RSS of the processes this worker ran (they are its only children)."""
        self.conn.send(("rss", None))
        return self.conn.recv()[1]

    def send_many(self, jobs: list[tuple], parallel: int) -> None:
        """Start (argv, env, stdin) jobs, `parallel` at a time; the results come with receive_many()."""
        self.conn.send(("many", (jobs, parallel)))

    def receive_many(self, whats: list[str], jobs: list[tuple], want_json: bool) -> list[int]:
        reply = self.conn.recv()
        for what, job, result in zip(whats, jobs, reply[1]):
            check(f"[{self.key}] {what}", job[2], result, want_json)
        return [r[0] for r in reply[1]]


def stop_workers(workers: list[Worker]) -> None:
    """Ask every worker to leave; those that do not within 2 s (busy with a batch) get SIGTERM,
    then SIGKILL after 5 s more. Our own children, by pid."""
    live = [w for w in workers if w.pid is not None]
    for w in live:
        try:
            w.conn.send(None)
        except OSError:
            pass
    for sig, grace in ((None, 2.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 3600.0)):
        if sig is not None:
            for w in live:
                os.kill(w.pid, sig)
        deadline = time.monotonic() + grace
        while live and time.monotonic() < deadline:
            for w in list(live):
                if os.waitpid(w.pid, os.WNOHANG)[0]:
                    w.pid = None
                    live.remove(w)
            time.sleep(0.01)
        if not live:
            return


# --- namespaces, confs, the run and its cleanup -------------------------------------------------


def add_namespaces(names: list[str], made: list[str]) -> None:
    """Create network namespaces in one `ip -batch -`, each recorded in `made` before it exists:
    cleanup() removes whatever got made."""
    made.extend(names)
    sh(IP, "-batch", "-", stdin="".join(f"netns add {ns}\n" for ns in names))


def lo_up(netns: str) -> None:
    sh(IP, "-n", netns, "link", "set", "lo", "up")


FAMILIES = {"ipv4": ("10.",), "dual": ("10.", "fd")}  # grid name -> the subnets' prefixes it keeps


def bridge_conf(network: str, bridge: str, index: int, datadir: str, ip_masq: bool = False,
                families: str = "dual") -> dict:
    """The upstream bridge plugin's conf (10.77.<index>.0/24, and fd77:<index>::/64 for the dual
    grid, from host-local); `ip_masq` as the default networks of nerdctl and Podman have it (it
    turns conntrack on). The IPv4-only grid is what those default networks are; on a dual-stack
    one the Go firewall plugin repeats every step with ip6tables, so it flatters us."""
    conf = {"cniVersion": CNI_VERSION, "name": network, **bridge_plugin(bridge, index, datadir), "ipMasq": ip_masq}
    keep = FAMILIES[families]
    ipam = conf["ipam"]
    ipam["ranges"] = [r for r in ipam["ranges"] if r[0]["subnet"].startswith(keep)]
    ipam["routes"] = [r for r in ipam["routes"] if ":" not in r["dst"] or "fd" in keep]
    return conf


def preflight(ap, args, cni_plugins: tuple[str, ...]) -> None:
    """What must hold before anything is made: root, our binary (made absolute), the upstream plugins."""
    if os.geteuid() != 0:
        ap.error("must run as root (it creates network namespaces)")
    args.plugin = os.path.abspath(args.plugin)
    if not os.access(args.plugin, os.X_OK):
        ap.error(f"{args.plugin} is missing; build it with: {BUILD_HINT}")
    for path in (os.path.join(CNI_DIR, p) for p in cni_plugins):
        if not os.access(path, os.X_OK):
            ap.error(f"{path} is missing (Debian package containernetworking-plugins)")


def cleanup(prefix: str, made: list[str], workers: list[Worker], tmp: str, log) -> None:
    stop_workers(workers)  # a worker inside a namespace would keep it alive after `netns del`
    if made:
        sh(IP, "-force", "-batch", "-", check=False, stdin="".join(f"netns del {ns}\n" for ns in reversed(made)))
    for w in workers:  # the state dirs our plugin made for these (now gone) namespaces
        if w.state_key and w.state_key.startswith(("ns-", "ino-")):
            state = os.path.join(STATE_ROOT, w.state_key)
            if os.path.isdir(state):
                shutil.rmtree(state, ignore_errors=True)
                log(f"removed our plugin's state directory {state}")
    shutil.rmtree(tmp, ignore_errors=True)
    left = [ns for ns in sh(IP, "netns", "list", check=False).stdout.split() if ns.startswith(prefix)]
    if left:
        log(f"WARNING: namespaces left behind: {' '.join(left)}")


def run(benchmark, clean_up, render, as_json: bool, log) -> int:
    """benchmark() -> result, then clean_up() whatever happened; prints the result (JSON or
    render(result)) and returns the exit code: 0, 1 after a failure, 130 after a signal."""
    signals: list[int] = []

    def on_signal(signum, _frame):
        """Ctrl-C or SIGTERM: unwind into `finally` once; later signals cannot cut the cleanup short."""
        signals.append(signum)
        if len(signals) == 1:
            raise Interrupted()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    failure = None
    try:
        try:
            result = benchmark()
        except BenchError as exc:
            failure = str(exc)
        except subprocess.CalledProcessError as exc:
            failure = f"{' '.join(exc.cmd)} failed (exit {exc.returncode}): {exc.stderr}"
        except subprocess.TimeoutExpired as exc:
            failure = f"{' '.join(exc.cmd)} timed out after {exc.timeout} s"
    except Interrupted:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("cleaning up")
        clean_up()
    if signals:  # a plugin hit by the same Ctrl-C may have "failed" first: that is no finding
        print(f"interrupted by signal {signals[0]}", file=sys.stderr)
        return 130
    if failure:
        print(f"benchmark aborted: {failure}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if as_json else render(result))
    return 0


# --- statistics and reporting -------------------------------------------------------------------


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def summary(ns: list[int]) -> dict:
    """Durations in ns -> median and p95 in ms, with the samples."""
    ms = [x / 1e6 for x in ns]
    return {"median_ms": statistics.median(ms), "p95_ms": p95(ms), "samples_ms": ms}


def stamp() -> dict:
    """When and where: the first keys of a result."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }


def headline(title: str, r: dict) -> str:
    return f"{title}, {r['date']}, kernel {r['machine']['kernel']}, {r['machine']['cpus']} CPUs"


def load(v: list[float]) -> str:
    """A load average triple as printed."""
    return " ".join(f"{x:.2f}" for x in v)


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    fmt = lambda cells: " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [fmt(head), "-+-".join("-" * w for w in widths), *map(fmt, rows)]
