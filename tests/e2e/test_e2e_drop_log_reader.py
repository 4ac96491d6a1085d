"""`isolation drops --follow --json` reads real logged drops: the right container, addresses,
protocol, port, reason and key for each blocked packet, and nothing for what is not logged.

The rules that log are written here by hand, in a table of the lab's host namespace of our
own (`inet droplogtest`, forward hook, before any other filter), in exactly the form the
drop log uses: `log group 1907 prefix "isolation <reason> <bridge>"`, then drop. The reader
must not depend on who wrote them. Each blocked probe sends exactly one packet (a TCP connect
given up before the SYN is retried, one datagram, one echo request), so each is one line.

Network N (one bridge) holds containers A and B; a stranger S sits on the same bridge, plugged
in by hand (no CNI ADD: unregistered). What the rules do, and so what must be printed:
  A -> outside 10.99.0.2 / fd99::2: TCP 8081, UDP 5353, ICMP echo    logged egress-deny, dropped
  A from 10.77.N.200 (an address it added itself) -> 10.99.0.2:8081  logged, A named, "spoofed source"
  S (10.77.N.250) -> 10.99.0.2:8081                                   logged, container "unknown"
  A: an ARP request claiming B's address (bridge family)             logged anti-spoofing, A named, "spoofed"
  B -> 10.99.0.2 UDP 5353                                             logged with another prefix: no line
  A -> outside TCP 8080; B -> outside TCP 8081, UDP 5353 (IPv6), ICMP; S -> outside TCP 8080
                                                                      not logged, they pass (the positive
                                                                      controls of every blocked probe)
Run with the agent (it owns the group; the reader follows its ring file) and without (the
reader binds the group itself; a second reader is refused: one listener per group), on both
backends (the network's own isolation rules stay in place), with bridge-nf-call 0 and 1 (the
sender is found by its port: from the kernel with br_netfilter, else from the bridge's
forwarding database).
"""

import calendar
import json
import time

import pytest

from netlab import read_text, sh, tcp_connect, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.beside]  # run beside the rest by make test, to keep the suite under 30 minutes
OUTSIDE4, OUTSIDE6 = "10.99.0.2", "fd99::2"
BLOCKED_TCP, OPEN_TCP, UDP_PORT = 8081, 8080, 5353
ARP_TARGET = "10.77.1.99"  # nobody: the ARP request below is logged where it enters the bridge
ONE_SYN_S = 0.5  # a TCP connect given up before the kernel retries its SYN (after 1 s): one packet


def _log(prefix: str) -> str:
    return f'log group 1907 prefix "{prefix}" drop'


def _rules(bridge: str, a4: str, a6: str, spoofed: str, stranger: str, b4: str) -> str:
    ours = _log(f"isolation egress-deny {bridge}")
    return "\n".join([
        "table inet droplogtest {",
        " chain forward {",
        "  type filter hook forward priority -10; policy accept;",
        f"  ip saddr {a4} ip daddr {OUTSIDE4} tcp dport {BLOCKED_TCP} {ours}",
        f"  ip saddr {a4} ip daddr {OUTSIDE4} udp dport {UDP_PORT} {ours}",
        f"  ip saddr {a4} ip daddr {OUTSIDE4} icmp type echo-request {ours}",
        f"  ip6 saddr {a6} ip6 daddr {OUTSIDE6} tcp dport {BLOCKED_TCP} {ours}",
        f"  ip6 saddr {a6} ip6 daddr {OUTSIDE6} udp dport {UDP_PORT} {ours}",
        f"  ip6 saddr {a6} ip6 daddr {OUTSIDE6} icmpv6 type echo-request {ours}",
        f"  ip saddr {spoofed} ip daddr {OUTSIDE4} tcp dport {BLOCKED_TCP} {ours}",
        f"  ip saddr {stranger} ip daddr {OUTSIDE4} tcp dport {BLOCKED_TCP} {ours}",
        f"  ip saddr {b4} ip daddr {OUTSIDE4} udp dport {UDP_PORT} {_log('firewall: dropped')}",
        " }",
        "}",
        "table bridge droplogtest {",  # where anti-spoofing drops: the payload starts at the ARP header
        " chain prerouting {",
        "  type filter hook prerouting priority -10; policy accept;",
        f"  arp operation request arp daddr ip {ARP_TARGET} {_log(f'isolation anti-spoofing {bridge}')}",
        " }",
        "}",
    ])


