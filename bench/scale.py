"""How the `isolation` plugin scales with the number of isolated bridges, per backend.

    sudo /opt/isolation-venv/bin/python bench/scale.py [--plugin dist/isolation/isolation]
        [--sizes 1,100,1000] [--forward-bridges N] [--iperf-seconds 3] [--rounds 3] [--json]

Two tables:

1. ADD latency against the number of bridges already registered, for
   `{"type": "isolation", "backend": "iptables"}` and `{..., "backend": "nftables"}`
   (ingressPolicy same-bridge, cniVersion 1.0.0), each backend x size in a host namespace
   of its own, the cells' timed ADDs interleaved. At each size: 10 ADDs of new bridges
   (a network's first container) and 10 repeated ADDs of an already-registered bridge
   (what every further container on a network pays), median and p95, plus the rule
   count: iptables, the IPv4 rules of CNI-ISOLATION-STAGE-1 + STAGE-2 (grows by one per
   bridge in each chain); nftables, the rules of `table inet isolation` (constant) and
   its set elements (one per bridge in each set).
2. Forwarding cost between two containers on ONE bridge while N other isolated bridges
   are registered (default: the bridges the largest size left behind): no isolation,
   iptables backend, nftables backend. iperf3 TCP throughput (3 interleaved rounds,
   median) and ping RTT.

Why it is built this way:

* Nothing touches the root network namespace. Everything happens in namespaces made here
  (random per-run prefix, names <= 15 characters); `finally` stops the workers and the
  iperf3 servers (by pid), deletes the namespaces, the temp dir (host-local's dataDir)
  and the /run/isolation/ns-<cookie> state directories our plugin made for the host
  namespaces (the cookie is read inside each namespace with plugin.hoststate.netns_key),
  also after a failure or Ctrl-C/SIGTERM.
* One "host" namespace per backend, so neither backend sees the other's rules; a third
  one, with as many (unregistered) bridges, is the no-isolation baseline of table 2
  ("none"). Its containers' bridge conf has `ipMasq: true` as in the backends' hosts and
  as in nerdctl's and Podman's default networks, so conntrack runs in all three; a
  fourth host ("bare", ipMasq false) runs no conntrack at all, which shows what
  conntrack itself costs (our `ct` matches would turn it on there).
* Bridges are made in bulk (`ip -batch -`, `link add NAME type bridge`, left down) and
  registered through the plugin itself: one real ADD per bridge, with the synthetic
  prevResult `{"interfaces": [{"name": BR}], "ips": []}` (the plugin only needs the
  bridge to exist in its namespace). No veths or containers: 1000 of them would cost
  minutes and change nothing the plugin looks at. Each bridge is its own network with
  its own name, as with a runtime, so a new bridge's ADD includes the one-time
  validation of that network's configuration; the repeated ADD does not.
* Only the plugin process is timed, exactly as bench/cni_latency.py does it, with the
  same code (bench/harness.py, which also holds the namespaces, signal handling and
  cleanup of both): one forked worker per host enters the namespace once (ctypes setns
  in its main thread) and runs the plugin with subprocess.run between two
  perf_counter_ns readings; `ip netns exec` is never on the clock. The plugin gets only
  the CNI_* variables.
* The growth is not timed and dominates the run time (1101 ADDs per backend for sizes
  1, 100 and 1000, each paying validation of a new network), so it runs all hosts at
  once, GROWTH_PARALLEL ADDs at a time each: the plugin's host lock serialises each
  host's rule updates, their start-up and validation overlap. The timed ADDs run one at
  a time with nothing else of ours running, going round every cell (backend x size) in
  an order that rotates with each sample, so drift in machine load hits every size and
  backend alike: the size ratios compare like with like.
* Table 2 reuses the largest size's hosts of table 1 (re-registering 1000 bridges per
  backend would double the run time), so "other bridges" is what they hold: the largest
  size plus the 10 new bridges timed there. The two containers are real: upstream bridge + host-local
  from /usr/lib/cni (conf: tests/lab/netlab.py's bridge_plugin(), as in the end-to-end
  tests), our plugin chained after bridge with its result as prevResult.
  bridge-nf-call-iptables/ip6tables is set to 1 in each host namespace, so bridged
  IPv4 traffic traverses the forward hooks where the per-packet cost lies: every
  intra-bridge packet walks all of CNI-ISOLATION-STAGE-1 on iptables (no rule matches
  `-i BR -o BR` under same-bridge), and does one set lookup on nftables. The iperf3
  runs are interleaved (the variant going first rotates with the round) and the
  first second of each run (slow start) is omitted. The RETURN counter of STAGE-1 is
  read afterwards as proof that the traffic really went through the chain.
* Every plugin invocation's exit code is checked (ADD output must be JSON); the first
  failure aborts the run with the plugin's input and output.

Statistics: median, and p95 by the nearest-rank method (with 10 samples: the largest).
"""

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import harness
from harness import CNI_DIR, CNI_VERSION, IP, SYSTEM_PATH, BenchError, sh

