"""Tenants: a per-container isolationGroup from the runtime's CNI args (issue 21 item 3).

Two networks, each on its own bridge, both `same-bridge` and in the network-level
isolationGroup "g" (so the bridges reach each other, and only the containers' own groups
decide). Each container brings its tenant:

    bridge 1:  a1  t1 (CNI_ARGS ISOLATION_GROUP=t1)
               a2  t1 (args.cni.isolationGroup)
               x   t2 (CNI_ARGS)
               p   t2 (args.cni says t2, CNI_ARGS says t1: args.cni wins)
    bridge 2:  y   t1 (CNI_ARGS)
               z   t2 (args.cni)

Expected, from the definition ("a container's own group replaces its network's
isolationGroup for that attachment"): two containers reach each other exactly when their
tenants are equal, on one bridge or across the two; p behaves as t2. Frames between
tenants on one bridge are dropped by port in the bridge family (any frame: IP, ARP), and
counted as `cross-tenant` for the bridge they came from.
"""

import itertools
import socket

import pytest

from frames import ETH_P_IP, datagram_arrives, drop_counts, listener, seen, echo_request, mac_of, send_frames, settled_counts, with_header_checksum
from explaining import disagreements, explain, reach_keys
from netlab import IP, addresses, eventually, sh

pytestmark = [pytest.mark.e2e, pytest.mark.beside]  # run beside the rest by make test, to keep the suite under 30 minutes

BY_CNI_ARGS = "IgnoreUnknown=1;ISOLATION_GROUP={}"


def by_args(group: str) -> dict:
    return {"cni": {"isolationGroup": group}}


def tenants(lab, backend):
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend, "isolationGroup": "g"})
            for _ in range(2)]
    one, two = nets
    cs = {
        "a1": (lab.add(one, cni_args=BY_CNI_ARGS.format("t1")), "t1"),
        "a2": (lab.add(one, args=by_args("t1")), "t1"),
        "x": (lab.add(one, cni_args=BY_CNI_ARGS.format("t2")), "t2"),
        "p": (lab.add(one, cni_args=BY_CNI_ARGS.format("t1"), args=by_args("t2")), "t2"),
        "y": (lab.add(two, cni_args=BY_CNI_ARGS.format("t1")), "t1"),
        "z": (lab.add(two, args=by_args("t2")), "t2"),
    }
    return nets, cs


def frames_dropped(lab, src, dst, bridge, attempts: int = 3) -> int:
    """How many of 5 IPv4 and 5 IPv6 echo requests (src's own MAC and addresses, unicast to dst's
    MAC) raise `bridge`'s cross-tenant counter; their ICMP checksums are zero, so a receiver drops
    them silently and nothing answers. The containers' own multicast (neighbour discovery, MLD)
    between tenants is dropped and counted too, at times of its own: a window in which
    anything else changed the counters is measured again."""
    own, to = mac_of(src.name, "eth0"), mac_of(dst.name, "eth0")
    for _ in range(attempts):
        before = settled_counts(lab, quiet=3.0, deadline=60)
        for src_ip, dst_ip in ((src.ipv4, dst.ipv4), (src.ipv6, dst.ipv6)):
            kind, packet = echo_request(src_ip, dst_ip)
            packet = with_header_checksum(packet) if kind == ETH_P_IP else packet
            send_frames(src.name, "eth0", to, own, kind, packet, count=5)
        after = drop_counts(lab)
        if settled_counts(lab, quiet=3.0, deadline=60) == after:  # nothing else came in the window
            assert {k: v for k, v in after.items() if k != (bridge, "cross-tenant")} == {
                k: v for k, v in before.items() if k != (bridge, "cross-tenant")}, "no other reason, no other bridge"
            return after[(bridge, "cross-tenant")] - before[(bridge, "cross-tenant")]
    raise AssertionError("the counters never stayed quiet around the frames")


