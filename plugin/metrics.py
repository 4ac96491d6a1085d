"""The plugin's Prometheus metrics: what they are, how the agent keeps and publishes them,
and how `isolation metrics` computes them without the agent.

Two kinds of series. The kernel's (drops per bridge and reason, attachments per network)
are read, whenever they are published, from the registry and the backends' counters: the
kernel keeps them, so the agent and `isolation metrics` give the same numbers as
`isolation status --json`. The agent's own (requests served, their latency, repairs,
backend errors) exist only in a running agent: it counts them in memory, at the cost of
a dict update per request, and writes them with the kernel's series to
/run/isolation/ns-<cookie>/metrics.prom (FILENAME) at start, every EVERY_S seconds and
right after a repair, from a thread of its own. `isolation metrics` copies them from
that file while it is fresh (written within FRESH_S) and says so when it omits them.

Every family, with its help text (what `# HELP` says), is in FAMILIES below; README's
"Seeing what is blocked" lists them with an example.
"""

import os
import time

from plugin.promtext import Family, Histogram, escape_help, families_in, render
from plugin.reasons import REASONS

FILENAME = "metrics.prom"
EVERY_S = 10.0  # the agent's publishing interval; ISOLATION_AGENT_METRICS_EVERY_S overrides it
FRESH_S = 60.0  # `isolation metrics` ignores an agent file written longer ago (the agent is gone)
LOCK_TIMEOUT_S = 5.0  # the agent waits this long for the HostLock, then publishes at the next tick
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)  # seconds
VERBS = ("ADD", "CHECK", "DEL", "GC", "STATUS", "VERSION")  # any other CNI_COMMAND is counted as "other"
BACKENDS = ("nftables", "iptables")
BACKEND_ERROR_CODES = (100, 103)  # errors.ENFORCEMENT_FAILED, errors.BACKEND_UNAVAILABLE

DROPS = "isolation_dropped_packets_total"
ATTACHMENTS = "isolation_attachments"
TIMESTAMP = "isolation_metrics_timestamp_seconds"
REQUESTS = "isolation_agent_requests_total"
LATENCY = "isolation_agent_request_duration_seconds"
REPAIRS = "isolation_agent_repairs_total"
RECONCILE_FAILURES = "isolation_agent_reconcile_failures_total"
BACKEND_ERRORS = "isolation_agent_backend_errors_total"
AGENT_START = "isolation_agent_start_time_seconds"

FAMILIES = {  # name: (type, help); the order in which they are written
    TIMESTAMP: ("gauge", "Unix time at which the numbers below were read (the agent rewrites its file "
                "every 10 s by default, and after each repair)."),
    DROPS: ("counter", "Packets the isolation rules dropped, per backend, bridge and reason (cross-network, "
            "intra-bridge, egress-deny, host-access, anti-spoofing); network: the networks attached to the "
            "bridge, comma-separated when several share it. Every reason of every registered bridge "
            "(0: none counted); none while the backend's counters cannot be read. Kernel counters: "
            "they restart from 0 when the bridge's rules are rebuilt."),
    ATTACHMENTS: ("gauge", "Container interfaces registered per backend, bridge and network."),
    REQUESTS: ("counter", "Plugin invocations the agent served, per CNI verb and result (ok, error)."),
    LATENCY: ("histogram", "Time the agent took to serve an invocation, from its arrival until its answer "
              "was ready, per CNI verb (waiting for the host-wide lock included)."),
    REPAIRS: ("counter", "Repairs the agent made: isolation the kernel lacked restored, attachments of "
              "vanished bridges or ports forgotten, rules or grants nothing needed removed."),
    RECONCILE_FAILURES: ("counter", "Reconcile passes of the agent that failed (see its log)."),
    BACKEND_ERRORS: ("counter", "Backend errors the agent met, per backend and operation: request (an "
                     "invocation failed with CNI error 100 or 103: rules not applied, backend unusable) "
                     "or read (the drop counters could not be read)."),
    AGENT_START: ("gauge", "Unix time at which the agent started (its counters start from zero then)."),
}
KERNEL = (TIMESTAMP, DROPS, ATTACHMENTS)
AGENT_ONLY = (REQUESTS, LATENCY, REPAIRS, RECONCILE_FAILURES, BACKEND_ERRORS, AGENT_START)


