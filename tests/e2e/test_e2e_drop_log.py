"""The drop log's own rules (logDrops: true), proven with real packets and read back through
`isolation drops --follow --json`: one line per blocked flow however often it is retried,
the right container and reason, a flood held to the rate limit while the counters count
everything, nothing for allowed traffic nor for a network without logDrops.

Network A is `isolated` with logDrops, denies egress to the management address .2 / ::2 and
closes the host except TCP 8080; network B is `same-bridge` without logDrops. Expected, by
hand, from the keys (the log names the bridge the sender is on, the first packet of a flow
only, at most LOG_BURST lines at once and LOG_RATE a second after, per bridge):

  a1 pings b1 5 times (A -> B, refused by B)      one line: cross-network, key ingressPolicy
  a1 pings a2 5 times via the gateway's MAC       one line: intra-bridge (routed back), ingressPolicy
  a1 pings management .2 / ::2 5 times            one line: egress-deny, key denyEgress
  a1 pings its gateway 5 times                    one line: host-access, key hostAccess
  b1 pings a1 5 times (B does not log)            dropped, no line
  a1 -> management .3 TCP 8080, gateway TCP 8080  pass, no line (the positive controls)
  a1 sends 2000 UDP datagrams to distinct ports   egress-deny counter +2000; at most
        of .2 within about a second               LOG_BURST + LOG_RATE * seconds lines

Both backends: nftables' log chains, iptables' NFLOG rules with their two hashlimits
(cross-network through CNI-ISOLATION-DROPLOG, keyed by the sender). The bridge table's drops
(anti-spoofing, cross-tenant) log through its own per-port log chains: see the third test.
Internal and direct-access drops (issue 21) are logged by the internal bridge, whichever side
of the packet it is on, and by the protected bridge the packet was going into, naming the
sending container or, from a LAN, none: see the last two tests. Not
covered because not written yet: cross-network drops logged for a receiving network with
logDrops whose sender does not log (see README, Seeing what is blocked).
"""

import time

import pytest

from frames import echo_request, mac_of, send_frames, settled_counts
from netlab import IP, sh
from plugin.droplog import line

pytestmark = [pytest.mark.e2e, pytest.mark.aside]  # one of the longest: make test runs it in a run of its own, with the matrix
N = 5
LOG_RATE, LOG_BURST = 10, 20  # as documented in README (logDrops)
FLOOD = 2000


def ping_n(src: str, addr: str) -> bool:
    """Send exactly N echo requests of one flow (one ICMP id); whether any was answered."""
    flag = "-6" if ":" in addr else "-4"
    return sh("ping", flag, "-n", "-q", "-c", str(N), "-i", "0.2", "-W", "1", addr, netns=src,
              check=False).returncode == 0


def one_line_each(reader, expected: list[tuple]) -> list[dict]:
    """The reader's lines, once it has exited cleanly, after checking that each expected
    (source, destination, protocol, reason, key) flow gave exactly one line for its N retries."""
    rc, got, said = reader.finish()
    assert rc == 0, said
    seen = [(r["source"], r["destination"], r["protocol"], r["reason"], r["key"]) for r in got]
    for e in expected:
        assert seen.count(e) == 1, f"{e}: {seen.count(e)} lines of {N} retries\n{got}"
    return got