TIMEOUT_S = 120
BACKENDS = ("iptables", "nftables")
VARIANTS = ("bare", "none", "iptables", "nftables")  # table 2
LETTER = {"bare": "b", "none": "x", "iptables": "i", "nftables": "n"}  # in container namespace names
NEW_RUNS = 10  # timed ADDs of new bridges at each size
REPEAT_RUNS = 10  # timed ADDs of an already-registered bridge at each size
WARMUP_RUNS = 3
GROWTH_PARALLEL = 2  # concurrent untimed ADDs per host while growing
STAGE1, STAGE2 = "CNI-ISOLATION-STAGE-1", "CNI-ISOLATION-STAGE-2"
IPERF_PORT = 5201
PING_COUNT = 200
PING_INTERVAL = "0.002"

log = harness.logger("scale")


class Host(harness.Worker):
    """One host namespace, its worker, its bridges and which of them our plugin registered."""

    def __init__(self, key: str, netns: str, prefix: str, plugin_path: str, backend: str | None, datadir: str):
        super().__init__(key, netns, TIMEOUT_S)
        self.prefix = prefix
        self.plugin_path = plugin_path
        self.backend = backend  # None: no isolation plugin here
        self.datadir = datadir
        self.bridges: list[str] = []  # created, in order
        self.registered = 0  # the first `registered` bridges went through our ADD
        self.invocations = 0

    # --- bridges and our plugin ---------------------------------------------------------------
    def create_bridges(self, total: int) -> None:
        """Untimed: make bridges until `total` exist, in one `ip -batch -`."""
        names = [f"{self.prefix}b{n}" for n in range(len(self.bridges) + 1, total + 1)]
        if names:
            self.run("ip -batch (bridges)", [IP, "-batch", "-"], stdin="".join(f"link add {b} type bridge\n" for b in names).encode())
            self.bridges += names

    def add_job(self, bridge: str, network: str, prev: dict | None = None) -> tuple:
        """(argv, env, stdin) of one ADD of our plugin for `bridge`."""
        self.invocations += 1
        if prev is None:
            prev = {"cniVersion": CNI_VERSION, "interfaces": [{"name": bridge}], "ips": []}
        conf = {"cniVersion": CNI_VERSION, "name": network, "type": "isolation", "backend": self.backend, "prevResult": prev}
        env = {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": f"{self.prefix}-{self.key}-{self.invocations}",
            "CNI_NETNS": f"/run/netns/{self.netns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": CNI_DIR,
        }
        return [self.plugin_path], env, json.dumps(conf).encode()

    def network_of(self, n: int) -> str:
        return f"{self.prefix}-net{n + 1}"

    def send_growth(self, target: int) -> tuple[list[str], list[tuple]]:
        """Untimed: register bridges with our plugin until `target` are registered (reply comes later)."""
        self.create_bridges(target)
        jobs = [self.add_job(self.bridges[n], self.network_of(n)) for n in range(self.registered, target)]
        whats = [f"ADD {self.bridges[n]} (growth)" for n in range(self.registered, target)]
        self.send_many(jobs, GROWTH_PARALLEL)
        self.registered = target
        return whats, jobs

    def timed_add(self, n: int) -> int:
        """One timed ADD of bridge number `n` (0-based); registers it if it was the next one."""
        argv, env, stdin = self.add_job(self.bridges[n], self.network_of(n))
        ns, _ = self.run(f"ADD {self.bridges[n]}", argv, env, stdin, want_json=True)
        self.registered = max(self.registered, n + 1)
        return ns

    def about(self) -> str:
        self.send([self.plugin_path, "--version"], {}, b"")
        _, rc, out, err = self.result()
        text = (out or err).decode(errors="replace").strip() if rc == 0 else ""
        return text.splitlines()[0] if text else "unknown"

    def warm_up(self) -> None:
        stdin = json.dumps({"cniVersion": CNI_VERSION}).encode()
        for _ in range(WARMUP_RUNS):
            self.run("VERSION (warm-up)", [self.plugin_path], {"CNI_COMMAND": "VERSION"}, stdin, want_json=True)

    def rules(self) -> dict:
        """Untimed: what our backend holds here."""
        if self.registered == 0:  # nothing registered, nothing made (e.g. --forward-bridges 0)
            return {"rules": 0}
        if self.backend == "iptables":
            _, out = self.run("iptables-save", ["iptables-save", "-t", "filter"])
            lines = out.decode().splitlines()
            per = {c: sum(1 for line in lines if line.startswith(f"-A {c} ")) for c in (STAGE1, STAGE2)}
            return {"rules": per[STAGE1] + per[STAGE2], "per_chain_ipv4": per}
        _, out = self.run("nft -j list table", ["nft", "-j", "list", "table", "inet", "isolation"])
        objs = json.loads(out)["nftables"]
        sets = {o["set"]["name"]: len(o["set"].get("elem", [])) for o in objs if "set" in o}
        return {"rules": sum(1 for o in objs if "rule" in o), "set_elements": sets}

    def stage1_return_packets(self) -> int | None:
        """Packets that went through all of STAGE-1 (its final RETURN) in the IPv4 filter table."""
        _, out = self.run("iptables-save -c", ["iptables-save", "-c", "-t", "filter"])
        for line in out.decode().splitlines():
            m = re.match(r"\[(\d+):\d+\] -A " + re.escape(STAGE1) + r" .*-j RETURN$", line)
            if m:
                return int(m.group(1))
        return None

    def bridge_nf(self, value: int) -> None:
        keys = [f"net.bridge.bridge-nf-call-{t}" for t in ("iptables", "ip6tables")]
        self.run("sysctl", ["sysctl", "-qw", *[f"{k}={value}" for k in keys]])
        for k in keys:
            _, out = self.run("cat", ["cat", "/proc/sys/" + k.replace(".", "/")])
            if out.decode().strip() != str(value):
                raise BenchError(f"[{self.key}] {k} did not become {value}")

    def container(self, container_ns: str, bridge: str, network: str) -> str:
        """Attach `container_ns` to `bridge` as a runtime does: bridge (+ host-local), then our plugin; its IPv4."""
        self.invocations += 1
        env = {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": f"{self.prefix}-{self.key}-{self.invocations}",
            "CNI_NETNS": f"/run/netns/{container_ns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": CNI_DIR,
            "CNI_ARGS": "IgnoreUnknown=1",
            "PATH": SYSTEM_PATH,
        }
        stdin = json.dumps(harness.bridge_conf(network, bridge, 1, self.datadir, ip_masq=self.key != "bare")).encode()
        _, out = self.run(f"bridge ADD {container_ns}", [os.path.join(CNI_DIR, "bridge")], env, stdin, want_json=True)
        result = json.loads(out)
        if self.backend is not None:
            argv, our_env, our_stdin = self.add_job(bridge, network, prev=result)
            our_env.update(CNI_NETNS=env["CNI_NETNS"], CNI_ARGS="IgnoreUnknown=1")
            self.run(f"ADD {container_ns}", argv, our_env, our_stdin, want_json=True)
        return next(ip["address"].split("/")[0] for ip in result["ips"] if ":" not in ip["address"])


