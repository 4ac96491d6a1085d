"""Routed networks: isolation chained after the CNI `ptp` plugin (no bridge: a host-side veth
per container, /32 and /128 routes to it), isolating networks by their CNI network name.

Networks (expected verdicts from the policy definitions, not from the plugin):
  P1  ptp, same-bridge                 a1, a2: reach each other, the host and the outside
  P2  ptp, same-bridge                 b1: neither reaches nor is reached by P1, P3 or B
  B   bridge, same-bridge              c1: a bridge network, isolated from the routed ones
  P3  ptp, isolated                    d1, d2: not even each other
  P4  ptp, same-bridge, hostAccess deny, denyEgress the uplink's range
                                       e1, e2: each other yes; the host and outside no
Every "blocked" stands beside a positive control of the same setup (a1 reaches a2, the host
and the outside; e1 reaches e2). `isolation explain` is asked about every probe.
"""

import json

import pytest

from explaining import disagreements, explain, reach_keys
from netlab import IP, addresses, sh

pytestmark = [pytest.mark.e2e, pytest.mark.beside]  # run beside the rest by make test, to keep the suite under 30 minutes

HOST = ("10.99.0.1", "fd99::1")  # the host's uplink addresses (its listener answers there)
OUTSIDE = ("10.99.0.2", "fd99::2")
GUARD = {"hostAccess": "deny", "denyEgress": ["10.99.0.0/24", "fd99::/64"]}


def _members(lab, backend: str, net) -> set[str]:
    """The host-side veths of `net`'s containers that our rules still name."""
    ports = {lab.host_port(c) for c in net.containers}
    text = lab.nft("list", "table", "inet", "isolation") if backend == "nftables" and \
        "table inet isolation" in lab.nft("list", "tables") else lab.save("ipv4") + lab.save("ipv6")
    return {p for p in ports if p in text}


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_ptp_networks_are_isolated_by_network_name(lab, backend):
    iso = {"backend": backend}
    p1 = lab.network(["ptp", "isolation"], isolation=iso)
    p2 = lab.network(["ptp", "isolation"], isolation=iso)
    b = lab.network(["bridge", "isolation"], isolation=iso)
    p3 = lab.network(["ptp", "isolation"], isolation={**iso, "ingressPolicy": "isolated"})
    p4 = lab.network(["ptp", "isolation"], isolation={**iso, **GUARD})
    baseline = lab.ruleset()
    a1, a2, b1, c1, d1, d2, e1, e2 = (lab.add(n) for n in (p1, p1, p2, b, p3, p3, p4, p4))
    assert all(len(addresses(c)) == 2 for c in (a1, b1, c1, d1, e1)), "every container must be dual-stack"

    want = {}
    for addr in addresses(a2) + list(HOST) + list(OUTSIDE):  # the positive controls
        want[(a1.name, addr)] = True
    for src, dst in ((a1, b1), (b1, a1), (a1, c1), (c1, a1), (b1, c1), (a1, d1), (d1, a1), (d1, d2), (d2, d1)):
        for addr in addresses(dst):
            want[(src.name, addr)] = False
    for addr in addresses(e2):
        want[(e1.name, addr)] = True
    for addr in (*HOST, *OUTSIDE, p4.gateway4, p4.gateway6, *addresses(a1)):
        want[(e1.name, addr)] = False
    got = lab.reach(list(want))
    wrong = [f"{kind} {src} -> {addr}: expected {'reach' if want[(src, addr)] else 'blocked'}"
             for (kind, src, addr), ok in got.items() if ok != want[(src, addr)]]
    assert not wrong, "\n".join(wrong)
    answers, _ = explain(lab, reach_keys(got), check=True)  # and the kernel's rules agree with the configuration
    assert not disagreements(reach_keys(got), answers), "\n".join(disagreements(reach_keys(got), answers))
    differ = [(k, a["check"]) for k, a in answers.items() if not a["check"]["agrees"]]
    assert not differ, differ

    # CHECK and status know the routed networks; their drops are counted per network and reason
    for c in (a1, a2, b1, c1, d1, d2, e1, e2):
        failed = [(kind, rc, out) for kind, rc, out in lab.check(c) if rc != 0]
        assert not failed, f"CHECK of {c.name}: {failed}"
    status = lab.status()
    entries = {e["bridge"]: e for e in status["bridges"]}
    assert not status["problems"], status["problems"]
    for net in (p1, p2, p3, p4):
        entry = entries[net.bridge]
        assert entry["routed"] and entry["exists"] and entry["networks"] == [net.name], entry
        assert entry["members"] == sorted(lab.host_port(c) for c in net.containers)
    assert entries[p1.bridge]["drops"]["cross-network"] > 0  # b1 and c1 -> a1 were dropped going into P1
    assert entries[p3.bridge]["drops"]["intra-bridge"] > 0  # d1 <-> d2
    assert entries[p4.bridge]["drops"]["host-access"] > 0 and entries[p4.bridge]["drops"]["egress-deny"] > 0
    assert "routed" not in entries[b.bridge]

    # GC forgets a2 (not in the runtime's list): its veth leaves the rules, a1 keeps its isolation
    conf = {"cniVersion": "1.1.0", "name": p1.name, "type": "isolation", "backend": backend,
            "cni.dev/valid-attachments": [{"containerID": a1.id, "ifname": "eth0"}]}
    assert lab.exec_plugin("isolation", "GC", conf, {})[0] == 0
    assert _members(lab, backend, p1) == {lab.host_port(a1)}
    assert lab.reach([(a1.name, c) for c in (*HOST, b1.ipv4)]) == {
        ("icmp", a1.name, HOST[0]): True, ("tcp", a1.name, HOST[0]): True, ("icmp", a1.name, HOST[1]): True,
        ("tcp", a1.name, HOST[1]): True, ("icmp", a1.name, b1.ipv4): False, ("tcp", a1.name, b1.ipv4): False}

    # the rules vanish with each network's last container, exactly
    for c in (a1, a2, b1, c1, d1, d2, e1, e2):
        assert all(rc == 0 for _, rc in lab.delete(c))
    assert lab.ruleset() == baseline
    status = lab.status()
    assert status["bridges"] == [] and not status["problems"], json.dumps(status)


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_ptp_group_and_open(lab, backend):
    """isolationGroup joins a routed network with a bridge network; `open` isolates nothing."""
    g = lab.network(["ptp", "isolation"], isolation={"backend": backend, "isolationGroup": "g"})
    h = lab.network(["bridge", "isolation"], isolation={"backend": backend, "isolationGroup": "g"})
    o = lab.network(["ptp", "isolation"], isolation={"backend": backend, "ingressPolicy": "open"})
    x = lab.network(["ptp", "isolation"], isolation={"backend": backend})
    g1, h1, o1, x1 = (lab.add(n) for n in (g, h, o, x))
    want = {(g1.name, a): True for a in addresses(h1)} | {(h1.name, a): True for a in addresses(g1)}
    want |= {(o1.name, a): True for a in addresses(g1) + addresses(x1)}  # open reaches, and is reached
    want |= {(x1.name, a): True for a in addresses(o1)}
    want |= {(x1.name, a): False for a in addresses(g1) + addresses(h1)}
    want |= {(g1.name, a): False for a in addresses(x1)}
    got = lab.reach(list(want))
    wrong = [f"{kind} {src} -> {addr}: expected {'reach' if want[(src, addr)] else 'blocked'}"
             for (kind, src, addr), ok in got.items() if ok != want[(src, addr)]]
    assert not wrong, "\n".join(wrong)
    answers, _ = explain(lab, reach_keys(got), check=True)
    assert not disagreements(reach_keys(got), answers), "\n".join(disagreements(reach_keys(got), answers))
    assert all(a["check"]["agrees"] for a in answers.values()), [a["check"] for a in answers.values()]