FLOOD_SCRIPT = """
import socket, sys, time
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
start = time.monotonic()
for port in range(20000, 20000 + int(sys.argv[2])):
    s.sendto(b'x', (sys.argv[1], port))
print(time.monotonic() - start)
"""


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_each_reason_logs_one_line_per_flow_and_a_flood_is_held_to_the_limit(lab, backend):
    lab.management()
    baseline = lab.ruleset()
    a_net = lab.network(["bridge", "isolation"], isolation={
        "backend": backend, "ingressPolicy": "isolated", "logDrops": True,
        "denyEgress": ["10.98.0.2/32", "fd98::2/128"],
        "hostAccess": "deny", "allowHostPorts": [{"protocol": "tcp", "port": 8080}]})
    b_net = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    a1, a2, b1 = lab.add(a_net), lab.add(a_net), lab.add(b_net)
    A, B = a_net.bridge, b_net.bridge
    time.sleep(2)  # let start-up traffic pass before the reader starts
    expected = []  # (source, destination, protocol, reason, key), by hand
    reader = lab.follow_drops("--timeout", "25")
    for v, (a1_addr, a2_addr, b1_addr, denied, allowed, gateway) in enumerate((
            (a1.ipv4, a2.ipv4, b1.ipv4, "10.98.0.2", "10.98.0.3", a_net.gateway4),
            (a1.ipv6, a2.ipv6, b1.ipv6, "fd98::2", "fd98::3", a_net.gateway6))):
        icmp = ("icmp", "icmpv6")[v]
        # positive controls: pass, no line
        assert lab.tcp(a1.name, allowed) and lab.tcp(a1.name, gateway)
        assert not ping_n(a1.name, b1_addr)
        expected.append((a1_addr, b1_addr, icmp, "cross-network", "ingressPolicy"))
        assert not ping_n(b1.name, a1_addr)  # B does not log: no line
        sh(IP, ("-4", "-6")[v], "neigh", "replace", a2_addr, "lladdr", mac_of(lab.host, A), "dev", "eth0", "nud",
           "permanent", netns=a1.name)
        assert not ping_n(a1.name, a2_addr)
        expected.append((a1_addr, a2_addr, icmp, "intra-bridge", "ingressPolicy"))
        assert not ping_n(a1.name, denied)
        expected.append((a1_addr, denied, icmp, "egress-deny", "denyEgress"))
        assert not ping_n(a1.name, gateway)
        expected.append((a1_addr, gateway, icmp, "host-access", "hostAccess"))
    got = one_line_each(reader, expected)
    for r in got:  # every line is a1's (B logs nothing; start-up noise of A's containers aside)
        assert (r["bridge"], r["network"]) == (A, a_net.name), r
        assert r["source"] not in (b1.ipv4, b1.ipv6), r
        assert r["destination"] not in ("10.98.0.3", "fd98::3"), r
    for r in got:
        if (r["source"], r["destination"], r["protocol"], r["reason"], r["key"]) in expected:
            assert (r["container"], r["ifname"]) == (a1.id, "eth0"), r
    print("\n".join(str((r["source"], r["destination"], r["protocol"], r["reason"])) for r in got))

    # a flood of distinct flows: the counter counts all, the log at most the limit's worth
    time.sleep(3)  # the limit's bucket fills again
    before = settled_counts(lab, quiet=0.7)
    reader = lab.follow_drops("--timeout", "8")
    took = float(sh("python3", "-c", FLOOD_SCRIPT, "10.98.0.2", str(FLOOD), netns=a1.name).stdout)
    rc, flood, said = reader.finish()
    assert rc == 0, said
    after = settled_counts(lab, quiet=0.7)
    assert after[(A, "egress-deny")] - before.get((A, "egress-deny"), 0) == FLOOD
    lines = [r for r in flood if r["destination"] == "10.98.0.2" and r["protocol"] == "udp"]
    assert 1 <= len(lines) <= LOG_BURST + LOG_RATE * (took + 1), (len(lines), took)
    print(f"flood: {FLOOD} datagrams in {took:.3f} s, {len(lines)} lines")
    assert not any(r["bridge"] == B for r in flood)

    # the log rules go with their bridge; after the last DEL nothing of ours is left
    lab.delete(a1)
    lab.delete(a2)
    assert lab.ours_mentioning(A) == []
    lab.delete(b1)
    assert lab.ruleset() == baseline


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_routed_network_logs_under_its_segment_name(lab, backend):
    """ptp networks: the rules match the members' veths, the log names the segment, and the
    reader finds the sending container among the segment's attachments. Expected by hand:
    p1 (P logs, denies management .2/::2) pinging q1 (Q, another isolating network) and .2,
    5 times each, gives one cross-network and one egress-deny line per family; TCP to .3 (the
    control) passes and gives none; q1 pinging p1 (Q does not log) gives none."""
    lab.management()
    baseline = lab.ruleset()
    p_net = lab.network(["ptp", "isolation"], isolation={
        "backend": backend, "logDrops": True, "denyEgress": ["10.98.0.2/32", "fd98::2/128"]})
    q_net = lab.network(["ptp", "isolation"], isolation={"backend": backend})
    p1, q1 = lab.add(p_net), lab.add(q_net)
    time.sleep(2)
    reader = lab.follow_drops("--timeout", "15")
    expected = []
    for v, (p_addr, q_addr, denied, allowed) in enumerate((
            (p1.ipv4, q1.ipv4, "10.98.0.2", "10.98.0.3"), (p1.ipv6, q1.ipv6, "fd98::2", "fd98::3"))):
        icmp = ("icmp", "icmpv6")[v]
        assert lab.tcp(p1.name, allowed)  # the positive control
        assert not ping_n(p1.name, q_addr)
        expected.append((p_addr, q_addr, icmp, "cross-network", "ingressPolicy"))
        assert not ping_n(q1.name, p_addr)  # Q does not log
        assert not ping_n(p1.name, denied)
        expected.append((p_addr, denied, icmp, "egress-deny", "denyEgress"))
    got = one_line_each(reader, expected)
    for r in got:
        assert r["network"] == p_net.name and r["source"] in (p1.ipv4, p1.ipv6), r
        assert r["destination"] not in ("10.98.0.3", "fd98::3"), r
        if (r["source"], r["destination"], r["protocol"], r["reason"], r["key"]) in expected:
            assert (r["container"], r["ifname"]) == (p1.id, "eth0"), r
    lab.delete(p1)  # its rules name its veth, its log rules too: they go with it
    assert lab.ours_mentioning(p_net.bridge) == [] and not any(
        p_net.bridge in line for line in lab.ruleset().splitlines()), lab.ruleset()
    lab.delete(q1)
    assert lab.ruleset() == baseline


