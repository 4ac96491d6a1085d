"""denyEgress / allowEgress and hostAccess / allowHostPorts, proven with real traffic on both
backends, IPv4 and IPv6, with bridge-nf-call-iptables at 0 and 1.

The lab's host namespace has an uplink to "outside" (10.99.0.1 <-> 10.99.0.2, fd99::1 <-> ::2)
and a link to a "management" namespace (10.98.0.1 <-> 10.98.0.2 and .3, fd98::1 <-> ::2 and
::3). Every expectation below is written from the definition of the keys in issue 5, not from
what the code does:
  denyEgress [10.98.0.0/16, fd98::/32, 10.77.0.0/16, fd77::/16] with allowEgress TCP 8080 to
  10.98.0.3 and fd98::3:
    management addresses .2 / ::2            blocked (ICMP and TCP)
    10.98.0.3 / fd98::3 TCP 8080            reachable (the exception), ICMP still blocked
    outside 10.99.0.2 / fd99::2              reachable (a third destination)
    the host's own 10.98.0.1 / fd98::1       blocked (the host's address inside a denied range)
    a neighbour on the same bridge           reachable, although 10.77.0.0/16 is denied
                                             (traffic inside a bridge is ingressPolicy's alone)
    management -> container TCP and ICMP     reachable (replies to connections it opened pass)
    another network without denyEgress       reaches management (everything is per network)
"""

from concurrent.futures import ThreadPoolExecutor

import pytest

from netlab import sh

pytestmark = pytest.mark.e2e
DENIED = ["10.98.0.0/16", "fd98::/32", "10.77.0.0/16", "fd77::/16"]
EXCEPTIONS = [{"cidr": "10.98.0.3", "protocol": "tcp", "ports": [8080]},
              {"cidr": "fd98::3/128", "protocol": "tcp", "ports": ["8080"]}]
UPLINK = ("10.99.0.1", "fd99::1")
OUTSIDE = ("10.99.0.2", "fd99::2")


def _probe_all(lab, want: dict) -> list[str]:
    """Run every (kind, src, addr, port) probe concurrently; the ones that disagree with `want`."""
    run = {"icmp": lambda s, a, p: lab.ping(s, a), "tcp": lab.tcp, "udp": lab.udp}
    with ThreadPoolExecutor(max_workers=32) as pool:
        got = dict(zip(want, pool.map(lambda k: run[k[0]](*k[1:]), want)))
    return [f"{kind} {src} -> [{addr}]:{port}: expected {'reach' if want[(kind, src, addr, port)] else 'blocked'}"
            for (kind, src, addr, port), ok in got.items() if ok != want[(kind, src, addr, port)]]


@pytest.mark.parametrize("bridge_nf", [0, 1])
@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_deny_egress(make_lab, backend, bridge_nf):
    lab = make_lab(bridge_nf=bridge_nf)
    mgmt = lab.management()
    guarded = lab.network(["bridge", "isolation"], isolation={
        "backend": backend, "denyEgress": DENIED, "allowEgress": EXCEPTIONS})
    plain = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    a, a2, n = lab.add(guarded), lab.add(guarded), lab.add(plain)

    want = {}
    for v in (0, 1):  # IPv4, IPv6
        mg, exc, host_mg = ("10.98.0.2", "fd98::2")[v], ("10.98.0.3", "fd98::3")[v], ("10.98.0.1", "fd98::1")[v]
        a2_addr = (a2.ipv4, a2.ipv6)[v]
        want |= {
            ("icmp", a.name, mg, 0): False, ("tcp", a.name, mg, 8080): False,
            ("tcp", a.name, exc, 8080): True, ("icmp", a.name, exc, 0): False,
            ("icmp", a.name, OUTSIDE[v], 0): True, ("tcp", a.name, OUTSIDE[v], 8080): True,
            ("icmp", a.name, host_mg, 0): False, ("tcp", a.name, host_mg, 8080): False,
            ("icmp", a.name, a2_addr, 0): True, ("tcp", a.name, a2_addr, 8080): True,
            ("tcp", mgmt, (a.ipv4, a.ipv6)[v], 8080): True, ("icmp", mgmt, (a.ipv4, a.ipv6)[v], 0): True,
            ("tcp", lab.host, (a.ipv4, a.ipv6)[v], 8080): True,
            ("tcp", n.name, mg, 8080): True, ("icmp", n.name, mg, 0): True,
        }
    wrong = _probe_all(lab, want)
    assert not wrong, f"bridge-nf-call={lab.bridge_nf()}\n" + "\n".join(wrong)
    assert all(rc == 0 for c in (a, a2, n) for _, rc, _ in lab.check(c))

    # The last DEL of the network removes its egress policy: nothing of it is left behind.
    lab.delete(a)
    lab.delete(a2)
    rules = lab.ruleset()
    assert "10.98.0.0/16" not in rules and "fd98::/32" not in rules and guarded.bridge not in rules, rules
    assert lab.tcp(n.name, "10.98.0.2", 8080)


