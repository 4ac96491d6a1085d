"""Per-invocation latency of the frozen `isolation` plugin next to Debian's Go `firewall` plugin.

    sudo /opt/isolation-venv/bin/python bench/cni_latency.py [--bridges 5] [--containers 10]
        [--plugin dist/isolation/isolation] [--version-runs 40] [--families ipv4|dual] [--json]

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
  (10.77.N.0/24, plus fd77:N::/64 with --families dual; isGateway, no masquerade). The
  default is IPv4-only, as the default networks of nerdctl and Podman are: on a dual-stack
  grid the Go plugin repeats every step with ip6tables while ours costs the same.
* Floors in the same run: next to every VERSION cell, our host's worker also times
  Debian's `/usr/bin/python3 -I -S -c pass` (the interpreter the bundle freezes: no
  plugin run can start faster) and `/bin/true` (any process), in rotating order. Each plugin writes
  iptables rules; in one namespace one plugin would find the other's chains already in
  place and do less work.
* Only the plugin process is timed. One worker process per host enters that host's
  namespace once (setns in its main thread) and runs the plugin with subprocess.run
  between two perf_counter_ns readings. `ip netns exec` (fork, unshare, remount of
  /sys) is never on the clock, and the pipe to the coordinating process is not either.
  The worker, namespaces, signal handling and cleanup are bench/harness.py's, shared
  with bench/scale.py, so both benchmarks time a plugin in the same way.
  Our plugin gets only the CNI_* variables (the harshest environment a runtime may
  give); the Go plugin additionally gets PATH, since it needs to find iptables.
* Interleaved, cell by cell, in one run: for each container ours and Go run back to
  back, the one going first alternating from cell to cell, so drift in machine load,
  page cache or CPU frequency hits both alike. The phases follow a container's life:
  ADD for every container, then CHECK for every one, VERSION a few dozen times, then
  DEL for every one. The grid (bridge + host-local ADDs) is built before the ADD phase
  so that the measured ADDs follow each other without setup in between.
* The grid is set up here rather than with tests/lab/netlab.py's Lab, which also builds an
  "outside" peer, a TCP listener thread per container and bridge-nf settings that a
  latency run does not need, and which is the tests' helper to change as they need.
  Only its bridge_plugin() conf is reused (through bench/harness.py), so the bridge
  plugin is fed exactly what the end-to-end tests feed it.
* A few untimed VERSION calls per plugin come first: they read the plugin versions and
  put both binaries in the page cache, as on a host that has started containers before.
* Every invocation's exit code is checked (and ADD/VERSION output must be JSON); the
  first failure aborts the run with the plugin's output. Statistics of failures would
  be meaningless.

Statistics: median, and p95 by the nearest-rank method (with 50 samples: the 48th
smallest). The ratio is ours/Go on the medians: below 1 means ours is faster.
"""

import argparse
import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

import harness
from harness import CNI_DIR, CNI_VERSION, SYSTEM_PATH, BenchError, sh

GO_PLUGIN = os.path.join(CNI_DIR, "firewall")
TIMEOUT_S = 60
WARMUP_RUNS = 3

# The contenders: key -> (their entry in the conflist, whether they get PATH). "agent" is our
# same binary in a host namespace where `isolation agent` runs: the plugin forwards to it;
# "logd" is our plugin with the drop log on (`logDrops: true`), shown next to the plain ADD.
CONTENDERS = {
    "ours": ({"type": "isolation"}, False),
    "agent": ({"type": "isolation"}, False),
    "logd": ({"type": "isolation", "logDrops": True}, False),
    "go": ({"type": "firewall", "backend": "iptables", "ingressPolicy": "same-bridge"}, True),
}
OURS = ("ours", "agent", "logd")
VERBS = ("VERSION", "ADD", "CHECK", "DEL")  # table order; measured as ADD, CHECK, VERSION, DEL
# What no plugin run can beat, timed in our host's worker next to the VERSION cells: starting
# Debian's interpreter (the one the bundle freezes) without site, and starting any process.
FLOORS = {"python3 -I -S -c pass": ["/usr/bin/python3", "-I", "-S", "-c", "pass"], "/bin/true": ["/bin/true"]}
FAMILY_NAMES = {"ipv4": "IPv4-only", "dual": "dual-stack IPv4+IPv6"}