BY_CNI_ARGS = "IgnoreUnknown=1;ISOLATION_GROUP={}"  # as test_e2e_tenants passes a container's tenant


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_the_bridge_tables_drops_log_one_line_per_flow_by_the_port_it_came_in_by(lab, backend):
    """The bridge family's drops (anti-spoofing, cross-tenant) of a network with logDrops.
    S: same-bridge, antiSpoofing, logDrops; s1 and s2 tenant t1, s3 tenant t2. Q: the same
    without logDrops. Expected by hand (a flow: the packet's own IP header; ARP: port, MAC,
    ethertype), per family unless said:

      s1 sends N echo requests from an address it was not given   one line: anti-spoofing,
                                                                  key antiSpoofing, container s1
      s1 sends N ARP requests claiming another address (IPv4)     one line, protocol arp
      s1 pings s3 N times (t1 -> t2, unicast to s3's MAC)         one line: cross-tenant,
                                                                  key isolationGroup
      s1 pings s2 (same tenant) and its gateway                   pass, no line (the controls)
      q1 sends N forged echo requests                             Q's anti-spoofing counter +N,
                                                                  no line (Q does not log)
    """
    baseline = lab.ruleset()
    s_net = lab.network(["bridge", "isolation"], isolation={
        "backend": backend, "ingressPolicy": "same-bridge", "antiSpoofing": True, "logDrops": True})
    q_net = lab.network(["bridge", "isolation"], isolation={
        "backend": backend, "ingressPolicy": "same-bridge", "antiSpoofing": True})
    q1 = lab.add(q_net)  # first: S's log chains join a bridge table that is there
    s1 = lab.add(s_net, cni_args=BY_CNI_ARGS.format("t1"))
    s2 = lab.add(s_net, cni_args=BY_CNI_ARGS.format("t1"))
    s3 = lab.add(s_net, cni_args=BY_CNI_ARGS.format("t2"))
    S, Q = s_net.bridge, q_net.bridge
    time.sleep(2)  # let start-up traffic pass before the reader starts
    before = settled_counts(lab, quiet=0.7)
    reader = lab.follow_drops("--timeout", "25")
    expected = []  # (source, destination, protocol, reason, key), by hand
    for v, (s1_addr, s2_addr, s3_addr, gateway, forged, q_forged, q_gateway) in enumerate((
            (s1.ipv4, s2.ipv4, s3.ipv4, s_net.gateway4, "10.77.%d.200" % s_net.index,
             "10.77.%d.200" % q_net.index, q_net.gateway4),
            (s1.ipv6, s2.ipv6, s3.ipv6, s_net.gateway6, "fd77:%d::200" % s_net.index,
             "fd77:%d::200" % q_net.index, q_net.gateway6))):
        icmp = ("icmp", "icmpv6")[v]
        assert ping_n(s1.name, s2_addr) and ping_n(s1.name, gateway)  # positive controls: pass, no line
        send_frames(s1.name, "eth0", mac_of(lab.host, S), mac_of(s1.name, "eth0"), *echo_request(forged, gateway), N)
        expected.append((forged, gateway, icmp, "anti-spoofing", "antiSpoofing"))
        sh(IP, ("-4", "-6")[v], "neigh", "replace", s3_addr, "lladdr", mac_of(s3.name, "eth0"), "dev", "eth0",
           "nud", "permanent", netns=s1.name)  # unicast to s3: the attempt itself, not a flooded query
        assert not ping_n(s1.name, s3_addr)
        expected.append((s1_addr, s3_addr, icmp, "cross-tenant", "isolationGroup"))
        send_frames(q1.name, "eth0", mac_of(lab.host, Q), mac_of(q1.name, "eth0"),
                    *echo_request(q_forged, q_gateway), N)
    claimed = "10.77.%d.201" % s_net.index
    for _ in range(N):
        lab.arp_request(s1.name, claimed, s_net.gateway4)
        time.sleep(0.1)
    expected.append((claimed, s_net.gateway4, "arp", "anti-spoofing", "antiSpoofing"))
    got = one_line_each(reader, expected)
    after = settled_counts(lab, quiet=0.7)
    assert after[(Q, "anti-spoofing")] - before.get((Q, "anti-spoofing"), 0) == 2 * N  # dropped, not logged
    for r in got:  # only S logs, and never the controls
        assert (r["bridge"], r["network"]) == (S, s_net.name), r
        assert r["destination"] not in (s2.ipv4, s2.ipv6), r
        assert (r["source"], r["destination"]) not in ((s1.ipv4, s_net.gateway4), (s1.ipv6, s_net.gateway6)), r
    for r in got:
        if (r["source"], r["destination"], r["protocol"], r["reason"], r["key"]) in expected:
            assert (r["container"], r["ifname"]) == (s1.id, "eth0"), r
    print("\n".join(line(r) for r in got))  # as `isolation drops` prints them

    # the bridge table's log chains go with their bridge; after the last DEL nothing of ours is left
    for c in (s1, s2, s3):
        lab.delete(c)
    assert lab.ours_mentioning(S) == []
    lab.delete(q1)
    assert lab.ruleset() == baseline


