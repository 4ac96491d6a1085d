"""Stress runs for the reliability claims, at the sizes issue 8 names (the test suite runs
small variants of each: tests/e2e/test_stress.py).

    sudo .venv/bin/python bench/stress.py parallel [--invocations 64] [--bridges 16] [--rounds 4] [--host-filter] [--backend B]
    sudo .venv/bin/python bench/stress.py crash    [--calls 200] [--backend B]
    sudo .venv/bin/python bench/stress.py churn    [--cycles 1000] [--bridges 10] [--backend B] [--agent]
    sudo .venv/bin/python bench/stress.py fuzz     [--cases 10000]

Each builds a lab of network namespaces (tests/lab/netlab.py: real bridge and host-local
plugins, our frozen binary, nothing in the root namespace), runs, checks, prints one
JSON line of figures and exits non-zero when a check fails. `--backend both` (the
default) runs iptables and nftables one after the other.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "lab"))
sys.path.insert(0, REPO)

from netlab import Lab  # noqa: E402

PLUGIN = os.path.join(REPO, "dist", "isolation", "isolation")


class Failed(Exception):
    pass


def conf(lab: Lab, c, backend: str) -> dict:
    return {"cniVersion": "1.0.0", "name": c.network.name, "type": "isolation", "backend": backend,
            "prevResult": lab.cache[(c.network.name, c.id)]}


def invoke(lab: Lab, c, command: str, backend: str, retries: int = 5) -> tuple[int, dict | None, int]:
    """One plugin run; error 11 (lock busy) is retried, as a runtime would. (rc, out, retries used)."""
    for attempt in range(retries + 1):
        rc, out, _ = lab.exec_plugin("isolation", command, conf(lab, c, backend), lab._env(c))
        if rc == 0 or (out or {}).get("code") != 11:
            return rc, out, attempt
    return rc, out, retries


def status(lab: Lab) -> dict:
    out = subprocess.run(lab.isolation_argv("status", "--json"), capture_output=True, text=True)
    return json.loads(out.stdout)


def duplicate_rules(lab: Lab) -> list[str]:
    dups = []
    for fam in ("ipv4", "ipv6"):
        rules = [r for r in lab.save(fam).splitlines() if r.startswith("-A ")]
        dups += sorted({r for r in rules if rules.count(r) > 1})
    return dups


def registered(lab: Lab) -> set[str]:
    return {b["bridge"] for b in status(lab)["bridges"]}


HOST_FILTER = """table ip filter {
  chain OUTPUT { type filter hook output priority filter; policy accept; }
}
table ip6 filter {
  chain OUTPUT { type filter hook output priority filter; policy accept; }
}
"""


def parallel(lab: Lab, backend: str, invocations: int, bridges: int, rounds: int = 4,
             host_filter: bool = False) -> dict:
    """`rounds` rounds of `invocations` ADD/DEL at once across `bridges` bridges (3/4 ADDs of
    new containers, 1/4 DELs of containers added before); after each, registry, rules and
    traffic must agree. Then every container left is DELeted at once, and the host's whole
    ruleset (`nft list ruleset`, `iptables-save`, `ip6tables-save`: iptables-nft's tables
    and built-in chains included) must be what it was before the first ADD. `host_filter`:
    the host had iptables-nft filter tables already (only OUTPUT), so the plugin creates
    only the built-in chains it jumps from, and must remove only those."""
    nets = [lab.network(["bridge"]) for _ in range(bridges)]
    if host_filter:
        subprocess.run(["ip", "netns", "exec", lab.host, "nft", "-f", "-"], input=HOST_FILTER, text=True, check=True)
    baseline = lab.ruleset()
    live = [lab.add(nets[i % bridges]) for i in range(invocations - invocations * 3 // 4)]
    for c in live:
        if invoke(lab, c, "ADD", backend)[0] != 0:
            raise Failed(f"setup ADD of {c.id} failed")
    total, retries, seconds = 0, 0, 0.0
    for n in range(rounds):
        adds = [lab.add(nets[i % bridges]) for i in range(invocations * 3 // 4)]
        dels = random.sample(live, min(len(live), invocations - len(adds)))
        jobs = [("ADD", c) for c in adds] + [("DEL", c) for c in dels]
        random.shuffle(jobs)
        results, took = run_at_once(lab, jobs, backend)
        total, seconds = total + len(jobs), seconds + took
        retries += sum(r for _, (_, _, r) in results)
        errors = [f"round {n}: {j[0]} {j[1].id}: {out}" for j, (rc, out, _) in results if rc != 0]
        live = [c for c in live if c not in dels] + adds
        report = status(lab)
        attachments = sum(b["attachments"] for b in report["bridges"])
        problems = report["problems"]
        if attachments != len(live):
            problems.append(f"round {n}: {attachments} attachments registered, {len(live)} expected")
        dups = duplicate_rules(lab) if backend == "iptables" else []
        # traffic: one container of each of two bridges, both ways, plus a same-bridge pair
        a, b = adds[0], adds[1]
        same = next(c for c in adds[1:] if c.network is a.network)
        got = lab.reach([(a.name, b.ipv4), (b.name, a.ipv6), (a.name, same.ipv4)])
        wrong = [k for k, ok in got.items() if ok != (k[2] == same.ipv4)]
        if errors or problems or dups or wrong:
            raise Failed(json.dumps({"errors": errors, "problems": problems, "duplicates": dups, "traffic": wrong}))
    results, took = run_at_once(lab, [("DEL", c) for c in live], backend)
    errors = [f"last DELs: {j[1].id}: {out}" for j, (rc, out, _) in results if rc != 0]
    after = lab.ruleset()
    if errors or after != baseline:
        import difflib

        diff = list(difflib.unified_diff(baseline.splitlines(), after.splitlines(), "before the first ADD",
                                         "after the last DEL", lineterm=""))
        raise Failed(json.dumps({"errors": errors, "ruleset_diff": diff[:80]}))
    return {"invocations": total, "rounds": rounds, "bridges": bridges, "host_filter": host_filter, "errors": 0, "retries_after_11": retries,
            "seconds": round(seconds, 2), "last_dels": len(live), "duplicate_rules": 0,
            "baseline_identical_after_last_del": True}


def run_at_once(lab: Lab, jobs: list, backend: str) -> tuple[list, float]:
    """Every (command, container) job at the same time; ((job, (rc, out, retries)) each, seconds)."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        results = list(pool.map(lambda j: (j, invoke(lab, j[1], j[0], backend)), jobs))
    return results, time.monotonic() - started