def family(name: str) -> Family:
    kind, text = FAMILIES[name]
    return Family(name, kind, text)


# --- the kernel's series -------------------------------------------------------------------
class Snapshot:
    """Registered attachments and drop counters, read at one moment (`taken`, Unix time)."""

    def __init__(self, taken: float):
        self.taken = taken
        self.attachments: dict[tuple[str, str, str], int] = {}  # (backend, bridge, network) -> count
        self.drops: dict[tuple[str, str, str], dict[str, int]] = {}  # (backend, bridge, networks) -> reason -> n
        self.errors: list[tuple[str, str]] = []  # (backend, why its counters are missing)

    def families(self) -> list[Family]:
        stamp = family(TIMESTAMP).add(round(self.taken, 3))
        drops, atts = family(DROPS), family(ATTACHMENTS)
        for (backend, bridge, networks), counts in sorted(self.drops.items()):
            for reason in REASONS:  # the vocabulary's order; a reason not counted has no series
                if reason in counts:
                    drops.add(counts[reason], backend=backend, bridge=bridge, network=networks, reason=reason)
        for (backend, bridge, network), count in sorted(self.attachments.items()):
            atts.add(count, backend=backend, bridge=bridge, network=network)
        return [stamp, drops, atts]


def snapshot(attachments, backends: dict, taken: float | None = None) -> Snapshot:
    """The kernel's series for `attachments` (registry.Attachment), with `backends` mapping each
    backend they use to the backend object, or to why it is unusable (a string). Drops come
    from Backend.drops(): bridge -> reason -> packets; every registered bridge gets all five
    reasons, 0 where nothing was counted (a series that exists from the start lets rate()
    see the first drop), while a backend that cannot be read gets none and is named in
    `errors`: `status --json` shows the same numbers, and null for the latter."""
    from plugin.errors import CniError

    snap = Snapshot(time.time() if taken is None else taken)
    networks: dict[tuple[str, str], set[str]] = {}
    members: dict[tuple[str, str], set[str]] = {}  # a routed segment's interfaces (iptables counts per member)
    for att in attachments:
        key = (att.backend, att.bridge, att.network)
        snap.attachments[key] = snap.attachments.get(key, 0) + 1
        networks.setdefault((att.backend, att.bridge), set()).add(att.network)
        if getattr(att, "routed", False) and att.port:
            members.setdefault((att.backend, att.bridge), set()).add(att.port)
    for name in sorted({backend for backend, _ in networks}):
        backend = backends.get(name, "not asked")
        if isinstance(backend, str):
            snap.errors.append((name, f"the backend is not usable here: {backend}"))
            continue
        try:
            counts = backend.drops()
        except CniError as err:
            snap.errors.append((name, err.msg + (f" ({err.details})" if err.details else "")))
            continue
        if not isinstance(counts, dict) or not all(
                isinstance(per, dict) and all(type(n) is int for n in per.values()) for per in counts.values()):
            snap.errors.append((name, "its drop counters are not per bridge and reason"))
            continue
        for (on, bridge), names in sorted(networks.items()):
            if on == name:  # every reason, 0 where none was counted (as `status` shows it)
                per_reason = dict(counts.get(bridge, {}))
                for m in sorted(members.get((on, bridge), ())):
                    for r, n in counts.get(m, {}).items():
                        per_reason[r] = per_reason.get(r, 0) + n
                snap.drops[(name, bridge, ",".join(sorted(names)))] = {r: per_reason.get(r, 0) for r in REASONS}
    return snap