log = harness.logger("bench")


class Host(harness.Worker):
    """One host namespace, its worker, and the grid of containers in it."""

    def __init__(self, key: str, netns: str, plugin_path: str, datadir: str, families: str):
        super().__init__(key, netns, TIMEOUT_S)
        self.entry, self.with_path = CONTENDERS[key]
        self.plugin_path = plugin_path
        self.datadir = datadir
        self.families = families
        self.cache: dict[str, dict] = {}  # container id -> bridge result (the prevResult)

    def receive(self, what: str, stdin: bytes, want_json: bool = False) -> tuple[int, bytes]:
        """The (duration ns, stdout) of the last request; any failure raises with the plugin's output."""
        result = self.result()
        if isinstance(result[1], str):  # the worker could not start it
            raise BenchError(f"[{self.key}] {what}: {result[1]}")
        ns, _, out, _ = harness.check(f"[{self.key}] {what}", stdin, result, want_json)
        return ns, out

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
        return json.dumps(harness.bridge_conf(c["network"], c["bridge"], c["bridge_index"], self.datadir,
                                              families=self.families)).encode()

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
        argv = [self.plugin_path, "--version"] if self.key in OURS else [self.plugin_path]
        self.send(argv, {"PATH": SYSTEM_PATH} if self.with_path else {}, b"")
        _, rc, out, err = self.result()
        if isinstance(rc, str):  # could not run
            return "unknown"
        text = (out or err).decode(errors="replace").strip()
        return text.splitlines()[0] if text else "unknown"

    def rule_lines(self) -> dict[str, int]:
        """Untimed: how many rules (-A lines of iptables-save) each family's filter table holds here."""
        counts = {}
        for tool in ("iptables-save", "ip6tables-save"):
            _, out = self.run(tool, [shutil.which(tool) or f"/usr/sbin/{tool}", "-t", "filter"], {"PATH": SYSTEM_PATH}, b"")
            counts[tool] = sum(1 for line in out.decode().splitlines() if line.startswith("-A "))
        return counts


# --- the run ------------------------------------------------------------------------------------


def package_version(path: str) -> str:
    try:
        pkg = sh("dpkg-query", "-S", path).stdout.split(":", 1)[0]
        return pkg + " " + sh("dpkg-query", "-W", "-f", "${Version}", pkg).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "package unknown"


def interpreter_version(plugin: str) -> str:
    """Which Python the bundle froze (its libpython) next to the floor's /usr/bin/python3."""
    bundled = sorted(os.path.basename(p) for p in glob.glob(os.path.join(os.path.dirname(plugin), "_internal",
                                                                           "libpython3*")))
    floor = sh("/usr/bin/python3", "-c", "import platform; print(platform.python_version())").stdout.strip()
    return f"bundle: {', '.join(bundled) or 'no libpython found'}; floor: /usr/bin/python3 {floor}"


def interleaved(hosts: dict[str, Host], cell: int, command: str, container: dict | None, into: dict) -> None:
    """One cell: every contender once, back to back; who goes first rotates with the cell."""
    keys = list(hosts)
    for key in keys[cell % len(keys):] + keys[:cell % len(keys)]:
        into[key].append(hosts[key].plugin(command, container))


