"""Review of issue 19: the per-bridge drop counters must never weaken a drop, and CHECK must
see damage done to the objects they added (nftables: the drop-<reason> chains, the
count-<reason> maps and the named counters).

Setup: A is `isolated`, B `same-bridge`, both on nftables; B -> A is a cross-network drop
(B is isolating too: A's ingressPolicy refuses it), while B reaching the lab's outside peer
10.99.0.2 / fd99::2 through the host is the positive control in the same setup.

  1. A's element of map count-cross-network and its counter deleted by hand (what an
     operator, or a registry that lost A, leaves): the drop chain's map lookup fails, its
     next rule still drops. B -> A stays blocked, and CHECK of A's container fails.
  2. The drop chain's counting rule deleted by hand: the drop holds, CHECK fails.
  3. The drop chain flushed by hand: a `goto` into an empty chain falls back to the base
     chain's policy (accept) so B now reaches A: CHECK must fail, and `reconcile` must
     restore the drop (B blocked again, control still through).
"""

import json
import re

import pytest

from netlab import sh

pytestmark = pytest.mark.e2e
OUTSIDE = ("10.99.0.2", "fd99::2")


def _reaches(lab, src: str, addrs) -> bool:
    return all(lab.reach([(src, a) for a in addrs]).values())


def _blocked(lab, src: str, addrs) -> bool:
    return not any(lab.reach([(src, a) for a in addrs]).values())


def _check_fails(lab, c) -> bool:
    return any(rc != 0 for kind, rc, _ in lab.check(c) if kind == "isolation")


def _setup(lab):
    a_net = lab.network(["bridge", "isolation"], isolation={"backend": "nftables", "ingressPolicy": "isolated"})
    b_net = lab.network(["bridge", "isolation"], isolation={"backend": "nftables"})
    a1, b1 = lab.add(a_net), lab.add(b_net)
    targets = (a1.ipv4, a1.ipv6)
    assert _reaches(lab, b1.name, OUTSIDE), "positive control: B reaches the outside peer"
    assert _blocked(lab, b1.name, targets), "B -> A is a cross-network drop"
    assert not _check_fails(lab, a1), "CHECK passes on the intact ruleset"
    return a_net, a1, b1, targets


def _handle(lab, chain: str, needle: str) -> str:
    listing = lab.nft("-a", "list", "chain", "inet", "isolation", chain)
    found = [m.group(1) for line in listing.splitlines() if needle in line
             for m in [re.search(r"# handle (\d+)", line)] if m]
    assert len(found) == 1, listing
    return found[0]


def test_a_bridge_missing_from_its_counter_map_still_drops_and_check_says_so(lab):
    a_net, a1, b1, targets = _setup(lab)
    A = a_net.bridge
    sh("nft", "delete", "element", "inet", "isolation", "count-cross-network", "{", f'"{A}"', "}", netns=lab.host)
    sh("nft", "delete", "counter", "inet", "isolation", f"cross-network-{A}", netns=lab.host)
    assert _reaches(lab, b1.name, OUTSIDE)
    assert _blocked(lab, b1.name, targets), "the drop holds without the bridge's counter"
    assert _check_fails(lab, a1), "CHECK names the missing counter map element"


def test_the_drop_chain_without_its_counting_rule_still_drops_and_check_says_so(lab):
    a_net, a1, b1, targets = _setup(lab)
    handle = _handle(lab, "drop-cross-network", "counter name")
    sh("nft", "delete", "rule", "inet", "isolation", "drop-cross-network", "handle", handle, netns=lab.host)
    assert _reaches(lab, b1.name, OUTSIDE)
    assert _blocked(lab, b1.name, targets)
    assert _check_fails(lab, a1)


def test_a_flushed_drop_chain_is_damage_check_sees_and_reconcile_repairs(lab):
    a_net, a1, b1, targets = _setup(lab)
    sh("nft", "flush", "chain", "inet", "isolation", "drop-cross-network", netns=lab.host)
    assert _reaches(lab, b1.name, targets), "an empty drop chain drops nothing (why CHECK must see it)"
    assert _check_fails(lab, a1)
    proc = lab.cli("reconcile")
    assert proc.returncode == 0, proc.stderr
    assert _reaches(lab, b1.name, OUTSIDE)
    assert _blocked(lab, b1.name, targets), "reconcile restored the drop"
    assert not _check_fails(lab, a1)
    report = json.loads(lab.cli("status", "--json").stdout)
    assert _has_cross_network_counter(report, a_net.bridge)


def _has_cross_network_counter(report: dict, bridge: str) -> bool:
    rows = {r["bridge"]: r for r in report["bridges"]}
    return "cross-network" in (rows[bridge].get("drops") or {})
