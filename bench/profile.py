"""Where the time of one plugin run goes: a per-phase breakdown of the frozen binary.

    sudo .venv/bin/python bench/profile.py [--plugin dist/isolation/isolation] [--bridges 5]
        [--containers 10] [--rounds 3] [--importtime] [--json]

It makes one throwaway host network namespace (random prefix, removed with everything
in it at the end, also after a failure), builds a grid of containers with the upstream
bridge plugin, and runs ADD, CHECK and DEL for every container, rounds times, without and
then with `isolation agent`, with ISOLATION_TRACE set: each run appends the CLOCK_MONOTONIC
stamps of its phases (plugin/trace.py) and this script, which started the run and saw it
end on the same clock, turns them into medians per phase:

    start       spawn -> main() entered: fork/exec, the bootloader (and its second exec,
                which costs ~0.3 ms of it), the interpreter, the frozen bootstrap
    forward     reading stdin, and asking the agent (answered, or no agent here)
    decode      importing the CNI layer, decoding the configuration
    config      the validated configuration (cache hit, or pydantic)
    backend     selecting the backend: libnftables loaded, context made, one listing
    lock        the rest of the engine (prevResult, policy), then the host-wide lock
    registry    reading the registry
    kernel      reading the tables and applying one transaction (CHECK: the audit)
    save        writing the registry (write, fsync, rename)
    unlock      the rest under the lock
    result      writing the result
    exit        flushing, os._exit, and the parent seeing the child end

VERSION and the floors (`python3 -I -S -c pass`, `/bin/true`) are timed in the same loop,
so each phase can be read as a share of the interpreter's own start. The process enters
the namespace itself (setns), so nothing but the plugin is on the clock.
`--importtime` also runs each verb once on the same code unfrozen under `python -X
importtime` (after a first run that fills the configuration cache) and prints the
top-level imports that cost most.
"""

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time

import harness
from harness import CNI_DIR, CNI_VERSION, SYSTEM_PATH, sh

PHASES = {  # stamp that ends the phase -> phase name (in run order; absent stamps merge into the next)
    "main": "start", "no-agent": "forward", "forwarded": "forward", "decoded": "decode", "config": "config",
    "backend": "backend", "locked": "lock", "registry": "registry", "save": "kernel", "saved": "save",
    "unlocked": "unlock", "result": "result", "exit": "exit",
}
FLOORS = {"python3 -I -S -c pass": ["/usr/bin/python3", "-I", "-S", "-c", "pass"], "/bin/true": ["/bin/true"]}
log = harness.logger("profile")


def phases(t0: int, t1: int, line: str) -> dict[str, float]:
    """ms per phase of one run, from its trace line and the spawn (t0) and reap (t1) times."""
    stamps = [(k, int(v)) for k, v in (w.split("=") for w in line.split()[1:])]
    out, last = {}, t0
    for key, t in stamps:
        if key == "exit":
            continue
        name = PHASES.get(key, key)
        if key in ("locked", "unlocked", "registry", "save", "saved") and name in out:
            name += "+"  # a second lock or save (DEL: forget, then release)
        out[name] = out.get(name, 0.0) + (t - last) / 1e6
        last = t
    out["exit"] = (t1 - last) / 1e6
    out["total"] = (t1 - t0) / 1e6
    return out


