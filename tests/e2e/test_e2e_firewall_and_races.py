"""Living with the firewall plugin, and with ourselves running in parallel."""

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from netlab import firewall_shared_networks, sh

pytestmark = pytest.mark.e2e


def blocked_both_ways(lab, a, b) -> list[str]:
    probes = [(a.name, addr) for addr in (b.ipv4, b.ipv6)] + [(b.name, addr) for addr in (a.ipv4, a.ipv6)]
    return [f"{kind} {src} -> {dst}" for (kind, src, dst), ok in lab.reach(probes).items() if ok]


def test_firewall_after_us_on_its_first_run_cannot_open_a_hole(lab):
    """`firewall` chained after us inserts its per-container ACCEPT chain above our jump.

    Network 1 has no firewall plugin; network 2's first container is the first time
    `firewall` ever runs on this host, so nothing of ours runs after it. Its
    `-s IP -j ACCEPT` must still not let that container into network 1.
    """
    ipt = {"backend": "iptables"}
    net1 = lab.network(["bridge", "isolation"], isolation=ipt)
    net2 = lab.network(["bridge", "isolation", "firewall"], isolation=ipt)
    c1, c2 = lab.add(net1), lab.add(net2)
    forward = [r for r in lab.save().splitlines() if r.startswith("-A FORWARD")]
    assert forward[0].endswith("-j CNI-FORWARD"), "precondition: firewall's jump is now above ours"
    assert blocked_both_ways(lab, c1, c2) == []
    assert all(rc == 0 for _, rc, _ in lab.check(c2))


@pytest.mark.parametrize("order", ["firewall-first", "isolation-first"])
def test_sharing_chains_with_firewall_ingress_policy(lab, order):
    a, b = firewall_shared_networks(lab, order)
    assert blocked_both_ways(lab, a, b) == []
    for fam in ("ipv4", "ipv6"):
        rules = [r for r in lab.save(fam).splitlines() if r.startswith("-A CNI-ISOLATION")]
        theirs = [r for r in rules if "CNI firewall plugin rules" in r]
        assert len(theirs) == 6, f"firewall's own rules must stay intact: {theirs}"  # 2 bridges x 2 + 2 tails
        if order == "firewall-first":
            ours = [r for r in rules if "isolation-plugin" in r]
            assert ours == [], f"we must not duplicate rules firewall already made: {ours}"
    for c in (a, b):
        assert all(rc == 0 for _, rc, _ in lab.check(c))


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_parallel_adds_leave_exactly_one_rule_each(lab, backend):
    """16 ADDs at once over 4 bridges: every one succeeds, no rule is duplicated."""
    nets = [lab.network(["bridge"]) for _ in range(4)]
    containers = [lab.add(n) for n in nets for _ in range(4)]

    def add(c):
        prev = lab.cache[(c.network.name, c.id)]
        conf = {"cniVersion": "1.0.0", "name": c.network.name, "type": "isolation", "prevResult": prev,
                "backend": backend}
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": c.id, "CNI_NETNS": f"/run/netns/{c.name}",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
        return subprocess.run(lab.isolation_argv(), input=json.dumps(conf), capture_output=True, text=True, env=env)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(add, containers))
    assert [r.returncode for r in results] == [0] * 16, [r.stdout for r in results if r.returncode]
    if backend == "iptables":
        for fam in ("ipv4", "ipv6"):
            rules = [r for r in lab.save(fam).splitlines() if r.startswith("-A ")]
            assert len(rules) == len(set(rules)), f"duplicate rules in {fam}"
            for n in nets:
                assert sum(f"-o {n.bridge} " in r and r.endswith("-j DROP") for r in rules) == 1
    else:
        table = json.loads(sh("nft", "-j", "list", "table", "inet", "isolation", netns=lab.host).stdout)["nftables"]
        # forward (12): intra drop, self return, internal out and in, direct jump, egress vmap,
        # published (original, reply), peers, tenant group passes (IPv4, IPv6), drop; input (3):
        # neighbour discovery, egress and
        # host vmaps; direct (5): managed, trusted, replies, published, drop; the drop chains
        # (20): cross-network, intra-bridge, egress-deny, host-access 3 each (log vmap, counter
        # map, counter drop), internal 5 (two log vmaps, two counter maps, counter drop),
        # direct-access 3 (log vmap, counter map, counter drop)
        assert sum("rule" in o for o in table) == 40, "the documented 40 rules, however many bridges"
        assert not any(n.bridge in o.get("chain", {}).get("name", "") for o in table for n in nets)
        isolated = next(o["set"] for o in table if "set" in o and o["set"]["name"] == "isolated")
        assert sorted(isolated["elem"]) == sorted(n.bridge for n in nets)
    a, b = containers[0], containers[-1]
    assert blocked_both_ways(lab, a, b) == []