def test_ptp_refuses_anti_spoofing(lab):
    """antiSpoofing lives on bridge ports: asked for on a routed network, ADD fails (no silent gap)."""
    net = lab.network(["ptp"])
    c = lab.add(net)
    rc, out, _ = lab.exec_plugin("isolation", "ADD", lab.isolation_conf(c, antiSpoofing=True), lab._env(c))
    assert rc != 0 and out["code"] == 7 and "antiSpoofing" in out["msg"], out


def _blocked_and_reached(lab, a1, a2, b1) -> dict:
    """a1 -> a2 (same routed network: the positive control) and a1 <-> b1 (two routed networks)."""
    got = lab.reach([(a1.name, a2.ipv4), (a1.name, a2.ipv6), (a1.name, b1.ipv4), (a1.name, b1.ipv6),
                     (b1.name, a1.ipv4)])
    return {"same": all(ok for (_, _, addr), ok in got.items() if addr in addresses(a2)),
            "cross": any(ok for (_, src, addr), ok in got.items() if addr not in addresses(a2))}


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_ptp_reconcile_prune_cleanup(lab, backend):
    """reconcile restores a routed network's rules, prune forgets a container whose veth vanished
    (its rules go), `cleanup --bridge SEGMENT` removes a routed network's rules."""
    p1 = lab.network(["ptp", "isolation"], isolation={"backend": backend})
    p2 = lab.network(["ptp", "isolation"], isolation={"backend": backend})
    a1, a2, a3, b1 = lab.add(p1), lab.add(p1), lab.add(p1), lab.add(p2)
    assert _blocked_and_reached(lab, a1, a2, b1) == {"same": True, "cross": False}

    if backend == "iptables":  # firewall damage: the STAGE-2 drops are gone
        for tool in ("iptables", "ip6tables"):
            sh(tool, "-F", "CNI-ISOLATION-STAGE-2", netns=lab.host)
    else:
        sh("nft", "flush", "chain", "inet", "isolation", "forward", netns=lab.host)
    assert _blocked_and_reached(lab, a1, a2, b1)["cross"], "the damage must open the path (positive control)"
    assert lab.status()["problems"], "status sees the damage"
    proc = lab.cli("reconcile")
    assert proc.returncode == 0 and "restored" in proc.stdout, proc.stdout + proc.stderr
    assert _blocked_and_reached(lab, a1, a2, b1) == {"same": True, "cross": False}
    assert not lab.status()["problems"]

    gone = lab.host_port(a3)
    sh(IP, "link", "del", gone, netns=lab.host)  # the container's veth vanishes, no DEL
    assert any(gone in p and "vanished" in p for p in lab.status()["problems"])
    proc = lab.cli("prune")
    assert proc.returncode == 0 and "pruned 1 attachment" in proc.stdout, proc.stdout + proc.stderr
    p1.containers.remove(a3)
    assert _members(lab, backend, p1) == {lab.host_port(a1), lab.host_port(a2)}
    assert gone not in lab.ruleset()
    assert not lab.status()["problems"]
    assert _blocked_and_reached(lab, a1, a2, b1) == {"same": True, "cross": False}

    proc = lab.cli("cleanup", "--bridge", p2.bridge)
    assert proc.returncode == 0, proc.stderr
    assert lab.host_port(b1) not in lab.ruleset()
    assert [r["bridge"] for r in lab.status()["bridges"]] == [p1.bridge]
    assert not lab.status()["problems"]