def wrong_verdicts(lab, cs) -> list[str]:
    want = {}
    for (s, (src, ts)), (d, (dst, td)) in itertools.permutations(cs.items(), 2):
        for addr in addresses(dst):
            want[(src.name, addr)] = (ts == td, f"{s}({ts}) -> {d}({td}) {addr}")
    got = lab.reach(list(want))
    return [f"{kind} {want[(s, d)][1]}: expected {'reach' if want[(s, d)][0] else 'blocked'}"
            for (kind, s, d), ok in got.items() if ok != want[(s, d)][0]], got


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_tenants_on_one_bridge_and_across_two(lab, backend):
    (one, two), cs = tenants(lab, backend)
    wrong, got = wrong_verdicts(lab, cs)
    assert not wrong, "\n".join(wrong)
    assert all(rc == 0 for c, _ in cs.values() for _, rc, _ in lab.check(c)), "CHECK agrees with what ADD made"
    # explain, from the registry and from the kernel (--check), agrees with every probe; a
    # drop between two of these containers can only be the tenants' (the networks share "g")
    answers, rc = explain(lab, list(reach_keys(got)), check=True)
    assert rc == 0 and not disagreements(reach_keys(got), answers), disagreements(reach_keys(got), answers)
    assert {a["reason"] for a in answers.values() if a["verdict"] == "drop"} == {"cross-tenant"}

    # raw frames on bridge 1 (every MAC is learned by now: the probes above): echo requests
    # from a1's own MAC and addresses, unicast to a2's MAC (its own tenant) and to x's (another)
    a1, a2, x = cs["a1"][0], cs["a2"][0], cs["x"][0]
    assert frames_dropped(lab, a1, a2, one.bridge) == 0
    assert frames_dropped(lab, a1, x, one.bridge) == 5 + 5, "5 IPv4 and 5 IPv6 frames, each dropped once"
    # a broadcast ARP request, flooded to every other port of bridge 1: a2 (t1) sees it, x and
    # p (t2) do not (what it asks is unique to this probe)
    ears = {name: listener(cs[name][0].name) for name in ("a2", "x", "p")}
    lab.arp_request(a1.name, a1.ipv4, "10.77.1.251")
    heard = {name: seen(sock, socket.inet_aton("10.77.1.251")) for name, sock in ears.items()}
    assert heard == {"a2": True, "x": False, "p": False}

    # the way through the host: a1 routes x's and a2's addresses via the gateway (one bridge,
    # hairpinned by the host) - the same verdicts as bridged
    for dst in (a2, x):
        sh(IP, "route", "add", f"{dst.ipv4}/32", "via", one.gateway4, netns=a1.name)
        sh(IP, "-6", "route", "add", f"{dst.ipv6}/128", "via", one.gateway6, netns=a1.name)
    got = lab.reach([(a1.name, addr) for dst in (a2, x) for addr in addresses(dst)])
    assert got == {(k, a1.name, addr): dst is a2 for dst in (a2, x) for addr in addresses(dst) for k in ("icmp", "tcp")}

    # teardown: nothing of ours stays
    for c, _ in cs.values():
        assert all(rc == 0 for _, rc in lab.delete(c))
    tables = lab.nft("list", "tables")
    assert "isolation" not in tables, tables
    for net in (one, two):
        assert lab.ours_mentioning(net.bridge) == []


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_tenant_leaving_takes_its_elements_and_the_others_keep_theirs(lab, backend):
    net = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    a = lab.add(net, cni_args=BY_CNI_ARGS.format("t1"))
    b = lab.add(net, cni_args=BY_CNI_ARGS.format("t1"))
    x = lab.add(net, args=by_args("t2"))
    assert lab.blocked(a, x) and lab.tcp(a.name, b.ipv4) and lab.tcp(a.name, b.ipv6)
    lab.delete(x)
    port = lab.host_port(x)
    assert port not in lab.nft("list", "table", "bridge", "isolation" if backend == "nftables" else "isolation-iptables")
    assert lab.tcp(a.name, b.ipv4) and lab.tcp(b.name, a.ipv6)
    c = lab.add(net, cni_args=BY_CNI_ARGS.format("t2"))
    assert lab.blocked(a, c) and lab.tcp(a.name, b.ipv4)


@pytest.mark.parametrize("how", [{"cni_args": "IgnoreUnknown=1;ISOLATION_GROUP=-bad"},
                                 {"cni_args": "ISOLATION_GROUP=t1;ISOLATION_GROUP=t2"},
                                 {"args": {"cni": {"isolationGroup": "two words"}}},
                                 {"args": {"cni": {"isolationGroup": 7}}}])
def test_a_malformed_group_is_error_7_and_changes_nothing(lab, how):
    net = lab.network(["bridge"])
    c = lab.add(net)
    conf = lab.isolation_conf(c, backend="nftables")
    if "args" in how:
        conf["args"] = how["args"]
    env = lab._env(c) | ({"CNI_ARGS": how["cni_args"]} if "cni_args" in how else {})
    before = lab.ruleset()
    rc, out, _ = lab.exec_plugin("isolation", "ADD", conf, env)
    assert rc != 0 and out["code"] == 7 and ("ISOLATION_GROUP" in out["msg"] or "isolationGroup" in out["msg"]), out
    assert lab.ruleset() == before
    # the positive control: the same ADD with a well-formed group goes through
    rc, out, _ = lab.exec_plugin("isolation", "ADD", conf | {"args": by_args("t1")}, lab._env(c))
    assert rc == 0, out