def read_kernel(lock_timeout: float | None = None) -> Snapshot:
    """The snapshot of this network namespace. The registry is read under the HostLock (as
    it always is); the counters after it is released: reading them changes nothing (the
    shared libnftables context has a lock of its own), and on iptables it takes two
    iptables-save runs (~16 ms) that the agent's requests would otherwise wait behind."""
    from plugin.backends import make
    from plugin.hoststate import HostLock, state_dir
    from plugin.registry import Registry

    with HostLock(timeout=lock_timeout):
        atts = list(Registry.load(state_dir()).attachments.values())
    backends = {}
    for name in sorted({a.backend for a in atts}):
        backend = make(name)
        backends[name] = backend.unavailable_reason() or backend
    return snapshot(atts, backends)


# --- the agent's own series ----------------------------------------------------------------
class AgentMetrics:
    """What the agent counts while it runs. Every update is a few dict operations under a
    lock of its own: serving a request never waits for publishing."""

    def __init__(self):
        import threading

        self._lock = threading.Lock()
        self.due = threading.Event()  # set after a repair: the publisher writes at once
        self.started = time.time()
        self.requests: dict[tuple[str, str], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.repairs = 0
        self.reconcile_failures = 0
        self.backend_errors = {(b, op): 0 for b in BACKENDS for op in ("request", "read")}

    def served(self, verb, out, rc: int, seconds: float, stdin: str) -> None:
        """One invocation answered: `out` and `rc` as plugin.cni.run returned them."""
        verb = verb if verb in VERBS else "other"
        code = out.get("code") if rc and isinstance(out, dict) else None
        backend = request_backend(stdin) if code in BACKEND_ERROR_CODES else None  # only on that rare path
        with self._lock:
            key = (verb, "ok" if rc == 0 else "error")
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.setdefault(verb, Histogram(LATENCY_BUCKETS)).observe(seconds)
            if backend is not None:
                self.backend_errors[(backend, "request")] = self.backend_errors.get((backend, "request"), 0) + 1

    def repaired(self, count: int) -> None:
        with self._lock:
            self.repairs += count
        if count:
            self.due.set()

    def reconcile_failed(self) -> None:
        with self._lock:
            self.reconcile_failures += 1

    def unreadable(self, backend: str) -> None:
        with self._lock:
            self.backend_errors[(backend, "read")] = self.backend_errors.get((backend, "read"), 0) + 1

    def families(self) -> list[Family]:
        with self._lock:  # copied, then rendered without the lock
            requests, repairs, failures = dict(self.requests), self.repairs, self.reconcile_failures
            latency = {verb: h.copy() for verb, h in self.latency.items()}
            errors = dict(self.backend_errors)
        req, lat = family(REQUESTS), family(LATENCY)
        for (verb, result), n in sorted(requests.items()):
            req.add(n, verb=verb, result=result)
        for verb, histogram in sorted(latency.items()):
            lat.add_histogram(histogram, verb=verb)
        errs = family(BACKEND_ERRORS)
        for (backend, operation), n in sorted(errors.items()):
            errs.add(n, backend=backend, operation=operation)
        return [req, lat, family(REPAIRS).add(repairs), family(RECONCILE_FAILURES).add(failures), errs,
                family(AGENT_START).add(round(self.started, 3))]


def request_backend(stdin: str) -> str:
    """The backend an invocation ran on, from its configuration (`backend`), and for `auto`
    from what auto decided in this namespace: "auto" while nothing was decided, "unknown"
    for a configuration that names none."""
    from plugin import jsonio as json
    from plugin.backends import CHOICE
    from plugin.errors import CniError
    from plugin.hoststate import read_private, state_dir

    try:
        configured = json.loads(stdin).get("backend", "auto")
    except (ValueError, AttributeError):
        return "unknown"
    if configured != "auto":
        return configured if configured in BACKENDS else "unknown"
    try:
        chosen = read_private(os.path.join(state_dir(), CHOICE)).strip()
    except (OSError, CniError):
        return "auto"
    return chosen if chosen in BACKENDS else "auto"


def agent_file() -> str:
    from plugin.hoststate import state_dir

    return os.path.join(state_dir(), FILENAME)


class Publisher:
    """The agent's metrics file: written whole (plugin.hoststate.write_private: temporary file,
    fsync, rename, 0600, no symlink followed) at start, every `every_s` seconds and as soon as
    a repair is counted; removed when the agent stops, so that a file left behind is one an
    agent died with (`isolation metrics` and node exporter's mtime show its age)."""

    def __init__(self, metrics: AgentMetrics, log, every_s: float | None = None):
        import threading

        self.metrics, self.log = metrics, log
        if every_s is None:
            try:
                every_s = float(os.environ.get("ISOLATION_AGENT_METRICS_EVERY_S", EVERY_S))
            except ValueError:
                every_s = EVERY_S
        self.every_s = every_s if every_s > 0 else EVERY_S
        self.path = agent_file()
        self._closed = False
        self._writing = threading.Lock()  # close() never races a write: no file outlives the agent
        self._trouble = None

    def run(self, stop) -> None:
        """Until `stop` (a threading.Event) is set or close() is called."""
        self.log(f"metrics: {self.path}, written every {self.every_s:g} s and after each repair")
        while not stop.is_set() and not self._closed:
            self.publish()
            self.metrics.due.wait(self.every_s)
            self.metrics.due.clear()

    def publish(self) -> None:
        from plugin.errors import CniError
        from plugin.hoststate import write_private

        try:
            snap = read_kernel(LOCK_TIMEOUT_S)
            for backend, _ in snap.errors:
                self.metrics.unreadable(backend)
            text = render(snap.families() + self.metrics.families(),
                          [f"{backend}: no drop counters: {why}" for backend, why in snap.errors])
            with self._writing:
                if not self._closed:
                    write_private(self.path, text.encode())
            trouble = "; ".join(f"{b}: {why}" for b, why in snap.errors) or None
        except CniError as err:
            trouble = f"{err.msg} (tried again in {self.every_s:g} s)"
        except Exception as exc:  # the publisher never takes the agent down
            trouble = f"{type(exc).__name__}: {exc}"
        if trouble != self._trouble:  # each new trouble once, not every interval
            self.log(f"metrics {self.path}: {trouble}" if trouble else f"metrics {self.path}: written again")
            self._trouble = trouble

    def close(self) -> None:
        with self._writing:
            self._closed = True
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self.metrics.due.set()


# --- `isolation metrics` -------------------------------------------------------------------
def agent_series(path: str, now: float) -> tuple[list[str], str | None]:
    """The lines of the agent's own families in its file at `path`, or ([], why not)."""
    from plugin.errors import CniError
    from plugin.hoststate import open_private

    try:
        fd = open_private(path)
    except FileNotFoundError:
        return [], f"no agent metrics file at {path} (is `isolation agent` running?)"
    except (OSError, CniError) as exc:
        return [], f"{path} is not used: {getattr(exc, 'msg', None) or exc}"
    with os.fdopen(fd, "rb") as f:
        age = now - os.fstat(f.fileno()).st_mtime
        text = f.read().decode("utf-8", "replace")
    if age > FRESH_S:
        return [], f"{path} was last written {age:.0f} s ago (stale after {FRESH_S:g} s: the agent is not running)"
    found = families_in(text)
    lines = [line for name in AGENT_ONLY for line in found.get(name, [])]
    return (lines, None) if lines else ([], f"{path} holds none of them")


def command_output(now: float | None = None) -> tuple[str, bool]:
    """What `isolation metrics` prints, and whether every backend's counters were read."""
    now = time.time() if now is None else now
    snap = read_kernel()
    comments = [f"{backend}: no drop counters: {why}" for backend, why in snap.errors]
    lines, why_not = agent_series(agent_file(), now)
    if why_not:
        comments.append(f"the agent's series ({', '.join(AGENT_ONLY)}) are omitted: {why_not}")
    text = render(snap.families())
    text += "".join(line + "\n" for line in lines)
    text += "".join(f"# {escape_help(c)}\n" for c in comments)
    return text, not snap.errors
