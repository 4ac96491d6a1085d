"""Every conflist in conf-examples/ runs end to end: two networks made from the same
example (bridge name, subnets and IPAM state rewritten to the lab's own), then real
traffic is checked against what the example's own keys define:
  within a network: reach, unless ingressPolicy is `isolated`
  across the two:   blocked, unless ingressPolicy is `open` or they share an isolationGroup
                    (two networks from one example share its group, if it names one)
  to the lab's management and outside addresses (TCP 8080), with denyEgress: blocked when a
                    denied range holds the address and no allowEgress entry lets TCP 8080 to it
  to the own gateway, with hostAccess deny: TCP 8080 blocked, TCP 53 open iff allowHostPorts
                    (default: TCP and UDP 53) lists it.
  with internal: the outside (TCP 8080) and the own gateway's TCP 8080 blocked, its TCP 53 open
                    iff allowHostPorts (default for internal: none) lists it.
  with directAccess deny: the outside LAN (routing the subnet via the host, on an untrusted
                    interface) cannot reach a container's TCP 8080, while it reaches the other
                    direction's destination (the container reaches it)."""

import ipaddress
import json
import os

import pytest

from conftest import REPO
from netlab import localise

pytestmark = pytest.mark.e2e
EXAMPLES = sorted(f for f in os.listdir(os.path.join(REPO, "conf-examples")) if f.endswith(".conflist"))


@pytest.mark.parametrize("example", EXAMPLES)
def test_example(lab, example):
    with open(os.path.join(REPO, "conf-examples", example)) as f:
        conflist = json.load(f)
    assert [p["type"] for p in conflist["plugins"]].count("isolation") == 1
    ours = next(p for p in conflist["plugins"] if p["type"] == "isolation")
    policy = ours.get("ingressPolicy", "same-bridge")
    within = policy != "isolated"
    across = policy == "open" or "isolationGroup" in ours
    nets = [lab.network(localise(lab, conflist, i + 1), cni_version=conflist["cniVersion"]) for i in range(2)]
    a1, a2, b1 = lab.add(nets[0]), lab.add(nets[0]), lab.add(nets[1])
    want = {(a1.name, a2.ipv4): within, (a1.name, b1.ipv4): across, (b1.name, a1.ipv4): across}
    got = lab.reach(list(want))
    wrong = [f"{k} {s} -> {d}" for (k, s, d), ok in got.items() if ok != want[(s, d)]]
    assert not wrong, f"{example}: {wrong} (want {want})"
    tcp_want = {}
    if ours.get("denyEgress"):
        lab.management()
        for dest in ("10.98.0.2", "10.98.0.3", "fd98::2", "10.99.0.2", "fd99::2"):
            tcp_want[(dest, 8080)] = egress_allowed(ours, dest, 8080)
    if ours.get("internal"):
        tcp_want[("10.99.0.2", 8080)] = False
    if ours.get("hostAccess") == "deny" or ours.get("internal"):
        lab.listen(lab.host, 53)
        default = [] if ours.get("internal") else [{"protocol": "tcp", "port": 53}, {"protocol": "udp", "port": 53}]
        ports = ours.get("allowHostPorts", default)
        tcp_want[(nets[0].gateway4, 8080)] = False
        tcp_want[(nets[0].gateway4, 53)] = {"protocol": "tcp", "port": 53} in ports
    wrong = [f"{d}:{p}" for (d, p), ok in tcp_want.items() if lab.tcp(a1.name, d, p) != ok]
    assert not wrong, f"{example}: TCP from a container to {wrong} (want {tcp_want})"
    if ours.get("directAccess") == "deny":
        assert lab.tcp(a1.name, "10.99.0.2", 8080), f"{example}: the container does not reach the outside"
        assert not lab.tcp(lab.outside, a1.ipv4, 8080), f"{example}: the outside LAN reaches {a1.ipv4} directly"
    if conflist["cniVersion"] != "0.3.1":
        assert all(rc == 0 for _, rc, _ in lab.check(a1))


def egress_allowed(conf: dict, dest: str, port: int) -> bool:
    """TCP to dest:port by the definition of denyEgress and allowEgress."""
    addr = ipaddress.ip_address(dest)
    nets = [ipaddress.ip_network(c, strict=False) for c in conf.get("denyEgress", [])]
    if not any(addr in n for n in nets if n.version == addr.version):
        return True
    for hole in conf.get("allowEgress", []):
        net = ipaddress.ip_network(hole["cidr"], strict=False)
        ports = [int(p) for p in hole.get("ports", [])]  # the examples list single ports
        if net.version == addr.version and addr in net and hole.get("protocol", "any") in ("tcp", "any") \
                and (not ports or port in ports):
            return True
    return False