def test_unknown_cni_args_keys_are_ignored_and_antispoofing_false_is_refused(lab):
    net = lab.network(["bridge"])
    c = lab.add(net)
    # a group name no lab name can contain (lab prefixes are t + hex: "t1" may be one's start)
    env = lab._env(c) | {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web;ISOLATION_GROUP=zq-tenant;odd"}
    rc, out, err = lab.exec_plugin("isolation", "ADD", lab.isolation_conf(c, backend="nftables"), env)
    assert rc == 0, (out, err)
    assert eventually(lambda: "zq-tenant" not in lab.nft("list", "ruleset")), "groups are not rule names"
    rc, out, _ = lab.exec_plugin("isolation", "ADD", lab.isolation_conf(c, backend="nftables", antiSpoofing=False),
                                 env)
    assert rc != 0 and out["code"] == 7 and "antiSpoofing" in out["msg"], out
    assert drop_counts(lab)[(net.bridge, "cross-tenant")] == 0


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_cleanup_of_one_bridge_takes_its_ports_tenancy_and_keeps_the_others(lab, backend):
    baseline = lab.ruleset()
    one, two = (lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(2))
    lab.add(one, cni_args=BY_CNI_ARGS.format("t1"))
    lab.add(one, args=by_args("t2"))
    b = lab.add(two, cni_args=BY_CNI_ARGS.format("t1"))
    y = lab.add(two, cni_args=BY_CNI_ARGS.format("t1"))
    z = lab.add(two, args=by_args("t2"))
    table = "isolation" if backend == "nftables" else "isolation-iptables"
    ports = [lab.host_port(c) for c in one.containers]

    def passes() -> str:  # t1 is on both bridges (no network group): its passes between them
        return "".join(lab.nft("list", "set", "inet", "isolation", f"tcross{v}") for v in (4, 6))

    if backend == "nftables":
        assert one.bridge in passes() and two.bridge in passes()
    proc = lab.cli("cleanup", "--bridge", one.bridge)
    assert proc.returncode == 0, proc.stderr
    left = lab.nft("list", "table", "bridge", table)
    assert not [p for p in ports if p in left], left
    if backend == "nftables":
        assert one.bridge not in passes(), "the passes out of the bridge went with it"
    else:
        assert lab.ours_mentioning(one.bridge) == []
    assert lab.blocked(b, z) and lab.tcp(b.name, y.ipv4) and lab.tcp(y.name, b.ipv6), "bridge 2's tenants as before"
    assert lab.cli("cleanup").returncode == 0
    assert lab.ruleset() == baseline


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_container_without_tenant_added_later_still_meets_the_tenants_rule(lab, backend):
    """Networks 1 and 2 share the network group g; a (t1) on bridge 1 first, then v (no tenant,
    so g) on bridge 1 and u (g) on bridge 2: u reaches v (g and g), not a (g is not t1), and
    neither does v on a's own bridge."""
    one, two = (lab.network(["bridge", "isolation"], isolation={"backend": backend, "isolationGroup": "g"})
                for _ in range(2))
    a = lab.add(one, cni_args=BY_CNI_ARGS.format("t1"))
    v = lab.add(one)
    u = lab.add(two)
    got = lab.reach([(u.name, addr) for c in (a, v) for addr in addresses(c)] + [(v.name, addr) for addr in addresses(a)])
    assert got == {(k, src, addr): c is v for c, src in ((a, u.name), (v, u.name), (a, v.name))
                   for addr in addresses(c) for k in ("icmp", "tcp")}


def one_way(lab, src, dst_netns: str, addr: str, via: str | None = None) -> bool:
    """A datagram from container `src` reaches `dst_netns` (routed via `via`, the gateway of
    src's own bridge, when given: through the host although both are on one bridge)."""
    if via is not None:
        sh(IP, *(["-6"] if ":" in addr else []), "route", "replace", f"{addr}/{128 if ':' in addr else 32}",
           "via", via, netns=src.name)
    return datagram_arrives(src.name, dst_netns, addr)


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_one_tenant_across_bridges_without_a_network_group_and_no_one_way_leak(lab, backend):
    """Networks A and B are `same-bridge` in the network group g; P is `same-bridge` in none.

        A:  c   no tenant (g)
        B:  ty  t1          tg  tenant g       cb  no tenant (g)       z  t2
        P:  a   t1          and an uplink: a veth plugged into P's bridge by hand, no CNI ADD

    Expected, from the definition (one effective group reaches itself across bridges, any two
    different ones never; at least one side a tenant): a <-> ty (t1, across P and B although
    they share no network group); a <-> z, a -> c blocked (t1 is neither t2 nor g); ty -> c
    (t1 to g, on a peer bridge) and ty -> cb (t1 to g, its own bridge, routed via the gateway)
    never arrive, not even one way, while tg and cb (both g) reach c, and tg reaches cb through
    the gateway; the uplink on P reaches nothing of t1 on B through t1's pass, while a does."""
    A, B, P = (lab.network(["bridge", "isolation"], isolation={"backend": backend, **group})
               for group in ({"isolationGroup": "g"}, {"isolationGroup": "g"}, {}))
    c = lab.add(A)
    ty = lab.add(B, cni_args=BY_CNI_ARGS.format("t1"))
    tg = lab.add(B, args=by_args("g"))
    cb = lab.add(B)
    z = lab.add(B, args=by_args("t2"))
    a = lab.add(P, cni_args=BY_CNI_ARGS.format("t1"))

    # ICMP and TCP, IPv4 and IPv6, both ways where it matters
    want = {(a.name, x): True for x in addresses(ty)} | {(ty.name, x): True for x in addresses(a)}
    want |= {(a.name, x): False for x in addresses(z) + addresses(c)} | {(z.name, x): False for x in addresses(a)}
    got = lab.reach(list(want))
    assert got == {(k, s, x): ok for (s, x), ok in want.items() for k in ("icmp", "tcp")}

    # the one-way leaks, with a sniffer at the target: a peer bridge's plain container, and a
    # plain container of the tenant's own bridge through the gateway; controls of group g beside
    udp = {}
    for src, ok in ((ty, False), (tg, True), (cb, True)):
        for x in addresses(c):
            udp[("udp", src.name, x, 9)] = (one_way(lab, src, c.name, x), ok)
    for src, ok in ((ty, False), (tg, True)):
        for x, gw in ((cb.ipv4, B.gateway4), (cb.ipv6, B.gateway6)):
            udp[("udp", src.name, x, 9)] = (one_way(lab, src, cb.name, x, via=gw), ok)
    assert {k: v[0] for k, v in udp.items()} == {k: v[1] for k, v in udp.items()}

    # an uplink enslaved to P cannot use t1's pass into B; a, t1's own port on P, can (ty's
    # listener answers TCP: the control above)
    up = lab.stranger(P, ipv6=True)
    for x in addresses(ty):
        assert not datagram_arrives(up, ty.name, x), f"the uplink's datagram to {x} arrived"
        assert not lab.tcp(up, x)
        assert datagram_arrives(a.name, ty.name, x), f"a's datagram to {x} did not arrive"

    # explain, from the registry and from the kernel, agrees with every packet from a container
    probes = reach_keys(got) | {k: v[0] for k, v in udp.items()}
    answers, rc = explain(lab, list(probes), check=True)
    assert rc == 0 and not disagreements(probes, answers), disagreements(probes, answers)
    assert {a["reason"] for a in answers.values() if a["verdict"] == "drop"} == {"cross-tenant"}
    failed = [(x.name, out) for x in (c, ty, tg, cb, z, a) for _, rc, out in lab.check(x) if rc != 0]
    assert not failed, f"CHECK agrees with ADD: {failed}"

    # t1's IPv4 pass from P to ty gone from the kernel: a no longer reaches ty there (IPv6 still
    # does), CHECK names what is missing, `isolation reconcile` puts it back
    if backend == "nftables":
        lab.nft("delete", "element", "inet", "isolation", "tcross4", "{", f"{P.bridge} . {ty.ipv4}", "}")
        missing = f"{P.bridge} . {ty.ipv4} is not in set inet isolation tcross4"
    else:
        line = next(r for r in lab.save().splitlines() if f"-d {ty.ipv4}/32 -i {P.bridge} -o {B.bridge}" in r)
        sh("iptables", "-D", *line.split()[1:], netns=lab.host)
        missing = f"-d {ty.ipv4}/32 -i {P.bridge} -o {B.bridge} -m conntrack ! --ctstate DNAT -j RETURN"
    assert not lab.tcp(a.name, ty.ipv4) and lab.tcp(a.name, ty.ipv6)
    out = next(out for kind, rc, out in lab.check(a) if kind == "isolation")
    assert out is not None and out["code"] == 102 and missing in out["details"], out
    assert lab.cli("reconcile").returncode == 0
    assert lab.tcp(a.name, ty.ipv4) and all(rc == 0 for _, rc, _ in lab.check(a))

    # teardown: nothing of ours stays
    for x in (c, ty, tg, cb, z, a):
        assert all(rc == 0 for _, rc in lab.delete(x))
    assert "isolation" not in lab.nft("list", "tables")
    for net in (A, B, P):
        assert lab.ours_mentioning(net.bridge) == []
