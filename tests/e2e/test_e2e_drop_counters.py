"""Drop counters per bridge and reason (issue 19), proven with real packets on both backends,
IPv4 and IPv6, read back through `isolation status --json`.

Network A is `isolated` (so antiSpoofing is on), denies egress to the management address
.2 / ::2, and closes the host except TCP 8080; network B is `same-bridge` with nothing else.
Each step sends exactly N blocked packets of one reason and expects, from the definitions of
the keys and of the counters (a cross-network drop counts for the bridge it was going into,
every other reason for the bridge it came from):

  B pings a container of A                      A cross-network  +N
  A pings management .2 / ::2 (denied)          A egress-deny    +N
  A pings its own gateway (host closed)         A host-access    +N
  A sends frames from an address it was not given   A anti-spoofing +N
  A pings a2 with a2's MAC as the neighbour     A intra-bridge   +N  (frames stopped by the
                                                                      bridge-port isolation flag)
  A pings a2 with the gateway's MAC instead     A intra-bridge   +N  (routed back by the host)

and every other (bridge, reason) unchanged; next to each, a positive control from the same
container gets through. Then adding and removing an unrelated network changes no counter.
"""

import pytest

from frames import echo_request, mac_of, send_frames, settled_counts
from netlab import IP, sh

pytestmark = [pytest.mark.e2e, pytest.mark.beside]  # run beside the rest by make test, to keep the suite under 30 minutes
N = 5
CROSS, INTRA, EGRESS, HOST, SPOOF = "cross-network", "intra-bridge", "egress-deny", "host-access", "anti-spoofing"


def ping_n(lab, src: str, addr: str) -> bool:
    """Send exactly N echo requests (0.2 s apart); whether any was answered."""
    flag = "-6" if ":" in addr else "-4"
    argv = ("ping", flag, "-n", "-q", "-c", str(N), "-i", "0.2", "-W", "1", addr)
    return sh(*argv, netns=src, check=False).returncode == 0


def expect(lab, before: dict, raised: dict) -> dict:
    """Wait for the counters to settle; exactly `raised` ((bridge, reason) -> packets) moved."""
    after = settled_counts(lab, quiet=0.7)
    moved = {k: after.get(k, 0) - before.get(k, 0) for k in after.keys() | before.keys()
             if after.get(k) != before.get(k)}
    assert moved == raised, f"expected {raised}, counted {moved}"
    return after


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_each_reason_counts_exactly_its_drops_on_its_bridge(lab, backend):
    lab.management()  # 10.98.0.2 (denied to A) and .3, both listening on TCP 8080
    # the lab host listens on TCP 8080: A's one allowed host port
    a_net = lab.network(["bridge", "isolation"], isolation={
        "backend": backend, "ingressPolicy": "isolated", "denyEgress": ["10.98.0.2/32", "fd98::2/128"],
        "hostAccess": "deny", "allowHostPorts": [{"protocol": "tcp", "port": 8080}]})
    b_net = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    a1, a2, b1 = lab.add(a_net), lab.add(a_net), lab.add(b_net)
    A = a_net.bridge
    report = lab.status()
    rows = {r["bridge"]: r for r in report["bridges"]}
    assert rows[A]["networks"] == [a_net.name] and rows[b_net.bridge]["networks"] == [b_net.name]
    assert set(rows[A]["drops"]) == {CROSS, INTRA, EGRESS, HOST, SPOOF, "cross-tenant", "internal", "direct-access"}
    counts = settled_counts(lab, quiet=0.7)

    for v, (a1_addr, a2_addr, denied, allowed, gateway) in enumerate((
            (a1.ipv4, a2.ipv4, "10.98.0.2", "10.98.0.3", a_net.gateway4),
            (a1.ipv6, a2.ipv6, "fd98::2", "fd98::3", a_net.gateway6))):
        # cross-network: B into A, counted for A (whose ingressPolicy refuses it)
        assert lab.tcp(b1.name, allowed) and not ping_n(lab, b1.name, a1_addr)
        counts = expect(lab, counts, {(A, CROSS): N})
        # egress-deny: to the denied management address; the other one answers
        assert lab.tcp(a1.name, allowed) and not ping_n(lab, a1.name, denied)
        counts = expect(lab, counts, {(A, EGRESS): N})
        # host-access: the gateway answers on 8080 only
        assert lab.tcp(a1.name, gateway) and not ping_n(lab, a1.name, gateway)
        counts = expect(lab, counts, {(A, HOST): N})
        # anti-spoofing: N frames from an address a1 was not given, its own MAC, to the gateway's MAC
        spoofed = ("10.77.%d.200" % a_net.index, "fd77:%d::200" % a_net.index)[v]
        send_frames(a1.name, "eth0", mac_of(lab.host, A), mac_of(a1.name, "eth0"), *echo_request(spoofed, gateway), N)
        counts = expect(lab, counts, {(A, SPOOF): N})
        # intra-bridge, bridged: a2's MAC as the neighbour entry, so N unicast frames go to it
        assert lab.tcp(a1.name, allowed)
        family = "-6" if v else "-4"
        sh(IP, family, "neigh", "replace", a2_addr, "lladdr", mac_of(a2.name, "eth0"), "dev", "eth0", "nud",
           "permanent", netns=a1.name)
        assert not ping_n(lab, a1.name, a2_addr)
        counts = expect(lab, counts, {(A, INTRA): N})
        # intra-bridge, routed back into the bridge by the host (hairpin): the gateway's MAC
        sh(IP, family, "neigh", "replace", a2_addr, "lladdr", mac_of(lab.host, A), "dev", "eth0", "nud",
           "permanent", netns=a1.name)
        assert not ping_n(lab, a1.name, a2_addr)
        counts = expect(lab, counts, {(A, INTRA): N})

    text = lab.cli("status").stdout
    print(text)  # the notes show it
    assert f"  networks: {a_net.name}" in text
    # the table shows what --json does (start-up traffic before the first reading counts too)
    assert "  drops: " + "  ".join(f"{r} {counts[(A, r)]}" for r in (CROSS, INTRA, EGRESS, HOST, SPOOF)) in text

    # an unrelated network comes and goes: no counter of A or B moves, none resets
    c_net = lab.network(["bridge", "isolation"], isolation={"backend": backend, "ingressPolicy": "isolated"})
    c1 = lab.add(c_net)
    assert lab.tcp(c1.name, "10.98.0.3")
    with_c = settled_counts(lab, quiet=0.7)
    assert {k: n for k, n in with_c.items() if k[0] != c_net.bridge} == counts
    assert all(rc == 0 for _, rc in lab.delete(c1))
    assert settled_counts(lab, quiet=0.7) == counts
    assert counts[(A, CROSS)] >= 2 * N and counts[(A, INTRA)] >= 4 * N
    assert not any(n for (bridge, _), n in counts.items() if bridge == b_net.bridge)  # B dropped nothing
