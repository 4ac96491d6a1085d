"""Podman end to end: `podman network create` networks with {"type": "isolation"} appended,
containers started by podman itself (runc, CNI backend), traffic checked with real packets
from inside the containers' network namespaces.

Expected, from the plugin's definition (issue 6):
  same network                       reach (IPv4, IPv6, ICMP, TCP)
  across networks                    blocked
  B -> HOST:18080 published by A     reach (allowPublishedPorts); A's own address: blocked
  after `podman network reload`      all of the above unchanged
  after `podman rm -f` of A's last   no rule or element of ours names A's bridge
  `-o isolate=true` (firewall's iptables ingressPolicy next to ours): isolation holds, and
    the published port is reachable across networks only on our iptables backend (which
    puts its DNAT exception above the firewall plugin's DROP in the shared chain); with
    nftables the firewall plugin's iptables DROP has the last word.
Podman runs VERSION on every plugin when it loads a conflist and silently drops a network
whose plugin fails it: the log of our binary must show an ADD for every container.
"""

import re

import pytest

from podman import Podman

pytestmark = pytest.mark.e2e
HOST = ("10.99.0.1", "fd99::1")
PUBLISHED = 18080


@pytest.fixture
def podman(lab):
    p = Podman(lab)
    yield p
    p.close()


def _adds_logged(path: str) -> list[str]:
    with open(path) as f:
        return [line for line in f if " ADD " in line and "result=ok" in line]


def _start(podman, lab, name, network, *options):
    podman.run(name, network, *options)
    ns = podman.netns(name)
    lab.listen(ns)
    return ns, podman.addresses(name)


def _verdicts(lab, want: dict) -> list[str]:
    got = {k: (lab.ping(k[1], k[2]) if k[0] == "icmp" else lab.tcp(k[1], k[2], k[3])) for k in want}
    return [f"{k}: expected {'reach' if want[k] else 'blocked'}" for k in want if got[k] != want[k]]


def _scenario(lab, a1, a2, b1, a1_addr, published: bool) -> dict:
    want = {}
    for v in (0, 1):
        want |= {("icmp", a2, a1_addr[v], 0): True, ("tcp", a2, a1_addr[v], 8080): True,
                 ("icmp", b1, a1_addr[v], 0): False, ("tcp", b1, a1_addr[v], 8080): False,
                 ("tcp", b1, HOST[v], PUBLISHED): published,
                 ("tcp", lab.outside, HOST[v], PUBLISHED): True}
    return want


@pytest.mark.parametrize("backend", ["auto", "iptables"])
def test_podman_networks_are_isolated(lab, podman, backend):
    log = f"{lab.tmp}/isolation.log"
    conf = {"backend": backend, "logFile": log}
    net_a, net_b = f"{lab.prefix}-a", f"{lab.prefix}-b"
    bridge_a = podman.network(net_a, 1, conf)["plugins"][0]["bridge"]
    bridge_b = podman.network(net_b, 2, conf)["plugins"][0]["bridge"]
    listed = podman("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert net_a in listed and net_b in listed, listed

    a1, a1_addr = _start(podman, lab, "a1", net_a, "-p", f"{PUBLISHED}:8080")
    a2, _ = _start(podman, lab, "a2", net_a)
    b1, _ = _start(podman, lab, "b1", net_b)
    assert len(_adds_logged(log)) == 3, "podman dropped our plugin (VERSION failed?) or skipped an ADD"

    wrong = _verdicts(lab, _scenario(lab, a1, a2, b1, a1_addr, True))
    assert not wrong, "\n".join(wrong)

    podman("network", "reload", "--all")
    wrong = _verdicts(lab, _scenario(lab, a1, a2, b1, a1_addr, True))
    assert not wrong, "after podman network reload:\n" + "\n".join(wrong)

    podman("rm", "-f", "-t", "0", "a1", "a2")
    assert lab.ours_mentioning(bridge_a) == [], "A's last container is gone, so are its rules"
    assert lab.ours_mentioning(bridge_b), "B keeps its isolation"


@pytest.mark.parametrize("backend", ["auto", "iptables"])
def test_podman_isolate_option_next_to_ours(lab, podman, backend):
    conf = {"backend": backend}
    net_a, net_b = f"{lab.prefix}-a", f"{lab.prefix}-b"
    podman.network(net_a, 1, conf, ("-o", "isolate=true"))
    podman.network(net_b, 2, conf, ("-o", "isolate=true"))
    a1, a1_addr = _start(podman, lab, "a1", net_a, "-p", f"{PUBLISHED}:8080")
    a2, _ = _start(podman, lab, "a2", net_a)
    b1, _ = _start(podman, lab, "b1", net_b)
    wrong = _verdicts(lab, _scenario(lab, a1, a2, b1, a1_addr, published=backend == "iptables"))
    assert not wrong, "\n".join(wrong)


def test_podman_failed_add_leaves_nothing(lab, podman):
    log = f"{lab.tmp}/isolation.log"
    net = f"{lab.prefix}-bad"
    bridge = podman.network(net, 3, {"denyEgress": ["10.0.0.0/33"], "logFile": log})["plugins"][0]["bridge"]
    proc = podman.run("bad", net, check=False)
    assert proc.returncode != 0, "the container must not start unprotected"
    assert "denyEgress" in proc.stderr and re.search(r"10\.0\.0\.0/33", proc.stderr), proc.stderr
    assert lab.ours_mentioning(bridge) == []
    status = lab.status()
    assert [b for b in status["bridges"] if b["bridge"] == bridge] == []