def crash(lab: Lab, backend: str, calls: int) -> dict:
    """`calls` ADD/DEL, each SIGKILLed at a random moment; after each, the registry must
    read back (never torn), and at the end CHECK, status and traffic must agree once the
    next runs (and `isolation reconcile`) have repaired what the kills left."""
    nets = [lab.network(["bridge"]) for _ in range(4)]
    cs = [lab.add(nets[i % 4]) for i in range(8)]
    killed, completed = 0, 0
    for i in range(calls):
        c = random.choice(cs)
        command = random.choice(["ADD", "ADD", "DEL"])
        env = {"CNI_COMMAND": command, "CNI_PATH": "/usr/lib/cni", **lab._env(c)}
        proc = subprocess.Popen(lab.isolation_argv(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        proc.stdin.write(json.dumps(conf(lab, c, backend)).encode())
        proc.stdin.close()
        time.sleep(random.uniform(0, 0.15))  # the whole run (namespace entry included) takes ~0.1 s
        if proc.poll() is not None:  # it finished first
            completed += 1
        else:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                completed += 1
            proc.wait()
        state = lab.state_dir()
        for name in os.listdir(state) if os.path.isdir(state) else ():  # not made yet if killed early
            if name.endswith(".damaged"):  # registry.damaged (the marker), registry.json.damaged (as found)
                raise Failed(f"the registry was torn after call {i}")
    out = subprocess.run(lab.isolation_argv("reconcile"), capture_output=True, text=True)
    if out.returncode != 0:
        raise Failed(f"reconcile failed: {out.stdout} {out.stderr}")
    for c in cs:  # every container ends ADDed: its CHECK must pass
        if invoke(lab, c, "ADD", backend)[0] != 0:
            raise Failed(f"ADD of {c.id} failed after the kills")
    leftovers = [n for n in os.listdir(lab.state_dir()) if n.startswith("registry.json.")]
    if leftovers:
        raise Failed(f"temporary registry files left behind: {leftovers}")
    report = status(lab)
    bad = [c.id for c in cs if any(rc != 0 for kind, rc, _ in lab.check(c) if kind == "isolation")]
    got = lab.reach([(cs[0].name, cs[1].ipv4), (cs[0].name, cs[4].ipv4)])  # other bridge; same bridge
    if report["problems"] or bad or got[("icmp", cs[0].name, cs[1].ipv4)] or not got[("icmp", cs[0].name, cs[4].ipv4)]:
        raise Failed(json.dumps({"problems": report["problems"], "check_failed": bad, "traffic": str(got)}))
    return {"calls": calls, "killed_mid_run": killed, "finished_before_the_kill": completed, "torn_registries": 0}


def churn(lab: Lab, backend: str, cycles: int, bridges: int, agent: bool) -> dict:
    """`cycles` ADD+DEL pairs across `bridges` bridges: ruleset and registry must come back
    to the baseline byte for byte; file descriptors and (with --agent) its memory flat."""
    nets = [lab.network(["bridge"]) for _ in range(bridges)]
    cs = [lab.add(n) for n in nets]
    keep = lab.add(nets[0])  # one attachment stays registered throughout
    if agent:
        lab.start_agent()
    if invoke(lab, keep, "ADD", backend)[0] != 0:
        raise Failed("baseline ADD failed")
    registry = os.path.join(lab.state_dir(), "registry.json")

    def snapshot():
        with open(registry) as f:
            return lab.ruleset(), f.read()

    def agent_figures():
        if not agent:
            return None
        pid = lab.agent.pid
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "rss_kib": rss}

    baseline = snapshot()
    warm = agent_figures()
    for i in range(cycles):
        c = cs[i % bridges]
        for command in ("ADD", "DEL"):
            rc, out, _ = invoke(lab, c, command, backend)
            if rc != 0:
                raise Failed(f"cycle {i} {command} {c.id}: {out}")
        if i == min(50, cycles - 1):
            warm = agent_figures() or warm
    after = snapshot()
    end = agent_figures()
    if after != baseline:
        raise Failed("ruleset or registry differ from the baseline after the churn")
    return {"cycles": cycles, "bridges": bridges, "baseline_identical": True,
            "agent_after_50_cycles": warm, "agent_at_end": end}


def fuzz(cases: int) -> dict:
    ns = f"fz{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, os.path.join(REPO, "tests", "lab", "fuzz_cni.py"),
                               "--cases", str(cases)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise Failed(proc.stdout[-4000:] + proc.stderr[-4000:])
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        key = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                              "import sys; sys.path.insert(0, sys.argv[1]); from plugin.hoststate import netns_key; "
                              "print(netns_key())", REPO], capture_output=True, text=True).stdout.strip()
        subprocess.run(["ip", "netns", "del", ns])
        if key:
            subprocess.run(["rm", "-rf", os.path.join("/run/isolation", key)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["parallel", "crash", "churn", "fuzz"])
    ap.add_argument("--backend", choices=["iptables", "nftables", "both"], default="both")
    ap.add_argument("--invocations", type=int, default=64)
    ap.add_argument("--bridges", type=int)
    ap.add_argument("--rounds", type=int, default=4, help="parallel: rounds before the last DELs")
    ap.add_argument("--host-filter", action="store_true",
                    help="parallel: the host has iptables-nft filter tables (OUTPUT only) before the first ADD")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--agent", action="store_true", help="churn with the resident agent serving")
    ap.add_argument("--plugin", default=PLUGIN)
    args = ap.parse_args()
    random.seed(os.environ.get("STRESS_SEED", "isolation"))
    if args.what == "fuzz":
        print(json.dumps({"fuzz": fuzz(args.cases)}))
        return 0
    results = {}
    for backend in (["iptables", "nftables"] if args.backend == "both" else [args.backend]):
        with Lab(args.plugin, bridge_nf=1) as lab:
            try:
                if args.what == "parallel":
                    results[backend] = parallel(lab, backend, args.invocations, args.bridges or 16, args.rounds,
                                                args.host_filter)
                elif args.what == "crash":
                    results[backend] = crash(lab, backend, args.calls)
                else:
                    results[backend] = churn(lab, backend, args.cycles, args.bridges or 10, args.agent)
            except Failed as exc:
                print(json.dumps({args.what: {backend: {"failed": str(exc)}}}))
                return 1
    print(json.dumps({args.what: results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
