"""`directAccess: deny` with `trustedInterfaces`: a LAN peer that routes the container subnets
via the host reaches a protected network's containers only through a trusted interface or a
published port, proven with real packets on both backends, IPv4 and IPv6, and `isolation
explain` agreeing.

The lab's host has two LANs: "outside" on the uplink (10.99.0.2, fd99::2; untrusted) and
"management" (10.98.0.2, fd98::2; its link is trusted); both route 10.77.0.0/16 and fd77::/16
via the host. Network D has directAccess deny and publishes d1's TCP 8080 on host port 18083;
network N has the default (allow); network G is `open` but guarded (hostAccess deny), so the
plugin manages its bridge; network O is `open` and unguarded, a bridge the plugin leaves
alone. Expected, from the key's definition (drop what enters D from an interface that is
neither a bridge the plugin isolates or guards nor trusted, unless a reply or DNAT'd):
  outside -> d1's address                 blocked (TCP, ICMP)
  outside -> n1's address                 reach (the control: routing via the host works)
  outside -> UPLINK:18083 (published)     reach
  management -> d1's address              reach (trusted interface)
  d1 -> outside, management               reach (the replies pass)
  g1 -> d1 (managed bridge)               reach: cross-bridge traffic is ingressPolicy's
  o1 -> d1 (unmanaged bridge)             blocked;  o1 -> n1  reach (the control)
  host -> d1                              reach (the host's own traffic is not forwarded)
When g1, G's last container, goes, no rule of ours names G's bridge any more: on iptables, the
RETURN that let it into D goes with it (a stale one would let a bridge the plugin no longer
manages through).
"""

from concurrent.futures import ThreadPoolExecutor

import pytest

from explaining import disagreements, explain
from frames import settled_counts

pytestmark = [pytest.mark.e2e, pytest.mark.beside]  # run beside the rest by make test, to keep the suite under 30 minutes
PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}}
UPLINK = ("10.99.0.1", "fd99::1")
OUTSIDE = ("10.99.0.2", "fd99::2")
MANAGEMENT = ("10.98.0.2", "fd98::2")


def _probe_all(lab, want: dict) -> tuple[dict, list[str]]:
    run = {"icmp": lambda s, a, p: lab.ping(s, a), "tcp": lab.tcp}
    with ThreadPoolExecutor(max_workers=32) as pool:
        got = dict(zip(want, pool.map(lambda k: run[k[0]](*k[1:]), want)))
    return got, [f"{kind} {src} -> [{addr}]:{port}: expected {'reach' if want[(kind, src, addr, port)] else 'blocked'}"
                 for (kind, src, addr, port), ok in got.items() if ok != want[(kind, src, addr, port)]]


BACKENDS = pytest.mark.parametrize("backend", ["iptables", "nftables"])