# --- the run ------------------------------------------------------------------------------------


def grow(targets: list[tuple[Host, int]]) -> float:
    """Untimed: every host to its target of registered bridges, the hosts concurrently; returns seconds."""
    started = time.monotonic()
    pending = [(h, *h.send_growth(target)) for h, target in targets]
    for h, whats, jobs in pending:
        h.receive_many(whats, jobs, want_json=True)
    return time.monotonic() - started


def cell_host(hosts: dict[str, Host], backend: str, size: int, largest: int) -> Host:
    """The host of one cell of table 1 (the largest size's is the backend's own, reused by table 2)."""
    return hosts[backend] if size == largest else hosts[f"{backend}{size}"]


def scaling(args, hosts: dict[str, Host]) -> list[dict]:
    """Table 1: ADD latency (new bridge, repeated bridge) for every backend x size, each cell
    in a host of its own, all cells interleaved sample by sample (the order rotating), so
    that drift in machine load hits every size and backend alike."""
    cells = [(b, size, cell_host(hosts, b, size, args.sizes[-1])) for size in args.sizes for b in BACKENDS]
    log(f"growing the {len(cells)} hosts to {', '.join(map(str, args.sizes))} registered bridges")
    growth_s = grow([(h, size) for _, size, h in cells])
    counts = {(b, size): h.rules() for b, size, h in cells}
    log(f"timing {NEW_RUNS} new-bridge ADDs and {REPEAT_RUNS} repeated ADDs per cell, cells interleaved")
    samples = {(b, size): {"new": [], "repeat": []} for b, size, _ in cells}
    for kind, runs in (("new", NEW_RUNS), ("repeat", REPEAT_RUNS)):
        for i in range(runs):
            for b, size, h in cells[i % len(cells):] + cells[:i % len(cells)]:
                n = h.registered if kind == "new" else 0  # repeat: the oldest network's bridge
                samples[(b, size)][kind].append(h.timed_add(n))
    return [{
        "backend": b,
        "bridges": size,
        "growth_seconds": round(growth_s, 2),
        "new": harness.summary(samples[(b, size)]["new"]),
        "repeat": harness.summary(samples[(b, size)]["repeat"]),
        **counts[(b, size)],
    } for size in args.sizes for b in BACKENDS]


