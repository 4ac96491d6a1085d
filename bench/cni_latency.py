"""Per-invocation latency of the frozen `isolation` plugin next to Debian's Go `firewall` plugin.

    sudo /opt/isolation-venv/bin/python bench/cni_latency.py [--bridges 5] [--containers 10]
        [--plugin dist/isolation/isolation] [--version-runs 40] [--json]

What is compared: our plugin with `{"type": "isolation"}` (ingressPolicy same-bridge by
default) and `/usr/lib/cni/firewall` with `{"type": "firewall", "backend": "iptables",
"ingressPolicy": "same-bridge"}`, the upstream feature ours replaces. Both are fed the
same thing a runtime would feed them: cniVersion 1.0.0, chained after the real upstream
bridge plugin, its result as prevResult.

Why it is built this way:

* Nothing touches the root network namespace. Every plugin, including the bridge plugin
  that builds the grid, runs in namespaces made here (names carry a random per-run
  prefix, all <= 15 characters); `finally` removes them, the temp dir (host-local's
  dataDir) and the state directory our plugin keeps under /run/isolation for its host
  namespace, also after a failure or Ctrl-C/SIGTERM.
* Two host namespaces, one per plugin, each with the same B bridges x C containers grid
  (dual-stack 10.77.N.0/24 + fd77:N::/64, isGateway, no masquerade). Each plugin writes
  iptables rules; in one namespace one plugin would find the other's chains already in
  place and do less work.
* Only the plugin process is timed. One worker process per host enters that host's
  namespace once (setns in its main thread) and runs the plugin with subprocess.run
  between two perf_counter_ns readings. `ip netns exec` (fork, unshare, remount of
  /sys) is never on the clock, and the pipe to the coordinating process is not either.
  Our plugin gets only the CNI_* variables (the harshest environment a runtime may
  give); the Go plugin additionally gets PATH, since it needs to find iptables.
* Interleaved, cell by cell, in one run: for each container ours and Go run back to
  back, the one going first alternating from cell to cell, so drift in machine load,
  page cache or CPU frequency hits both alike. The phases follow a container's life:
  ADD for every container, then CHECK for every one, VERSION a few dozen times, then
  DEL for every one. The grid (bridge + host-local ADDs) is built before the ADD phase
  so that the measured ADDs follow each other without setup in between.
* The grid is set up here rather than with tests/netlab.py's Lab, which also builds an
  "outside" peer, a TCP listener thread per container and bridge-nf settings that a
  latency run does not need, and which is the tests' helper to change as they need.
* A few untimed VERSION calls per plugin come first: they read the plugin versions and
  put both binaries in the page cache, as on a host that has started containers before.
* Every invocation's exit code is checked (and ADD/VERSION output must be JSON); the
  first failure aborts the run with the plugin's output. Statistics of failures would
  be meaningless.

Statistics: median, and p95 by the nearest-rank method (with 50 samples: the 48th
smallest). The ratio is ours/Go on the medians: below 1 means ours is faster.
"""

import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pipe

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from plugin.hoststate import STATE_ROOT, netns_key  # noqa: E402  (where the plugin keeps its state)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNI_DIR = "/usr/lib/cni"
GO_PLUGIN = os.path.join(CNI_DIR, "firewall")
OUR_PLUGIN = os.path.join(REPO, "dist", "isolation", "isolation")
BUILD_HINT = "cd /work/main && /opt/isolation-venv/bin/pyinstaller --noconfirm --log-level WARN build.spec"
CNI_VERSION = "1.0.0"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
IP = shutil.which("ip") or "/usr/sbin/ip"
CLONE_NEWNET = 0x40000000
TIMEOUT_S = 60
WARMUP_RUNS = 3

# The two contenders: key -> (their entry in the conflist, whether they get PATH)
CONTENDERS = {
    "ours": ({"type": "isolation"}, False),
    "go": ({"type": "firewall", "backend": "iptables", "ingressPolicy": "same-bridge"}, True),
}
VERBS = ("VERSION", "ADD", "CHECK", "DEL")  # table order; measured as ADD, CHECK, VERSION, DEL


