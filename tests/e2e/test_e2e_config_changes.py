"""A changed configuration takes effect once no attachment of the network needs the old rule
(issue 14, item 4), on both backends, proven with packets.

The runtime always passes the network's current conflist; containers started before an edit
keep their registered configuration until they leave. While they remain, a bridge gets what
all its attachments together need: every grant any of them has (a group, a published port)
and the strictest guard. When the last one leaves, what no remaining attachment grants goes:
  - leaving an isolationGroup: the other members no longer reach the network, nor it them;
  - relaxing ingressPolicy (isolated -> same-bridge -> open): the old drops go;
  - removing denyEgress / hostAccess deny: the old drops go;
  - turning allowPublishedPorts off: the network's published ports stop passing isolation.
A grant the kernel holds that no registered attachment needs (here put there by hand, as a
crash between forgetting an attachment and removing its rules would leave it) fails CHECK,
named, and `isolation reconcile` and the agent remove it.

Every "blocked" expectation has a positive control in the same probe batch.
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from netlab import sh

pytestmark = pytest.mark.e2e
BACKENDS = ["iptables", "nftables"]
OUTSIDE = ("10.99.0.2", "fd99::2")  # the lab's outside peer
HOST = ("10.99.0.1", "fd99::1")  # the host's uplink addresses
PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}}
TAG = "isolation-plugin"


def _probe(lab, want: dict) -> list[str]:
    """TCP-probe every (source netns, address, port) concurrently; the mismatches, described."""
    with ThreadPoolExecutor(max_workers=len(want)) as pool:
        got = dict(zip(want, pool.map(lambda k: lab.tcp(*k), want)))
        # A path that opens (a bridge's ports lose the isolation flag) may first need the
        # container's neighbour entry, which failed while it was closed, to resolve again.
        again = [k for k, ok in got.items() if want[k] and not ok]
        if again:
            time.sleep(1)
            got.update(zip(again, pool.map(lambda k: lab.tcp(*k), again)))
    return [f"{src} -> [{addr}]:{port}: expected {'reach' if want[(src, addr, port)] else 'blocked'}"
            for (src, addr, port), ok in got.items() if ok != want[(src, addr, port)]]


def _reconfigure(net, **isolation) -> None:
    """Edit the network's conflist: its isolation entry becomes `isolation` (as a new file would)."""
    at = next(i for i, p in enumerate(net.plugins) if p["type"] == "isolation")
    net.plugins[at] = {"type": "isolation", **isolation}


def _checks_pass(lab, *containers) -> None:
    for c in containers:
        results = [(kind, rc, out) for kind, rc, out in lab.check(c) if kind == "isolation"]
        assert results and all(rc == 0 for _, rc, _ in results), (c.name, results)


def _check_isolation(lab, c) -> tuple[int, dict | None]:
    return next((rc, out) for kind, rc, out in lab.check(c) if kind == "isolation")


def _peer_pairs(lab, bridge: str) -> list:
    """The nftables peer pairs involving `bridge`, or the iptables peer RETURNs naming it."""
    listing = lab.nft("-j", "list", "ruleset")
    pairs = []
    for obj in json.loads(listing)["nftables"]:
        s = obj.get("set")
        if s and s.get("table") == "isolation" and s["name"] == "peers":
            pairs += [e["concat"] for e in s.get("elem", []) if bridge in e["concat"]]
    for fam in ("ipv4", "ipv6"):
        pairs += [line for line in lab.save(fam).splitlines()
                  if line.startswith("-A CNI-ISOLATION-STAGE-2 -i ") and bridge in line.split()[3:6:2]]
    return pairs


@pytest.mark.parametrize("backend", BACKENDS)
def test_leaving_a_group_takes_effect_once_its_old_attachments_leave(lab, backend):
    a_net, b_net, d_net = (lab.network(["bridge", "isolation"], isolation={"backend": backend, "isolationGroup": "g"})
                           for _ in range(3))
    a_old, b, d = lab.add(a_net), lab.add(b_net), lab.add(d_net)
    _reconfigure(a_net, backend=backend)  # A leaves the group
    a_new = lab.add(a_net)
    # a_old still runs with the group: the grant stays while it does.
    assert not _probe(lab, {(b.name, a_new.ipv4, 8080): True, (b.name, a_old.ipv4, 8080): True,
                            (b.name, d.ipv4, 8080): True})
    lab.delete(a_old)
    wrong = _probe(lab, {
        (b.name, a_new.ipv4, 8080): False,
        (b.name, a_new.ipv6, 8080): False,
        (a_new.name, b.ipv4, 8080): False,
        (d.name, a_new.ipv4, 8080): False,
        (b.name, d.ipv4, 8080): True,  # the group still works for its remaining members
        (d.name, b.ipv6, 8080): True,
        (a_new.name, OUTSIDE[0], 8080): True,
    })
    assert not wrong, "\n".join(wrong)
    assert _peer_pairs(lab, a_net.bridge) == []
    _checks_pass(lab, a_new, b, d)