def _ping_once(lab, netns: str, addr: str) -> bool:
    flag = "-6" if ":" in addr else "-4"
    return sh("ping", flag, "-n", "-q", "-c", "1", "-W", "2", addr, netns=netns, check=False).returncode == 0


@pytest.mark.parametrize("backend,agent,bridge_nf", [
    ("nftables", False, 1), ("nftables", True, 0), ("iptables", False, 0), ("iptables", True, 1)])
def test_drops_follow_prints_one_right_line_per_logged_drop(make_lab, backend, agent, bridge_nf):
    lab = make_lab(bridge_nf=bridge_nf)
    net = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    a, b = lab.add(net), lab.add(net)
    stranger = lab.stranger(net)
    spoofed, stranger4 = f"10.77.{net.index}.200", f"10.77.{net.index}.250"
    sh("ip", "addr", "add", f"{spoofed}/24", "dev", "eth0", netns=a.name)
    lab.listen(lab.outside, BLOCKED_TCP)
    lab.udp_echo(lab.outside, UDP_PORT)
    sh("nft", "-f", "-", input=_rules(net.bridge, a.ipv4, a.ipv6, spoofed, stranger4, b.ipv4), netns=lab.host)
    if agent:
        log = lab.start_agent()
        assert eventually(lambda: "drop log: recording NFLOG group 1907" in read_text(log), 60), read_text(log)
        before = lab.cli("drops", "--json")
        assert before.returncode == 0 and before.stdout == "", before

    expected = [  # by hand, from the rules above, in the order the probes are sent
        dict(container=a.id, source=a.ipv4, destination=OUTSIDE4, protocol="tcp", destinationPort=BLOCKED_TCP,
             icmpType=None),
        dict(container=a.id, source=a.ipv4, destination=OUTSIDE4, protocol="udp", destinationPort=UDP_PORT,
             icmpType=None),
        dict(container=a.id, source=a.ipv4, destination=OUTSIDE4, protocol="icmp", destinationPort=None, icmpType=8),
        dict(container=a.id, source=a.ipv6, destination=OUTSIDE6, protocol="tcp", destinationPort=BLOCKED_TCP,
             icmpType=None),
        dict(container=a.id, source=a.ipv6, destination=OUTSIDE6, protocol="udp", destinationPort=UDP_PORT,
             icmpType=None),
        dict(container=a.id, source=a.ipv6, destination=OUTSIDE6, protocol="icmpv6", destinationPort=None,
             icmpType=128),
        dict(container=a.id, source=spoofed, destination=OUTSIDE4, protocol="tcp", destinationPort=BLOCKED_TCP,
             icmpType=None),
        dict(container="unknown", source=stranger4, destination=OUTSIDE4, protocol="tcp",
             destinationPort=BLOCKED_TCP, icmpType=None),
        dict(container=a.id, source=b.ipv4, destination=ARP_TARGET, protocol="arp", destinationPort=None,
             icmpType=None),
    ]
    started = time.time()
    reader = lab.follow_drops("--count", str(len(expected)), "--timeout", "120")
    assert reader.mode == ("agent" if agent else "group"), reader.said
    if not agent:
        second = lab.cli("drops", "--follow", "--timeout", "5")
        assert second.returncode == 1 and "NFLOG group 1907 is already bound" in second.stderr, second

    # What is not logged passes and prints nothing: the positive controls of every blocked probe.
    assert lab.tcp(a.name, OUTSIDE4, OPEN_TCP) and lab.tcp(a.name, OUTSIDE6, OPEN_TCP)
    assert lab.tcp(b.name, OUTSIDE4, BLOCKED_TCP) and lab.tcp(b.name, OUTSIDE6, BLOCKED_TCP)
    assert lab.udp_once(b.name, OUTSIDE6, UDP_PORT)
    assert _ping_once(lab, b.name, OUTSIDE4) and _ping_once(lab, b.name, OUTSIDE6)
    assert lab.tcp(stranger, OUTSIDE4, OPEN_TCP)
    # Logged under a prefix that is not ours: dropped, and no line.
    assert not lab.udp_once(b.name, OUTSIDE4, UDP_PORT)
    # The blocked probes, one packet each, in the order of `expected`.
    assert not tcp_connect(a.name, OUTSIDE4, BLOCKED_TCP, timeout=ONE_SYN_S)
    assert not lab.udp_once(a.name, OUTSIDE4, UDP_PORT)
    assert not _ping_once(lab, a.name, OUTSIDE4)
    assert not tcp_connect(a.name, OUTSIDE6, BLOCKED_TCP, timeout=ONE_SYN_S)
    assert not lab.udp_once(a.name, OUTSIDE6, UDP_PORT)
    assert not _ping_once(lab, a.name, OUTSIDE6)
    assert not tcp_connect(a.name, OUTSIDE4, BLOCKED_TCP, timeout=ONE_SYN_S, source=spoofed)
    assert not tcp_connect(stranger, OUTSIDE4, BLOCKED_TCP, timeout=ONE_SYN_S)
    mac_a = lab.arp_request(a.name, b.ipv4, ARP_TARGET)  # A claims B's address

    rc, got, said = reader.finish()
    assert rc == 0, said
    fields = ("container", "source", "destination", "protocol", "destinationPort", "icmpType")
    assert [{k: r[k] for k in fields} for r in got] == expected, said
    for r in got:
        reason = "anti-spoofing" if r["protocol"] == "arp" else "egress-deny"
        assert (r["reason"], r["key"], r["bridge"], r["network"]) == (
            reason, {"anti-spoofing": "antiSpoofing", "egress-deny": "denyEgress"}[reason], net.bridge, net.name), r
        assert started - 1 <= calendar.timegm(time.strptime(r["time"][:19], "%Y-%m-%dT%H:%M:%S")) <= time.time(), r
    for r in got[:7] + got[8:]:
        assert (r["ifname"], r["port"]) == ("eth0", lab.host_port(a)), r
    arp = got[8]
    assert (arp["sourceMac"], arp["arp"], arp["service"], arp["in"]) == (mac_a, "request", "arp request", net.bridge)
    assert arp["note"] == f"spoofed source: {b.ipv4} is not one of its addresses"
    assert [r["note"] for r in got[:6]] == [None] * 6
    assert got[6]["note"] == f"spoofed source: {spoofed} is not one of its addresses"
    assert got[7]["ifname"] is None and got[7]["note"].startswith(
        f"no container registered on this bridge has MAC {got[7]['sourceMac']} or address {stranger4}"), got[7]
    assert got[7]["sourceMac"] and got[7]["sourceMac"] not in {r["sourceMac"] for r in got[:7]}

    # Nothing else was, or is, printed: allowed traffic and foreign prefixes stay silent.
    if agent:
        assert eventually(lambda: len(lab.cli("drops", "--json").stdout.splitlines()) >= len(expected), 10)
        time.sleep(1)
        recorded = lab.cli("drops", "--json")
        assert recorded.returncode == 0 and recorded.stderr == "", recorded
        assert [json.loads(x) for x in recorded.stdout.splitlines()] == got
        last = lab.cli("drops", "--count", "1")
        assert last.stdout.count("\n") == 1 and f" anti-spoofing net={net.name} container={a.id} if=eth0 mac={mac_a} " \
            f"src={b.ipv4} dst={ARP_TARGET} arp request key=antiSpoofing note=" in last.stdout, last.stdout
        # The agent stops: a follower of its record takes the group over and goes on.
        taking_over = lab.follow_drops("--count", "1", "--timeout", "60")
        assert taking_over.mode == "agent"
        lab.stop_agent()
        taking_over.wait_for("isolation: the agent stopped recording drops: listening to the group itself")
        taking_over.wait_for("isolation: listening to NFLOG group 1907")
        assert not tcp_connect(a.name, OUTSIDE4, BLOCKED_TCP, timeout=ONE_SYN_S)
        rc, [after], said = taking_over.finish()
        assert rc == 0 and {k: after[k] for k in fields} == expected[0], said
    quiet = lab.follow_drops("--timeout", "4")
    assert lab.tcp(a.name, OUTSIDE4, OPEN_TCP) and not lab.udp_once(b.name, OUTSIDE4, UDP_PORT)
    rc, silent, said = quiet.finish()
    assert rc == 0 and silent == [], said
