"""Review of issue 19: the per-bridge drop counters must never weaken a drop, and CHECK must
see damage done to the objects they added (nftables: the drop-<reason> chains, the
count-<reason> maps and the named counters).

Setup: A is `isolated`, B `same-bridge`, both on nftables; B -> A is a cross-network drop
(B is isolating too: A's ingressPolicy refuses it), while B reaching the lab's outside peer
10.99.0.2 / fd99::2 through the host is the positive control in the same setup.

  1. A's element of map count-cross-network and its counter deleted by hand (what an
     operator, or a registry that lost A, leaves): the drop chain's map lookup fails, its
     next rule still drops. B -> A stays blocked, and CHECK of A's container fails.
  2. The drop chain's counting rule deleted by hand: the drop holds, CHECK fails.
  3. The drop chain flushed by hand: a `goto` into an empty chain falls back to the base
     chain's policy (accept) so B now reaches A: CHECK must fail, and `reconcile` must
     restore the drop (B blocked again, control still through).
"""

import json
import re

import pytest

from netlab import sh

pytestmark = pytest.mark.e2e
OUTSIDE = ("10.99.0.2", "fd99::2")


def _reaches(lab, src: str, addrs) -> bool:
    return all(lab.reach([(src, a) for a in addrs]).values())


def _blocked(lab, src: str, addrs) -> bool:
    return not any(lab.reach([(src, a) for a in addrs]).values())


def _check_fails(lab, c) -> bool:
    return any(rc != 0 for kind, rc, _ in lab.check(c) if kind == "isolation")


def _setup(lab):
    a_net = lab.network(["bridge", "isolation"], isolation={"backend": "nftables", "ingressPolicy": "isolated"})
    b_net = lab.network(["bridge", "isolation"], isolation={"backend": "nftables"})
    a1, b1 = lab.add(a_net), lab.add(b_net)
    targets = (a1.ipv4, a1.ipv6)
    assert _reaches(lab, b1.name, OUTSIDE), "positive control: B reaches the outside peer"
    assert _blocked(lab, b1.name, targets), "B -> A is a cross-network drop"
    assert not _check_fails(lab, a1), "CHECK passes on the intact ruleset"
    return a_net, a1, b1, targets


def _handle(lab, chain: str, needle: str) -> str:
    listing = lab.nft("-a", "list", "chain", "inet", "isolation", chain)
    found = [m.group(1) for line in listing.splitlines() if needle in line
             for m in [re.search(r"# handle (\d+)", line)] if m]
    assert len(found) == 1, listing
    return found[0]


def test_a_bridge_missing_from_its_counter_map_still_drops_and_check_says_so(lab):
    a_net, a1, b1, targets = _setup(lab)
    A = a_net.bridge
    sh("nft", "delete", "element", "inet", "isolation", "count-cross-network", "{", f'"{A}"', "}", netns=lab.host)
    sh("nft", "delete", "counter", "inet", "isolation", f"cross-network-{A}", netns=lab.host)
    assert _reaches(lab, b1.name, OUTSIDE)
    assert _blocked(lab, b1.name, targets), "the drop holds without the bridge's counter"
    assert _check_fails(lab, a1), "CHECK names the missing counter map element"


def test_the_drop_chain_without_its_counting_rule_still_drops_and_check_says_so(lab):
    a_net, a1, b1, targets = _setup(lab)
    handle = _handle(lab, "drop-cross-network", "counter name")
    sh("nft", "delete", "rule", "inet", "isolation", "drop-cross-network", "handle", handle, netns=lab.host)
    assert _reaches(lab, b1.name, OUTSIDE)
    assert _blocked(lab, b1.name, targets)
    assert _check_fails(lab, a1)


def test_a_flushed_drop_chain_is_damage_check_sees_and_reconcile_repairs(lab):
    a_net, a1, b1, targets = _setup(lab)
    sh("nft", "flush", "chain", "inet", "isolation", "drop-cross-network", netns=lab.host)
    assert _reaches(lab, b1.name, targets), "an empty drop chain drops nothing (why CHECK must see it)"
    assert _check_fails(lab, a1)
    proc = lab.cli("reconcile")
    assert proc.returncode == 0, proc.stderr
    assert _reaches(lab, b1.name, OUTSIDE)
    assert _blocked(lab, b1.name, targets), "reconcile restored the drop"
    assert not _check_fails(lab, a1)
    report = json.loads(lab.cli("status", "--json").stdout)
    assert _has_cross_network_counter(report, a_net.bridge)


