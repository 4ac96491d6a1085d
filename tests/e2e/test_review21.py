"""Review of issue 21's newest rules (tenants across bridges, closed routed segments), as an
attacker: a container is root in its netns with CAP_NET_RAW. Each finding is proven with
packets in the lab, a positive control beside each blocked verdict.

Finding 1 (tcross rides for everyone on the tenant's bridge): the inet table's cross-bridge
pass is keyed (bridge . address). The bridge table keeps a port from it only when the address
is a tenant's (taddr), when the port is tenanted, or when the port is unknown. A plain
container on the tenant's bridge sending to a plain member of the tenant's group on another
bridge matched none of those, and rode the pass through the cross-network drop.

Finding 2 (a hand-added grant in the bridge table goes unnoticed): CHECK and reconcile judged
the inet table's tenant passes (tcross) as grants, never the bridge table's: a `tpair` element
added by hand lets two tenants' frames through, a `tok` element a port route to another
tenant's address, and CHECK said nothing, reconcile kept them.

Finding 3 (an address written otherwise): tenancy took prevResult's addresses as written
(FD77:1:0:0::0002), the kernel lists them canonical (fd77:1::2): CHECK failed for ever, and
reconcile took the kernel's own pass for a surplus grant. Now canonical; a non-address is
error 7 (it went unvalidated into iptables' STAGE-2 rule text).

Finding 4 (a decision, documented): a tenant's published port is unreachable from a container
of another group (the tenant's replies are dropped by the bridge table's input rule, which runs
before conntrack could tell a reply); the README's tenant rows win over allowPublishedPorts
between groups, and say so. The outside and the tenant's group reach it.

Finding 5 (a plain neighbour steals a tenant's routed traffic): the bridge table judged what
ports send, never what the host sends out of a bridge. A neighbour without anti-spoofing (the
default of same-bridge) sending from the tenant's MAC makes the bridge deliver the host's
routed packets for the tenant (from its group on another bridge, the outside) to its own port.
Its sibling: a routed packet for another group's member whose MAC the bridge forgot is flooded
to every port, a tenant's included. The bridge output chain now keeps both to the group's ports.
"""

import pytest

from frames import datagram_arrives
from netlab import IP, addresses, eventually, sh

pytestmark = [pytest.mark.e2e, pytest.mark.beside]  # run beside the rest by make test


def by_args(group: str) -> dict:
    return {"cni": {"isolationGroup": group}}


