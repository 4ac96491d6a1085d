"""Rules that clean themselves up: teardown by reference count, GC, registry-driven DEL.

After every DEL only the rules of bridges that still have attachments remain, the
survivors' traffic verdicts stay right, and after the last DEL the host's ruleset
(iptables-save, ip6tables-save, nft list ruleset) is byte-identical to before the
first ADD.
"""

import json
import random

import pytest

from netlab import on_the_same_bridge, sh

pytestmark = pytest.mark.e2e
BACKENDS = ["iptables", "nftables"]


def enforced_bridges(lab, backend: str) -> set[str]:
    """The bridges the host's rules isolate, read back from the kernel."""
    if backend == "iptables":
        found = set()
        for fam in ("ipv4", "ipv6"):
            for line in lab.save(fam).splitlines():
                words = line.split()
                if line.startswith("-A CNI-ISOLATION-STAGE-2 -o ") and "isolation-plugin" in line:
                    found.add((fam, words[3]))
        v4, v6 = {b for f, b in found if f == "ipv4"}, {b for f, b in found if f == "ipv6"}
        assert v4 == v6, f"families disagree: {v4} vs {v6}"
        return v4
    tables = lab.nft("list", "tables")
    if "table inet isolation" not in tables:
        return set()
    listing = json.loads(lab.nft("-j", "list", "set", "inet", "isolation", "isolated"))["nftables"]
    return set(next(o["set"] for o in listing if "set" in o).get("elem", []))


SPOOF_TABLE = {"nftables": "isolation", "iptables": "isolation-iptables"}


def guarded_ports(lab, backend: str) -> set[str]:
    """The ports under anti-spoofing (on by default for `isolated` networks)."""
    table = SPOOF_TABLE[backend]
    if f"table bridge {table}" not in lab.nft("list", "tables"):
        return set()
    listing = json.loads(lab.nft("-j", "list", "set", "bridge", table, "guarded"))["nftables"]
    return set(next(o["set"] for o in listing if "set" in o).get("elem", []))


def isolated_ports(lab) -> set[str]:
    """The ports of the host's bridges that carry the bridge-port isolation flag."""
    links = json.loads(sh("bridge", "-j", "-d", "link", "show", netns=lab.host).stdout or "[]")
    return {link["ifname"] for link in links if link.get("isolated")}


@pytest.mark.parametrize("backend", BACKENDS)
def test_teardown_by_reference_count(lab, backend):
    baseline = lab.ruleset()
    policies = ["same-bridge", "isolated", "same-bridge"]
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend, "ingressPolicy": p}) for p in policies]
    alive = [lab.add(n) for n in nets for _ in range(3)]
    seed = random.randrange(1 << 30)
    order = random.Random(seed).sample(alive, len(alive))
    for step, c in enumerate(order):
        assert all(rc == 0 for _, rc in lab.delete(c)), f"seed {seed}"
        alive.remove(c)
        used = {x.network.bridge for x in alive}
        assert enforced_bridges(lab, backend) == used, f"after DEL {step + 1} (seed {seed})"
        ports = {lab.host_port(x) for x in alive if x.network is nets[1]}
        assert guarded_ports(lab, backend) == ports, f"after DEL {step + 1} (seed {seed})"
        assert isolated_ports(lab) == ports, f"after DEL {step + 1} (seed {seed})"
        if len(alive) >= 2 and step % 2 == 0:  # the survivors keep their verdicts
            a, b = alive[0], alive[-1]
            same = a.network is b.network
            want = same and a.network.plugins[1]["ingressPolicy"] == "same-bridge"
            got = lab.reach([(a.name, b.ipv4), (a.name, b.ipv6)])
            assert all(ok == want for ok in got.values()), f"{got} want {want} (seed {seed})"
    assert lab.ruleset() == baseline, f"seed {seed}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_del_without_prev_result_or_netns_uses_the_registry(lab, backend):
    baseline = lab.ruleset()
    net = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    c = lab.add(net)
    assert enforced_bridges(lab, backend) == {net.bridge}
    assert lab.delete(c, with_prev=False, with_netns=False)[0] == ("isolation", 0)
    assert lab.delete(c, with_prev=False, with_netns=False)[0] == ("isolation", 0)  # repeated
    assert lab.ruleset() == baseline


def test_firewall_rules_survive_our_teardown(lab):
    firewall = {"type": "firewall", "backend": "iptables", "ingressPolicy": "same-bridge"}
    nets = [lab.network(["bridge", "isolation", firewall], isolation={"backend": "iptables"}) for _ in range(2)]
    cs = [lab.add(n) for n in nets]
    theirs = sorted(r for r in lab.save().splitlines() if "CNI firewall plugin rules (ingressPolicy" in r)
    assert len(theirs) == 7  # FORWARD jump, 2 bridges x 2 rules, 2 tails
    for c in cs:
        assert all(rc == 0 for _, rc in lab.delete(c))
    rules = lab.save().splitlines()
    assert sorted(r for r in rules if "CNI firewall plugin rules (ingressPolicy" in r) == theirs
    assert not [r for r in rules if "isolation-plugin" in r]