@pytest.mark.parametrize("backend", BACKENDS)
def test_relaxing_the_policy_takes_effect_once_its_old_attachments_leave(lab, backend):
    a_net = lab.network(["bridge", "isolation"], isolation={"backend": backend, "ingressPolicy": "isolated"})
    b_net, e_net = (lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(2))
    a_old, b, e = lab.add(a_net), lab.add(b_net), lab.add(e_net)
    _reconfigure(a_net, backend=backend, ingressPolicy="same-bridge")
    a1, a2 = lab.add(a_net), lab.add(a_net)
    # The strictest combination while a_old (isolated) remains.
    assert not _probe(lab, {(a1.name, a2.ipv4, 8080): False, (a1.name, OUTSIDE[0], 8080): True})
    lab.delete(a_old)
    wrong = _probe(lab, {
        (a1.name, a2.ipv4, 8080): True,
        (a2.name, a1.ipv6, 8080): True,
        (b.name, a1.ipv4, 8080): False,  # same-bridge still isolates A from B
        (a1.name, b.ipv4, 8080): False,
    })
    assert not wrong, "\n".join(wrong)
    _checks_pass(lab, a1, a2, b)

    _reconfigure(a_net, backend=backend, ingressPolicy="open")
    a3 = lab.add(a_net)
    lab.delete(a1)
    lab.delete(a2)
    wrong = _probe(lab, {
        (b.name, a3.ipv4, 8080): True,  # A is open now: isolation drops only between two isolating networks
        (b.name, a3.ipv6, 8080): True,
        (a3.name, b.ipv4, 8080): True,
        (b.name, e.ipv4, 8080): False,  # B and E still isolate each other
        (e.name, b.ipv6, 8080): False,
    })
    assert not wrong, "\n".join(wrong)
    _checks_pass(lab, a3, b, e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_removing_a_deny_range_and_the_host_deny_takes_effect_once_their_old_attachments_leave(lab, backend):
    strict = {"backend": backend, "denyEgress": [f"{OUTSIDE[0]}/32", f"{OUTSIDE[1]}/128"], "hostAccess": "deny",
              "allowHostPorts": []}
    a_net = lab.network(["bridge", "isolation"], isolation=strict)
    b_net = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    a_old, b = lab.add(a_net), lab.add(b_net)
    _reconfigure(a_net, backend=backend)
    a_new = lab.add(a_net)
    wrong = _probe(lab, {
        (a_new.name, OUTSIDE[0], 8080): False,  # the old guard holds while a_old remains
        (a_new.name, OUTSIDE[1], 8080): False,
        (a_new.name, HOST[0], 8080): False,
        (a_new.name, a_old.ipv4, 8080): True,
    })
    assert not wrong, "\n".join(wrong)
    lab.delete(a_old)
    wrong = _probe(lab, {
        (a_new.name, OUTSIDE[0], 8080): True,
        (a_new.name, OUTSIDE[1], 8080): True,
        (a_new.name, HOST[0], 8080): True,
        (a_new.name, a_net.gateway4, 8080): True,
        (a_new.name, b.ipv4, 8080): False,  # inter-bridge isolation stays
        (b.name, a_new.ipv4, 8080): False,
    })
    assert not wrong, "\n".join(wrong)
    _checks_pass(lab, a_new, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_turning_published_ports_off_takes_effect_once_its_old_attachments_leave(lab, backend):
    a_net = lab.network(["bridge", PORTMAP, "isolation"], isolation={"backend": backend})
    b_net = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    a_old = lab.add(a_net, port_mappings=[{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}])
    b = lab.add(b_net)
    _reconfigure(a_net, backend=backend, allowPublishedPorts=False)
    a_new = lab.add(a_net, port_mappings=[{"hostPort": 18081, "containerPort": 8080, "protocol": "tcp"}])
    assert not _probe(lab, {(b.name, HOST[0], 18081): True})  # a_old still publishes across isolation
    lab.delete(a_old)
    wrong = _probe(lab, {
        (b.name, HOST[0], 18081): False,
        (b.name, HOST[1], 18081): False,
        (lab.outside, HOST[0], 18081): True,  # the port is published, just not across isolation
        (lab.outside, HOST[1], 18081): True,
    })
    assert not wrong, "\n".join(wrong)
    _checks_pass(lab, a_new, b)


def _grant_by_hand(lab, backend: str, a: str, b: str) -> None:
    """What a crash between forgetting an attachment and removing its rules leaves: a and b
    reach each other (isolationGroup peers), on `backend`."""
    if backend == "nftables":
        sh("nft", f"add element inet isolation peers {{ {a} . {b}, {b} . {a} }}", netns=lab.host)
        return
    for tool in ("iptables", "ip6tables"):
        for src, dst in ((a, b), (b, a)):
            sh(tool, "-w", "-I", "CNI-ISOLATION-STAGE-2", "1", "-i", src, "-o", dst, "-m", "comment", "--comment",
               TAG, "-j", "RETURN", netns=lab.host)


def _stale_setup(lab, backend, prove_live: bool = True):
    a_net, b_net, c_net = (lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(3))
    a, b, c = lab.add(a_net), lab.add(b_net), lab.add(c_net)
    assert not _probe(lab, {(b.name, a.ipv4, 8080): False, (b.name, OUTSIDE[0], 8080): True})
    _grant_by_hand(lab, backend, a_net.bridge, b_net.bridge)
    if prove_live:  # (not with the agent running: it may already have removed it)
        assert not _probe(lab, {(b.name, a.ipv4, 8080): True, (b.name, c.ipv4, 8080): False}), "the grant is live"
    return a, b, c


def _stale_gone(lab, a, b, c) -> list[str]:
    return _probe(lab, {
        (b.name, a.ipv4, 8080): False,
        (a.name, b.ipv6, 8080): False,
        (b.name, OUTSIDE[0], 8080): True,
        (a.name, OUTSIDE[1], 8080): True,
    })


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_names_a_stale_grant_and_reconcile_removes_it(lab, backend):
    a, b, c = _stale_setup(lab, backend)
    rc, out = _check_isolation(lab, a)
    assert rc != 0 and out["code"] == 102 and "grants" in out["msg"] and "more than" in out["msg"], out
    assert a.network.bridge in out["details"] and b.network.bridge in out["details"], out
    assert "isolationGroup" in out["details"] or "peer" in out["details"], out
    rc, out = _check_isolation(lab, b)
    assert rc != 0 and a.network.bridge in out["details"], out
    _checks_pass(lab, c)  # an unrelated network's CHECK is unaffected

    status = lab.cli("status", "--json")
    assert status.returncode == 1 and any("no registered attachment" in p
                                          for p in json.loads(status.stdout)["problems"]), status.stdout

    out = lab.cli("reconcile")
    assert out.returncode == 0 and "removed" in out.stdout and a.network.bridge in out.stdout, out
    wrong = _stale_gone(lab, a, b, c)
    assert not wrong, "\n".join(wrong)
    assert _peer_pairs(lab, a.network.bridge) == []
    _checks_pass(lab, a, b, c)
    again = lab.cli("reconcile")
    assert again.returncode == 0 and "removed" not in again.stdout, again


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_agent_removes_a_stale_grant(lab, backend):
    log = lab.start_agent()
    a, b, c = _stale_setup(lab, backend, prove_live=False)
    deadline = time.monotonic() + 10
    while _peer_pairs(lab, a.network.bridge) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _peer_pairs(lab, a.network.bridge) == [], "the agent left the stale grant"
    wrong = _stale_gone(lab, a, b, c)
    assert not wrong, "\n".join(wrong)
    with open(log) as f:
        assert a.network.bridge in f.read()
    _checks_pass(lab, a, b, c)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_attachment_added_again_with_another_configuration_loses_its_old_grants(lab, backend):
    """The runtime re-runs ADD for a running container after its conflist changed (the same
    network, container and interface): what only the earlier configuration granted goes at once."""
    a_net, b_net = (lab.network(["bridge", "isolation"], isolation={"backend": backend, "isolationGroup": "g"})
                    for _ in range(2))
    a, b = lab.add(a_net), lab.add(b_net)
    assert not _probe(lab, {(b.name, a.ipv4, 8080): True, (a.name, b.ipv4, 8080): True})
    _reconfigure(a_net, backend=backend)
    entry = next(p for p in a_net.plugins if p["type"] == "isolation")
    conf = {"cniVersion": "1.0.0", "name": a_net.name, **entry, "prevResult": lab.cache[(a_net.name, a.id)]}
    rc, out, err = lab.exec_plugin("isolation", "ADD", conf, lab._env(a))
    assert rc == 0, (out, err)
    wrong = _probe(lab, {
        (b.name, a.ipv4, 8080): False,
        (b.name, a.ipv6, 8080): False,
        (a.name, b.ipv4, 8080): False,
        (b.name, OUTSIDE[0], 8080): True,
        (a.name, OUTSIDE[1], 8080): True,
    })
    assert not wrong, "\n".join(wrong)
    assert _peer_pairs(lab, a_net.bridge) == []
    _checks_pass(lab, a, b)