class Profiler:
    def __init__(self, args, prefix: str, tmp: str):
        self.args, self.prefix, self.tmp = args, prefix, tmp
        self.trace = os.path.join(tmp, "trace")
        self.host = f"{prefix}-h"
        self.containers = []

    def timed(self, argv, env, stdin=b"") -> tuple[int, int, subprocess.CompletedProcess]:
        t0 = time.monotonic_ns()
        proc = subprocess.run(argv, input=stdin, capture_output=True, env=env)
        return t0, time.monotonic_ns(), proc

    def env(self, command: str, c: dict | None, trace: bool = True) -> dict:
        env = {"CNI_COMMAND": command, "CNI_PATH": CNI_DIR}
        if c:
            env |= {"CNI_CONTAINERID": c["id"], "CNI_NETNS": f"/run/netns/{c['netns']}", "CNI_IFNAME": "eth0"}
        if trace:
            env["ISOLATION_TRACE"] = self.trace
        return env

    def stdin(self, c: dict) -> bytes:
        return json.dumps({"cniVersion": CNI_VERSION, "name": c["network"], "type": "isolation",
                           "prevResult": c["prev"]}).encode()

    def build(self, made: list[str]) -> None:
        a = self.args
        for k in range(a.bridges * a.containers):
            b = k % a.bridges + 1
            self.containers.append({"id": f"{self.prefix}-c{k + 1}", "network": f"{self.prefix}-n{b}",
                                    "bridge": f"{self.prefix}b{b}", "index": b, "netns": f"{self.prefix}c{k + 1}"})
        harness.add_namespaces([self.host] + [c["netns"] for c in self.containers], made)
        harness.lo_up(self.host)
        harness.enter_netns(self.host)  # this process, and all it starts, lives there from now on
        for c in self.containers:
            conf = harness.bridge_conf(c["network"], c["bridge"], c["index"], os.path.join(self.tmp, "ipam"),
                                       families="ipv4")
            env = self.env("ADD", c, trace=False) | {"PATH": SYSTEM_PATH}
            proc = subprocess.run([os.path.join(CNI_DIR, "bridge")], input=json.dumps(conf).encode(),
                                  capture_output=True, env=env, check=True)
            c["prev"] = json.loads(proc.stdout)

    def run_verb(self, verb: str, c: dict | None, samples: dict) -> None:
        argv = [self.args.plugin]
        stdin = self.stdin(c) if c else json.dumps({"cniVersion": CNI_VERSION}).encode()
        t0, t1, proc = self.timed(argv, self.env(verb, c), stdin)
        if proc.returncode != 0:
            raise harness.BenchError(harness.failure_text(f"{verb} {c and c['id']}", stdin,
                                                          (0, proc.returncode, proc.stdout, proc.stderr)))
        line = ""
        if verb != "VERSION":
            with open(self.trace) as f:
                lines = f.read().splitlines()
            line = lines[-1] if lines else ""
            os.unlink(self.trace)
        samples.setdefault(verb, []).append(phases(t0, t1, line) if line else {"total": (t1 - t0) / 1e6})

    def round(self, samples: dict) -> None:
        for verb in ("ADD", "CHECK"):
            for c in self.containers:
                self.run_verb(verb, c, samples)
        for i in range(len(self.containers)):
            self.run_verb("VERSION", None, samples)
            for name, argv in FLOORS.items():
                t0, t1, _ = self.timed(argv, {})
                samples.setdefault(name, []).append({"total": (t1 - t0) / 1e6})
        for c in self.containers:
            self.run_verb("DEL", c, samples)

    def importtime(self) -> dict[str, list[tuple[float, str]]]:
        """verb -> the costliest top-level imports (cumulative ms, module) of the unfrozen code."""
        code = f"import sys; sys.path.insert(0, {harness.REPO!r}); from plugin.main import main; main()"
        argv = [sys.executable, "-X", "importtime", "-I", "-c", code]  # not -S: pydantic is in site-packages
        out = {}
        c = self.containers[0]
        for verb in ("ADD", "ADD", "CHECK", "DEL", "ADD"):  # the first ADD fills the configuration cache
            proc = subprocess.run(argv, input=self.stdin(c), capture_output=True, env=self.env(verb, c, False))
            top = []
            for line in proc.stderr.decode().splitlines():
                parts = line[len("import time:"):].split("|") if line.startswith("import time:") else []
                if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
                    top.append((int(parts[1]) / 1000, parts[2].strip()))  # top level: not nested
            out[verb] = sorted(top, reverse=True)[:12]
        return out