@BACKENDS
def test_lan_peer_reaches_protected_containers_only_when_trusted_or_published(lab, backend):
    mgmt = lab.management()
    conf = {"backend": backend}
    dnet = lab.network(["bridge", PORTMAP, "isolation"], isolation={
        **conf, "directAccess": "deny", "trustedInterfaces": [f"{lab.prefix}mg"]})
    nnet = lab.network(["bridge", "isolation"], isolation=conf)
    gnet = lab.network(["bridge", "isolation"], isolation={**conf, "ingressPolicy": "open", "hostAccess": "deny"})
    onet = lab.network(["bridge", "isolation"], isolation={**conf, "ingressPolicy": "open"})
    d1 = lab.add(dnet, port_mappings=[{"hostPort": 18083, "containerPort": 8080, "protocol": "tcp"}])
    n1, g1, o1 = lab.add(nnet), lab.add(gnet), lab.add(onet)
    before = settled_counts(lab, quiet=0.7)

    want = {}
    for v in (0, 1):
        da, na = (d1.ipv4, d1.ipv6)[v], (n1.ipv4, n1.ipv6)[v]
        want |= {("tcp", lab.outside, da, 8080): False, ("icmp", lab.outside, da, 0): False,
                 ("tcp", lab.outside, na, 8080): True, ("icmp", lab.outside, na, 0): True,
                 ("tcp", lab.outside, UPLINK[v], 18083): True,
                 ("tcp", mgmt, da, 8080): True, ("icmp", mgmt, da, 0): True,
                 ("tcp", d1.name, OUTSIDE[v], 8080): True, ("icmp", d1.name, OUTSIDE[v], 0): True,
                 ("tcp", d1.name, MANAGEMENT[v], 8080): True,
                 ("tcp", g1.name, da, 8080): True, ("icmp", g1.name, da, 0): True,
                 ("tcp", o1.name, da, 8080): False, ("icmp", o1.name, da, 0): False,
                 ("tcp", o1.name, na, 8080): True,
                 ("tcp", lab.host, da, 8080): True}
    got, wrong = _probe_all(lab, want)
    assert not wrong, "\n".join(wrong)

    answers, rc = explain(lab, list(want), check=True)
    assert rc == 0 and not disagreements(got, answers), (disagreements(got, answers), [
        (k, a["check"]) for k, a in answers.items() if not a["check"]["agrees"] or a["check"]["differences"]])
    drop = answers[("tcp", o1.name, d1.ipv4, 8080)]
    assert (drop["reason"], drop["key"], drop["network"]) == ("direct-access", "directAccess", dnet.name), drop

    after = settled_counts(lab, quiet=0.7)
    assert after[(dnet.bridge, "direct-access")] > before[(dnet.bridge, "direct-access")], after
    assert after[(nnet.bridge, "direct-access")] == 0, after
    checks = [r for c in (d1, n1, g1, o1) for r in lab.check(c)]
    assert all(rc == 0 for _, rc, _ in checks), checks

    lab.delete(g1)  # the managed bridge's last container: whatever let it into D goes too
    assert not lab.ours_mentioning(gnet.bridge), lab.ruleset()
    assert all(rc == 0 for c in (d1, n1, o1) for _, rc, _ in lab.check(c))

    # the last DEL of D takes its rules: the outside reaches the subnet's next container again
    lab.delete(d1)
    assert not lab.ours_mentioning(dnet.bridge), lab.ruleset()
    d2 = lab.add(lab.network(["bridge", "isolation"], isolation=conf))
    assert lab.tcp(lab.outside, d2.ipv4, 8080) and lab.tcp(lab.outside, d2.ipv6, 8080)


@BACKENDS
def test_without_trust_the_management_lan_is_dropped_too(lab, backend):
    """The same LAN, its interface not trusted: dropped like any other (next to N, reached)."""
    mgmt = lab.management()
    dnet = lab.network(["bridge", "isolation"], isolation={"backend": backend, "directAccess": "deny"})
    nnet = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    d1, n1 = lab.add(dnet), lab.add(nnet)
    want = {("tcp", mgmt, d1.ipv4, 8080): False, ("tcp", mgmt, d1.ipv6, 8080): False,
            ("tcp", mgmt, n1.ipv4, 8080): True, ("tcp", mgmt, n1.ipv6, 8080): True}
    _, wrong = _probe_all(lab, want)
    assert not wrong, "\n".join(wrong)


@BACKENDS
@pytest.mark.parametrize("key", ["directAccess", "internal"])
def test_cleanup_of_the_bridge_removes_every_element_of_it(lab, key, backend):
    """`isolation cleanup --bridge` takes the bridge's internal / direct / trusted elements and
    counters: the outside reaches the container afterwards (it did not before), and another
    network's rules stay."""
    extra = {"directAccess": "deny", "trustedInterfaces": ["wg0"]} if key == "directAccess" else {"internal": True}
    dnet = lab.network(["bridge", "isolation"], isolation={"backend": backend, **extra})
    other = lab.network(["bridge", "isolation"], isolation={"backend": backend, "directAccess": "deny"})
    d1, o1 = lab.add(dnet), lab.add(other)
    assert not lab.tcp(lab.outside, d1.ipv4, 8080) and not lab.tcp(lab.outside, o1.ipv4, 8080)
    proc = lab.cli("cleanup", "--bridge", dnet.bridge)
    assert proc.returncode == 0, proc.stderr
    assert not lab.ours_mentioning(dnet.bridge), lab.ruleset()
    assert lab.tcp(lab.outside, d1.ipv4, 8080) and lab.tcp(lab.outside, d1.ipv6, 8080)
    assert not lab.tcp(lab.outside, o1.ipv4, 8080), "the other network stays protected"
