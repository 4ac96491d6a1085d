"""`internal` and `directAccess: deny` on routed networks (isolation chained after `ptp`: a
host-side veth per container, no bridge), proven with real packets on both backends, IPv4 and
IPv6, and `isolation explain --check` agreeing with every probe from a container.

The lab's host has an uplink to "outside" (10.99.0.1 <-> 10.99.0.2, fd99::1 <-> ::2) and, in
the second test, a "management" LAN (10.98.0.2, fd98::2); both route the containers'
subnets via the host, and the host listens on TCP_PORT. ptp containers reach each other only
through the host (each has a /32 and /128 route to its own veth), so every path below is
forwarded by the host, member to member included.

Internal (expected from the key's definition: nothing forwarded leaves or enters a member
except to another member of the segment; the host is closed, allowHostPorts none):
  I  ptp, internal            i1, i2: each other yes (the positive control); the outside, P, B,
                              the host (uplink and its own veth's address) no; nothing of
                              P, B or the outside reaches them; the host reaches them
  P  ptp, open                p1: the outside, B and the host yes (controls: only I's key drops)
  B  bridge, open             b1: p1 yes (the control)
Direct access (drop what enters a member from an interface that is neither a member of the
segment, nor of a bridge or segment the plugin isolates or guards, nor trusted, unless a
reply or DNAT'd):
  D  ptp + portmap, directAccess deny, the management link trusted, d1 publishes TCP 8080 on
     host port 18084        outside -> d1 no; outside -> UPLINK:18084 yes (published);
                             management -> d1 yes (trusted); d1 -> outside, management yes
                             (the replies pass); d1 -> d2 yes (members); host -> d1 yes
  N  ptp, default (allow)    outside -> n1 yes (the control: routing via the host works)
  G  bridge, open, hostAccess deny (managed by the plugin)   g1 -> d1 yes
  H  ptp, open, hostAccess deny (a segment the plugin manages) h1 -> d1 yes
  O  ptp, open, unguarded (the plugin leaves it alone)        o1 -> d1 no; o1 -> n1 yes
Drops count per segment and reason (status --json); the rules vanish with the last container.
"""

import pytest

from explaining import disagreements, explain
from frames import settled_counts
from netlab import TCP_PORT
from probing import probe_all

pytestmark = [pytest.mark.e2e, pytest.mark.beside]  # run beside the rest by make test, to keep the suite under 30 minutes
PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}}
UPLINK = ("10.99.0.1", "fd99::1")
OUTSIDE = ("10.99.0.2", "fd99::2")
MANAGEMENT = ("10.98.0.2", "fd98::2")
PUBLISHED = 18084
BACKENDS = pytest.mark.parametrize("backend", ["iptables", "nftables"])


def _both(src: str, dst: str, verdict: bool) -> dict:
    """TCP and ICMP from `src` to `dst`, both expected to `verdict`."""
    return {("tcp", src, dst, TCP_PORT): verdict, ("icmp", src, dst, 0): verdict}


def _explained(lab, want: dict, got: dict) -> dict:
    """explain --check about every probe from a container: it agrees with the packets, and the
    kernel's rules agree with the configuration."""
    answers, rc = explain(lab, list(want), check=True)
    assert not disagreements(got, answers), "\n".join(disagreements(got, answers))
    differ = [(k, a["check"]) for k, a in answers.items() if not a["check"]["agrees"]]
    assert rc == 0 and not differ, differ
    return answers


def _named(lab, net) -> list[str]:
    """Our rules' lines naming the segment of `net` or one of its containers' veths."""
    return [line for name in (net.bridge, *(lab.host_port(c) for c in net.containers))
            for line in lab.ours_mentioning(name)]


