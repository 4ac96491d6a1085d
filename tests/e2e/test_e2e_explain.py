"""`isolation explain` agrees with real packets, on both backends, IPv4 and IPv6, for every
feature that decides a verdict; `--check` agrees with an intact ruleset and names what was
removed by hand (an isolated bridge's element or rules, a hostAccess guard's), and the
packets then confirm what it said.

Five networks in one lab (the management namespace is 10.98.0.2/.3, fd98::2/::3 behind the
host at 10.98.0.1, fd98::1; the host's uplink is 10.99.0.1, fd99::1; outside is 10.99.0.2):
  A  same-bridge, isolationGroup g1, denyEgress the management ranges except TCP 8080 to
     .3 / ::3; a1 publishes TCP 18080 (portmap)
  B  same-bridge, isolationGroup g1
  C  isolated, hostAccess deny except UDP 5300 and ICMP; c1 publishes TCP 18082
  D  same-bridge, allowPublishedPorts false; d1 publishes TCP 18081
  E  open
Every probe is sent for real and explained; the verdicts must be equal. The reasons of a
chosen probe per row of README's "How the keys combine" are written here by hand from the
keys' definitions, not from the code. A second test puts two conflists on one bridge, where
the strictest combination of their settings holds.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest

from explaining import disagreements, explain
from netlab import TCP_PORT, on_the_same_bridge, sh

pytestmark = pytest.mark.e2e
PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}}
MGMT = ("10.98.0.0/16", "fd98::/32")
UPLINK, OUTSIDE = ("10.99.0.1", "fd99::1"), ("10.99.0.2", "fd99::2")
UDP_OPEN, UDP_CLOSED = 5300, 5301


def _published(host_port: int) -> list[dict]:
    return [{"hostPort": host_port, "containerPort": TCP_PORT, "protocol": "tcp"}]


def _setup(lab, backend: str) -> dict:
    lab.management()
    base = {"backend": backend}
    nets = {
        "A": lab.network(["bridge", PORTMAP, "isolation"], isolation={
            **base, "isolationGroup": "g1", "denyEgress": list(MGMT),
            "allowEgress": [{"cidr": "10.98.0.3/32", "protocol": "tcp", "ports": [TCP_PORT]},
                            {"cidr": "fd98::3/128", "protocol": "tcp", "ports": [TCP_PORT]}]}),
        "B": lab.network(["bridge", "isolation"], isolation={**base, "isolationGroup": "g1"}),
        "C": lab.network(["bridge", PORTMAP, "isolation"], isolation={
            **base, "ingressPolicy": "isolated", "hostAccess": "deny",
            "allowHostPorts": [{"protocol": "udp", "port": UDP_OPEN}, {"protocol": "icmp"}]}),
        "D": lab.network(["bridge", PORTMAP, "isolation"], isolation={**base, "allowPublishedPorts": False}),
        "E": lab.network(["bridge", "isolation"], isolation={**base, "ingressPolicy": "open"}),
    }
    c = {
        "a1": lab.add(nets["A"], port_mappings=_published(18080)), "a2": lab.add(nets["A"]),
        "b1": lab.add(nets["B"]),
        "c1": lab.add(nets["C"], port_mappings=_published(18082)), "c2": lab.add(nets["C"]),
        "d1": lab.add(nets["D"], port_mappings=_published(18081)),
        "e1": lab.add(nets["E"]),
    }
    for port in (UDP_OPEN, UDP_CLOSED):
        lab.udp_echo(lab.host, port)
    return c


def _probes(c: dict, v: int) -> dict:
    """{probe: hand-derived (verdict, reason or None)} in IP version v (0: IPv4, 1: IPv6)."""
    addr = {n: (x.ipv4, x.ipv6)[v] for n, x in c.items()}
    up, out = UPLINK[v], OUTSIDE[v]
    mg2, mg3, host_mg = ("10.98.0.2", "fd98::2")[v], ("10.98.0.3", "fd98::3")[v], ("10.98.0.1", "fd98::1")[v]
    gw_c = (c["c1"].network.gateway4, c["c1"].network.gateway6)[v]
    a1, a2, b1, c1, c2, d1, e1 = (c[n].name for n in ("a1", "a2", "b1", "c1", "c2", "d1", "e1"))
    P, D = ("pass", None), "drop"
    return {
        # within a bridge: only ingressPolicy
        ("tcp", a1, addr["a2"], TCP_PORT): P, ("icmp", a1, addr["a2"], 0): P,
        ("tcp", c1, addr["c2"], TCP_PORT): (D, "intra-bridge"), ("icmp", c1, addr["c2"], 0): (D, "intra-bridge"),
        ("tcp", c2, up, 18082): (D, "intra-bridge"),  # c1's published port, hairpinned into isolated C
        ("tcp", a2, up, 18080): P,  # a1's published port from its same-bridge neighbour
        # denyEgress and its exceptions (forwarded, and the host's own address in a range)
        ("tcp", a1, mg2, TCP_PORT): (D, "egress-deny"), ("icmp", a1, mg2, 0): (D, "egress-deny"),
        ("tcp", a1, mg3, TCP_PORT): P, ("icmp", a1, mg3, 0): (D, "egress-deny"),
        ("tcp", a1, host_mg, TCP_PORT): (D, "egress-deny"),
        ("tcp", b1, mg2, TCP_PORT): P,  # B has no deny list
        # hostAccess deny and allowHostPorts (a published port is not the host's service)
        ("tcp", c1, gw_c, TCP_PORT): (D, "host-access"), ("tcp", c1, up, TCP_PORT): (D, "host-access"),
        ("icmp", c1, up, 0): P, ("udp", c1, up, UDP_OPEN): P, ("udp", c1, gw_c, UDP_CLOSED): (D, "host-access"),
        ("tcp", c1, up, 18080): P,
        # published ports: the publisher's allowPublishedPorts decides
        ("tcp", b1, up, 18080): P, ("tcp", d1, up, 18080): P, ("tcp", a1, up, 18082): P,
        ("tcp", a1, up, 18081): (D, "cross-network"), ("tcp", c1, up, 18081): (D, "cross-network"),
        # isolationGroup, isolating pairs, open networks
        ("tcp", a1, addr["b1"], TCP_PORT): P, ("icmp", b1, addr["a2"], 0): P,
        ("tcp", a1, addr["c1"], TCP_PORT): (D, "cross-network"), ("icmp", c1, addr["d1"], 0): (D, "cross-network"),
        ("tcp", c1, addr["d1"], TCP_PORT): (D, "cross-network"),
        ("tcp", d1, addr["a1"], TCP_PORT): (D, "cross-network"),
        ("tcp", b1, addr["c2"], TCP_PORT): (D, "cross-network"),
        ("tcp", e1, addr["a1"], TCP_PORT): P, ("tcp", c1, addr["e1"], TCP_PORT): P, ("tcp", e1, up, 18081): P,
        # the host and the outside
        ("tcp", a1, up, TCP_PORT): P, ("tcp", c1, out, TCP_PORT): P, ("icmp", d1, out, 0): P,
        ("udp", e1, up, UDP_CLOSED): P,
    }


def _fates(lab, probes) -> dict:
    run = {"icmp": lambda s, a, p: lab.ping(s, a), "tcp": lab.tcp, "udp": lab.udp}
    with ThreadPoolExecutor(max_workers=32) as pool:
        return dict(zip(probes, pool.map(lambda k: run[k[0]](*k[1:]), probes)))


def _remove_by_hand(lab, backend: str, bridge: str) -> None:
    """Take `bridge` out of the isolation between bridges: its element of set isolated
    (nftables), its two IPv4 rules, STAGE-1's jump and STAGE-2's DROP (iptables; IPv6 keeps
    its own). Both directions: the inter-bridge drop has no exemption for replies."""
    if backend == "nftables":
        sh("nft", "delete", "element", "inet", "isolation", "isolated", "{", f'"{bridge}"', "}", netns=lab.host)
        return
    lines = [r for r in lab.save("ipv4").splitlines()
             if r.startswith((f"-A CNI-ISOLATION-STAGE-2 -o {bridge} ", f"-A CNI-ISOLATION-STAGE-1 -i {bridge} ! -o "))
             and r.endswith(("-j DROP", "-j CNI-ISOLATION-STAGE-2"))]
    assert len(lines) == 2, lines
    for line in lines:
        sh("sh", "-c", f"iptables -D {line[3:]}", netns=lab.host)


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_explain_agrees_with_packets(make_lab, backend):
    lab = make_lab()
    c = _setup(lab, backend)
    want = _probes(c, 0) | _probes(c, 1)
    got = _fates(lab, list(want))
    # the packets behave as the keys say (positive controls for every blocked verdict)
    wrong = [f"{k}: packets {'reach' if ok else 'blocked'}, expected {want[k][0]}" for k, ok in got.items()
             if ok != (want[k][0] == "pass")]
    assert not wrong, "\n".join(wrong)

    answers, rc = explain(lab, got)
    assert rc == 0
    assert not disagreements(got, answers), "\n".join(disagreements(got, answers))
    reasons = [f"{k}: explain says {a['reason']}, expected {want[k][1]}" for k, a in answers.items()
               if a["reason"] != want[k][1]]
    assert not reasons, "\n".join(reasons)
    assert all(a["source"]["backend"] == backend and a["rule"] for a in answers.values())

    # --check on the intact ruleset: the kernel holds every fact each answer used
    checked, rc = explain(lab, got, check=True)
    assert rc == 0, [a["check"] for a in checked.values() if not a["check"]["agrees"]]
    assert all(a["check"]["agrees"] and a["check"]["verdict"] == a["verdict"] for a in checked.values())

    # remove D's isolation by hand: c1 -> d1 is still dropped by the configuration, not by the kernel
    d_bridge = c["d1"].network.bridge
    v4, v6 = ("tcp", c["c1"].name, c["d1"].ipv4, TCP_PORT), ("tcp", c["c1"].name, c["d1"].ipv6, TCP_PORT)
    control = ("tcp", c["c1"].name, c["a1"].ipv4, TCP_PORT)  # A stays isolated from C
    _remove_by_hand(lab, backend, d_bridge)
    after, rc = explain(lab, [v4, v6, control], check=True)
    assert rc == 1
    assert after[v4]["verdict"] == "drop" and not after[v4]["check"]["agrees"]
    assert after[v4]["check"]["verdict"] == "pass"
    assert any(d_bridge in line for line in after[v4]["check"]["differences"]), after[v4]["check"]
    assert after[control]["check"]["agrees"]
    # IPv6: nftables' one set covers both families; iptables' ip6tables still holds its DROP
    assert after[v6]["check"]["agrees"] == (backend == "iptables")
    fate = _fates(lab, [v4, v6, control])
    assert fate[v4] is True, "the kernel lets c1 reach d1, as --check said"
    assert fate[v6] is (backend == "nftables")
    assert fate[control] is False

    # and the text form says so too, with exit status 1
    text = lab.cli("explain", "--from", c["c1"].id, "--to", c["d1"].ipv4, "--port", str(TCP_PORT), "--check")
    assert text.returncode == 1 and "DISAGREES" in text.stdout and d_bridge in text.stdout, text.stdout

    # a guard's element or rule: C's hostAccess deny goes (IPv4 only on iptables)
    c_bridge, gw = c["c1"].network.bridge, (c["c1"].network.gateway4, c["c1"].network.gateway6)
    to_host = [("tcp", c["c1"].name, gw[0], TCP_PORT), ("tcp", c["c1"].name, gw[1], TCP_PORT)]
    _remove_host_deny(lab, backend, c_bridge)
    after, rc = explain(lab, to_host, check=True)
    assert rc == 1 and after[to_host[0]]["reason"] == "host-access"
    assert not after[to_host[0]]["check"]["agrees"] and after[to_host[0]]["check"]["verdict"] == "pass"
    assert any(c_bridge in line for line in after[to_host[0]]["check"]["differences"])
    assert after[to_host[1]]["check"]["agrees"] == (backend == "iptables")
    fate = _fates(lab, to_host)
    assert fate[to_host[0]] is True and fate[to_host[1]] is (backend == "nftables")


def _remove_host_deny(lab, backend: str, bridge: str) -> None:
    """Take `bridge`'s element out of map host (nftables), or its IPv4 DROP out of
    CNI-ISOLATION-HOST (iptables)."""
    if backend == "nftables":
        sh("nft", "delete", "element", "inet", "isolation", "host", "{", f'"{bridge}"', "}", netns=lab.host)
        return
    line = next(r for r in lab.save("ipv4").splitlines()
                if r.startswith(f"-A CNI-ISOLATION-HOST -i {bridge} ") and r.endswith("-j DROP"))
    sh("sh", "-c", f"iptables -D {line[3:]}", netns=lab.host)


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_explain_follows_the_strictest_combination_on_a_shared_bridge(make_lab, backend):
    """Conflist X (same-bridge, denyEgress .2/::2, hostAccess deny except UDP 5300) and
    conflist Y (isolated, denyEgress .3/::3) name one bridge; Z is another same-bridge
    network. By the merge rule (README, after "How the keys combine"): every deny range holds
    for both, the host is closed to both (only UDP 5300 open), the bridge is isolated as a
    whole, and Z stays isolated from them."""
    lab = make_lab()
    lab.management()
    lab.udp_echo(lab.host, UDP_OPEN)
    x_net = lab.network(["bridge", "isolation"], isolation={
        "backend": backend, "denyEgress": ["10.98.0.2/32", "fd98::2/128"], "hostAccess": "deny",
        "allowHostPorts": [{"protocol": "udp", "port": UDP_OPEN}]})
    y_net = on_the_same_bridge(lab, x_net, {"type": "isolation", "backend": backend, "ingressPolicy": "isolated",
                                            "denyEgress": ["10.98.0.3/32", "fd98::3/128"]})
    z_net = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    x, y, z = lab.add(x_net), lab.add(y_net), lab.add(z_net)
    want = {}
    for v in (0, 1):
        mg2, mg3 = ("10.98.0.2", "fd98::2")[v], ("10.98.0.3", "fd98::3")[v]
        up, out = UPLINK[v], OUTSIDE[v]
        addr = {n: (c.ipv4, c.ipv6)[v] for n, c in (("x", x), ("y", y), ("z", z))}
        want |= {
            ("tcp", x.name, mg3, TCP_PORT): ("drop", "egress-deny"),
            ("tcp", y.name, mg2, TCP_PORT): ("drop", "egress-deny"),
            ("tcp", z.name, mg2, TCP_PORT): ("pass", None),
            ("tcp", y.name, up, TCP_PORT): ("drop", "host-access"), ("udp", y.name, up, UDP_OPEN): ("pass", None),
            ("tcp", z.name, up, TCP_PORT): ("pass", None),
            ("tcp", x.name, addr["y"], TCP_PORT): ("drop", "intra-bridge"),
            ("icmp", y.name, addr["x"], 0): ("drop", "intra-bridge"),
            ("tcp", x.name, addr["z"], TCP_PORT): ("drop", "cross-network"),
            ("tcp", z.name, addr["y"], TCP_PORT): ("drop", "cross-network"),
            ("tcp", x.name, out, TCP_PORT): ("pass", None), ("icmp", y.name, out, 0): ("pass", None),
        }
    got = _fates(lab, list(want))
    wrong = [f"{k}: packets {'reach' if ok else 'blocked'}, expected {want[k][0]}" for k, ok in got.items()
             if ok != (want[k][0] == "pass")]
    assert not wrong, "\n".join(wrong)
    answers, rc = explain(lab, got, check=True)
    assert rc == 0, [a["check"] for a in answers.values() if not a["check"]["agrees"]]
    assert not disagreements(got, answers), "\n".join(disagreements(got, answers))
    reasons = [f"{k}: explain says {a['reason']}, expected {want[k][1]}" for k, a in answers.items()
               if a["reason"] != want[k][1]]
    assert not reasons, "\n".join(reasons)
    deny = answers[("tcp", x.name, "10.98.0.3", TCP_PORT)]
    assert deny["networks"] == [y_net.name], "the range is Y's, though the probe comes from X"
    host = answers[("tcp", y.name, UPLINK[0], TCP_PORT)]
    assert host["networks"] == [x_net.name] and host["key"] == "hostAccess"