def group_across_bridges(lab, backend: str):
    """The review's common setup: network A of isolationGroup g with c plain; network P, no
    group, with t (tenant g) and v plain: (A, P, c, t, v)."""
    A = lab.network(["bridge", "isolation"], isolation={"backend": backend, "isolationGroup": "g"})
    P = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    return A, P, lab.add(A), lab.add(P, args=by_args("g")), lab.add(P)


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_plain_neighbour_of_a_tenant_does_not_ride_its_groups_pass_across_bridges(lab, backend):
    """A: `same-bridge` in network group g, plain container c (effective group g).
    P: `same-bridge` in no group: t (tenant g: a per-container group g) and v (plain: no group).

    Expected, from the README's table: t -> c passes (one effective group g across bridges,
    one side a tenant); v -> c is dropped (P and A both isolating, no common group, no tenant
    involved: `to bridge D, both S and D isolating: dropped`), not even one way (a datagram
    with a sniffer at c). v's own control: it reaches its gateway."""
    A, P, c, t, v = group_across_bridges(lab, backend)

    for x in addresses(c):
        assert datagram_arrives(t.name, c.name, x), f"positive control: t's datagram to {x} arrives"
        assert lab.tcp(t.name, x), f"positive control: t reaches c at {x}"
        assert not datagram_arrives(v.name, c.name, x), f"v's datagram to {x} arrived through t's pass"
        assert not lab.tcp(v.name, x), f"v reached c at {x} through t's pass"
    assert lab.ping(v.name, P.gateway4) and lab.ping(v.name, P.gateway6), "positive control: v is up"


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_tenancy_grant_added_by_hand_is_named_by_check_and_removed_by_reconcile(lab, backend):
    """One `same-bridge` network: a and b (tenant t1), x (tenant t2). By the README, a reaches b
    and never x. Someone adds (a . x) and (x . a) to tpair and (a . x's IPv4) to tok by hand:
    frames a -> x now pass (the elements are grants: proven with packets), and so does a's
    packet routed to x's IPv4 through the gateway. Expected: CHECK fails (102) naming each,
    `isolation reconcile` removes them, a and x are blocked again, a still reaches b."""
    net = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    a, b = lab.add(net, args=by_args("t1")), lab.add(net, args=by_args("t1"))
    x = lab.add(net, args=by_args("t2"))
    table = "isolation" if backend == "nftables" else "isolation-iptables"
    pa, px = lab.host_port(a), lab.host_port(x)
    assert lab.blocked(a, x) and lab.tcp(a.name, b.ipv4) and lab.tcp(a.name, b.ipv6)
    assert all(rc == 0 for _, rc, _ in lab.check(a)), "CHECK agrees with ADD"

    lab.nft("add", "element", "bridge", table, "tpair", "{", f"{pa} . {px}, {px} . {pa}", "}")
    # (eventually: the neighbour entries the blocked probes left failed take a moment to retry)
    assert eventually(lambda: lab.tcp(a.name, x.ipv4) and lab.tcp(a.name, x.ipv6)), "the pairs are grants"
    lab.nft("add", "element", "bridge", table, "tok4", "{", f"{pa} . {x.ipv4}", "}")
    sh(IP, "route", "add", f"{x.ipv4}/32", "via", net.gateway4, netns=a.name)  # through the host now
    lab.nft("delete", "element", "bridge", table, "tpair", "{", f"{pa} . {px}, {px} . {pa}", "}")
    # one way (x's answer is bridged back, which the pairs no longer let through): a sniffer at x
    assert eventually(lambda: datagram_arrives(a.name, x.name, x.ipv4)), "routed through the host by tok4 alone"
    assert not lab.tcp(a.name, x.ipv6), "bridged IPv6 blocked again without the pairs"
    lab.nft("add", "element", "bridge", table, "tpair", "{", f"{pa} . {px}, {px} . {pa}", "}")

    out = next(out for kind, rc, out in lab.check(a) if kind == "isolation")
    assert out is not None and out["code"] == 102, out
    for named in (f"{pa} . {px}", f"{px} . {pa}", f"{pa} . {x.ipv4}"):
        assert named in out["details"], (named, out)
    assert lab.cli("reconcile").returncode == 0
    listing = lab.nft("list", "table", "bridge", table)
    assert f"{pa} . {px}" not in listing and f"{pa} . {x.ipv4}" not in listing, listing
    sh(IP, "route", "del", f"{x.ipv4}/32", netns=a.name)
    assert lab.blocked(a, x) and lab.tcp(a.name, b.ipv4) and lab.tcp(a.name, b.ipv6)
    assert all(rc == 0 for _, rc, _ in lab.check(a)), "CHECK agrees again"


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_tenant_added_again_with_another_address_leaves_nothing_naming_the_old_one(lab, backend):
    """A: network group g, c plain (g). P: no group, t (tenant g). The runtime ADDs t again with
    another address (its prevResult now says 10.77.2.99 and fd77:2::99, as after a re-IPAM):
    every pass, pair and guard element of t's old addresses must go (a later container given
    them would inherit t's grants), the new ones take their place (CHECK of c and t agree), and
    c still reaches nothing of P but t's group: the plain neighbour v stays unreachable."""
    A, P, c, t, v = group_across_bridges(lab, backend)
    old = (t.ipv4, t.ipv6)
    assert lab.tcp(c.name, t.ipv4) and lab.tcp(c.name, t.ipv6) and not lab.tcp(c.name, v.ipv4)
    prev = lab.cache[(P.name, t.id)]
    new = {"10.77.2.99": "10.77.2.99/24", "fd77:2::99": "fd77:2::99/64"}
    prev = {**prev, "ips": [{**ip, "address": new["10.77.2.99" if ":" not in ip["address"] else "fd77:2::99"]}
                            for ip in prev["ips"]]}
    entry = next(p for p in P.plugins if p["type"] == "isolation")
    conf = {"cniVersion": "1.0.0", "name": P.name, **entry, "args": t.args, "prevResult": prev}
    rc, out, err = lab.exec_plugin("isolation", "ADD", conf, lab._env(t))
    assert rc == 0, (out, err)
    lab.cache[(P.name, t.id)] = prev
    ours = lab.nft("list", "ruleset") + lab.save("ipv4") + lab.save("ipv6")
    stale = [line for line in ours.splitlines() if any(f"{a} " in line + " " or f"{a}/" in line or f"{a}," in line
                                                       for a in old)]
    assert stale == [], stale
    assert "10.77.2.99" in ours and "fd77:2::99" in ours, "the new addresses took their place"
    checks = [(x.name, out) for x in (c, t) for kind, rc, out in lab.check(x) if kind == "isolation" and rc != 0]
    assert checks == [], f"CHECK of isolation agrees (the bridge plugin's sees t's real address): {checks}"
    assert not lab.tcp(c.name, v.ipv4) and lab.tcp(c.name, P.gateway4), "v stays closed; c is up"


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_an_address_written_otherwise_in_prevresult_is_the_same_member(lab, backend):
    """Finding 3: tenancy took prevResult's addresses as written, where anti-spoofing and the
    kernel canonicalise them. A runtime whose prevResult writes c's IPv6 address in capitals
    with its zeros (FD77:1:0:0::0002, the same address) made CHECK miss the element for ever
    and reconcile remove the kernel's own (canonical) pass as surplus: t lost c over IPv6.
    A: network group g, c plain. P: no group, t (tenant g), v plain. Expected: after c is ADDed
    again with that prevResult, CHECK of c and t pass, reconcile changes nothing, t reaches c
    on both families, v does not."""
    A, P, c, t, v = group_across_bridges(lab, backend)
    prev = lab.cache[(A.name, c.id)]
    groups = c.ipv6.split("::")
    loud = groups[0].upper() + ":0:0::" + groups[1].zfill(4)  # fd77:1::2 -> FD77:1:0:0::0002
    assert str(__import__("ipaddress").ip_address(loud)) == c.ipv6, loud
    prev = {**prev, "ips": [{**ip, "address": f"{loud}/64" if ":" in ip["address"] else ip["address"]}
                            for ip in prev["ips"]]}
    entry = next(p for p in A.plugins if p["type"] == "isolation")
    conf = {"cniVersion": "1.0.0", "name": A.name, **entry, "prevResult": prev}
    rc, out, err = lab.exec_plugin("isolation", "ADD", conf, lab._env(c))
    assert rc == 0, (out, err)
    lab.cache[(A.name, c.id)] = prev
    checks = [(x.name, out) for x in (c, t) for kind, rc, out in lab.check(x) if kind == "isolation" and rc != 0]
    assert checks == [], checks
    assert lab.cli("reconcile").returncode == 0
    assert lab.tcp(t.name, c.ipv4) and lab.tcp(t.name, c.ipv6), "t, of c's group, reaches c"
    assert not lab.tcp(v.name, c.ipv4) and not lab.tcp(v.name, c.ipv6), "v, of none, does not"
    assert lab.ping(v.name, P.gateway6), "v is up (its gateway)"


PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}}
UPLINK = ("10.99.0.1", "fd99::1")  # the lab host's uplink addresses


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_tenants_published_port_serves_the_outside_and_its_group_not_another_group(lab, backend):
    """N: `same-bridge`, portmap, x (tenant t2) publishes TCP_PORT on host port 18090. Q:
    `same-bridge`, y plain and z (tenant t2). The README's tenant rows come before the
    allowPublishedPorts row: between containers of two groups the tenant rule wins, published
    port or not, while the outside and the group reach it. By hand: z's request is DNAT'd to x,
    x's reply is routed to z's address, and (x's port . z's address) is a tok pair (one group):
    it passes; y's reply is to an address of another group from a tenant's port: dropped."""
    from netlab import TCP_PORT

    N = lab.network(["bridge", PORTMAP, "isolation"], isolation={"backend": backend})
    Q = lab.network(["bridge", PORTMAP, "isolation"], isolation={"backend": backend})
    x = lab.add(N, args=by_args("t2"),
                port_mappings=[{"hostPort": 18090, "containerPort": TCP_PORT, "protocol": "tcp"}])
    y = lab.add(Q)
    z = lab.add(Q, args=by_args("t2"))
    assert lab.tcp(lab.outside, UPLINK[0], 18090), "positive control: the outside reaches x's published port"
    assert lab.tcp(z.name, UPLINK[0], 18090), "positive control: z, of x's group, reaches it too"
    assert not lab.tcp(y.name, UPLINK[0], 18090), "y, of another group, does not"
    assert not lab.tcp(y.name, x.ipv4), "nor x's own address"
    assert lab.ping(y.name, Q.gateway4), "y is up (its gateway)"