def start_agent(host: Host, plugin: str) -> subprocess.Popen:
    """`isolation agent` in the host namespace (untimed), once its socket exists."""
    proc = subprocess.Popen(["ip", "netns", "exec", host.netns, plugin, "agent"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = os.path.join(harness.STATE_ROOT, host.state_key, "agent.sock")
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"the agent did not start in {host.netns} (exit {proc.poll()})")
        time.sleep(0.02)
    return proc


def benchmark(args, prefix: str, tmp: str, made: list[str], hosts: dict[str, Host], agents: list) -> dict:
    # Names: prefix is 6 chars; "<prefix>-oursh"/"-agenth"/"-logdh"/"-goh" hosts, "<prefix><o|a|l|g><k>"
    # containers.
    left_out = {k for k, off in (("agent", args.no_agent), ("logd", args.no_logdrops)) if off}
    contenders = [k for k in CONTENDERS if k not in left_out]
    containers = []
    for k in range(args.bridges * args.containers):
        b = k % args.bridges + 1  # round-robin: bridges fill up together, as containers come and go
        containers.append(
            {
                "id": f"{prefix}-ctr{k + 1}",
                "network": f"{prefix}-net{b}",
                "bridge": f"{prefix}b{b}",
                "bridge_index": b,
                "netns": {key: f"{prefix}{key[0]}{k + 1}" for key in contenders},
            }
        )
    names = []
    for key in contenders:
        host_ns = f"{prefix}-{key}h"
        names += [host_ns, *(c["netns"][key] for c in containers)]
        hosts[key] = Host(key, host_ns, args.plugin if key in OURS else GO_PLUGIN, os.path.join(tmp, f"ipam-{key}"),
                          args.families)
    log(f"creating {len(names)} network namespaces with prefix {prefix}")
    harness.add_namespaces(names, made)
    for key in contenders:
        harness.lo_up(hosts[key].netns)
        hosts[key].start()
    if "agent" in hosts:
        agents.append(start_agent(hosts["agent"], args.plugin))

    log(f"building the grid: {args.bridges} bridges x {args.containers} containers per host (bridge + host-local)")
    for c in containers:  # untimed; all hosts at once
        for key in contenders:
            hosts[key].bridge_add(c)
        for key in contenders:
            hosts[key].bridge_added(c)

    versions = {key: {"about": h.about(), "path": h.plugin_path} for key, h in hosts.items()}
    versions["go"]["package"] = package_version(GO_PLUGIN)
    for key, h in hosts.items():  # untimed warm-up: page cache, first-exec costs
        for _ in range(WARMUP_RUNS):
            _, out = h.run("VERSION (warm-up)", [h.plugin_path], h.env("VERSION", None, h.with_path),
                           json.dumps({"cniVersion": CNI_VERSION}).encode(), want_json=True)
        versions[key]["supportedVersions"] = json.loads(out).get("supportedVersions")

    samples = {verb: {key: [] for key in contenders} for verb in VERBS}
    load_start = os.getloadavg()
    started = time.monotonic()
    for verb in ("ADD", "CHECK"):
        log(f"{verb}: {len(containers)} cells")
        for i, c in enumerate(containers):
            interleaved(hosts, i, verb, c, samples[verb])
    rules = {key: h.rule_lines() for key, h in hosts.items()}  # untimed, between the phases
    log(f"VERSION and the floors: {args.version_runs} cells")
    floors = {name: [] for name in FLOORS}
    for i in range(args.version_runs):
        interleaved(hosts, i, "VERSION", None, samples["VERSION"])
        names = list(FLOORS)
        for name in names[i % len(names):] + names[:i % len(names)]:  # in our host's worker, rotating
            floors[name].append(hosts["ours"].run(f"floor {name}", FLOORS[name], {}, b"")[0])
    log(f"DEL: {len(containers)} cells")
    for i, c in enumerate(containers):
        interleaved(hosts, i, "DEL", c, samples["DEL"])
    elapsed = time.monotonic() - started
    load_end = os.getloadavg()

    peak_rss = {key: hosts[key].peak_rss_kib() for key in contenders}
    verbs = {}
    for verb in VERBS:
        row = {"n": len(samples[verb]["ours"])}
        for key in contenders:
            row[key] = harness.summary(samples[verb][key])
        for key in contenders:
            if key != "go":
                row[f"ratio_{key}"] = row[key]["median_ms"] / row["go"]["median_ms"]
        verbs[verb] = row
    return {
        **harness.stamp(),
        "grid": {"bridges": args.bridges, "containers_per_bridge": args.containers, "attachments": len(containers),
                 "families": args.families},
        "floors": {name: harness.summary(v) for name, v in floors.items()},
        "interpreter": interpreter_version(args.plugin),
        "load": {"start": list(load_start), "end": list(load_end)},
        "measured_seconds": round(elapsed, 2),
        "cniVersion": CNI_VERSION,
        "plugins": {key: {**versions[key], "conf": CONTENDERS[key][0]} for key in contenders},
        "filter_rules_after_add": rules,
        "peak_rss_kib": peak_rss,
        "verbs": verbs,
    }


def render(r: dict) -> str:
    load = harness.load
    g = r["grid"]
    lines = [
        harness.headline("CNI per-invocation latency", r),
        f"grid: {g['bridges']} bridges x {g['containers_per_bridge']} containers = {g['attachments']} attachments "
        f"per plugin, {FAMILY_NAMES[g['families']]}, cniVersion {r['cniVersion']}, interleaved, "
        f"{r['measured_seconds']} s measured",
        f"load (1/5/15 min): start {load(r['load']['start'])}  end {load(r['load']['end'])}",
    ]
    for key, p in r["plugins"].items():
        extra = f" [{p['package']}]" if "package" in p else ""
        lines.append(f"{key:4}: {p['path']} -- {p['about']}{extra}; conf {json.dumps(p['conf'])}")
    rules = "; ".join(f"{k} {v['iptables-save']} v4 / {v['ip6tables-save']} v6" for k, v in r["filter_rules_after_add"].items())
    lines += [f"filter rules after ADD: {rules}", ""]
    keys = [k for k in r["plugins"] if k != "go"]
    head = ["verb", "n"] + [f"{k} {stat}" for k in [*keys, "go"] for stat in ("median", "p95")]
    head += [f"{k}/go" for k in keys]
    rows = []
    for verb, v in r["verbs"].items():
        row = [verb, str(v["n"])]
        for k in [*keys, "go"]:
            row += [f"{v[k]['median_ms']:.1f} ms", f"{v[k]['p95_ms']:.1f} ms"]
        rows.append(row + [f"{v[f'ratio_{k}']:.2f}x" for k in keys])
    lines += harness.table(head, rows)
    floors = ", ".join(f"{name} {f['median_ms']:.1f} ms (p95 {f['p95_ms']:.1f})" for name, f in r["floors"].items())
    lines += ["", f"floors in the same run (medians): {floors}; {r['interpreter']}"]
    rss = ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in r["peak_rss_kib"].items())
    lines += ["", f"peak RSS of one exec (largest over the run): {rss}",
              "p95: nearest rank; k/go: median over go's median (below 1: faster than Go); "
              "agent: our plugin forwarding to `isolation agent`; logd: ours with logDrops: true"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bridges", type=int, default=5)
    ap.add_argument("--containers", type=int, default=10, help="containers per bridge")
    ap.add_argument("--plugin", default=harness.OUR_PLUGIN, help="our frozen binary (default: %(default)s)")
    ap.add_argument("--version-runs", type=int, default=40, help="interleaved VERSION cells (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the numbers (and raw samples) as JSON")
    ap.add_argument("--no-agent", action="store_true", help="leave out the contender with a resident agent")
    ap.add_argument("--no-logdrops", action="store_true", help="leave out the contender with logDrops: true")
    ap.add_argument("--families", choices=sorted(harness.FAMILIES), default="ipv4",
                    help="ipv4: the grid runtimes' default networks have; dual: IPv4 + IPv6 (default: %(default)s)")
    args = ap.parse_args()
    if not 1 <= args.bridges <= 254 or args.containers < 1 or args.bridges * args.containers > 9999:
        ap.error("need 1..254 bridges and 1..9999 containers in all (addresses and names must fit)")
    harness.preflight(ap, args, ("firewall", "bridge", "host-local"))

    prefix = "cb" + secrets.token_hex(2)  # 6 chars; longest name "<prefix>-oursh" is 12
    tmp = tempfile.mkdtemp(prefix=f"cni-bench-{prefix}-")
    made: list[str] = []
    hosts: dict[str, Host] = {}
    agents: list[subprocess.Popen] = []

    def clean_up() -> None:
        for proc in agents:  # before the namespaces go
            proc.terminate()
            proc.wait(timeout=10)
        harness.cleanup(prefix, made, list(hosts.values()), tmp, log)

    return harness.run(
        lambda: benchmark(args, prefix, tmp, made, hosts, agents),
        clean_up,
        render,
        args.json,
        log,
    )


if __name__ == "__main__":
    sys.exit(main())