# Debian's upstream plugins stop at CNI 1.0.0, so the networks are 1.0.0 and GC, a 1.1.0
# verb, is sent to our plugin alone, as a 1.1.0 runtime would.
@pytest.mark.parametrize("backend", BACKENDS)
def test_gc_with_a_partial_valid_list(lab, backend):
    net_a = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    net_b = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    a1, a2, b1 = lab.add(net_a), lab.add(net_a), lab.add(net_b)

    def gc(valid):
        conf = {"cniVersion": "1.1.0", "name": net_a.name, "type": "isolation", "backend": backend,
                "cni.dev/valid-attachments": [{"containerID": c.id, "ifname": "eth0"} for c in valid]}
        return lab.exec_plugin("isolation", "GC", conf, {})

    assert gc([a1])[0] == 0  # a2 is forgotten; a1 still needs net A's rules
    assert enforced_bridges(lab, backend) == {net_a.bridge, net_b.bridge}
    checks = {c.id: [(out or {}).get("code", rc) for kind, rc, out in lab.check(c) if kind == "isolation"][0]
              for c in (a1, a2)}
    assert checks == {a1.id: 0, a2.id: 102}
    assert gc([])[0] == 0  # nothing of net A is valid any more: its rules go, net B's stay
    assert enforced_bridges(lab, backend) == {net_b.bridge}
    assert lab.reach([(b1.name, a1.ipv4)]) == {("icmp", b1.name, a1.ipv4): True, ("tcp", b1.name, a1.ipv4): True}


@pytest.mark.parametrize("backend", BACKENDS)
def test_gc_prunes_attachments_of_bridges_deleted_behind_our_back(lab, backend):
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend})
            for _ in range(2)]
    lab.add(nets[0])
    c2 = lab.add(nets[1])
    sh("ip", "link", "del", nets[0].bridge, netns=lab.host)
    conf = {"cniVersion": "1.1.0", "name": nets[1].name, "type": "isolation", "backend": backend,
            "cni.dev/valid-attachments": [{"containerID": c2.id, "ifname": "eth0"}]}
    assert lab.exec_plugin("isolation", "GC", conf, {})[0] == 0
    assert enforced_bridges(lab, backend) == {nets[1].bridge}


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_fails_for_an_unregistered_attachment(lab, backend):
    net = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    c1, c2 = lab.add(net), lab.add(net)
    lab.delete(c2)  # c1 keeps the bridge's rules in place, but c2 is no longer attached
    results = {c.id: [(rc, out) for kind, rc, out in lab.check(c) if kind == "isolation"][0] for c in (c1, c2)}
    assert results[c1.id][0] == 0
    rc, out = results[c2.id]
    assert rc != 0 and out["code"] == 102 and "not registered" in out["details"]


RELOADS = {
    "nftables": [("nft", "flush", "ruleset")],
    "iptables": [(t, *a) for t in ("iptables", "ip6tables") for a in (("-F",), ("-X",))],
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_next_add_restores_every_registered_network_after_a_firewall_reload(lab, backend):
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(2)]
    a, b = lab.add(nets[0]), lab.add(nets[1])
    cross = [(a.name, b.ipv4), (b.name, a.ipv6)]
    assert not any(lab.reach(cross).values())
    for argv in RELOADS[backend]:  # what a firewall reload does to rules it does not know
        sh(*argv, netns=lab.host)
    assert all(lab.reach(cross).values()), "precondition: the reload removed isolation"
    assert [rc for kind, rc, _ in lab.check(a) if kind == "isolation"] != [0]
    lab.add(nets[1])  # any ADD, on any network, re-applies what the registry holds
    assert not any(lab.reach(cross).values())
    assert all(rc == 0 for _, rc, _ in lab.check(a))


def test_add_rebuilds_a_missing_table_that_a_neighbour_on_its_bridge_needs(make_lab):
    """Two conflists on one bridge, one `isolated` (anti-spoofing by default): with `table
    bridge isolation` deleted by hand, an ADD on the `same-bridge` network must not take the
    add-only path (it would add to a table that is gone): it re-applies everything, and the
    isolated neighbours' anti-spoofing is back. The bridge is isolated as a whole: the
    newcomer's port gets the isolation flag too, and no frame passes between the ports."""
    lab = make_lab(bridge_nf=0)
    first = lab.network(["bridge", "isolation"], isolation={"ingressPolicy": "isolated", "backend": "nftables"})
    second = on_the_same_bridge(lab, first, {"type": "isolation", "backend": "nftables"})
    a1, a2 = lab.add(first), lab.add(first)
    sh("nft", "delete", "table", "bridge", "isolation", netns=lab.host)
    assert "table bridge isolation" not in lab.nft("list", "tables")
    assert [rc for kind, rc, _ in lab.check(a1) if kind == "isolation"] != [0]
    s = lab.add(second)
    assert guarded_ports(lab, "nftables") == {lab.host_port(a1), lab.host_port(a2)}
    assert isolated_ports(lab) == {lab.host_port(c) for c in (a1, a2, s)}
    got = lab.reach([(a1.name, a2.ipv4), (a1.name, a2.ipv6), (s.name, a1.ipv4), (s.name, a1.ipv6)])
    assert not any(got.values()), got
    assert all(rc == 0 for _, rc, _ in lab.check(a1))


def test_an_open_network_on_an_isolated_bridge_is_parted_from_its_containers(make_lab):
    """Two conflists on one bridge, one `isolated`, one `open`: the bridge is isolated as a
    whole (README), so the open container's port carries the isolation flag too and no frame
    passes between it and the isolated container. Without br_netfilter only the flag parts
    them; the gateway stays reachable (the bridge device is no port)."""
    lab = make_lab(bridge_nf=0)
    first = lab.network(["bridge", "isolation"], isolation={"ingressPolicy": "isolated", "backend": "nftables"})
    second = on_the_same_bridge(lab, first, {"type": "isolation", "ingressPolicy": "open", "backend": "nftables"})
    a = lab.add(first)
    s = lab.add(second)
    assert lab.ping(s.name, first.gateway4), "positive control: the open container reaches its gateway"
    got = lab.reach([(s.name, a.ipv4), (s.name, a.ipv6), (a.name, s.ipv4)])
    assert not any(got.values()), f"the open container reaches the isolated one: {got}"
    assert lab.host_port(s) in isolated_ports(lab)