def stealing(lab, thief, victim_mac: str, seconds: float):
    """A thread in which `thief` keeps sending frames from `victim_mac` (a local experimental
    ethertype, broadcast): the bridge learns the victim's MAC on the thief's port."""
    import threading

    from frames import send_frames

    def run():
        end = __import__("time").monotonic() + seconds
        while __import__("time").monotonic() < end:
            send_frames(thief.name, "eth0", "ff:ff:ff:ff:ff:ff", victim_mac, 0x88B5, b"\0" * 46, 5)
            __import__("time").sleep(0.02)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_plain_neighbour_forging_a_tenants_mac_does_not_receive_its_routed_traffic(lab, backend):
    """A: network group g, c plain. P: no group, t (tenant g), v plain (no anti-spoofing, the
    default of same-bridge). c reaches t across bridges (the positive control: a datagram to
    t's address arrives at t). Then v sends frames from t's MAC: the bridge learns t's MAC on
    v's port, and the host's routed packets for t would leave by v's port. Expected (tenants
    are told apart by port, a packet for a tenant only ever reaches its group's ports): c's
    datagram to t never arrives at v."""
    from frames import mac_of

    A, P, c, t, v = group_across_bridges(lab, backend)
    for x in addresses(t):
        assert datagram_arrives(c.name, t.name, x), f"positive control: c's datagram to {x} reaches t"
    worker = stealing(lab, v, mac_of(t.name, "eth0"), 8)
    leaked = [x for x in addresses(t) if datagram_arrives(c.name, v.name, x)]
    worker.join()
    assert leaked == [], f"v received c's datagrams for t at {leaked}"


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_tenant_does_not_receive_another_groups_routed_traffic_when_the_bridge_floods_it(lab, backend):
    """A: `open`, c plain. P: `same-bridge`, no group, t (tenant g), m plain (no group). c
    reaches m (A does not isolate; the positive control: a datagram arrives at m). The bridge forgets m's MAC (its fdb entry deleted, as when it ages out) and the host
    floods c's next datagram for m to every port of P. Expected (frames reach a tenant's port
    only within its group): t, of group g, never sees it."""
    from frames import mac_of

    A = lab.network(["bridge", "isolation"], isolation={"backend": backend, "ingressPolicy": "open"})
    P = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    c = lab.add(A)
    t = lab.add(P, args=by_args("g"))
    m = lab.add(P)
    mac = mac_of(m.name, "eth0")
    for x in addresses(m):
        assert datagram_arrives(c.name, m.name, x), f"positive control: c's datagram to {x} reaches m"
    seen_at_t = []
    for x in addresses(m):
        sh("bridge", "fdb", "del", mac, "dev", lab.host_port(m), "master", netns=lab.host, check=False)
        if datagram_arrives(c.name, t.name, x, wait=1.0):
            seen_at_t.append(x)
    assert seen_at_t == [], f"t saw c's datagrams for m at {seen_at_t}"


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_tenant_reaches_no_plain_container_of_an_open_network(lab, backend):
    """The README's tenant table: "a tenant reaches no plain container of another group ...,
    nor one of an `open` network". A: `open`, c plain (no group). P: `same-bridge`, t (tenant
    g) and m plain. By hand: m -> c passes (A does not isolate: the positive control); t -> c
    is a routed packet from a tenant's port for a member address outside its group (maddr,
    no tok pair): dropped in the bridge table, not even one datagram arrives at c."""
    A = lab.network(["bridge", "isolation"], isolation={"backend": backend, "ingressPolicy": "open"})
    P = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    c = lab.add(A)
    t = lab.add(P, args=by_args("g"))
    m = lab.add(P)
    for x in addresses(c):
        assert datagram_arrives(m.name, c.name, x), f"positive control: m's datagram to {x} reaches c"
        assert not datagram_arrives(t.name, c.name, x), f"t's datagram to {x} reached c"
    assert lab.ping(t.name, P.gateway4) and lab.ping(t.name, P.gateway6), "t is up (its gateway)"


@pytest.mark.parametrize("bridge_nf", [0, 1])
@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_groups_pass_is_never_a_dnat_path_past_allow_published_ports_false(make_lab, backend, bridge_nf):
    """A: group g, `allowPublishedPorts: false`, c plain publishes UDP 18091 -> 9. P: no group,
    t (tenant g) and v plain. The bridge table guards the pass (P . c's address) by the
    destination a port wrote; v writes the host's address, portmap rewrites it to c's. By hand:
    v -> HOST:18091 is DNAT'd to c, from P into A, both isolating, A publishes nothing across
    networks: dropped; the pass is for packets addressed to c itself (t -> c: passes, the
    positive control), and the outside reaches the published port (a control too). With
    bridge-nf-call-iptables 1 the DNAT happens before the bridge table's input hook, which then
    sees c's address; with 0 only the inet pass's own condition keeps v out."""
    lab = make_lab(bridge_nf=bridge_nf)
    A = lab.network(["bridge", PORTMAP, "isolation"], isolation={
        "backend": backend, "isolationGroup": "g", "allowPublishedPorts": False})
    P = lab.network(["bridge", PORTMAP, "isolation"], isolation={"backend": backend})
    c = lab.add(A, port_mappings=[{"hostPort": 18091, "containerPort": 9, "protocol": "udp"}])
    t = lab.add(P, args=by_args("g"))
    v = lab.add(P)
    for host in UPLINK:
        assert datagram_arrives(lab.outside, c.name, host, port=18091), f"positive control: outside -> {host}:18091"
        assert not datagram_arrives(v.name, c.name, host, port=18091), f"v's datagram to {host}:18091 reached c"
    for x in addresses(c):
        assert datagram_arrives(t.name, c.name, x), f"positive control: t's datagram to {x} reaches c"