def _has_cross_network_counter(report: dict, bridge: str) -> bool:
    rows = {r["bridge"]: r for r in report["bridges"]}
    return "cross-network" in (rows[bridge].get("drops") or {})


# --- the bridge family: anti-spoofing without its port's counter ------------------------------
N = 5


def _host_echoes(lab, family: int) -> int:
    """Echo requests the host itself received (IcmpInEchos / Icmp6InEchos of its namespace)."""
    if family == 4:
        lines = sh("cat", "/proc/net/snmp", netns=lab.host).stdout.splitlines()
        names, values = [ln.split() for ln in lines if ln.startswith("Icmp:")][:2]
        return int(values[names.index("InEchos")])
    for ln in sh("cat", "/proc/net/snmp6", netns=lab.host).stdout.splitlines():
        if ln.split()[0] == "Icmp6InEchos":
            return int(ln.split()[1])
    raise AssertionError("no Icmp6InEchos in /proc/net/snmp6")


def _sum16(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _valid_echo(src: str, dst: str) -> tuple[int, bytes]:
    """frames.echo_request with its checksums filled in: the host's own stack (unlike the
    bridge's prerouting hook) verifies them before it counts an echo request."""
    import ipaddress

    from frames import echo_request

    ethertype, packet = echo_request(src, dst)
    p = bytearray(packet)
    if ethertype == 0x0800:
        p[10:12] = _sum16(bytes(p[:20])).to_bytes(2, "big")
        p[22:24] = _sum16(bytes(p[20:])).to_bytes(2, "big")
    else:
        body = bytes(p[40:])
        pseudo = (ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
                  + len(body).to_bytes(4, "big") + bytes([0, 0, 0, 58]))
        p[42:44] = _sum16(pseudo + body).to_bytes(2, "big")
    return ethertype, bytes(p)


def _echoes_reaching_host(lab, c, src: str, dst: str, host_mac: str) -> int:
    """Send N echo requests from `src` out of c's eth0 to the host; how many the host received."""
    from frames import mac_of, send_frames

    family = 6 if ":" in dst else 4
    before = _host_echoes(lab, family)
    send_frames(c.name, "eth0", host_mac, mac_of(c.name, "eth0"), *_valid_echo(src, dst), N)
    import time

    time.sleep(0.5)
    return _host_echoes(lab, family) - before


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_anti_spoofing_without_the_ports_counter_still_drops(lab, backend):
    from frames import mac_of

    table = "isolation" if backend == "nftables" else "isolation-iptables"
    net = lab.network(["bridge", "isolation"], isolation={"backend": backend, "ingressPolicy": "isolated"})
    a1 = lab.add(net)
    host_mac = mac_of(lab.host, net.bridge)
    spoofed = {4: "10.77.%d.200" % net.index, 6: "fd77:%d::200" % net.index}
    gateways = {4: net.gateway4, 6: net.gateway6}
    own = {4: a1.ipv4, 6: a1.ipv6}
    for fam in (4, 6):  # intact: the positive control answers, the spoofed source is dropped
        assert _echoes_reaching_host(lab, a1, own[fam], gateways[fam], host_mac) == N
        assert _echoes_reaching_host(lab, a1, spoofed[fam], gateways[fam], host_mac) == 0
    port = next(p for p in json.loads(sh("nft", "-j", "list", "map", "bridge", table, "count-anti-spoofing",
                                        netns=lab.host).stdout)["nftables"][1]["map"]["elem"])[0]
    sh("nft", "delete", "element", "bridge", table, "count-anti-spoofing", "{", f'"{port}"', "}", netns=lab.host)
    sh("nft", "delete", "counter", "bridge", table, f"anti-spoofing-{net.bridge}", netns=lab.host)
    for fam in (4, 6):
        assert _echoes_reaching_host(lab, a1, own[fam], gateways[fam], host_mac) == N
        assert _echoes_reaching_host(lab, a1, spoofed[fam], gateways[fam], host_mac) == 0, \
            "a port missing from count-anti-spoofing still has its spoofed frames dropped"
    assert _check_fails(lab, a1), "CHECK names the missing counter map element"
    # the negative above could fail: without the anti-spoofing rules the spoofed echoes arrive
    sh("nft", "flush", "chain", "bridge", table, "prerouting", netns=lab.host)
    assert _echoes_reaching_host(lab, a1, spoofed[4], gateways[4], host_mac) == N