def start_iperf_server(container_ns: str, servers: list) -> None:
    """iperf3 -s inside `container_ns` (ip netns exec execs it: the pid is iperf3's); waits until it listens."""
    proc = subprocess.Popen(
        [IP, "netns", "exec", container_ns, "iperf3", "-s", "-p", str(IPERF_PORT)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    servers.append(proc)
    port = f":{IPERF_PORT:04X} "
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"iperf3 -s in {container_ns} exited with {proc.returncode}")
        for table in ("tcp", "tcp6"):  # /proc/PID/net is the view of that process's namespace
            try:
                with open(f"/proc/{proc.pid}/net/{table}") as f:
                    if any(port in line and line.split()[3] == "0A" for line in f.readlines()[1:]):
                        return
            except OSError:
                pass
        time.sleep(0.05)
    raise BenchError(f"iperf3 -s in {container_ns} is not listening after 10 s")


def iperf(client_ns: str, addr: str, seconds: int) -> float:
    argv = [IP, "netns", "exec", client_ns, "iperf3", "-c", addr, "-p", str(IPERF_PORT), "-t", str(seconds), "-O", "1", "-J"]
    proc = sh(*argv, check=False, timeout=seconds + 60)
    try:
        data = json.loads(proc.stdout)
        return data["end"]["sum_received"]["bits_per_second"]
    except (ValueError, KeyError, TypeError):
        raise BenchError(f"iperf3 from {client_ns} to {addr} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from None


def ping(client_ns: str, addr: str) -> dict:
    argv = [IP, "netns", "exec", client_ns, "ping", "-n", "-q", "-c", str(PING_COUNT), "-i", PING_INTERVAL, addr]
    proc = sh(*argv, check=False, timeout=60)
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", proc.stdout)
    loss = re.search(r"([\d.]+)% packet loss", proc.stdout)
    if proc.returncode != 0 or not rtt:
        raise BenchError(f"ping from {client_ns} to {addr} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return {"avg_ms": float(rtt.group(2)), "min_ms": float(rtt.group(1)), "max_ms": float(rtt.group(3)),
            "loss_percent": float(loss.group(1)) if loss else None}


def forwarding(args, prefix: str, tmp: str, made: list[str], hosts: dict[str, Host], servers: list) -> dict:
    """Table 2: throughput and RTT between two containers on one bridge, with N other bridges registered."""
    fwd = {}
    for b in BACKENDS:
        h = hosts[b]
        if h.registered > args.forward_bridges + NEW_RUNS:  # table 1 left more than asked: start afresh
            h = hosts[f"{b}2"] = make_host(f"{b}2", f"{prefix}-{b[:3]}2", prefix, args.plugin, b, tmp, made)
        fwd[b] = h
    if any(h.registered < args.forward_bridges for h in fwd.values()):
        log(f"growing the isolation hosts to {args.forward_bridges} registered bridges")
        grow([(h, args.forward_bridges) for h in fwd.values() if h.registered < args.forward_bridges])
    other = {b: fwd[b].registered for b in BACKENDS}
    for key in ("none", "bare"):
        fwd[key] = hosts[key]
        fwd[key].create_bridges(max(other.values()))  # as many bridges, none registered
    rules = {b: fwd[b].rules() for b in BACKENDS}

    addrs = {}
    for key in VARIANTS:
        h = fwd[key]
        h.bridge_nf(1)
        bridge, network = f"{prefix}fwd", f"{prefix}-fwd"
        c1, c2 = (f"{prefix}{LETTER[key]}c{i}" for i in (1, 2))
        h.container(c1, bridge, network)
        addrs[key] = (c1, c2, h.container(c2, bridge, network))
        start_iperf_server(c2, servers)
        sh(IP, "netns", "exec", c1, "ping", "-n", "-q", "-c", "3", "-i", "0.2", addrs[key][2])  # neighbours, caches

    iperf_bps = {k: [] for k in VARIANTS}
    pings = {k: [] for k in VARIANTS}
    for r in range(args.rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]
        log(f"forwarding round {r + 1}/{args.rounds}: {', '.join(order)} (iperf3 {args.iperf_seconds}+1 s, ping x{PING_COUNT})")
        for key in order:
            c1, _, addr = addrs[key]
            iperf_bps[key].append(iperf(c1, addr, args.iperf_seconds))
            pings[key].append(ping(c1, addr))
    stage1_packets = fwd["iptables"].stage1_return_packets()

    bps = {k: statistics.median(iperf_bps[k]) for k in VARIANTS}
    rtt = {k: statistics.mean(p["avg_ms"] for p in pings[k]) for k in VARIANTS}
    variants = {}
    for key in VARIANTS:
        variants[key] = {
            "other_isolated_bridges": other.get(key, 0),
            "throughput_median_gbps": bps[key] / 1e9,
            "throughput_rounds_gbps": [x / 1e9 for x in iperf_bps[key]],
            "throughput_ratio_vs_none": bps[key] / bps["none"],
            "throughput_ratio_vs_bare": bps[key] / bps["bare"],
            "ping_avg_ms": rtt[key],
            "ping_ratio_vs_none": rtt[key] / rtt["none"],
            "ping_rounds": pings[key],
        }
    return {
        "forward_bridges": args.forward_bridges,
        "bridges_in_none_host": len(fwd["none"].bridges),
        "iperf_seconds": args.iperf_seconds,
        "iperf_omit_seconds": 1,
        "rounds": args.rounds,
        "rules": rules,
        "iptables_stage1_return_packets_ipv4": stage1_packets,
        "variants": variants,
    }


def make_host(key: str, netns: str, prefix: str, plugin: str, backend: str | None, tmp: str, made: list[str]) -> Host:
    harness.add_namespaces([netns], made)
    harness.lo_up(netns)
    h = Host(key, netns, prefix, plugin, backend, os.path.join(tmp, f"ipam-{key}"))
    h.start()
    return h


def benchmark(args, prefix: str, tmp: str, made: list[str], hosts: dict[str, Host], servers: list) -> dict:
    # Names: prefix is 6 chars; hosts "<prefix>-ipt"/"-nft"/"-non"/"-bar" (+ "-ipt1", "-nft100"... for
    # the smaller sizes of table 1), containers "<prefix><b|x|i|n>c1",
    # bridges "<prefix>b<N>" and "<prefix>fwd" inside each host.
    containers = [f"{prefix}{LETTER[key]}c{i}" for key in VARIANTS for i in (1, 2)]
    log(f"creating namespaces with prefix {prefix}")
    harness.add_namespaces(containers, made)
    for key in VARIANTS:
        hosts[key] = make_host(key, f"{prefix}-{key[:3]}", prefix, args.plugin, key if key in BACKENDS else None, tmp, made)
    for ns in containers:
        harness.lo_up(ns)

    for b in BACKENDS:
        for size in args.sizes[:-1]:
            hosts[f"{b}{size}"] = make_host(f"{b}{size}", f"{prefix}-{b[:3]}{size}", prefix, args.plugin, b, tmp, made)
    cells = [cell_host(hosts, b, size, args.sizes[-1]) for size in args.sizes for b in BACKENDS]
    log(f"creating bridges in the {len(cells)} isolation hosts (ip -batch): their size + {NEW_RUNS}")
    for size, h in zip([size for size in args.sizes for _ in BACKENDS], cells):
        h.create_bridges(size + NEW_RUNS)
    about = cells[0].about()
    for h in cells:  # untimed warm-up: page cache, first-exec costs
        h.warm_up()

    load_start = os.getloadavg()
    started = time.monotonic()
    table1 = scaling(args, hosts)
    t1_seconds = time.monotonic() - started
    table2 = forwarding(args, prefix, tmp, made, hosts, servers)
    elapsed = time.monotonic() - started

    ratios = {}
    lo, hi = args.sizes[0], args.sizes[-1]
    for b in BACKENDS:
        row = {r["bridges"]: r for r in table1 if r["backend"] == b}
        ratios[b] = {kind: row[hi][kind]["median_ms"] / row[lo][kind]["median_ms"] for kind in ("new", "repeat")}
    return {
        **harness.stamp(),
        "plugin": {"path": args.plugin, "about": about},
        "cniVersion": CNI_VERSION,
        "confs": {b: {"type": "isolation", "backend": b} for b in BACKENDS},
        "load": {"start": list(load_start), "end": list(os.getloadavg())},
        "seconds": {"table1": round(t1_seconds, 1), "total": round(elapsed, 1)},
        "sizes": args.sizes,
        "add": table1,
        "add_ratio_largest_over_smallest": {"sizes": [lo, hi], **ratios},
        "forwarding": table2,
    }


def stop_servers(servers: list) -> None:
    for proc in servers:  # iperf3 servers: our own children, by pid
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def render(r: dict) -> str:
    load = harness.load
    lines = [
        harness.headline("isolation plugin scaling", r),
        f"plugin: {r['plugin']['path']} -- {r['plugin']['about']}; cniVersion {r['cniVersion']}, ingressPolicy same-bridge",
        f"load (1/5/15 min): start {load(r['load']['start'])}  end {load(r['load']['end'])}; "
        f"measured {r['seconds']['total']} s (table 1: {r['seconds']['table1']} s)",
        "",
        f"1. ADD latency vs isolated bridges registered ({NEW_RUNS} new-bridge ADDs, {REPEAT_RUNS} repeated ADDs of "
        "an existing bridge, per cell)",
    ]
    rows = []
    for row in r["add"]:
        if row["backend"] == "iptables":
            rules = f"{row['rules']} (STAGE-1+2, v4)"
            elems = "-"
        else:
            rules = f"{row['rules']} (inet isolation)"
            elems = " + ".join(f"{v} {k}" for k, v in sorted(row["set_elements"].items()))
        rows.append([
            row["backend"], str(row["bridges"]),
            f"{row['new']['median_ms']:.1f} ms", f"{row['new']['p95_ms']:.1f} ms",
            f"{row['repeat']['median_ms']:.1f} ms", f"{row['repeat']['p95_ms']:.1f} ms",
            rules, elems,
        ])
    lines += harness.table(["backend", "bridges", "new median", "new p95", "repeat median", "repeat p95", "rules", "set elements"], rows)
    rat = r["add_ratio_largest_over_smallest"]
    lo, hi = rat["sizes"]
    lines.append("")
    for b in BACKENDS:
        lines.append(f"ADD@{hi} / ADD@{lo} (medians), {b}: new bridge {rat[b]['new']:.2f}x, repeated {rat[b]['repeat']:.2f}x")
    lines.append("bridges: registered before the cell (the new-bridge ADDs take it to +10); new-bridge ADDs include "
                 "the one-time validation of that network's configuration; p95: nearest rank (of 10: the largest)")

    f = r["forwarding"]
    lines += [
        "",
        f"2. Forwarding between two containers on one bridge (bridge-nf-call-iptables=1), iperf3 TCP IPv4 "
        f"{f['iperf_seconds']} s (+{f['iperf_omit_seconds']} s omitted) x {f['rounds']} interleaved rounds, "
        f"ping -c {PING_COUNT} -i {PING_INTERVAL}",
    ]
    rows = []
    for key, v in f["variants"].items():
        rows.append([
            key,
            str(v["other_isolated_bridges"]) if key in BACKENDS else f"0 ({f['bridges_in_none_host']} unregistered)",
            f"{v['throughput_median_gbps']:.2f} Gbit/s",
            " ".join(f"{x:.2f}" for x in v["throughput_rounds_gbps"]),
            f"{v['throughput_ratio_vs_none']:.2f}x",
            f"{v['throughput_ratio_vs_bare']:.2f}x",
            f"{v['ping_avg_ms'] * 1000:.1f} us",
            f"{v['ping_ratio_vs_none']:.2f}x",
        ])
    lines += harness.table(["variant", "other isolated bridges", "throughput median", "rounds (Gbit/s)", "vs none",
                            "vs bare", "ping avg RTT", "vs none"], rows)
    lines.append("none: the bridge as nerdctl's and Podman's default networks configure it (ipMasq, so conntrack "
                 "runs), no isolation; iptables/nftables: the same plus our plugin; bare: a bridge without ipMasq, "
                 "nothing in the host's firewall, not even conntrack (our `ct` matches turn it on there)")
    lines.append(f"packets that walked all of {STAGE1} (its RETURN counter, IPv4) in the iptables host: "
                 f"{f['iptables_stage1_return_packets_ipv4']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plugin", default=harness.OUR_PLUGIN, help="our frozen binary (default: %(default)s)")
    ap.add_argument("--sizes", default="1,100,1000", help="registered-bridge counts to measure ADD at (default: %(default)s)")
    ap.add_argument("--forward-bridges", type=int, help="other isolated bridges during table 2 (default: the largest size)")
    ap.add_argument("--iperf-seconds", type=int, default=3, help="measured seconds per iperf3 run (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved forwarding rounds (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the numbers (and raw samples) as JSON")
    args = ap.parse_args()
    try:
        args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        ap.error("--sizes: comma-separated positive integers")
    if not args.sizes or args.sizes[0] < 1 or args.sizes[-1] > 20000:
        ap.error("--sizes: 1..20000")
    if args.forward_bridges is None:
        args.forward_bridges = args.sizes[-1]
    if not 0 <= args.forward_bridges <= 20000 or args.iperf_seconds < 1 or args.rounds < 1:
        ap.error("--forward-bridges 0..20000, --iperf-seconds >= 1, --rounds >= 1")
    harness.preflight(ap, args, ("bridge", "host-local"))
    for tool, pkg in (("iperf3", "iperf3"), ("ping", "iputils-ping"), ("nft", "nftables"), ("iptables-save", "iptables")):
        if shutil.which(tool) is None:
            ap.error(f"{tool} is not installed; install it with: apt-get install -y {pkg}")

    prefix = "sc" + secrets.token_hex(2)  # 6 chars; longest names "<prefix>-non", "<prefix>b20100" are 12
    tmp = tempfile.mkdtemp(prefix=f"isolation-scale-{prefix}-")
    made: list[str] = []
    hosts: dict[str, Host] = {}
    servers: list[subprocess.Popen] = []

    def clean_up() -> None:
        stop_servers(servers)
        harness.cleanup(prefix, made, list(hosts.values()), tmp, log)

    return harness.run(lambda: benchmark(args, prefix, tmp, made, hosts, servers), clean_up, render, args.json, log)


if __name__ == "__main__":
    sys.exit(main())
