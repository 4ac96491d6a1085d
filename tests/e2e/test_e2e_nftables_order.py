"""A drop in our nftables table is final whatever other tables accept.

Each case puts, in the host namespace, rules that accept everything our policy must
drop, then checks with real traffic that cross-bridge traffic stays blocked while
same-bridge traffic and the outside keep working.
"""


import pytest

from netlab import sh

pytestmark = pytest.mark.e2e
NFT = {"backend": "nftables"}


def verdicts(lab, a1, a2, b1) -> list[str]:
    want = {(a1.name, a2.ipv4): True, (a1.name, a2.ipv6): True, (a1.name, "10.99.0.2"): True,
            (a1.name, b1.ipv4): False, (a1.name, b1.ipv6): False,
            (b1.name, a1.ipv4): False, (b1.name, a1.ipv6): False}
    return [f"{k} {s} -> {d}: expected {'reach' if want[(s, d)] else 'blocked'}"
            for (k, s, d), ok in lab.reach(list(want)).items() if ok != want[(s, d)]]


def two_networks(lab, chain=("bridge", "isolation")):
    nets = [lab.network(list(chain), isolation=NFT) for _ in range(2)]
    a1, a2, b1 = lab.add(nets[0]), lab.add(nets[0]), lab.add(nets[1])
    return nets, a1, a2, b1


def test_docker_like_forward_policy_drop_with_accepts(lab):
    """iptables-nft FORWARD policy DROP, then ACCEPT for everything entering or leaving each bridge."""
    nets, a1, a2, b1 = two_networks(lab)
    for fam in ("iptables", "ip6tables"):
        sh(fam, "-P", "FORWARD", "DROP", netns=lab.host)
        for n in nets:
            sh(fam, "-A", "FORWARD", "-i", n.bridge, "-j", "ACCEPT", netns=lab.host)
            sh(fam, "-A", "FORWARD", "-o", n.bridge, "-j", "ACCEPT", netns=lab.host)
    assert verdicts(lab, a1, a2, b1) == []


def test_iptables_legacy_accepts(lab):
    nets, a1, a2, b1 = two_networks(lab)
    for fam in ("iptables-legacy", "ip6tables-legacy"):
        sh(fam, "-I", "FORWARD", "1", "-j", "ACCEPT", netns=lab.host)
    assert "-A FORWARD -j ACCEPT" in sh("iptables-legacy-save", netns=lab.host).stdout
    assert verdicts(lab, a1, a2, b1) == []


def test_another_nftables_table_accepting_first(lab):
    """A firewalld-like inet table hooked earlier than ours, accepting everything."""
    nets, a1, a2, b1 = two_networks(lab)
    sh("nft", "-f", "-", netns=lab.host,
       input="table inet other {\n chain allow_all {\n  type filter hook forward priority -300; policy accept;\n  accept\n }\n}\n")
    assert verdicts(lab, a1, a2, b1) == []


@pytest.mark.parametrize("chain", [("bridge", "firewall", "isolation"), ("bridge", "isolation", "firewall")])
def test_firewall_plugin_either_side(lab, chain):
    nets, a1, a2, b1 = two_networks(lab, chain)
    assert "CNI-FORWARD" in lab.save(), "precondition: the firewall plugin's ACCEPT chain is in place"
    assert verdicts(lab, a1, a2, b1) == []
