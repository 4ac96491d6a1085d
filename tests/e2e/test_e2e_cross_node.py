"""Cross-node isolation (README, "Across nodes"): two "node" host namespaces routed to each
other over a veth, each with a bridge of network A and one of network B. Each network has
its own range across the nodes (A 10.80.0.0/16, B 10.81.0.0/16, the cluster 10.80.0.0/15)
and isolates with `denyEgress` of the cluster range plus `allowEgress` of its own range:
A to A across nodes reaches, A to B across nodes is blocked (on the sending node), and a
reply to a connection opened from inside the denied range passes. Both backends."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from netlab import IP, TCP_PORT, sh, tcp_connect

pytestmark = pytest.mark.e2e

CLUSTER = "10.80.0.0/15"
RANGES = {"A": "10.80", "B": "10.81"}


def network(lab, name: str, node: int, backend: str):
    subnet = f"{RANGES[name]}.{node}.0/24"
    bridge = {"type": "bridge", "bridge": f"{lab.prefix}{name.lower()}", "isGateway": True, "ipMasq": False,
              "ipam": {"type": "host-local", "dataDir": f"{lab.tmp}/ipam", "ranges": [[{"subnet": subnet}]],
                       "routes": [{"dst": "0.0.0.0/0"}]}}
    isolation = {"type": "isolation", "backend": backend, "denyEgress": [CLUSTER],
                 "allowEgress": [{"cidr": f"{RANGES[name]}.0.0/16"}]}
    return lab.network([bridge, isolation])


def link_nodes(n1, n2) -> None:
    """A veth between the two node namespaces, and routes to each other's container ranges."""
    sh(IP, "link", "add", f"{n1.prefix}x", "netns", n1.host, "type", "veth", "peer", "name", f"{n2.prefix}x",
       "netns", n2.host)
    for lab, me, peer, node in ((n1, "10.66.0.1", "10.66.0.2", 2), (n2, "10.66.0.2", "10.66.0.1", 1)):
        sh(IP, "addr", "add", f"{me}/30", "dev", f"{lab.prefix}x", netns=lab.host)
        sh(IP, "link", "set", f"{lab.prefix}x", "up", netns=lab.host)
        for r in RANGES.values():
            sh(IP, "route", "add", f"{r}.{node}.0/24", "via", peer, netns=lab.host)


def tcp_from(netns: str, src: str, dst: str) -> bool:
    """TCP to dst:8080 from the address src of netns (the host's own, not the routed one)."""
    return tcp_connect(netns, dst, TCP_PORT, 2.0, source=src)


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_networks_stay_apart_across_routed_nodes(make_lab, backend):
    n1, n2 = make_lab(), make_lab()
    link_nodes(n1, n2)
    a1, b1 = n1.add(network(n1, "A", 1, backend)), n1.add(network(n1, "B", 1, backend))
    a2, b2 = n2.add(network(n2, "A", 2, backend)), n2.add(network(n2, "B", 2, backend))
    want = {
        ("a1 -> a2", a1.name, a2.ipv4): True,   # one network across nodes
        ("a2 -> a1", a2.name, a1.ipv4): True,
        ("b1 -> b2", b1.name, b2.ipv4): True,
        ("a1 -> b2", a1.name, b2.ipv4): False,  # another network on another node
        ("b1 -> a2", b1.name, a2.ipv4): False,
        ("b2 -> a1", b2.name, a1.ipv4): False,
        ("a2 -> b1", a2.name, b1.ipv4): False,
        ("a1 -> node2's B gateway", a1.name, f"{RANGES['B']}.2.1"): False,
    }
    with ThreadPoolExecutor(max_workers=len(want)) as pool:  # the blocked ones each wait for a timeout
        got = dict(zip(want, pool.map(lambda probe: n1.tcp(probe[1], probe[2]), want)))
    wrong = {probe[0]: reached for probe, reached in got.items() if reached != want[probe]}
    assert not wrong, f"{backend}: reached or not, contrary to want: {wrong}"
    # A reply leaving A toward the denied range passes: node 2 opens from its B gateway.
    assert tcp_from(n2.host, f"{RANGES['B']}.2.1", a1.ipv4), f"{backend}: a reply from a1 was dropped"
    for c in (a1, b1):
        assert all(rc == 0 for _, rc, _ in n1.check(c))
