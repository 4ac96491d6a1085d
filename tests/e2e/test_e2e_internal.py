"""`internal: true`: an internal network's containers reach each other and nothing else, proven
with real packets on both backends, IPv4 and IPv6, and `isolation explain` agreeing with them.

The lab's host has an uplink to "outside" (10.99.0.1 <-> 10.99.0.2, fd99::1 <-> ::2), which
routes the containers' subnets via the host. Network I is internal and publishes i1's TCP 8080
on host port 18081; network P is `open` (so only I's key can drop anything between them) and
publishes p's TCP 8080 on 18082; network Q is `open` too. Expected, written from the key's
definition (nothing forwarded leaves or enters I; the host is closed to I, allowHostPorts
defaulting to none; the host may open connections to I, as Docker lets it):
  i1 -> i2 (same network)                    reach (the positive control), TCP and ICMP
  i1 -> outside, p, the host (any address)   blocked, TCP 8080 and 53, ICMP
  p -> outside, q, the host                  reach (controls: forwarding and the host work)
  p -> i1's address                          blocked
  outside -> HOST:18081 (I's published port) blocked;  outside -> HOST:18082 (P's) reach
  p -> HOST:18081                            blocked (published ports stay closed to other networks)
  host -> i1                                 reach (host-initiated; the replies pass)
IPv6 neighbour discovery keeps working: every neighbour cache is flushed before the probes.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest

from explaining import disagreements, explain
from frames import settled_counts
from netlab import sh

pytestmark = [pytest.mark.e2e, pytest.mark.beside]  # run beside the rest by make test, to keep the suite under 30 minutes
PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}}
UPLINK = ("10.99.0.1", "fd99::1")
OUTSIDE = ("10.99.0.2", "fd99::2")


def _probe_all(lab, want: dict) -> tuple[dict, list[str]]:
    """Run every (kind, src, addr, port) probe concurrently: (results, the ones that disagree with `want`)."""
    run = {"icmp": lambda s, a, p: lab.ping(s, a), "tcp": lab.tcp, "udp": lab.udp}
    with ThreadPoolExecutor(max_workers=32) as pool:
        got = dict(zip(want, pool.map(lambda k: run[k[0]](*k[1:]), want)))
    return got, [f"{kind} {src} -> [{addr}]:{port}: expected {'reach' if want[(kind, src, addr, port)] else 'blocked'}"
                 for (kind, src, addr, port), ok in got.items() if ok != want[(kind, src, addr, port)]]


def _flush_neighbours(*namespaces) -> None:
    for ns in namespaces:
        sh("ip", "-6", "neigh", "flush", "all", netns=ns)
        sh("ip", "-4", "neigh", "flush", "all", netns=ns)


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_internal_network_reaches_only_itself(lab, backend):
    lab.listen(lab.host, 53)
    lab.udp_echo(lab.host, 53)
    inet = lab.network(["bridge", PORTMAP, "isolation"], isolation={"backend": backend, "internal": True})
    pnet = lab.network(["bridge", PORTMAP, "isolation"], isolation={"backend": backend, "ingressPolicy": "open"})
    qnet = lab.network(["bridge", "isolation"], isolation={"backend": backend, "ingressPolicy": "open"})
    i1 = lab.add(inet, port_mappings=[{"hostPort": 18081, "containerPort": 8080, "protocol": "tcp"}])
    i2 = lab.add(inet)
    p = lab.add(pnet, port_mappings=[{"hostPort": 18082, "containerPort": 8080, "protocol": "tcp"}])
    q = lab.add(qnet)
    _flush_neighbours(lab.host, i1.name, i2.name)
    before = settled_counts(lab, quiet=0.7)

    want = {}
    for v in (0, 1):
        i1a, i2a, pa, qa = (i1.ipv4, i1.ipv6)[v], (i2.ipv4, i2.ipv6)[v], (p.ipv4, p.ipv6)[v], (q.ipv4, q.ipv6)[v]
        host_addresses = ((inet.gateway4, inet.gateway6)[v], (pnet.gateway4, pnet.gateway6)[v], UPLINK[v])
        want |= {("tcp", i1.name, i2a, 8080): True, ("icmp", i1.name, i2a, 0): True,
                 ("tcp", i2.name, i1a, 8080): True,
                 ("tcp", i1.name, OUTSIDE[v], 8080): False, ("icmp", i1.name, OUTSIDE[v], 0): False,
                 ("tcp", i1.name, pa, 8080): False, ("icmp", i1.name, pa, 0): False,
                 ("tcp", p.name, OUTSIDE[v], 8080): True, ("tcp", p.name, qa, 8080): True,
                 ("tcp", p.name, i1a, 8080): False, ("icmp", p.name, i1a, 0): False,
                 ("tcp", lab.outside, i1a, 8080): False,  # its address, routed via the host
                 ("tcp", lab.outside, UPLINK[v], 18081): False, ("tcp", lab.outside, UPLINK[v], 18082): True,
                 ("tcp", p.name, UPLINK[v], 18081): False,
                 ("tcp", lab.host, i1a, 8080): True, ("icmp", lab.host, i1a, 0): True}
        for h in host_addresses:
            want |= {("tcp", i1.name, h, 8080): False, ("tcp", i1.name, h, 53): False,
                     ("udp", i1.name, h, 53): False, ("icmp", i1.name, h, 0): False,
                     ("tcp", p.name, h, 8080): True}
    got, wrong = _probe_all(lab, want)
    assert not wrong, "\n".join(wrong)

    # every probe from a container, explained: explain agrees with the packets
    answers, rc = explain(lab, [k for k in want if k[1] != lab.host and k[1] != lab.outside], check=True)
    assert rc == 0 and not disagreements(got, answers), disagreements(got, answers)
    out = answers[("tcp", i1.name, OUTSIDE[0], 8080)]
    assert (out["reason"], out["key"], out["network"]) == ("internal", "internal", inet.name), out
    into = answers[("tcp", p.name, i1.ipv6, 8080)]
    assert (into["reason"], into["key"], into["network"]) == ("internal", "internal", inet.name), into
    assert answers[("tcp", i1.name, UPLINK[0], 53)]["reason"] == "host-access"

    # the forwarded drops count as `internal` for I's bridge; the other bridges count none
    after = settled_counts(lab, quiet=0.7)
    assert after[(inet.bridge, "internal")] > before[(inet.bridge, "internal")], after
    assert after[(inet.bridge, "host-access")] > before[(inet.bridge, "host-access")], after
    assert after[(pnet.bridge, "internal")] == after[(qnet.bridge, "internal")] == 0, after
    assert all(rc == 0 for c in (i1, i2, p, q) for _, rc, _ in lab.check(c))

    # the last DEL of the internal network takes its rules: p reaches i2's old subnet's host again
    lab.delete(i1)
    lab.delete(i2)
    assert not lab.ours_mentioning(inet.bridge), lab.ruleset()
    assert lab.tcp(p.name, OUTSIDE[0], 8080)


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_internal_network_keeps_dns_when_told(lab, backend):
    """allowHostPorts on an internal network opens just those host services (DNS here); the
    rest of the host and everything forwarded stay closed (next to an open network that gets out)."""
    lab.listen(lab.host, 53)
    lab.udp_echo(lab.host, 53)
    dns = [{"protocol": "udp", "port": 53}, {"protocol": "tcp", "port": 53}]
    inet = lab.network(["bridge", "isolation"], isolation={"backend": backend, "internal": True,
                                                           "allowHostPorts": dns})
    i1 = lab.add(inet)
    i2 = lab.add(inet)
    o = lab.add(lab.network(["bridge", "isolation"], isolation={"backend": backend, "ingressPolicy": "open"}))
    _flush_neighbours(lab.host, i1.name, i2.name)
    want = {}
    for v in (0, 1):
        gw = (inet.gateway4, inet.gateway6)[v]
        want |= {("udp", i1.name, gw, 53): True, ("tcp", i1.name, gw, 53): True, ("tcp", i1.name, gw, 8080): False,
                 ("tcp", i1.name, (i2.ipv4, i2.ipv6)[v], 8080): True,
                 ("tcp", i1.name, OUTSIDE[v], 8080): False, ("tcp", o.name, OUTSIDE[v], 8080): True}
    got, wrong = _probe_all(lab, want)
    assert not wrong, "\n".join(wrong)
    answers, rc = explain(lab, list(want), check=True)
    assert rc == 0 and not disagreements(got, answers), disagreements(got, answers)