@BACKENDS
def test_internal_routed_network_reaches_only_its_members(lab, backend):
    inet = lab.network(["ptp", "isolation"], isolation={"backend": backend, "internal": True})
    pnet = lab.network(["ptp", "isolation"], isolation={"backend": backend, "ingressPolicy": "open"})
    bnet = lab.network(["bridge", "isolation"], isolation={"backend": backend, "ingressPolicy": "open"})
    baseline = lab.ruleset()
    i1, i2, p1, b1 = lab.add(inet), lab.add(inet), lab.add(pnet), lab.add(bnet)
    before = settled_counts(lab, quiet=0.7)

    want = {}
    for v in (0, 1):
        i1a, i2a, pa, ba = (i1.ipv4, i1.ipv6)[v], (i2.ipv4, i2.ipv6)[v], (p1.ipv4, p1.ipv6)[v], (b1.ipv4, b1.ipv6)[v]
        want |= _both(i1.name, i2a, True) | _both(i2.name, i1a, True)  # the positive control
        for dst in (OUTSIDE[v], pa, ba, UPLINK[v], (inet.gateway4, inet.gateway6)[v]):
            want |= _both(i1.name, dst, False)
        for src in (p1.name, b1.name, lab.outside):
            want |= _both(src, i1a, False)
        want |= _both(p1.name, OUTSIDE[v], True) | _both(p1.name, ba, True) | _both(b1.name, pa, True)
        want |= _both(p1.name, UPLINK[v], True) | _both(lab.outside, pa, True)
        want |= _both(lab.host, i1a, True)  # the host's own connections are not forwarded
    got, wrong = probe_all(lab, want)
    assert not wrong, "\n".join(wrong)
    answers = _explained(lab, want, got)
    out = answers[("tcp", i1.name, OUTSIDE[0], TCP_PORT)]
    assert (out["reason"], out["key"], out["network"]) == ("internal", "internal", inet.name), out
    into = answers[("tcp", p1.name, i1.ipv6, TCP_PORT)]
    assert (into["reason"], into["key"], into["network"]) == ("internal", "internal", inet.name), into
    assert answers[("tcp", i1.name, UPLINK[0], TCP_PORT)]["reason"] == "host-access"

    # the forwarded drops count as `internal` for I's segment, its host drops as host-access
    after = settled_counts(lab, quiet=0.7)
    assert after[(inet.bridge, "internal")] > before[(inet.bridge, "internal")], after
    assert after[(inet.bridge, "host-access")] > before[(inet.bridge, "host-access")], after
    assert (pnet.bridge, "internal") not in after or after[(pnet.bridge, "internal")] == 0, after
    assert all(rc == 0 for c in (i1, i2, p1, b1) for _, rc, _ in lab.check(c))
    assert not lab.status()["problems"]

    # i2 leaves: its veth leaves the rules, i1 stays internal (next to p1 getting out)
    gone = lab.host_port(i2)
    assert all(rc == 0 for _, rc in lab.delete(i2))
    assert gone not in lab.ruleset()
    left = {**_both(i1.name, OUTSIDE[0], False), **_both(i1.name, OUTSIDE[1], False),
            **_both(p1.name, i1.ipv4, False), **_both(p1.name, OUTSIDE[0], True)}
    _, wrong = probe_all(lab, left)
    assert not wrong, "\n".join(wrong)

    # the rules vanish with each network's last container, exactly
    for c in (i1, p1, b1):
        assert all(rc == 0 for _, rc in lab.delete(c))
    assert lab.ruleset() == baseline
    assert lab.status()["bridges"] == []


@BACKENDS
def test_lan_peer_reaches_a_closed_routed_network_only_when_trusted_or_published(lab, backend):
    mgmt = lab.management()
    conf = {"backend": backend}
    dnet = lab.network(["ptp", PORTMAP, "isolation"], isolation={
        **conf, "directAccess": "deny", "trustedInterfaces": [f"{lab.prefix}mg"]})
    nnet = lab.network(["ptp", "isolation"], isolation=conf)
    gnet = lab.network(["bridge", "isolation"], isolation={**conf, "ingressPolicy": "open", "hostAccess": "deny"})
    hnet = lab.network(["ptp", "isolation"], isolation={**conf, "ingressPolicy": "open", "hostAccess": "deny"})
    onet = lab.network(["ptp", "isolation"], isolation={**conf, "ingressPolicy": "open"})
    d1 = lab.add(dnet, port_mappings=[{"hostPort": PUBLISHED, "containerPort": TCP_PORT, "protocol": "tcp"}])
    d2, n1, g1, h1, o1 = lab.add(dnet), lab.add(nnet), lab.add(gnet), lab.add(hnet), lab.add(onet)
    before = settled_counts(lab, quiet=0.7)

    want = {}
    for v in (0, 1):
        da, d2a, na = (d1.ipv4, d1.ipv6)[v], (d2.ipv4, d2.ipv6)[v], (n1.ipv4, n1.ipv6)[v]
        want |= _both(lab.outside, da, False) | _both(lab.outside, na, True)
        want[("tcp", lab.outside, UPLINK[v], PUBLISHED)] = True
        want |= _both(mgmt, da, True)
        want |= _both(d1.name, OUTSIDE[v], True) | _both(d1.name, MANAGEMENT[v], True)
        want |= _both(d1.name, d2a, True) | _both(d2.name, da, True)
        want |= _both(g1.name, da, True) | _both(h1.name, da, True)
        want |= _both(o1.name, da, False) | _both(o1.name, na, True)
        want |= _both(lab.host, da, True)
    got, wrong = probe_all(lab, want)
    assert not wrong, "\n".join(wrong)
    answers = _explained(lab, want, got)
    drop = answers[("tcp", o1.name, d1.ipv4, TCP_PORT)]
    assert (drop["reason"], drop["key"], drop["network"]) == ("direct-access", "directAccess", dnet.name), drop

    after = settled_counts(lab, quiet=0.7)
    assert after[(dnet.bridge, "direct-access")] > before[(dnet.bridge, "direct-access")], after
    assert after[(nnet.bridge, "direct-access")] == 0, after
    assert all(rc == 0 for c in (d1, d2, n1, g1, h1, o1) for _, rc, _ in lab.check(c))
    assert not lab.status()["problems"]

    # the last DEL of D takes its rules: the outside reaches a container of N's subnet still, and
    # nothing of ours names D's segment or its veths any more
    named = _named(lab, dnet)
    assert named, "D's rules must be found by name while it has containers (the positive control)"
    for c in (d1, d2):
        assert all(rc == 0 for _, rc in lab.delete(c))
    assert not _named(lab, dnet), _named(lab, dnet)
    assert lab.tcp(lab.outside, n1.ipv4) and lab.tcp(lab.outside, n1.ipv6)
    assert all(rc == 0 for c in (n1, g1, h1, o1) for _, rc, _ in lab.check(c))