@pytest.mark.parametrize("bridge_nf", [0, 1])
@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_host_access_deny(make_lab, backend, bridge_nf):
    """hostAccess deny with the default allowHostPorts (TCP and UDP 53): the own gateway, another
    bridge's gateway and the host's uplink address answer on port 53 only; IPv6 keeps working
    (neighbour discovery, proven by flushing the neighbour caches first); connections the
    host opens get their replies; forwarding is not the host's business; the other network
    is unaffected."""
    lab = make_lab(bridge_nf=bridge_nf)
    lab.listen(lab.host, 53)
    lab.udp_echo(lab.host, 53)
    closed = lab.network(["bridge", "isolation"], isolation={"backend": backend, "hostAccess": "deny"})
    other = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    h, o = lab.add(closed), lab.add(other)
    for ns in (h.name, lab.host):
        sh("ip", "-6", "neigh", "flush", "all", netns=ns)
        sh("ip", "-4", "neigh", "flush", "all", netns=ns)

    want = {}
    for v in (0, 1):
        for target in ((closed.gateway4, closed.gateway6)[v], (other.gateway4, other.gateway6)[v], UPLINK[v]):
            want |= {("icmp", h.name, target, 0): False, ("tcp", h.name, target, 8080): False,
                     ("tcp", h.name, target, 53): True, ("udp", h.name, target, 53): True,
                     ("tcp", o.name, target, 8080): True}
        want |= {("icmp", h.name, OUTSIDE[v], 0): True, ("tcp", h.name, OUTSIDE[v], 8080): True,
                 ("tcp", lab.host, (h.ipv4, h.ipv6)[v], 8080): True}
    wrong = _probe_all(lab, want)
    assert not wrong, f"bridge-nf-call={lab.bridge_nf()}\n" + "\n".join(wrong)
    assert all(rc == 0 for c in (h, o) for _, rc, _ in lab.check(c))


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_allow_host_ports_replaces_the_default(lab, backend):
    """An explicit allowHostPorts is the whole list: TCP 8080 opens, DNS (the default) closes,
    ICMP opens when listed."""
    lab.listen(lab.host, 53)
    ports = [{"protocol": "tcp", "port": 8080}, {"protocol": "icmp"}]
    closed = lab.network(["bridge", "isolation"], isolation={
        "backend": backend, "hostAccess": "deny", "allowHostPorts": ports})
    h = lab.add(closed)
    want = {}
    for gw in (closed.gateway4, closed.gateway6, *UPLINK):
        want |= {("tcp", h.name, gw, 8080): True, ("tcp", h.name, gw, 53): False, ("icmp", h.name, gw, 0): True}
    wrong = _probe_all(lab, want)
    assert not wrong, "\n".join(wrong)


