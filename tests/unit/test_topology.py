"""plugin.topology and plugin.watch against a real kernel, in a throwaway network namespace.

Each test runs its code in a child made by `unshare --net` (with a user namespace of its
own when the test is not root): the namespace exists only while that child lives, so
nothing can be left behind, and nothing here touches the test process's own namespace.
Expected values come from iproute2 (`ip -j link`, `bridge -j -d link`), not from the
code under test.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNSHARE = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--net"]


def in_throwaway_netns(code: str) -> dict:
    """Run `code` (Python, with `sh` and `out` defined) in a new network namespace; returns `out`."""
    prelude = textwrap.dedent("""
        import json, subprocess, sys
        sys.path.insert(0, REPO)
        out = {}

        def sh(cmd):
            return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout
    """).replace("REPO", repr(REPO))
    script = prelude + textwrap.dedent(code) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run([*UNSHARE, sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"cannot run in a throwaway network namespace (rc={proc.returncode}): {proc.stderr}",
                    pytrace=False)
    return json.loads(proc.stdout.splitlines()[-1])


def test_read_answers_as_iproute2_does():
    out = in_throwaway_netns("""
        sh("ip link add br0 type bridge && ip link add br1 type bridge")
        for n in range(4):
            sh(f"ip link add v{n} type veth peer name p{n}")
        sh("ip link set v0 master br0 && ip link set v1 master br0 && ip link set v2 master br1")
        sh("bridge link set dev v0 isolated on")
        from plugin import topology
        links = topology.read()
        out["read"] = {"interfaces": links.interfaces, "bridges": sorted(links.bridges), "ports": links.ports,
                       "isolated": sorted(links.isolated)}
        out["ip"] = json.loads(sh("ip -j -d link show"))
        out["bridge"] = json.loads(sh("bridge -j -d link show"))
    """)
    ip, got = out["ip"], out["read"]
    assert got["interfaces"] == {link["ifname"]: link["ifindex"] for link in ip}
    assert got["bridges"] == sorted(link["ifname"] for link in ip if link.get("linkinfo", {}).get("info_kind") == "bridge")
    assert got["bridges"] == ["br0", "br1"]
    masters = {link["ifname"]: link.get("master") for link in ip}
    assert got["ports"] == {"br0": ["v0", "v1"], "br1": ["v2"]} == {
        b: sorted(p for p, m in masters.items() if m == b) for b in ("br0", "br1")}
    assert masters["v3"] is None and not any("v3" in ports for ports in got["ports"].values())
    assert got["isolated"] == ["v0"] == sorted(p["ifname"] for p in out["bridge"] if p.get("isolated"))


def test_set_isolated_sets_and_clears_the_kernels_flag():
    out = in_throwaway_netns("""
        sh("ip link add br0 type bridge && ip link add v0 type veth peer name p0 && ip link set v0 master br0")
        from plugin import topology

        def flag():
            return [p.get("isolated") for p in json.loads(sh("bridge -j -d link show dev v0"))]

        topology.set_isolated("v0", True)
        out["on"] = flag()
        topology.set_isolated("v0", False)
        out["off"] = flag()
        for name in ("p0", "nothere"):  # no bridge port; no interface at all
            try:
                topology.set_isolated(name, True)
                out[name] = "no error"
            except OSError as exc:
                out[name] = exc.errno
    """)
    assert out["on"] == [True] and out["off"] == [False]
    assert out["p0"] not in ("no error", None) and out["nothere"] == 19  # ENODEV


def test_changes_hears_links_and_nftables_and_reports_lost_events():
    out = in_throwaway_netns("""
        import time
        from plugin.watch import Changes

        def after(cmd, changes):
            sh(cmd)
            deadline = time.monotonic() + 10  # a bound on a wait, not a speed claim
            while time.monotonic() < deadline and not changes.wait(0.1):
                pass
            time.sleep(0.2)  # what else the same command caused
            return sorted(changes.take())

        changes = Changes()
        out["start"] = changes.start()
        out["bridge added"] = after("ip link add br0 type bridge", changes)
        out["port plugged"] = after("ip link add v0 type veth peer name p0 && ip link set v0 master br0", changes)
        out["port deleted"] = after("ip link del v0", changes)
        out["bridge deleted"] = after("ip link del br0", changes)
        out["table added"] = after("nft add table inet t0", changes)
        out["ruleset flushed"] = after("nft flush ruleset", changes)

        # A socket buffer far too small for a burst: the kernel drops notifications (ENOBUFS).
        small = Changes(rcvbuf=1)
        out["small start"] = small.start()
        batch = "".join(f"add table inet b{i}\\n" for i in range(2000))
        subprocess.run(["nft", "-f", "-"], input=batch, text=True, check=True)
        out["burst"] = after("true", small)
        out["after the loss"] = after("nft add table inet again", small)
    """)
    assert out["start"] == {"link": None, "nftables": None} == out["small start"]
    for step in ("bridge added", "port plugged", "port deleted", "bridge deleted"):
        assert out[step] == ["link"], (step, out[step])
    assert out["table added"] == ["nftables"] and out["ruleset flushed"] == ["nftables"]
    assert "lost" in out["burst"], out["burst"]
    assert out["after the loss"] == ["nftables"], "the source reopened its socket"
