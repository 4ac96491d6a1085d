"""allowPublishedPorts: a port published with the real portmap plugin stays reachable across
isolation, while the container's own address does not, on both backends.

Network A is `isolated` and publishes container a's TCP 8080 on host port 18080; network
B is `same-bridge`. Expected, written from the definition of the key:
  from b (network B) to HOST:18080          reach iff allowPublishedPorts
  from a2 (a's neighbour on the isolated A) to HOST:18080  never (nothing passes inside A)
  from outside to HOST:18080                 always (no isolated bridge on the way in)
  from b or a2 to a's own address:8080       never
"""

from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.e2e
PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}}
PUBLISHED = [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]
HOST = ("10.99.0.1", "fd99::1")  # the host's uplink addresses in the lab


@pytest.mark.parametrize("bridge_nf", [0, 1])
@pytest.mark.parametrize("allow", [True, False])
@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_published_ports_across_isolation(make_lab, backend, allow, bridge_nf):
    lab = make_lab(bridge_nf=bridge_nf)
    conf = {"backend": backend, "allowPublishedPorts": allow}
    net_a = lab.network(["bridge", PORTMAP, "isolation"], isolation={**conf, "ingressPolicy": "isolated"})
    net_b = lab.network(["bridge", PORTMAP, "isolation"], isolation=conf)
    a = lab.add(net_a, port_mappings=PUBLISHED)
    a2, b = lab.add(net_a), lab.add(net_b)

    want = {
        (b.name, HOST[0], 18080): allow,
        (b.name, HOST[1], 18080): allow,
        (a2.name, HOST[0], 18080): False,
        (lab.outside, HOST[0], 18080): True,
        (lab.outside, HOST[1], 18080): True,
        (b.name, a.ipv4, 8080): False,
        (b.name, a.ipv6, 8080): False,
        (a2.name, a.ipv4, 8080): False,
    }
    with ThreadPoolExecutor(max_workers=len(want)) as pool:
        got = dict(zip(want, pool.map(lambda k: lab.tcp(*k), want)))
    wrong = [f"{src} -> [{addr}]:{port}: expected {'reach' if want[(src, addr, port)] else 'blocked'}"
             for (src, addr, port), ok in got.items() if ok != want[(src, addr, port)]]
    assert not wrong, "\n".join(wrong)
    for c in (a, a2, b):
        assert all(rc == 0 for _, rc, _ in lab.check(c))


def test_allow_published_ports_must_be_a_boolean(lab):
    net = lab.network(["bridge"])
    c = lab.add(net)
    conf = {"cniVersion": "1.0.0", "name": net.name, "type": "isolation", "allowPublishedPorts": "yes",
            "prevResult": lab.cache[(net.name, c.id)]}
    before = lab.ruleset()
    rc, out, _ = lab.exec_plugin("isolation", "ADD", conf, lab._env(c))
    assert rc != 0 and out["code"] == 7 and "allowPublishedPorts" in out["msg"]
    assert lab.ruleset() == before


@pytest.mark.parametrize("bridge_nf", [0, 1])
@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_the_publishing_network_alone_decides(make_lab, backend, bridge_nf):
    """Mixed settings: network A (allowPublishedPorts true) publishes 18080, network P (false)
    publishes 18081; client networks C (false) and D (true). The publisher decides, for the
    connection and its replies: C and D both reach 18080 and neither reaches 18081, while the
    outside reaches both (the ports are published) and nobody reaches the containers' own
    addresses."""
    lab = make_lab(bridge_nf=bridge_nf)
    net_a = lab.network(["bridge", PORTMAP, "isolation"], isolation={"backend": backend, "allowPublishedPorts": True})
    net_p = lab.network(["bridge", PORTMAP, "isolation"], isolation={"backend": backend, "allowPublishedPorts": False})
    net_c = lab.network(["bridge", "isolation"], isolation={"backend": backend, "allowPublishedPorts": False})
    net_d = lab.network(["bridge", "isolation"], isolation={"backend": backend, "allowPublishedPorts": True})
    a = lab.add(net_a, port_mappings=PUBLISHED)
    p = lab.add(net_p, port_mappings=[{"hostPort": 18081, "containerPort": 8080, "protocol": "tcp"}])
    c, d = lab.add(net_c), lab.add(net_d)

    want = {(lab.outside, HOST[0], 18080): True, (lab.outside, HOST[0], 18081): True,
            (lab.outside, HOST[1], 18081): True}
    for client in (c, d):
        want |= {(client.name, HOST[0], 18080): True, (client.name, HOST[1], 18080): True,
                 (client.name, HOST[0], 18081): False, (client.name, HOST[1], 18081): False,
                 (client.name, a.ipv4, 8080): False, (client.name, p.ipv6, 8080): False}
    with ThreadPoolExecutor(max_workers=len(want)) as pool:
        got = dict(zip(want, pool.map(lambda k: lab.tcp(*k), want)))
    wrong = [f"{src} -> [{addr}]:{port}: expected {'reach' if want[(src, addr, port)] else 'blocked'}"
             for (src, addr, port), ok in got.items() if ok != want[(src, addr, port)]]
    assert not wrong, "\n".join(wrong)
    for x in (a, p, c, d):
        assert all(rc == 0 for _, rc, _ in lab.check(x))