BAD = [
    ({"denyEgress": ["10.0.0.0/33"]}, "denyEgress.0"),
    ({"denyEgress": ["fd00::/129"]}, "denyEgress.0"),
    ({"denyEgress": ["::ffff:10.0.0.0/104"]}, "denyEgress.0"),
    ({"denyEgress": ["10.0.0.0/120"]}, "denyEgress.0"),
    ({"denyEgress": "10.0.0.0/8"}, "denyEgress"),
    ({"denyEgress": [10]}, "denyEgress.0"),
    ({"allowEgress": [{"cidr": "10.0.0.1", "protocol": "sctp"}]}, "allowEgress.0.protocol"),
    ({"allowEgress": [{"cidr": "10.0.0.1", "protocol": "tcp", "ports": [70000]}]}, "allowEgress.0.ports.0"),
    ({"allowEgress": [{"cidr": "10.0.0.1", "protocol": "tcp", "ports": ["90-80"]}]}, "allowEgress.0.ports.0"),
    ({"allowEgress": [{"cidr": "10.0.0.1", "protocol": "icmp", "ports": [53]}]}, "allowEgress.0"),
    ({"allowEgress": [{"cidr": "nope"}]}, "allowEgress.0.cidr"),
    ({"allowEgress": [{"protocol": "tcp"}]}, "allowEgress.0.cidr"),
    ({"allowEgress": {"cidr": "10.0.0.1"}}, "allowEgress"),
    ({"hostAccess": "closed"}, "hostAccess"),
    ({"hostAccess": False}, "hostAccess"),
    ({"hostAccess": "deny", "allowHostPorts": [{"protocol": "tcp", "port": 70000}]}, "allowHostPorts.0.port"),
    ({"hostAccess": "deny", "allowHostPorts": [{"protocol": "tcp"}]}, "allowHostPorts.0"),
    ({"hostAccess": "deny", "allowHostPorts": [{"protocol": "gre", "port": 1}]}, "allowHostPorts.0.protocol"),
    ({"hostAccess": "deny", "allowHostPorts": [{"protocol": "udp", "port": "53"}, {"protocol": "udp", "port": 1.5}]},
     "allowHostPorts.1.port"),
]


def test_bad_values_are_error_7_naming_the_field(lab):
    net = lab.network(["bridge"])
    c = lab.add(net)
    before = lab.ruleset()
    wrong = []
    for bad, field in BAD:
        conf = {"cniVersion": "1.0.0", "name": net.name, "type": "isolation", **bad,
                "prevResult": lab.cache[(net.name, c.id)]}
        rc, out, _ = lab.exec_plugin("isolation", "ADD", conf, lab._env(c))
        if rc == 0 or out["code"] != 7 or f"{field}:" not in out["msg"]:
            wrong.append(f"{bad}: expected error 7 naming {field}, got rc={rc} {out}")
    assert not wrong, "\n".join(wrong)
    assert lab.ruleset() == before


def test_an_add_in_a_group_keeps_the_stricter_guard_of_a_peer_bridge(make_lab):
    """Bridge 1 carries two conflists: X in isolationGroup g denying the management range,
    Y outside any group denying the outside range too (the bridge gets both). An ADD on
    bridge 2, also in g, knows of bridge 1 only X: it must not cut bridge 1's guard down to
    X's, or Y's container reaches the outside its denyEgress forbids."""
    import copy

    lab = make_lab(bridge_nf=0)
    x = lab.network(["bridge", "isolation"], isolation={"backend": "nftables", "isolationGroup": "g",
                                                        "denyEgress": ["10.98.0.0/16"]})
    shared = copy.deepcopy(x.plugins[0])  # same bridge and subnets, addresses from another part
    v4, v6 = shared["ipam"]["ranges"]
    v4[0] |= {"rangeStart": "10.77.1.100", "rangeEnd": "10.77.1.150"}
    v6[0] |= {"rangeStart": "fd77:1::100", "rangeEnd": "fd77:1::150"}
    y = lab.network([shared, {"type": "isolation", "backend": "nftables",
                              "denyEgress": ["10.98.0.0/16", "10.99.0.0/16", "fd99::/16"]}])
    z = lab.network(["bridge", "isolation"], isolation={"backend": "nftables", "isolationGroup": "g"})
    lab.add(x)
    cy = lab.add(y)
    assert not lab.ping(cy.name, OUTSIDE[0]) and not lab.ping(cy.name, OUTSIDE[1]), "Y's deny holds before"
    cz = lab.add(z)
    assert lab.ping(cz.name, OUTSIDE[0]) and lab.ping(cz.name, OUTSIDE[1]), "positive control: outside answers"
    leaks = [a for a in OUTSIDE if lab.ping(cy.name, a)]
    assert not leaks, f"after an ADD in group g, Y's container reaches {leaks} that its denyEgress forbids"
    assert all(rc == 0 for _, rc, _ in lab.check(cy))