# --- internal and direct-access drops (issue 21's reasons, logged) ------------------------------
def inbound_lines(got: list[dict], expected: list[tuple]) -> dict[tuple, dict]:
    """The one line of each expected (source, destination, protocol, reason, key) flow, by flow,
    after checking that no other line has the reason internal or direct-access (the other
    reasons' start-up noise, e.g. an internal network's closed host, aside)."""
    flows = {(r["source"], r["destination"], r["protocol"], r["reason"], r["key"]): r for r in got}
    extra = [r for r in got if r["reason"] in ("internal", "direct-access")
             and (r["source"], r["destination"], r["protocol"], r["reason"], r["key"]) not in expected]
    assert not extra, extra
    return {e: flows[e] for e in expected}


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_internal_and_direct_access_drops_log_one_line_naming_the_sender_or_no_container(lab, backend):
    """I and J: `internal` with logDrops; Q: `internal` without; D: `directAccess: deny` with
    logDrops; E: the same without; N: `open`, the plugin's but unguarded. The lab's outside
    (10.99.0.2, fd99::2, in by the uplink) routes the containers' subnets via the host. Expected
    by hand, per family, N retries of each (an internal drop is logged by the internal bridge
    that logs, whichever side of the packet it is on; a direct-access drop by the bridge it was
    going into; the sender: the container, or none for the outside):

      i1 -> outside        one line: internal, bridge I, container i1
      outside -> i1        one line: internal, bridge I, container none (in by the uplink)
      n1 -> i1             one line: internal, bridge I, container n1 of network N
      i1 -> j1             one line (not two): internal, bridge I (nftables: the side it left
                           first; iptables: whichever internal bridge's rules come first), i1
      outside -> d1        one line: direct-access, bridge D, container none, key directAccess
      q1 -> outside, n1 -> q1, outside -> e1                  dropped, no line (no logDrops)
      n1 -> outside, outside -> n1, d1 -> outside (TCP)       pass, no line (the controls)
    """
    conf = {"backend": backend}
    i_net = lab.network(["bridge", "isolation"], isolation={**conf, "internal": True, "logDrops": True})
    j_net = lab.network(["bridge", "isolation"], isolation={**conf, "internal": True, "logDrops": True})
    q_net = lab.network(["bridge", "isolation"], isolation={**conf, "internal": True})
    d_net = lab.network(["bridge", "isolation"], isolation={**conf, "directAccess": "deny", "logDrops": True})
    e_net = lab.network(["bridge", "isolation"], isolation={**conf, "directAccess": "deny"})
    n_net = lab.network(["bridge", "isolation"], isolation={**conf, "ingressPolicy": "open"})
    i1, j1, q1, d1, e1, n1 = (lab.add(n) for n in (i_net, j_net, q_net, d_net, e_net, n_net))
    I, J, D, uplink = i_net.bridge, j_net.bridge, d_net.bridge, f"{lab.prefix}up"
    time.sleep(2)  # let start-up traffic pass before the reader starts
    before = settled_counts(lab, quiet=0.7)
    reader = lab.follow_drops("--timeout", "45")
    expected = []  # (source, destination, protocol, reason, key), by hand
    for v in (0, 1):
        icmp, outside = ("icmp", "icmpv6")[v], ("10.99.0.2", "fd99::2")[v]
        i, j, q, d, e, n = ((c.ipv4, c.ipv6)[v] for c in (i1, j1, q1, d1, e1, n1))
        assert lab.tcp(n1.name, outside) and lab.tcp(lab.outside, n) and lab.tcp(d1.name, outside)  # the controls
        for src, addr in ((i1.name, outside), (lab.outside, i), (n1.name, i), (i1.name, j), (lab.outside, d)):
            assert not ping_n(src, addr)
        expected += [(i, outside, icmp, "internal", "internal"), (outside, i, icmp, "internal", "internal"),
                     (n, i, icmp, "internal", "internal"), (i, j, icmp, "internal", "internal"),
                     (outside, d, icmp, "direct-access", "directAccess")]
        for src, addr in ((q1.name, outside), (n1.name, q), (lab.outside, e)):  # no logDrops: no line
            assert not ping_n(src, addr)
    rc, got, said = reader.finish()
    assert rc == 0, (said, got[-3:])
    lines = inbound_lines(got, expected)
    for r in got:  # Q and E log nothing, and the controls give no line
        assert r["bridge"] not in (q_net.bridge, e_net.bridge), r
        assert r["source"] not in (q1.ipv4, q1.ipv6) and r["destination"] not in (q1.ipv4, q1.ipv6, e1.ipv4, e1.ipv6), r
        assert r["protocol"] != "tcp", r
    for (src, dst, _, reason, _), r in lines.items():
        if reason == "direct-access":  # from the LAN: no container of ours, never d1's neighbours
            assert (r["bridge"], r["network"], r["container"], r["ifname"], r["port"]) == (D, None, None, None, None), r
            assert (r["in"], r["out"]) == (uplink, D), r
            assert r["note"].startswith(f"from outside: came in by {uplink}"), r
        elif src in (i1.ipv4, i1.ipv6):
            assert r["bridge"] == I or (backend == "iptables" and r["bridge"] == J and dst in (j1.ipv4, j1.ipv6)), r
            assert (r["network"], r["container"], r["ifname"], r["in"], r["note"]) == (
                i_net.name, i1.id, "eth0", I, None), r
        elif src in (n1.ipv4, n1.ipv6):  # into I from another of the plugin's bridges: its container
            assert (r["bridge"], r["network"], r["container"], r["ifname"], r["in"], r["out"]) == (
                I, n_net.name, n1.id, "eth0", n_net.bridge, I), r
        else:  # into I from the outside
            assert (r["bridge"], r["network"], r["container"], r["in"], r["out"]) == (I, None, None, uplink, I), r
        assert r["icmpType"] in (8, 128) and r["fragment"] is False, r  # echo requests, whole
    after = settled_counts(lab, quiet=0.7)
    moved = {k: after[k] - before.get(k, 0) for k in after}
    # every retry dropped and counted (i1 -> j1: for J on iptables when J's rules come first)
    assert moved[(I, "internal")] >= 3 * 2 * N and moved[(I, "internal")] + moved[(J, "internal")] >= 4 * 2 * N, moved
    assert moved[(D, "direct-access")] >= 2 * N and moved[(e_net.bridge, "direct-access")] >= 2 * N, moved
    assert moved[(q_net.bridge, "internal")] >= 2 * 2 * N, moved
    print("\n".join(line(r) for r in lines.values()))  # as `isolation drops` prints them


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_routed_networks_internal_and_direct_access_drops_log_under_its_segment_name(lab, backend):
    """ptp networks: P `internal` with logDrops, R `directAccess: deny` with logDrops. Expected by
    hand, per family: p1 -> outside and outside -> p1 one internal line each (container p1, then
    none), outside -> r1 one direct-access line (no container); r1 -> outside (TCP) passes, no line."""
    baseline = lab.ruleset()
    p_net = lab.network(["ptp", "isolation"], isolation={"backend": backend, "internal": True, "logDrops": True})
    r_net = lab.network(["ptp", "isolation"], isolation={"backend": backend, "directAccess": "deny",
                                                         "logDrops": True})
    p1, r1 = lab.add(p_net), lab.add(r_net)
    time.sleep(2)
    reader = lab.follow_drops("--timeout", "20")
    expected = []
    for v in (0, 1):
        icmp, outside = ("icmp", "icmpv6")[v], ("10.99.0.2", "fd99::2")[v]
        p, r = (p1.ipv4, p1.ipv6)[v], (r1.ipv4, r1.ipv6)[v]
        assert lab.tcp(r1.name, outside)  # the control
        for src, addr in ((p1.name, outside), (lab.outside, p), (lab.outside, r)):
            assert not ping_n(src, addr)
        expected += [(p, outside, icmp, "internal", "internal"), (outside, p, icmp, "internal", "internal"),
                     (outside, r, icmp, "direct-access", "directAccess")]
    rc, got, said = reader.finish()
    assert rc == 0, said
    for (src, _, _, reason, _), rec in inbound_lines(got, expected).items():
        assert rec["bridge"] == (p_net.bridge if reason == "internal" else r_net.bridge), rec
        sender = (p_net.name, p1.id) if src in (p1.ipv4, p1.ipv6) else (None, None)
        assert (rec["network"], rec["container"]) == sender, rec
    assert not any(r["protocol"] == "tcp" for r in got), got
    lab.delete(p1)
    lab.delete(r1)
    assert lab.ruleset() == baseline