def summarise(samples: dict) -> dict:
    out = {}
    for verb, runs in samples.items():
        names = [k for k in runs[0]] + sorted({k for r in runs for k in r} - set(runs[0]))
        out[verb] = {k: statistics.median([r.get(k, 0.0) for r in runs]) for k in names}
        out[verb]["p95"] = harness.p95([r["total"] for r in runs])
        out[verb]["n"] = len(runs)
    return out


def render(r: dict) -> str:
    lines = [harness.headline("isolation per-phase profile", r),
             f"grid {r['grid']}, load (1/5/15 min): start {harness.load(r['load'][0])}, end {harness.load(r['load'][1])}",
             ""]
    floor = r["plain"]["python3 -I -S -c pass"]["total"]
    for mode in ("plain", "agent"):
        s = r[mode]
        lines.append(f"{mode}: medians in ms (share of the same loop's `python3 -I -S -c pass` = {floor:.1f} ms)")
        verbs = [v for v in ("VERSION", "ADD", "CHECK", "DEL") if v in s]
        cols = []
        for v in verbs:
            cols += [k for k in s[v] if k not in cols and k not in ("n", "p95", "total")]
        rows = [[k] + [f"{s[v][k]:.2f}" if k in s[v] else "" for v in verbs] for k in cols]
        rows += [["total"] + [f"{s[v]['total']:.2f}" for v in verbs],
                 ["total / floor"] + [f"{s[v]['total'] / floor:.2f}x" for v in verbs],
                 ["p95 / median"] + [f"{s[v]['p95'] / s[v]['total']:.2f}" for v in verbs]]
        lines += harness.table(["phase"] + verbs, rows) + [""]
    lines.append("floors: " + ", ".join(f"{k} {r['plain'][k]['total']:.2f} ms" for k in FLOORS))
    if r.get("importtime"):
        lines.append("")
        for verb, top in r["importtime"].items():
            lines.append(f"-X importtime, unfrozen, {verb}: " + ", ".join(f"{n} {ms:.1f}" for ms, n in top))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plugin", default=harness.OUR_PLUGIN)
    ap.add_argument("--bridges", type=int, default=5)
    ap.add_argument("--containers", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--importtime", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    harness.preflight(ap, args, ("bridge", "host-local"))
    prefix = "pf" + secrets.token_hex(2)
    tmp = tempfile.mkdtemp(prefix=f"isolation-profile-{prefix}-")
    made: list[str] = []
    agent: list[subprocess.Popen] = []
    state: list[str] = []

    def bench() -> dict:
        p = Profiler(args, prefix, tmp)
        log(f"building {args.bridges} x {args.containers} in {p.host}")
        p.build(made)
        from plugin.hoststate import STATE_ROOT, netns_key

        state.append(os.path.join(STATE_ROOT, netns_key()))
        load0 = os.getloadavg()
        result = {**harness.stamp(), "grid": f"{args.bridges}x{args.containers} IPv4-only"}
        for mode in ("plain", "agent"):
            samples: dict = {}
            if mode == "agent":
                agent.append(subprocess.Popen([args.plugin, "agent"], stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                sock = os.path.join(state[0], "agent.sock")
                while not os.path.exists(sock):
                    time.sleep(0.02)
            for _ in range(args.rounds):
                log(f"{mode}: a round of ADD, CHECK, VERSION + floors, DEL")
                p.round(samples)
            result[mode] = summarise(samples)
        agent[0].terminate()
        agent[0].wait(10)
        if args.importtime:
            result["importtime"] = p.importtime()
        result["load"] = [list(load0), list(os.getloadavg())]
        return result

    def clean_up() -> None:
        for proc in agent:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        harness.cleanup(prefix, made, [], tmp, log)
        for path in state:
            sh("rm", "-rf", path, check=False)

    return harness.run(bench, clean_up, render, args.json, log)


if __name__ == "__main__":
    sys.exit(main())