class BenchError(RuntimeError):
    pass


class Interrupted(BaseException):
    """SIGINT or SIGTERM, turned into an exception so that `finally` cleans up."""


# --- the per-host worker process ------------------------------------------------------------


def enter_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def worker(netns: str, conn) -> None:
    """Live in `netns` and run what the coordinator asks, timing each run.

    Runs in a forked, single-threaded process: setns in its main thread moves the whole
    process, and every child it starts is born in `netns`.
    """
    # Ctrl-C reaches the whole process group: the coordinator handles it and stops us.
    # A no-op Python handler (not SIG_IGN) is reset by exec, so plugins still die on it.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # subprocess.run kills its child
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
        argv, env, stdin = req
        try:
            t0 = time.perf_counter_ns()
            proc = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=TIMEOUT_S)
            t1 = time.perf_counter_ns()
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("done", t1 - t0, proc.returncode, proc.stdout, proc.stderr))


class Host:
    """One host namespace, its worker, and the grid of containers in it."""

    def __init__(self, key: str, netns: str, plugin_path: str, datadir: str):
        self.key = key
        self.entry, self.with_path = CONTENDERS[key]
        self.netns = netns
        self.plugin_path = plugin_path
        self.datadir = datadir
        self.pid = None
        self.conn = None
        self.state_key = None
        self.cache: dict[str, dict] = {}  # container id -> bridge result (the prevResult)

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
                worker(self.netns, child)
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
        self.conn.send((argv, env, stdin))

    def receive(self, what: str, stdin: bytes, want_json: bool = False) -> tuple[int, bytes]:
        """The (duration ns, stdout) of the last request; any failure raises with the plugin's output."""
        reply = self.conn.recv()
        if reply[0] == "error":
            raise BenchError(f"[{self.key}] {what}: could not run: {reply[1]}")
        _, ns, rc, out, err = reply
        if rc == 0 and want_json:
            try:
                json.loads(out)
            except ValueError:
                rc = "0 but stdout is not JSON"
        if rc != 0:
            raise BenchError(
                f"[{self.key}] {what} failed (exit {rc})\n"
                f"--- stdin ---\n{stdin.decode(errors='replace')}\n"
                f"--- stdout ---\n{out.decode(errors='replace')}\n--- stderr ---\n{err.decode(errors='replace')}"
            )
        return ns, out

    def run(self, what: str, argv: list[str], env: dict, stdin: bytes, want_json: bool = False):
        self.send(argv, env, stdin)
        return self.receive(what, stdin, want_json)

    def stop(self) -> None:
        """Ask the worker to leave; if it does not, SIGTERM then SIGKILL it (our own child, by pid)."""
        if self.pid is None:
            return
        try:
            self.conn.send(None)
        except OSError:
            pass
        for sig, grace in ((None, 2.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
            if sig is not None:
                os.kill(self.pid, sig)
            deadline = time.monotonic() + (grace or 3600)
            while time.monotonic() < deadline:
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    self.pid = None
                    return
                time.sleep(0.01)

    # --- CNI plumbing -------------------------------------------------------------------------
    def env(self, command: str, container: dict | None, with_path: bool) -> dict:
        env = {"CNI_COMMAND": command, "CNI_PATH": CNI_DIR}
        if container is not None:
            env.update(
                CNI_CONTAINERID=container["id"],
                CNI_NETNS=f"/run/netns/{container['netns'][self.key]}",
                CNI_IFNAME="eth0",
                CNI_ARGS="IgnoreUnknown=1",
            )
        if with_path:
            env["PATH"] = SYSTEM_PATH
        return env

    def bridge_add(self, container: dict) -> None:
        """Untimed grid setup: the upstream bridge plugin (and host-local) for one container."""
        self.send([os.path.join(CNI_DIR, "bridge")], self.env("ADD", container, True), self._bridge_conf(container))

    def bridge_added(self, container: dict) -> None:
        stdin = self._bridge_conf(container)
        _, out = self.receive(f"bridge ADD {container['id']}", stdin, want_json=True)
        self.cache[container["id"]] = json.loads(out)

    def _bridge_conf(self, c: dict) -> bytes:
        n = c["bridge_index"]
        conf = {
            "cniVersion": CNI_VERSION,
            "name": c["network"],
            "type": "bridge",
            "bridge": c["bridge"],
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "dataDir": self.datadir,
                "ranges": [[{"subnet": f"10.77.{n}.0/24"}], [{"subnet": f"fd77:{n}::/64"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            },
        }
        return json.dumps(conf).encode()

    def plugin(self, command: str, container: dict | None) -> int:
        """One timed invocation of the measured plugin; returns nanoseconds."""
        if command == "VERSION":
            stdin = json.dumps({"cniVersion": CNI_VERSION}).encode()  # what libcni sends
        else:
            conf = {"cniVersion": CNI_VERSION, "name": container["network"], **self.entry}
            conf["prevResult"] = self.cache[container["id"]]
            stdin = json.dumps(conf).encode()
        what = f"{command} {container['id']}" if container else command
        ns, _ = self.run(
            what,
            [self.plugin_path],
            self.env(command, container, self.with_path),
            stdin,
            want_json=command in ("ADD", "VERSION"),
        )
        return ns

    def about(self) -> str:
        """The plugin's self-description (ours: --version; Go skel: no CNI_COMMAND, on stderr)."""
        argv = [self.plugin_path, "--version"] if self.key == "ours" else [self.plugin_path]
        self.send(argv, {"PATH": SYSTEM_PATH} if self.with_path else {}, b"")
        reply = self.conn.recv()
        if reply[0] != "done":
            return "unknown"
        text = (reply[3] or reply[4]).decode(errors="replace").strip()
        return text.splitlines()[0] if text else "unknown"

    def rule_lines(self) -> dict[str, int]:
        """Untimed: how many rules (-A lines of iptables-save) each family's filter table holds here."""
        counts = {}
        for tool in ("iptables-save", "ip6tables-save"):
            _, out = self.run(tool, [shutil.which(tool) or f"/usr/sbin/{tool}", "-t", "filter"], {"PATH": SYSTEM_PATH}, b"")
            counts[tool] = sum(1 for line in out.decode().splitlines() if line.startswith("-A "))
        return counts


# --- the run ------------------------------------------------------------------------------------


def sh(*argv: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, check=check, capture_output=True, text=True)


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def package_version(path: str) -> str:
    try:
        pkg = sh("dpkg-query", "-S", path).stdout.split(":", 1)[0]
        return pkg + " " + sh("dpkg-query", "-W", "-f", "${Version}", pkg).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "package unknown"


def interleaved(hosts: dict[str, Host], cell: int, command: str, container: dict | None, into: dict) -> None:
    """One cell: both plugins once, back to back; who goes first alternates with the cell."""
    order = ("ours", "go") if cell % 2 == 0 else ("go", "ours")
    for key in order:
        into[key].append(hosts[key].plugin(command, container))


def benchmark(args, prefix: str, tmp: str, made: list[str], hosts: dict[str, Host]) -> dict:
    # Names: prefix is 6 chars; "<prefix>-oursh"/"-goh" hosts, "<prefix><o|g><k>" containers.
    containers = []
    for k in range(args.bridges * args.containers):
        b = k % args.bridges + 1  # round-robin: bridges fill up together, as containers come and go
        containers.append(
            {
                "id": f"{prefix}-ctr{k + 1}",
                "network": f"{prefix}-net{b}",
                "bridge": f"{prefix}b{b}",
                "bridge_index": b,
                "netns": {key: f"{prefix}{key[0]}{k + 1}" for key in CONTENDERS},
            }
        )
    batch = []
    for key in CONTENDERS:
        host_ns = f"{prefix}-{key}h"
        made.append(host_ns)  # recorded before it exists: finally removes whatever got made
        batch.append(f"netns add {host_ns}")
        for c in containers:
            made.append(c["netns"][key])
            batch.append(f"netns add {c['netns'][key]}")
        hosts[key] = Host(key, host_ns, args.plugin if key == "ours" else GO_PLUGIN, os.path.join(tmp, f"ipam-{key}"))
    log(f"creating {len(batch)} network namespaces with prefix {prefix}")
    sh(IP, "-batch", "-", stdin="\n".join(batch) + "\n")
    for key in CONTENDERS:
        sh(IP, "-n", hosts[key].netns, "link", "set", "lo", "up")
        hosts[key].start()

    log(f"building the grid: {args.bridges} bridges x {args.containers} containers per host (bridge + host-local)")
    for c in containers:  # untimed; both hosts at once
        for key in CONTENDERS:
            hosts[key].bridge_add(c)
        for key in CONTENDERS:
            hosts[key].bridge_added(c)

    versions = {key: {"about": h.about(), "path": h.plugin_path} for key, h in hosts.items()}
    versions["go"]["package"] = package_version(GO_PLUGIN)
    for key, h in hosts.items():  # untimed warm-up: page cache, first-exec costs
        for _ in range(WARMUP_RUNS):
            _, out = h.run("VERSION (warm-up)", [h.plugin_path], h.env("VERSION", None, h.with_path),
                           json.dumps({"cniVersion": CNI_VERSION}).encode(), want_json=True)
        versions[key]["supportedVersions"] = json.loads(out).get("supportedVersions")

    samples = {verb: {key: [] for key in CONTENDERS} for verb in VERBS}
    load_start = os.getloadavg()
    started = time.monotonic()
    for verb in ("ADD", "CHECK"):
        log(f"{verb}: {len(containers)} cells")
        for i, c in enumerate(containers):
            interleaved(hosts, i, verb, c, samples[verb])
    rules = {key: h.rule_lines() for key, h in hosts.items()}  # untimed, between the phases
    log(f"VERSION: {args.version_runs} cells")
    for i in range(args.version_runs):
        interleaved(hosts, i, "VERSION", None, samples["VERSION"])
    log(f"DEL: {len(containers)} cells")
    for i, c in enumerate(containers):
        interleaved(hosts, i, "DEL", c, samples["DEL"])
    elapsed = time.monotonic() - started
    load_end = os.getloadavg()

    verbs = {}
    for verb in VERBS:
        row = {"n": len(samples[verb]["ours"])}
        for key in CONTENDERS:
            ms = [ns / 1e6 for ns in samples[verb][key]]
            row[key] = {"median_ms": statistics.median(ms), "p95_ms": p95(ms), "samples_ms": ms}
        row["ratio_median"] = row["ours"]["median_ms"] / row["go"]["median_ms"]
        verbs[verb] = row
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "grid": {"bridges": args.bridges, "containers_per_bridge": args.containers, "attachments": len(containers)},
        "load": {"start": list(load_start), "end": list(load_end)},
        "measured_seconds": round(elapsed, 2),
        "cniVersion": CNI_VERSION,
        "plugins": {key: {**versions[key], "conf": CONTENDERS[key][0]} for key in CONTENDERS},
        "filter_rules_after_add": rules,
        "verbs": verbs,
    }


def cleanup(prefix: str, made: list[str], hosts: dict[str, Host], tmp: str) -> None:
    for h in hosts.values():  # a worker inside a namespace would keep it alive after `netns del`
        h.stop()
    if made:
        sh(IP, "-force", "-batch", "-", check=False, stdin="".join(f"netns del {ns}\n" for ns in reversed(made)))
    ours = hosts.get("ours")
    if ours is not None and ours.state_key:  # the state dir our plugin made for this (now gone) host
        state = os.path.join(STATE_ROOT, ours.state_key)
        if os.path.isdir(state):
            shutil.rmtree(state, ignore_errors=True)
            log(f"removed our plugin's state directory {state}")
    shutil.rmtree(tmp, ignore_errors=True)
    left = [ns for ns in sh(IP, "netns", "list", check=False).stdout.split() if ns.startswith(prefix)]
    if left:
        log(f"WARNING: namespaces left behind: {' '.join(left)}")


def render(r: dict) -> str:
    load = lambda v: " ".join(f"{x:.2f}" for x in v)  # noqa: E731
    g = r["grid"]
    lines = [
        f"CNI per-invocation latency, {r['date']}, kernel {r['machine']['kernel']}, {r['machine']['cpus']} CPUs",
        f"grid: {g['bridges']} bridges x {g['containers_per_bridge']} containers = {g['attachments']} attachments "
        f"per plugin, cniVersion {r['cniVersion']}, interleaved, {r['measured_seconds']} s measured",
        f"load (1/5/15 min): start {load(r['load']['start'])}  end {load(r['load']['end'])}",
    ]
    for key, p in r["plugins"].items():
        extra = f" [{p['package']}]" if "package" in p else ""
        lines.append(f"{key:4}: {p['path']} -- {p['about']}{extra}; conf {json.dumps(p['conf'])}")
    rules = "; ".join(f"{k} {v['iptables-save']} v4 / {v['ip6tables-save']} v6" for k, v in r["filter_rules_after_add"].items())
    lines += [f"filter rules after ADD: {rules}", ""]
    head = ["verb", "n", "ours median", "ours p95", "go median", "go p95", "ratio (median)"]
    rows = []
    for verb, v in r["verbs"].items():
        rows.append([
            verb,
            str(v["n"]),
            f"{v['ours']['median_ms']:.1f} ms",
            f"{v['ours']['p95_ms']:.1f} ms",
            f"{v['go']['median_ms']:.1f} ms",
            f"{v['go']['p95_ms']:.1f} ms",
            f"{v['ratio_median']:.2f}x",
        ])
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    fmt = lambda cells: " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    lines += [fmt(head), "-+-".join("-" * w for w in widths), *map(fmt, rows)]
    lines += ["", "p95: nearest rank; ratio: ours median / go median (below 1: ours is faster)"]
    return "\n".join(lines)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bridges", type=int, default=5)
    ap.add_argument("--containers", type=int, default=10, help="containers per bridge")
    ap.add_argument("--plugin", default=OUR_PLUGIN, help="our frozen binary (default: %(default)s)")
    ap.add_argument("--version-runs", type=int, default=40, help="interleaved VERSION cells (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the numbers (and raw samples) as JSON")
    args = ap.parse_args()
    if not 1 <= args.bridges <= 254 or args.containers < 1 or args.bridges * args.containers > 9999:
        ap.error("need 1..254 bridges and 1..9999 containers in all (addresses and names must fit)")
    if os.geteuid() != 0:
        ap.error("must run as root (it creates network namespaces)")
    args.plugin = os.path.abspath(args.plugin)
    if not os.access(args.plugin, os.X_OK):
        ap.error(f"{args.plugin} is missing; build it with: {BUILD_HINT}")
    for path in (GO_PLUGIN, os.path.join(CNI_DIR, "bridge"), os.path.join(CNI_DIR, "host-local")):
        if not os.access(path, os.X_OK):
            ap.error(f"{path} is missing (Debian package containernetworking-plugins)")

    prefix = "cb" + secrets.token_hex(2)  # 6 chars; longest name "<prefix>-oursh" is 12
    tmp = tempfile.mkdtemp(prefix=f"cni-bench-{prefix}-")
    made: list[str] = []
    hosts: dict[str, Host] = {}

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
            result = benchmark(args, prefix, tmp, made, hosts)
        except BenchError as exc:
            failure = str(exc)
        except subprocess.CalledProcessError as exc:
            failure = f"{' '.join(exc.cmd)} failed (exit {exc.returncode}): {exc.stderr}"
    except Interrupted:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("cleaning up")
        cleanup(prefix, made, hosts, tmp)
    if signals:  # a plugin hit by the same Ctrl-C may have "failed" first: that is no finding
        print(f"interrupted by signal {signals[0]}", file=sys.stderr)
        return 130
    if failure:
        print(f"benchmark aborted: {failure}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
