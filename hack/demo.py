"""Live demo: isolated networks in throwaway namespaces, using the installed plugin.

Three networks of two containers each, made by the real bridge + host-local plugins
and chained to /opt/cni/bin/isolation: net1 and net2 `same-bridge`, net3 `isolated`.
Prints who reaches whom (real ICMP and TCP), the rules the plugin installed, and
removes every namespace it made. Nothing touches the root network namespace.
"""

import os
import subprocess
import sys

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [os.path.join(REPO, "tests", "lab"), REPO]  # the test lab, and the plugin package it names state with
from netlab import CommandFailed, Lab  # noqa: E402

BIN = os.environ.get("ISOLATION_BIN", "/opt/cni/bin/isolation")


def main() -> int:
    run = subprocess.run([BIN], capture_output=True, text=True, env={})
    if run.returncode != 0 or not run.stdout.strip():
        raise OSError(f"{BIN} does not run (exit code {run.returncode}): {run.stderr.strip() or run.stdout.strip()}")
    about = run.stdout.splitlines()[0]
    print(f"plugin: {BIN} ({about})\n")
    with Lab(BIN, bridge_nf=0) as lab:
        policies = ["same-bridge", "same-bridge", "isolated"]
        nets = [lab.network(["bridge", "isolation"], isolation={"ingressPolicy": p}) for p in policies]
        containers = [lab.add(n) for n in nets for _ in range(2)]
        names = {c.name: f"c{i + 1}" for i, c in enumerate(containers)}
        for net, policy in zip(nets, policies):
            members = ", ".join(f"{names[c.name]} {c.ipv4} {c.ipv6}" for c in net.containers)
            print(f"{net.name.split('-')[-1]} (bridge {net.bridge}, ingressPolicy {policy}): {members}")
        targets = [(names[c.name], c.ipv4, c.ipv6) for c in containers] + [("outside", "10.99.0.2", "fd99::2")]
        probes = [(src.name, addr) for src in containers for _, v4, v6 in targets for addr in (v4, v6)]
        got = lab.reach(probes)

        def cell(src, v4, v6):
            if v4 in (src.ipv4,):
                return "  -  "
            oks = [got[(k, src.name, a)] for a in (v4, v6) for k in ("icmp", "tcp")]
            return "reach" if all(oks) else ("BLOCK" if not any(oks) else "mixed")

        print("\nreachability over IPv4 and IPv6, ICMP and TCP (row = from, column = to):")
        print("      " + " ".join(f"{t[0]:>7}" for t in targets))
        for src in containers:
            print(f"{names[src.name]:<6}" + " ".join(f"{cell(src, v4, v6):>7}" for _, v4, v6 in targets))
        print("\nexpected: reach within net1 and within net2, BLOCK across networks and inside")
        print("net3 (isolated), reach to the outside host everywhere.\n")
        print(f"net.bridge.bridge-nf-call-iptables in the demo host: {lab.bridge_nf()} (set to 0 for the demo:"
              " nftables isolates without br_netfilter)\n")
        tables = [t for t in lab.nft("list", "tables").splitlines() if t.endswith(" isolation")]
        if tables:  # the default backend: nftables
            print("nftables tables installed in the demo host namespace (`auto` chose nftables):")
            for table in tables:
                print("  " + lab.nft("list", *table.split()).replace("\n", "\n  ").rstrip())
        else:
            print("rules installed in the demo host namespace (iptables-save, filter table):")
            for line in lab.save().splitlines():
                if line.startswith("-A") and "isolation-plugin" in line:
                    print("  " + line)
    print("\nall demo namespaces removed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CommandFailed, OSError) as exc:  # say what failed, not where in this script
        print(f"demo failed: {exc}", file=sys.stderr)
        print("(nothing the demo made is left behind)", file=sys.stderr)
        sys.exit(1)
