"""Golden files: the exact libnftables JSON transaction the nftables planner emits.

The .jsonl files (one command per line) were first written by hand from `nft -j list` of
the ruleset documented in plugin/backends/nftables.py; a rendering change is regenerated
with `pytest tests/unit --update-golden` and reviewed as `git diff tests/golden`. One inet
table covers IPv4 and IPv6 alike, so there is no separate IPv6 rendering to pin.
"""

import json

import pytest

from plugin.backends.nftables import BRIDGE, INET, TableState, add_only_plan, plan, problems, release_plan
from plugin.errors import CniError
from plugin.policy import NO_GUARD, Guard, Hole, Release, Spoof, desired, intent_for
from golden import load


def intact(*bridges: str) -> TableState:
    """An intact table holding same-bridge, published-ports bridges (the defaults)."""
    elements = {"isolated": set(bridges), "self": {(b, b) for b in bridges}, "published": set(bridges), "intra": set(),
                "peers": set(), "count-cross-network": {(b, f"cross-network-{b}") for b in bridges}}
    return TableState(True, True, elements)


SPOOF0 = Spoof("veth0", "02:00:00:00:00:0a", ("10.77.1.2", "fd77:1::2"))
SCENARIOS = {
    "fresh-same-bridge": ({}, intent_for("br0", "same-bridge", "veth0")),
    # isolated, with its default antiSpoofing: the bridge table with veth0's MAC and addresses
    "fresh-isolated": ({}, intent_for("br0", "isolated", "veth0", spoof=SPOOF0, mac=SPOOF0.mac)),
    "open": ({}, intent_for("br0", "open", "veth0")),
    "third-bridge": ({"inet": intact("br0", "br1")}, intent_for("br2", "same-bridge", "veth2")),
    "existing-bridge": ({"inet": intact("br0", "br1")}, intent_for("br1", "same-bridge", "veth1")),
    "damaged-rebuild": (
        {"inet": TableState(True, False, {"isolated": {"br0"}, "self": {("br0", "br0")}})},
        intent_for("br1", "same-bridge"),
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_plan_matches_golden(name, golden):
    states, intent = SCENARIOS[name]
    golden.check(f"nftables/{name}.jsonl", plan(states, desired([intent])))


# `nft -j list table inet isolation` as the kernel printed it (kernel 6.18, nftables 1.0.6) for brA (isolated, with
# denyEgress 10.98.0.0/16 but UDP 53 to 10.98.0.53, and hostAccess deny) and brB (same-bridge,
# allowPublishedPorts false), both in isolationGroup "g"; its text form matched the module
# docstring. One drop counter has moved, as it does on a live host. Listed again from the
# kernel when every drop became a `goto` to its reason's drop chain, which counts it in the
# bridge's named counter (issue 19).
GUARD = Guard(("10.98.0.0/16",), (Hole("udp", ("53",), "10.98.0.53/32"),), True, (Hole("tcp", ("53",)), Hole("udp", ("53",))))
LISTING = json.loads(r"""[
 {"table": {"family": "inet", "name": "isolation", "handle": 1}},
 {"counter": {"family": "inet", "name": "cross-network-brA", "table": "isolation", "handle": 47, "packets": 0, "bytes": 0}},
 {"counter": {"family": "inet", "name": "cross-network-brB", "table": "isolation", "handle": 48, "packets": 12, "bytes": 1008}},
 {"counter": {"family": "inet", "name": "egress-deny-brA", "table": "isolation", "handle": 49, "packets": 0, "bytes": 0}},
 {"counter": {"family": "inet", "name": "host-access-brA", "table": "isolation", "handle": 50, "packets": 0, "bytes": 0}},
 {"counter": {"family": "inet", "name": "intra-bridge-brA", "table": "isolation", "handle": 51, "packets": 0, "bytes": 0}},
 {"set": {"family": "inet", "name": "isolated", "table": "isolation", "type": "ifname", "handle": 1, "elem": ["brA", "brB"]}},
 {"set": {"family": "inet", "name": "self", "table": "isolation", "type": ["ifname", "ifname"], "handle": 2, "elem": [{"concat": ["brA", "brA"]}, {"concat": ["brB", "brB"]}]}},
 {"set": {"family": "inet", "name": "published", "table": "isolation", "type": "ifname", "handle": 3, "elem": ["brA"]}},
 {"set": {"family": "inet", "name": "intra", "table": "isolation", "type": "ifname", "handle": 4, "elem": ["brA"]}},
 {"set": {"family": "inet", "name": "peers", "table": "isolation", "type": ["ifname", "ifname"], "handle": 5, "elem": [{"concat": ["brB", "brA"]}, {"concat": ["brA", "brB"]}]}},
 {"set": {"family": "inet", "name": "internal", "table": "isolation", "type": "ifname", "handle": 60}},
 {"set": {"family": "inet", "name": "direct", "table": "isolation", "type": "ifname", "handle": 70}},
 {"set": {"family": "inet", "name": "trusted", "table": "isolation", "type": ["ifname", "ifname"], "handle": 71}},
 {"set": {"family": "inet", "name": "tcross4", "table": "isolation", "type": ["ifname", "ipv4_addr"], "handle": 201}},
 {"set": {"family": "inet", "name": "tcross6", "table": "isolation", "type": ["ifname", "ipv6_addr"], "handle": 202}},
 {"map": {"family": "inet", "name": "egress", "table": "isolation", "type": "ifname", "handle": 6, "map": "verdict", "elem": [["brA", {"jump": {"target": "egress-brA"}}]]}},
 {"map": {"family": "inet", "name": "host", "table": "isolation", "type": "ifname", "handle": 7, "map": "verdict", "elem": [["brA", {"jump": {"target": "host-brA"}}]]}},
 {"map": {"family": "inet", "name": "count-cross-network", "table": "isolation", "type": "ifname", "handle": 8, "map": "counter", "elem": [["brA", "cross-network-brA"], ["brB", "cross-network-brB"]]}},
 {"map": {"family": "inet", "name": "count-intra-bridge", "table": "isolation", "type": "ifname", "handle": 9, "map": "counter", "elem": [["brA", "intra-bridge-brA"]]}},
 {"map": {"family": "inet", "name": "count-egress-deny", "table": "isolation", "type": "ifname", "handle": 10, "map": "counter", "elem": [["brA", "egress-deny-brA"]]}},
 {"map": {"family": "inet", "name": "count-host-access", "table": "isolation", "type": "ifname", "handle": 11, "map": "counter", "elem": [["brA", "host-access-brA"]]}},
 {"map": {"family": "inet", "name": "logcross", "table": "isolation", "type": "ifname", "handle": 60, "map": "verdict"}},
 {"map": {"family": "inet", "name": "logintra", "table": "isolation", "type": "ifname", "handle": 61, "map": "verdict"}},
 {"map": {"family": "inet", "name": "logegress", "table": "isolation", "type": "ifname", "handle": 62, "map": "verdict"}},
 {"map": {"family": "inet", "name": "loghost", "table": "isolation", "type": "ifname", "handle": 63, "map": "verdict"}},
 {"map": {"family": "inet", "name": "loginternal", "table": "isolation", "type": "ifname", "handle": 64, "map": "verdict"}},
 {"map": {"family": "inet", "name": "logdirect", "table": "isolation", "type": "ifname", "handle": 65, "map": "verdict"}},
 {"set": {"family": "inet", "name": "flows4", "table": "isolation", "type": ["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"], "handle": 70, "size": 65535, "flags": ["timeout"], "timeout": 60}},
 {"set": {"family": "inet", "name": "flows6", "table": "isolation", "type": ["ipv6_addr", "ipv6_addr", "inet_proto", "inet_service"], "handle": 71, "size": 65535, "flags": ["timeout"], "timeout": 60}},
 {"set": {"family": "inet", "name": "other4", "table": "isolation", "type": ["ipv4_addr", "ipv4_addr", "inet_proto"], "handle": 72, "size": 65535, "flags": ["timeout"], "timeout": 60}},
 {"set": {"family": "inet", "name": "other6", "table": "isolation", "type": ["ipv6_addr", "ipv6_addr", "inet_proto"], "handle": 73, "size": 65535, "flags": ["timeout"], "timeout": 60}},
 {"map": {"family": "inet", "name": "count-internal", "table": "isolation", "type": "ifname", "handle": 81, "map": "counter"}},
 {"map": {"family": "inet", "name": "count-direct-access", "table": "isolation", "type": "ifname", "handle": 82, "map": "counter"}},
 {"chain": {"family": "inet", "table": "isolation", "name": "forward", "handle": 12, "type": "filter", "hook": "forward", "prio": -5, "policy": "accept"}},
 {"chain": {"family": "inet", "table": "isolation", "name": "input", "handle": 13, "type": "filter", "hook": "input", "prio": -5, "policy": "accept"}},
 {"chain": {"family": "inet", "table": "isolation", "name": "drop-cross-network", "handle": 14}},
 {"chain": {"family": "inet", "table": "isolation", "name": "drop-intra-bridge", "handle": 15}},
 {"chain": {"family": "inet", "table": "isolation", "name": "drop-egress-deny", "handle": 16}},
 {"chain": {"family": "inet", "table": "isolation", "name": "drop-host-access", "handle": 17}},
 {"chain": {"family": "inet", "table": "isolation", "name": "drop-internal", "handle": 62}},
 {"chain": {"family": "inet", "table": "isolation", "name": "direct", "handle": 73}},
 {"chain": {"family": "inet", "table": "isolation", "name": "drop-direct-access", "handle": 74}},
 {"chain": {"family": "inet", "table": "isolation", "name": "egress-brA", "handle": 37}},
 {"chain": {"family": "inet", "table": "isolation", "name": "host-brA", "handle": 42}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "forward", "handle": 18, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@intra"}}, {"match": {"op": "==", "left": {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}]}, "right": "@self"}}, {"goto": {"target": "drop-intra-bridge"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "forward", "handle": 19, "expr": [{"match": {"op": "==", "left": {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}]}, "right": "@self"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "forward", "handle": 63, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@internal"}}, {"goto": {"target": "drop-internal"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "forward", "handle": 64, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@internal"}}, {"goto": {"target": "drop-internal"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "forward", "handle": 75, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@direct"}}, {"jump": {"target": "direct"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "forward", "handle": 20, "expr": [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@egress"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "forward", "handle": 21, "expr": [{"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "original"}}, {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@published"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "forward", "handle": 22, "expr": [{"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}}, {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@published"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "forward", "handle": 23, "expr": [{"match": {"op": "==", "left": {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}]}, "right": "@peers"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "forward", "handle": 203, "expr": [{"match": {"op": "!", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"match": {"op": "==", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "ip", "field": "daddr"}}]}, "right": "@tcross4"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "forward", "handle": 204, "expr": [{"match": {"op": "!", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"match": {"op": "==", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "ip6", "field": "daddr"}}]}, "right": "@tcross6"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "forward", "handle": 24, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@isolated"}}, {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@isolated"}}, {"goto": {"target": "drop-cross-network"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "input", "handle": 26, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert"]}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "hoplimit"}}, "right": 255}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "input", "handle": 27, "expr": [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@egress"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "input", "handle": 28, "expr": [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@host"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-cross-network", "handle": 88, "expr": [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@logcross"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-cross-network", "handle": 29, "expr": [{"counter": {"map": {"key": {"meta": {"key": "oifname"}}, "data": "@count-cross-network"}}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-cross-network", "handle": 30, "expr": [{"counter": {"packets": 12, "bytes": 1008}}, {"drop": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-intra-bridge", "handle": 88, "expr": [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@logintra"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-intra-bridge", "handle": 31, "expr": [{"counter": {"map": {"key": {"meta": {"key": "iifname"}}, "data": "@count-intra-bridge"}}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-intra-bridge", "handle": 32, "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-egress-deny", "handle": 89, "expr": [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@logegress"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-egress-deny", "handle": 33, "expr": [{"counter": {"map": {"key": {"meta": {"key": "iifname"}}, "data": "@count-egress-deny"}}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-egress-deny", "handle": 34, "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-host-access", "handle": 87, "expr": [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@loghost"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-host-access", "handle": 35, "expr": [{"counter": {"map": {"key": {"meta": {"key": "iifname"}}, "data": "@count-host-access"}}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-host-access", "handle": 36, "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-internal", "handle": 90, "expr": [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@loginternal"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-internal", "handle": 91, "expr": [{"vmap": {"key": {"meta": {"key": "oifname"}}, "data": "@loginternal"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-internal", "handle": 65, "expr": [{"counter": {"map": {"key": {"meta": {"key": "iifname"}}, "data": "@count-internal"}}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-internal", "handle": 66, "expr": [{"counter": {"map": {"key": {"meta": {"key": "oifname"}}, "data": "@count-internal"}}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-internal", "handle": 67, "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "direct", "handle": 76, "expr": [{"match": {"op": "==", "left": {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key": "iifname"}}]}, "right": "@self"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "direct", "handle": 77, "expr": [{"match": {"op": "==", "left": {"concat": [{"meta": {"key": "oifname"}}, {"meta": {"key": "iifname"}}]}, "right": "@trusted"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "direct", "handle": 78, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "direct", "handle": 79, "expr": [{"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "original"}}, {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "direct", "handle": 80, "expr": [{"goto": {"target": "drop-direct-access"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-direct-access", "handle": 92, "expr": [{"vmap": {"key": {"meta": {"key": "oifname"}}, "data": "@logdirect"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-direct-access", "handle": 81, "expr": [{"counter": {"map": {"key": {"meta": {"key": "oifname"}}, "data": "@count-direct-access"}}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "drop-direct-access", "handle": 82, "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "egress-brA", "handle": 38, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "egress-brA", "handle": 39, "expr": [{"match": {"op": "==", "left": {"ct": {"key": "ip daddr", "dir": "original"}}, "right": "10.98.0.53"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "egress-brA", "handle": 40, "expr": [{"match": {"op": "==", "left": {"ct": {"key": "ip daddr", "dir": "original"}}, "right": {"prefix": {"addr": "10.98.0.0", "len": 16}}}}, {"goto": {"target": "drop-egress-deny"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "egress-brA", "handle": 41, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["invalid", "untracked"]}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.98.0.0", "len": 16}}}}, {"goto": {"target": "drop-egress-deny"}}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "host-brA", "handle": 43, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "host-brA", "handle": 44, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 53}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "host-brA", "handle": 45, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "isolation", "chain": "host-brA", "handle": 46, "expr": [{"goto": {"target": "drop-host-access"}}]}}
]""")


def _replace_rule(listing, chain, handle, expr):
    return [{"rule": {**o["rule"], "expr": expr}} if "rule" in o and o["rule"]["chain"] == chain
            and o["rule"]["handle"] == handle else o for o in listing]


def test_listing_of_our_own_table_is_intact():
    state = TableState.parse(LISTING, INET)
    assert state.exists and state.intact
    assert state.elements == {"isolated": {"brA", "brB"}, "self": {("brA", "brA"), ("brB", "brB")},
                              "published": {"brA"}, "intra": {"brA"}, "peers": {("brA", "brB"), ("brB", "brA")},
                              "egress": {("brA", "egress-brA")}, "host": {("brA", "host-brA")},
                              "count-cross-network": {("brA", "cross-network-brA"), ("brB", "cross-network-brB")},
                              "count-intra-bridge": {("brA", "intra-bridge-brA")},
                              "count-egress-deny": {("brA", "egress-deny-brA")},
                              "count-host-access": {("brA", "host-access-brA")},
                              "logcross": set(), "logintra": set(), "logegress": set(), "loghost": set(),
                              "loginternal": set(), "logdirect": set(),
                              "internal": set(), "count-internal": set(), "direct": set(), "trusted": set(),
                              "count-direct-access": set(), "tcross4": set(), "tcross6": set()}
    assert state.counters == {"cross-network-brA": 0, "cross-network-brB": 12, "egress-deny-brA": 0,
                              "host-access-brA": 0, "intra-bridge-brA": 0}
    assert sorted(state.chains) == ["egress-brA", "host-brA"]
    intents = [intent_for("brA", "isolated", "vethA", group="g", guard=GUARD),
               intent_for("brB", "same-bridge", "vethB", published=False, group="g")]
    states = {"inet": state, "bridge": TableState(True, True, {})}
    assert problems(states, desired(intents)) == [] and plan(states, desired(intents)) == []

    tampered = _replace_rule(LISTING, "forward", 24, [{"accept": None}])
    assert not TableState.parse(tampered, INET).intact
    pre_guard = [o for o in LISTING if not ("map" in o or "chain" in o and o["chain"]["name"] != "forward"
                                            or "rule" in o and o["rule"]["chain"] != "forward")]
    assert not TableState.parse(pre_guard, INET).intact, "a table of an earlier layout is rebuilt"
    assert TableState.parse(None, BRIDGE) == TableState()


def test_an_altered_guard_chain_is_named_and_rewritten():
    opened = TableState.parse(_replace_rule(LISTING, "host-brA", 46, [{"accept": None}]), INET)
    assert opened.intact  # the constant part is fine: only the chain is rewritten
    intents = [intent_for("brA", "same-bridge", group="g", guard=GUARD)]
    assert problems({"inet": opened}, desired(intents)) == ["chain inet isolation host-brA is altered"]
    cmds = plan({"inet": opened}, desired(intents))
    assert cmds[0] == {"flush": {"chain": {"family": "inet", "table": "isolation", "name": "host-brA"}}}
    assert [c["add"]["rule"]["expr"] for c in cmds[1:] if "add" in c] == TableState.parse(LISTING, INET).chains["host-brA"]
    # brB is not registered here: brA's pairs with it are grants nobody needs, and go too
    assert [c["delete"]["element"]["elem"] for c in cmds if "delete" in c] == [
        [{"concat": ["brA", "brB"]}], [{"concat": ["brB", "brA"]}]]


def test_problems_name_what_is_missing():
    assert problems({"inet": intact("br0")}, desired([intent_for("br0", "same-bridge")])) == []
    assert problems({"inet": intact("br0")}, desired([intent_for("br1", "same-bridge")])) == [
        "br1 : cross-network-br1 is not in map inet isolation count-cross-network",
        "br1 is not in set inet isolation isolated",
        "br1 is not in set inet isolation published",
        "br1 . br1 is not in set inet isolation self",
    ]
    assert problems({}, desired([intent_for("br0", "isolated", "veth0", spoof=SPOOF0)])) == [
        "table inet isolation is missing",
        "table bridge isolation is missing",
    ]
    assert problems({"inet": intact("br0"), "bridge": _spoofed(SPOOF1)},
                    desired([intent_for("br0", "same-bridge", "veth0", spoof=SPOOF0)])) == [
        "veth0 : anti-spoofing-br0 is not in map bridge isolation count-anti-spoofing",
        "veth0 is not in set bridge isolation guarded",
        "veth0 . 02:00:00:00:00:0a is not in set bridge isolation mac",
        "veth0 . 0xfd770001000000000000000000000002 is not in set bridge isolation nd6",
        "veth0 . 0x10102000000000a is not in set bridge isolation ndopt",
        "veth0 . 0x20102000000000a is not in set bridge isolation ndopt",
        "veth0 . 10.77.1.2 is not in set bridge isolation src4",
        "veth0 . fd77:1::2 is not in set bridge isolation src6",
    ]


def test_isolated_without_a_port_fails_closed():
    from plugin.backends.ports import ensure_flags

    with pytest.raises(CniError) as err:
        ensure_flags(intent_for("br0", "isolated", None), [])
    assert err.value.code == 100


def _spoofed(*spoofs) -> TableState:
    from plugin.backends.nftables import spoof_elements

    return TableState(True, True, spoof_elements(spoofs))


SPOOF1 = Spoof("veth1", "02:00:00:00:00:0b", ("10.77.1.3",))
BRIDGE_TABLE = _spoofed(SPOOF0, SPOOF1)
RELEASES = {
    "release-one-of-two": ({"inet": intact("br0", "br1")}, Release(bridge="br1", isolate=True, within=True, peers=frozenset(), guard=NO_GUARD)),
    "release-last": ({"inet": intact("br1"), "bridge": _spoofed(SPOOF1)},
                     Release(bridge="br1", isolate=True, drop_intra=True, within=True, peers=frozenset(),
                             guard=NO_GUARD, spoofs=(SPOOF1,), last=True)),
    # the last registered attachment leaves, but the anti-spoofing table still protects veth0
    # (an attachment a damaged registry lost): only veth1's elements go
    "release-last-other-port-held": ({"inet": intact("br1"), "bridge": BRIDGE_TABLE},
                                     Release(bridge="br1", isolate=True, drop_intra=True, within=True, peers=frozenset(),
                             guard=NO_GUARD, spoofs=(SPOOF1,), last=True)),
    # veth1 leaves: its anti-spoofing elements go, veth0's stay
    "release-port-only": ({"inet": intact("br0"), "bridge": BRIDGE_TABLE},
                          Release(bridge="br0", peers=frozenset(), guard=NO_GUARD, spoofs=(SPOOF1,))),
}


@pytest.mark.parametrize("name", list(RELEASES))
def test_release_matches_golden(name, golden):
    states, release = RELEASES[name]
    golden.check(f"nftables/{name}.jsonl", release_plan(states, release))


def test_release_of_a_guarded_bridge_matches_golden(golden):
    """brA (isolated, guarded, grouped with brB) loses its last attachment; brB stays: its
    elements, map entries and then its guard chains go, in one transaction."""
    r = Release(bridge="brA", isolate=True, drop_intra=True, within=True, published=True, peers=frozenset(),
                guard=NO_GUARD, last_guard=True)
    golden.check("nftables/release-guarded.jsonl", release_plan({"inet": TableState.parse(LISTING, INET)}, r))


def test_release_rewrites_a_guard_the_remaining_attachments_relax():
    r = Release(bridge="brA", peers=frozenset(), guard=Guard(("10.98.0.0/16",)))
    cmds = release_plan({"inet": TableState.parse(LISTING, INET)}, r)
    assert cmds[0] == {"flush": {"chain": {"family": "inet", "table": "isolation", "name": "egress-brA"}}}
    assert {"delete": {"element": {"family": "inet", "table": "isolation", "name": "host", "elem": ["brA"]}}} in cmds
    assert cmds[-1] == {"delete": {"chain": {"family": "inet", "table": "isolation", "name": "host-brA"}}}


def test_release_deletes_only_what_is_present():
    """Deleting an absent element fails a whole transaction: absent ones are skipped."""
    assert release_plan({"inet": intact("br0")}, Release(bridge="br9", isolate=True, drop_intra=True, within=True,
                                                          peers=frozenset(), guard=NO_GUARD)) == []


def test_a_rebuilt_table_gets_every_registered_bridge_back():
    """After `nft flush ruleset` the next ADD re-creates the table with all registered bridges."""
    intents = [intent_for("br2", "same-bridge"), intent_for("br0", "same-bridge"), intent_for("br1", "open")]
    cmds = plan({}, desired(intents))
    elements = [c["add"]["element"] for c in cmds if "element" in c["add"]]
    assert elements == [
        {"family": "inet", "table": "isolation", "name": "count-cross-network",
         "elem": [["br0", "cross-network-br0"], ["br2", "cross-network-br2"]]},
        {"family": "inet", "table": "isolation", "name": "isolated", "elem": ["br0", "br2"]},
        {"family": "inet", "table": "isolation", "name": "published", "elem": ["br0", "br2"]},
        {"family": "inet", "table": "isolation", "name": "self", "elem": [{"concat": ["br0", "br0"]},
                                                                          {"concat": ["br2", "br2"]}]},
    ]


def test_groups_become_peer_pairs_and_leave_with_their_bridge():
    intents = [intent_for("br0", "same-bridge", group="a"), intent_for("br1", "isolated", "veth1", group="a"),
               intent_for("br2", "same-bridge", group="b"), intent_for("br3", "same-bridge")]
    peer_cmds = [c for c in plan({}, desired(intents)) if "element" in c["add"] and c["add"]["element"]["name"] == "peers"]
    assert peer_cmds == [{"add": {"element": {"family": "inet", "table": "isolation", "name": "peers",
                                              "elem": [{"concat": ["br0", "br1"]}, {"concat": ["br1", "br0"]}]}}}]
    state = intact("br0", "br1")
    state.elements["peers"] = {("br0", "br1"), ("br1", "br0")}
    gone = [c["delete"]["element"] for c in release_plan({"inet": state}, Release(bridge="br1", isolate=True, within=True, peers=frozenset(), guard=NO_GUARD))]
    assert {"name": "peers", "elem": [{"concat": ["br0", "br1"]}]} in [{k: g[k] for k in ("name", "elem")} for g in gone]
    assert {"name": "peers", "elem": [{"concat": ["br1", "br0"]}]} in [{k: g[k] for k in ("name", "elem")} for g in gone]


def test_add_only_plan_adds_this_bridges_elements_and_touches_nothing_else():
    """On an intact table read tersely (no elements), ADD adds its own elements (adding one
    that exists is a no-op in nftables) and those of its group, and creates its guard chain."""
    terse = TableState.parse([o for o in LISTING if not ("set" in o or "map" in o)] + [
        {k: {kk: vv for kk, vv in v.items() if kk != "elem"}} for o in LISTING for k, v in o.items() if k in ("set", "map")
    ], INET)
    assert terse.intact and all(not e for e in terse.elements.values())
    cmds = add_only_plan({"inet": terse}, desired([intent_for("brC", "same-bridge", group="g", guard=Guard(("10.0.0.0/8",))),
                                           intent_for("brB", "same-bridge", published=False, group="g")]))
    kinds = [next(iter(c)) + " " + next(iter(next(iter(c.values())))) for c in cmds]
    assert set(kinds) == {"add chain", "add rule", "add counter", "add element"} and "delete" not in str(cmds)
    counters = [c["add"]["counter"]["name"] for c in cmds if "counter" in c["add"]]
    assert counters == ["cross-network-brB", "cross-network-brC", "egress-deny-brC"]  # adding one that exists keeps its count
    added = {c["add"]["element"]["name"]: c["add"]["element"]["elem"] for c in cmds if "element" in c["add"]}
    assert added["egress"] == [["brC", {"jump": {"target": "egress-brC"}}]]
    assert {"concat": ["brC", "brB"]} in added["peers"] and "brC" in added["isolated"]
    # brA's guard chains exist but brA no longer wants a guard: that needs the full path
    assert add_only_plan({"inet": terse}, desired([intent_for("brA", "same-bridge")])) is None


def test_a_full_plan_never_undoes_a_bridge_no_intent_is_on():
    """Issue 15 item 1: a registry that lost brA's attachments (damaged) must not make an ADD's
    full plan delete brA's guard chains and map entries (that would open its egress)."""
    state = TableState.parse(LISTING, INET)
    cmds = plan({"inet": state}, desired([intent_for("brC", "same-bridge", "vethC")]))
    assert not [c for c in cmds if "delete" in c or "flush" in c], cmds
    assert {"add": {"element": {"family": "inet", "table": "isolation", "name": "isolated", "elem": ["brC"]}}} in cmds
    # brA registered without a guard any more (its configuration changed): then its guard goes
    relaxed = plan({"inet": state}, desired([intent_for("brA", "same-bridge", "vethA")]))
    assert {c["delete"]["chain"]["name"] for c in relaxed if "chain" in c.get("delete", {})} == {"egress-brA", "host-brA"}


def test_release_never_takes_the_table_while_another_bridge_is_in_it():
    """Issue 15 item 1: a Release computed from a registry that lost brB says `last`; the
    kernel still holds brB, so only brA's elements go (the table stays)."""
    state = TableState.parse(LISTING, INET)
    r = Release(bridge="brA", isolate=True, within=True, published=True, peers=frozenset(), guard=NO_GUARD,
                last=True, last_guard=True)
    cmds = release_plan({"inet": state}, r)
    assert {"delete": {"table": {"family": "inet", "name": "isolation"}}} not in cmds
    assert {"delete": {"element": {"family": "inet", "table": "isolation", "name": "isolated", "elem": ["brA"]}}} in cmds
    alone = [o for o in LISTING if "brB" not in json.dumps(o)]
    assert release_plan({"inet": TableState.parse(alone, INET)}, r) == [
        {"delete": {"table": {"family": "inet", "name": "isolation"}}}], "with brA alone, the table goes"
# `nft -j list table bridge isolation` as the kernel printed it for vethA (isolated, so
# anti-spoofing by default) with SPOOF0's MAC and addresses: the raw-payload sets list as
# (ifname, integer), their values as integers or hex strings. Listed again when every drop became
# a `goto drop-anti-spoofing`, counting it in the port's bridge's counter, and frames to the
# containers of isolated bridges became counted first (issue 19). Listed again with the
# tenancy sets and the forward and input chains (issue 21: per-container isolationGroups).
# Listed again with the drop log's maps and flow sets (issue 19: the bridge table logs too).
BRIDGE_LISTING = json.loads(r"""[
 {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
 {"table": {"family": "bridge", "name": "isolation", "handle": 1}},
 {"counter": {"family": "bridge", "name": "anti-spoofing-brA", "table": "isolation", "handle": 65, "packets": 0, "bytes": 0}},
 {"set": {"family": "bridge", "name": "nd6", "table": "isolation", "type": ["ifname", "integer"], "handle": 1, "elem": [{"concat": ["vethA", "0xfd770001000000000000000000000002"]}]}},
 {"set": {"family": "bridge", "name": "ndopt", "table": "isolation", "type": ["ifname", "integer"], "handle": 2, "elem": [{"concat": ["vethA", 72341268037894154]}, {"concat": ["vethA", 144398862075822090]}]}},
 {"set": {"family": "bridge", "name": "guarded", "table": "isolation", "type": "ifname", "handle": 3, "elem": ["vethA"]}},
 {"set": {"family": "bridge", "name": "intramac", "table": "isolation", "type": "ether_addr", "handle": 4}},
 {"set": {"family": "bridge", "name": "mac", "table": "isolation", "type": ["ifname", "ether_addr"], "handle": 5, "elem": [{"concat": ["vethA", "02:00:00:00:00:0a"]}]}},
 {"set": {"family": "bridge", "name": "src4", "table": "isolation", "type": ["ifname", "ipv4_addr"], "handle": 6, "elem": [{"concat": ["vethA", "10.77.1.2"]}]}},
 {"set": {"family": "bridge", "name": "src6", "table": "isolation", "type": ["ifname", "ipv6_addr"], "handle": 7, "elem": [{"concat": ["vethA", "fd77:1::2"]}]}},
 {"set": {"family": "bridge", "name": "tports", "table": "isolation", "type": "ifname", "handle": 8}},
 {"set": {"family": "bridge", "name": "tenanted", "table": "isolation", "type": "ifname", "handle": 9}},
 {"set": {"family": "bridge", "name": "tpair", "table": "isolation", "type": ["ifname", "ifname"], "handle": 10}},
 {"set": {"family": "bridge", "name": "taddr4", "table": "isolation", "type": "ipv4_addr", "handle": 11}},
 {"set": {"family": "bridge", "name": "taddr6", "table": "isolation", "type": "ipv6_addr", "handle": 12}},
 {"set": {"family": "bridge", "name": "tok4", "table": "isolation", "type": ["ifname", "ipv4_addr"], "handle": 13}},
 {"set": {"family": "bridge", "name": "tok6", "table": "isolation", "type": ["ifname", "ipv6_addr"], "handle": 14}},
 {"set": {"family": "bridge", "name": "maddr4", "table": "isolation", "type": "ipv4_addr", "handle": 210}},
 {"set": {"family": "bridge", "name": "maddr6", "table": "isolation", "type": "ipv6_addr", "handle": 211}},
 {"set": {"family": "bridge", "name": "tcross4", "table": "isolation", "type": ["ifname", "ipv4_addr"], "handle": 212}},
 {"set": {"family": "bridge", "name": "tcross6", "table": "isolation", "type": ["ifname", "ipv6_addr"], "handle": 213}},
 {"set": {"family": "bridge", "name": "xaddr4", "table": "isolation", "type": "ipv4_addr", "handle": 214}},
 {"set": {"family": "bridge", "name": "xaddr6", "table": "isolation", "type": "ipv6_addr", "handle": 215}},
 {"set": {"family": "bridge", "name": "xok4", "table": "isolation", "type": ["ifname", "ipv4_addr"], "handle": 216}},
 {"set": {"family": "bridge", "name": "xok6", "table": "isolation", "type": ["ifname", "ipv6_addr"], "handle": 217}},
 {"set": {"family": "bridge", "name": "flows4", "table": "isolation", "type": ["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"], "handle": 15, "flags": ["timeout"], "timeout": 60}},
 {"set": {"family": "bridge", "name": "flows6", "table": "isolation", "type": ["ipv6_addr", "ipv6_addr", "inet_proto", "inet_service"], "handle": 16, "flags": ["timeout"], "timeout": 60}},
 {"set": {"family": "bridge", "name": "other4", "table": "isolation", "type": ["ipv4_addr", "ipv4_addr", "inet_proto"], "handle": 17, "flags": ["timeout"], "timeout": 60}},
 {"set": {"family": "bridge", "name": "other6", "table": "isolation", "type": ["ipv6_addr", "ipv6_addr", "inet_proto"], "handle": 18, "flags": ["timeout"], "timeout": 60}},
 {"set": {"family": "bridge", "name": "frames", "table": "isolation", "type": ["ifname", "ether_addr", "ether_type"], "handle": 19, "flags": ["timeout"], "timeout": 60}},
 {"map": {"family": "bridge", "name": "logspoof", "table": "isolation", "type": "ifname", "handle": 20, "map": "verdict"}},
 {"map": {"family": "bridge", "name": "logtenant", "table": "isolation", "type": "ifname", "handle": 21, "map": "verdict"}},
 {"map": {"family": "bridge", "name": "count-anti-spoofing", "table": "isolation", "type": "ifname", "handle": 22, "map": "counter", "elem": [["vethA", "anti-spoofing-brA"]]}},
 {"map": {"family": "bridge", "name": "count-cross-tenant", "table": "isolation", "type": "ifname", "handle": 23, "map": "counter"}},
 {"map": {"family": "bridge", "name": "count-intra-bridge", "table": "isolation", "type": "ifname", "handle": 24, "map": "counter"}},
 {"chain": {"family": "bridge", "table": "isolation", "name": "prerouting", "handle": 25, "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}},
 {"chain": {"family": "bridge", "table": "isolation", "name": "forward", "handle": 26, "type": "filter", "hook": "forward", "prio": -300, "policy": "accept"}},
 {"chain": {"family": "bridge", "table": "isolation", "name": "input", "handle": 27, "type": "filter", "hook": "input", "prio": -300, "policy": "accept"}},
 {"chain": {"family": "bridge", "table": "isolation", "name": "output", "handle": 226, "type": "filter", "hook": "output", "prio": -300, "policy": "accept"}},
 {"chain": {"family": "bridge", "table": "isolation", "name": "drop-anti-spoofing", "handle": 28}},
 {"chain": {"family": "bridge", "table": "isolation", "name": "drop-cross-tenant", "handle": 29}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 30, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ether", "field": "daddr"}}, "right": "@intramac"}}, {"counter": {"map": {"key": {"meta": {"key": "iifname"}}, "data": "@count-intra-bridge"}}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 31, "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "@guarded"}}, {"return": null}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 32, "expr": [{"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "ether", "field": "saddr"}}]}, "right": "@mac"}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 34, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "ether", "field": "type"}}, "right": {"set": ["ip", "arp", "ip6"]}}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 35, "expr": [{"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "arp", "field": "saddr ether"}}]}, "right": "@mac"}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 36, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "arp", "field": "saddr ip"}}, "right": "0.0.0.0"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "arp", "field": "saddr ip"}}]}, "right": "@src4"}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 37, "expr": [{"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "ip", "field": "saddr"}}]}, "right": "@src4"}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 39, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": {"set": ["::", {"prefix": {"addr": "fe80::", "len": 64}}]}}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "ip6", "field": "saddr"}}]}, "right": "@src6"}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 40, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "::"}}, {"match": {"op": "!=", "left": {"meta": {"key": "l4proto"}}, "right": "ipv6-icmp"}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 42, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-router-advert", "nd-redirect"]}}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 44, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert"]}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "nexthdr"}}, "right": "ipv6-icmp"}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 47, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "length"}}, "right": {"set": [24, 32]}}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 49, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": "nd-router-solicit"}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "length"}}, "right": {"set": [8, 16]}}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 50, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": "nd-neighbor-advert"}}, {"match": {"op": "!=", "left": {"payload": {"base": "th", "offset": 64, "len": 64}}, "right": -108086391056891904}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"base": "th", "offset": 64, "len": 128}}]}, "right": "@nd6"}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 51, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": "nd-neighbor-advert"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "length"}}, "right": 32}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"base": "th", "offset": 192, "len": 64}}]}, "right": "@ndopt"}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 52, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": "nd-neighbor-solicit"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "length"}}, "right": 32}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "::"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"base": "th", "offset": 192, "len": 64}}]}, "right": "@ndopt"}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 53, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": "nd-neighbor-solicit"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "length"}}, "right": 32}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "::"}}, {"match": {"op": "!=", "left": {"payload": {"base": "th", "offset": 192, "len": 16}}, "right": 3585}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "prerouting", "handle": 54, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": "nd-router-solicit"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "length"}}, "right": 16}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"base": "th", "offset": 64, "len": 64}}]}, "right": "@ndopt"}}, {"goto": {"target": "drop-anti-spoofing"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "forward", "handle": 55, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@tports"}}, {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@tenanted"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}]}, "right": "@tpair"}}, {"goto": {"target": "drop-cross-tenant"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "forward", "handle": 56, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@tenanted"}}, {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@tports"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}]}, "right": "@tpair"}}, {"goto": {"target": "drop-cross-tenant"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "input", "handle": 220, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@tports"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@taddr4"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "ip", "field": "daddr"}}]}, "right": "@tok4"}}, {"goto": {"target": "drop-cross-tenant"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "input", "handle": 221, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@tenanted"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@maddr4"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "ip", "field": "daddr"}}]}, "right": "@tok4"}}, {"goto": {"target": "drop-cross-tenant"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "input", "handle": 222, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@xaddr4"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "ip", "field": "daddr"}}]}, "right": "@xok4"}}, {"goto": {"target": "drop-cross-tenant"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "input", "handle": 223, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@tports"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "@taddr6"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "ip6", "field": "daddr"}}]}, "right": "@tok6"}}, {"goto": {"target": "drop-cross-tenant"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "input", "handle": 224, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@tenanted"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "@maddr6"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "ip6", "field": "daddr"}}]}, "right": "@tok6"}}, {"goto": {"target": "drop-cross-tenant"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "input", "handle": 225, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "@xaddr6"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "ip6", "field": "daddr"}}]}, "right": "@xok6"}}, {"goto": {"target": "drop-cross-tenant"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "output", "handle": 227, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@taddr4"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "oifname"}}, {"payload": {"protocol": "ip", "field": "daddr"}}]}, "right": "@tok4"}}, {"goto": {"target": "drop-cross-tenant"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "output", "handle": 229, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@tenanted"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@maddr4"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "oifname"}}, {"payload": {"protocol": "ip", "field": "daddr"}}]}, "right": "@tok4"}}, {"goto": {"target": "drop-cross-tenant"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "output", "handle": 228, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "@taddr6"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "oifname"}}, {"payload": {"protocol": "ip6", "field": "daddr"}}]}, "right": "@tok6"}}, {"goto": {"target": "drop-cross-tenant"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "output", "handle": 230, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@tenanted"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "@maddr6"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "oifname"}}, {"payload": {"protocol": "ip6", "field": "daddr"}}]}, "right": "@tok6"}}, {"goto": {"target": "drop-cross-tenant"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "drop-anti-spoofing", "handle": 59, "expr": [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@logspoof"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "drop-anti-spoofing", "handle": 60, "expr": [{"counter": {"map": {"key": {"meta": {"key": "iifname"}}, "data": "@count-anti-spoofing"}}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "drop-anti-spoofing", "handle": 61, "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "drop-cross-tenant", "handle": 62, "expr": [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@logtenant"}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "drop-cross-tenant", "handle": 63, "expr": [{"counter": {"map": {"key": {"meta": {"key": "iifname"}}, "data": "@count-cross-tenant"}}}]}},
 {"rule": {"family": "bridge", "table": "isolation", "chain": "drop-cross-tenant", "handle": 64, "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}
]""")


def test_listing_of_the_anti_spoofing_table_is_intact_and_its_elements_read_back():
    from plugin.backends.nftables import bridge_plan, spoof_elements

    state = TableState.parse(BRIDGE_LISTING, BRIDGE)
    spoof = Spoof("vethA", SPOOF0.mac, SPOOF0.ips)
    assert state.exists and state.intact
    assert state.elements == spoof_elements([spoof]) | {"count-anti-spoofing": {("vethA", "anti-spoofing-brA")},
                                                         "count-intra-bridge": set(), "count-cross-tenant": set(),
                                                         "logspoof": set(), "logtenant": set()}
    assert state.counters == {"anti-spoofing-brA": 0}
    assert bridge_plan(state, spoof_elements([spoof]), BRIDGE) == []
    assert problems({"bridge": state}, desired([intent_for("brA", "open", "vethA", spoof=spoof)])) == []
    # another port registered: only its elements are added; those of vethA, which no registered
    # attachment names (a damaged registry may have lost it), stay
    other = Spoof("vethC", "02:00:00:00:00:0c", ("10.77.1.4",))
    cmds = bridge_plan(state, spoof_elements([other]), BRIDGE)
    assert {c["add"]["element"]["name"] for c in cmds if "add" in c} == {"guarded", "mac", "ndopt", "src4"}
    assert not [c for c in cmds if "delete" in c], cmds
    # vethA registered again with another IPv4 address: its old address goes, the rest stays
    moved = Spoof("vethA", SPOOF0.mac, ("10.77.1.9", "fd77:1::2"))
    cmds = bridge_plan(state, spoof_elements([moved]), BRIDGE)
    assert [c["delete"]["element"] for c in cmds if "delete" in c] == [
        {"family": "bridge", "table": "isolation", "name": "src4", "elem": [{"concat": ["vethA", "10.77.1.2"]}]}]
    # a rule opened by hand: the table is rebuilt (its typeof sets declared by text first)
    opened = [{"rule": {**o["rule"], "expr": [{"accept": None}]}} if "rule" in o and o["rule"]["handle"] == 31 else o
              for o in BRIDGE_LISTING]
    rebuilt = bridge_plan(TableState.parse(opened, BRIDGE), spoof_elements([spoof]), BRIDGE)
    assert rebuilt[0] == {"text": "delete table bridge isolation\nadd table bridge isolation\n"
                                  "add set bridge isolation nd6 { typeof iifname . @th,64,128 ; }\n"
                                  "add set bridge isolation ndopt { typeof iifname . @th,192,64 ; }"}
def _grouped(*bridges: str) -> TableState:
    state = intact(*bridges)
    state.elements["peers"] = {(a, b) for a in bridges for b in bridges if a != b}
    return state


def test_a_group_left_loses_its_pairs_once_its_old_attachments_leave(golden):
    """brA, brB and brC share a group; brA's last attachment of that configuration leaves
    while a newer one (no group) stays: brA's pairs go, brB . brC stays. With brA still in
    a group with brC (another old attachment, say), only the pairs with brB go."""
    state = _grouped("brA", "brB", "brC")
    pair = load("nftables/release-group-left.jsonl")
    with_c = [{"delete": {"element": {"family": "inet", "table": "isolation", "name": "peers",
                                      "elem": [{"concat": list(p)}]}}} for p in (("brA", "brC"), ("brC", "brA"))]
    assert release_plan({"inet": state}, Release(bridge="brA", peers=frozenset(), guard=NO_GUARD)) == [
        pair[0], with_c[0], pair[1], with_c[1]]
    kept_c = Release(bridge="brA", peers=frozenset({"brC"}), guard=NO_GUARD)
    golden.check("nftables/release-group-left.jsonl", release_plan({"inet": state}, kept_c))


def test_grants_nobody_needs_are_named_and_go():
    from plugin.backends.nftables import surplus

    state = _grouped("brA", "brB")  # both published, paired
    intents = [intent_for("brA", "same-bridge", published=False), intent_for("brB", "same-bridge")]
    found = surplus(state, desired(intents), {"brA"})
    assert [text for text, _ in found] == [
        "brA . brB is in set inet isolation peers (brA reaches brB) though no registered attachment puts both "
        "in one isolationGroup",
        "brB . brA is in set inet isolation peers (brB reaches brA) though no registered attachment puts both "
        "in one isolationGroup",
        "brA is in set inet isolation published though no registered attachment of it has allowPublishedPorts",
    ]
    assert [c for _, cmds in found for c in cmds] == [
        {"delete": {"element": {"family": "inet", "table": "isolation", "name": "peers", "elem": [{"concat": ["brA", "brB"]}]}}},
        {"delete": {"element": {"family": "inet", "table": "isolation", "name": "peers", "elem": [{"concat": ["brB", "brA"]}]}}},
        {"delete": {"element": {"family": "inet", "table": "isolation", "name": "published", "elem": ["brA"]}}},
    ]
    assert surplus(state, desired(intents), {"brX"}) == []
    grouped = [intent_for("brA", "same-bridge", group="g"), intent_for("brB", "same-bridge", group="g")]
    assert surplus(state, desired(grouped), {"brA", "brB"}) == []
    # a full ADD (every attachment known) removes them; grants of unregistered bridges stay
    state.elements["peers"] |= {("brX", "brY"), ("brY", "brX")}
    deleted = [c["delete"]["element"] for c in plan({"inet": state}, desired(intents)) if "delete" in c]
    assert [(d["name"], d["elem"]) for d in deleted] == [
        ("peers", [{"concat": ["brA", "brB"]}]), ("peers", [{"concat": ["brB", "brA"]}]), ("published", ["brA"])]
    damaged = TableState(True, False, state.elements)
    rebuilt = {c["add"]["element"]["name"]: c["add"]["element"]["elem"] for c in plan({"inet": damaged}, desired(intents))
               if "element" in c.get("add", {})}
    assert rebuilt["peers"] == [{"concat": ["brX", "brY"]}, {"concat": ["brY", "brX"]}]
    assert rebuilt["published"] == ["brB"]


def test_an_exception_nobody_allows_is_named_by_its_rule():
    from plugin.backends.nftables import surplus

    extra = [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"return": None}]
    at = next(n for n, o in enumerate(LISTING) if "rule" in o and o["rule"]["chain"] == "host-brA" and o["rule"]["handle"] == 46)
    added = {"rule": {"family": "inet", "table": "isolation", "chain": "host-brA", "handle": 32, "expr": extra}}
    state = TableState.parse([*LISTING[:at + 1], added, *LISTING[at + 1:]], INET)
    intents = [intent_for("brA", "isolated", "vethA", group="g", guard=GUARD),
               intent_for("brB", "same-bridge", "vethB", published=False, group="g")]
    found = surplus(state, desired(intents), {"brA"})
    assert [text for text, _ in found] == [
        "chain inet isolation host-brA lets through what no registered attachment allows: tcp dport 22 return"]
    assert found[0][1][0] == {"flush": {"chain": {"family": "inet", "table": "isolation", "name": "host-brA"}}}


def test_add_only_never_rewrites_the_guard_of_a_group_peers_bridge():
    """An ADD knows every attachment of its own bridge, but of a bridge of its isolationGroup
    only those in the group (lifecycle's `related`). brB also carries a network outside the
    group that denies more: its merged guard (both ranges) must survive an ADD on brA, or
    that network's containers reach 192.168.0.0/16."""
    from plugin.backends.nftables import bridge_chains
    from plugin.policy import addition, merge

    in_group = intent_for("brB", "same-bridge", "vx", group="g", guard=Guard(("10.0.0.0/8",)))
    outside = intent_for("brB", "same-bridge", "vy", guard=Guard(("10.0.0.0/8", "192.168.0.0/16")))
    held = bridge_chains("brB", merge([in_group.guard, outside.guard]))
    terse = TableState(True, True, {n: set() for n in [*INET.sets, *INET.maps]}, dict(held))
    cmds = add_only_plan({"inet": terse}, addition(intent_for("brA", "same-bridge", "va", group="g"), [in_group]))
    touched = [c for c in cmds for verb in ("add", "flush", "delete") if "chain" in c.get(verb, {})
               or c.get(verb, {}).get("rule", {}).get("chain") in held]
    assert cmds is None or not touched, f"brB's guard chains rewritten from an ADD that knows half of brB: {touched}"


def test_counters_are_read_from_the_text_listing():
    """`list counters table ...` as nft 1.0.6 prints it; a table that is not there counts nothing."""
    from plugin.backends.nftables import add_counts, read_counters

    class Lib:
        def cmd(self, text):
            if "bridge" in text:
                return 1, "", "Error: No such file or directory"
            return 0, ("table inet isolation {\n\tcounter cross-network-cni-podman1 {\n\t\tpackets 7 bytes 588\n\t}\n"
                       "\tcounter egress-deny-br0 {\n\t\tpackets 2 bytes 120\n\t}\n\tcounter somebody-else {\n"
                       "\t\tpackets 9 bytes 9\n\t}\n}\n"), ""

    counts = read_counters(Lib(), "inet", "isolation")
    assert counts == {("cross-network", "cni-podman1"): 7, ("egress-deny", "br0"): 2}
    assert read_counters(Lib(), "bridge", "isolation") == {}
    found = {}
    add_counts(found, counts)
    add_counts(found, {("egress-deny", "br0"): 1})
    assert found == {"cni-podman1": {"cross-network": 7}, "br0": {"egress-deny": 3}}


def test_a_bridge_that_goes_takes_its_counters_and_the_ports_naming_them():
    """A bridge nothing is on any more (its last DEL, or an orphan whose registry lines were
    lost) lets go of its bridge-table counters, also where ports the registry never knew name
    them; another bridge's stay."""
    from plugin.backends.nftables import bridge_release

    elements = {"count-anti-spoofing": {("v1", "anti-spoofing-brA"), ("v9", "anti-spoofing-brA"),
                                        ("v2", "anti-spoofing-brB")},
                "count-intra-bridge": {("v1", "intra-bridge-brA"), ("v2", "intra-bridge-brB")},
                "guarded": {"v2"}}
    counters = {"anti-spoofing-brA": 3, "anti-spoofing-brB": 1, "intra-bridge-brA": 5, "intra-bridge-brB": 0}
    state = TableState(True, True, elements, counters=counters)
    cmds = bridge_release(state, Release(bridge="brA", forget=True), BRIDGE)
    assert [c["delete"]["element"]["elem"] for c in cmds if "element" in c["delete"]] == [["v1"], ["v9"], ["v1"]]
    assert [c["delete"]["counter"]["name"] for c in cmds if "counter" in c["delete"]] == [
        "anti-spoofing-brA", "intra-bridge-brA"]
    assert bridge_release(state, Release(bridge="brA"), BRIDGE) == [], "a bridge that stays keeps them"


def test_a_logging_bridge_gets_log_chains_for_its_reasons_and_loses_them_with_its_log():
    from plugin.policy import released

    # br0: isolated (cross-network and intra-bridge drops) with logDrops; br1: same-bridge, no log
    logging = intent_for("br0", "isolated", "veth0", log=True)
    quiet = intent_for("br1", "same-bridge", "veth1")
    cmds = plan({}, desired([logging, quiet]))
    chains = sorted(c["add"]["chain"]["name"] for c in cmds if "chain" in c.get("add", {}))
    assert [c for c in chains if c.startswith("log")] == ["logcross-br0", "logintra-br0"]
    limits = [c["add"]["limit"] for c in cmds if "limit" in c.get("add", {})]
    assert [(x["name"], x["rate"], x["burst"]) for x in limits] == [("log-br0", 10, 20)]
    logs = [x["log"] for c in cmds if "rule" in c.get("add", {}) for x in c["add"]["rule"]["expr"] if "log" in x]
    assert {(x["prefix"], x["group"]) for x in logs} == {("isolation cross-network br0", 1907),
                                                        ("isolation intra-bridge br0", 1907)}
    assert len(logs) == 8  # per chain: IPv4 and IPv6, with and without a destination port
    elements = {c["add"]["element"]["name"]: c["add"]["element"]["elem"] for c in cmds if "element" in c.get("add", {})}
    assert elements["logcross"] == [["br0", {"jump": {"target": "logcross-br0"}}]]
    assert "br1" not in json.dumps({k: v for k, v in elements.items() if k.startswith("log")})
    # the listing of that table (rules as written) is intact, and its log going takes chains and limit
    before, after = desired([logging, quiet]), desired([intent_for("br0", "isolated", "veth0"), quiet])
    r = released(before, after, "br0")
    assert r.logged == ()
    held = TableState(exists=True, intact=True, chains={n: [] for n in chains if n.startswith("log")},
                      elements={"logcross": {("br0", "logcross-br0")}, "logintra": {("br0", "logintra-br0")}},
                      limits={"log-br0"})
    gone = release_plan({"inet": held}, r)
    deleted = [next(iter(c["delete"].values()))["name"] for c in gone if "delete" in c and "element" not in c["delete"]]
    assert deleted == ["logcross-br0", "logintra-br0", "log-br0"], "the limit after the chains using it"
    assert [c["delete"]["element"]["name"] for c in gone if "element" in c.get("delete", {})] == ["logcross", "logintra"]


def test_check_counts_the_log_rules_as_part_of_the_layout():
    logging = desired([intent_for("brB", "same-bridge", "veth1", log=True)])
    state = TableState.parse(LISTING, INET)  # brB isolates there, without any log rule
    found = problems({"inet": state}, logging)
    assert "brB : jump logcross-brB is not in map inet isolation logcross" in found
    assert "chain inet isolation logcross-brB is missing" in found
    assert not any("logintra" in p or "logegress" in p or "loghost" in p for p in found), found  # reasons brB lacks


def _bridge_log_state(d) -> TableState:
    """The bridge table as plan() would leave it for `d` (intact; chains and limits as listed)."""
    from plugin.backends.nftables import bridge_elements, bridge_log_chains

    chains = bridge_log_chains(d)
    return TableState(exists=True, intact=True, elements=bridge_elements(d), chains=chains,
                      limits={f"log-{n.split('-', 1)[1]}" for n in chains})


def test_the_bridge_table_logs_anti_spoofing_and_tenant_drops_per_port_of_a_logging_bridge():
    """Issue 19: each port of a logging bridge jumps, per bridge-table reason, to its bridge's
    log chain there (with its own limit); a bridge without logDrops gets nothing of it."""
    spoof_b = Spoof("veth1", "02:00:00:00:00:0b", ("10.77.2.2",))
    logging = intent_for("br0", "same-bridge", "veth0", spoof=SPOOF0, log=True, tenant="t1")
    quiet = intent_for("br1", "same-bridge", "veth1", spoof=spoof_b, tenant="t2")
    cmds = plan({}, desired([logging, quiet]))
    bridge_cmds = [c for c in cmds if json.dumps(c).count('"family": "bridge"')]
    chains = [c["add"]["chain"]["name"] for c in bridge_cmds if "chain" in c.get("add", {})]
    assert [c for c in chains if c.startswith("log")] == ["logspoof-br0", "logtenant-br0"]
    limits = [c["add"]["limit"] for c in bridge_cmds if "limit" in c.get("add", {})]
    assert [(x["name"], x["rate"], x["burst"]) for x in limits] == [("log-br0", 10, 20)]
    elements = {c["add"]["element"]["name"]: c["add"]["element"]["elem"] for c in bridge_cmds
                if "element" in c.get("add", {})}
    assert elements["logspoof"] == [["veth0", {"jump": {"target": "logspoof-br0"}}]]
    assert elements["logtenant"] == [["veth0", {"jump": {"target": "logtenant-br0"}}]]
    logs = {x["log"]["prefix"] for c in bridge_cmds if "rule" in c.get("add", {}) for x in c["add"]["rule"]["expr"]
            if "log" in x}
    assert logs == {"isolation anti-spoofing br0", "isolation cross-tenant br0"}
    assert "br1" not in json.dumps([c for c in bridge_cmds if "log" in json.dumps(c)])
    # intact: nothing to do; a log chain or a port's jump missing is damage CHECK reports
    d = desired([logging, quiet])
    from plugin.record import replace

    def bridge_problems(state):  # (the inet table is not under test here)
        return [p for p in problems({"bridge": state}, d) if "bridge isolation" in p]

    state = _bridge_log_state(d)
    assert [c for c in plan({"bridge": state}, d) if json.dumps(c).count('"family": "bridge"')] == []
    assert bridge_problems(state) == []
    broken = replace(state, chains={k: v for k, v in state.chains.items() if k != "logspoof-br0"})
    assert bridge_problems(broken) == ["chain bridge isolation logspoof-br0 is missing"]
    unjumped = replace(state, elements={**state.elements, "logtenant": set()})
    assert bridge_problems(unjumped) == ["veth0 : jump logtenant-br0 is not in map bridge isolation logtenant"]


def test_the_bridge_tables_log_goes_with_its_port_and_with_the_bridges_last_logging_attachment():
    from plugin.policy import released

    spoof_c = Spoof("veth2", "02:00:00:00:00:0c", ("10.77.1.3",))
    a = intent_for("br0", "same-bridge", "veth0", spoof=SPOOF0, log=True)
    c = intent_for("br0", "same-bridge", "veth2", spoof=spoof_c, log=True)
    quiet = intent_for("br0", "same-bridge", "veth2", spoof=spoof_c)
    # one of two logging ports leaves: only its jump goes, the chain and limit stay
    both = desired([a, c])
    cmds = release_plan({"bridge": _bridge_log_state(both)}, released(both, desired([c]), "br0"))
    assert [x["delete"]["element"]["elem"] for x in cmds if x["delete"].get("element", {}).get("name") == "logspoof"] \
        == [["veth0"]]
    assert not [x for x in cmds if "chain" in x["delete"] or "limit" in x["delete"]]
    # the logging attachment leaves, a quiet one stays: every jump, then the chain, then the limit go
    mixed = desired([a, quiet])
    cmds = release_plan({"bridge": _bridge_log_state(mixed)}, released(mixed, desired([quiet]), "br0"))
    tail = [next(iter(x["delete"])) for x in cmds][-2:]
    assert tail == ["chain", "limit"], cmds
    assert {"delete": {"element": {"family": "bridge", "table": "isolation", "name": "logspoof", "elem": ["veth0"]}}} \
        in cmds
    # the last attachment: the whole table
    one = desired([a])
    assert release_plan({"bridge": _bridge_log_state(one)}, released(one, desired([]), "br0")) == [
        {"delete": {"table": {"family": "bridge", "name": "isolation"}}}]


def test_cleanup_of_a_logging_bridge_takes_its_ports_jumps_then_its_log_chains_then_its_limit():
    from plugin.backends.nftables import spoof_cleanup

    spoof_c = Spoof("veth2", "02:00:00:00:00:0c", ("10.77.2.3",))
    d = desired([intent_for("br0", "same-bridge", "veth0", spoof=SPOOF0, log=True),
                 intent_for("br2", "same-bridge", "veth2", spoof=spoof_c, log=True)])
    cmds = spoof_cleanup(_bridge_log_state(d), {"veth0"}, BRIDGE, "br0")
    assert cmds[0] == ["nft", "delete", "element", "bridge", "isolation", "logspoof", "{", '"veth0"', "}"]
    assert cmds[-2:] == [["nft", "delete", "chain", "bridge", "isolation", "logspoof-br0"],
                         ["nft", "delete", "limit", "bridge", "isolation", "log-br0"]]
    assert "br2" not in json.dumps(cmds) and "veth2" not in json.dumps(cmds)  # the other bridge keeps its log


def test_an_add_onto_a_bridge_table_without_its_log_chains_adds_them_before_its_jumps():
    """The ADD's add-only path: a logging bridge's first ADD where the bridge table exists
    (another network's anti-spoofing) adds the limit and log chain, then the port's jump."""
    spoof_b = Spoof("veth1", "02:00:00:00:00:0b", ("10.77.2.2",))
    there = _bridge_log_state(desired([intent_for("br1", "same-bridge", "veth1", spoof=spoof_b)]))
    addition = desired([intent_for("br0", "same-bridge", "veth0", spoof=SPOOF0, log=True)])
    cmds = add_only_plan({"inet": TableState(exists=True, intact=True), "bridge": there}, addition)
    ours = [c for c in cmds if '"family": "bridge"' in json.dumps(c)]
    kinds = [(verb, next(iter(c[verb]))) for c in ours for verb in c]
    assert kinds[:2] == [("add", "limit"), ("add", "chain")], kinds
    jump = [i for i, c in enumerate(ours) if c.get("add", {}).get("element", {}).get("name") == "logspoof"]
    assert jump and all(k == ("add", "rule") for k in kinds[2:jump[0]] if k[1] not in ("counter", "element")), kinds
    assert ours[jump[0]]["add"]["element"]["elem"] == [["veth0", {"jump": {"target": "logspoof-br0"}}]]


def test_internal_and_direct_access_drops_are_logged_by_the_internal_and_the_receiving_bridge():
    """By hand: drop-internal jumps to the internal bridge's log chain by either side of the
    packet (iifname, then oifname: the flow sets keep a second internal bridge's chain from
    logging the same packet again), drop-direct-access by the bridge it was going into; only
    logging bridges are in the maps (br2 is internal without logDrops)."""
    chains = dict(INET.chains)
    assert chains["drop-internal"][1][:2] == [
        [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@loginternal"}}],
        [{"vmap": {"key": {"meta": {"key": "oifname"}}, "data": "@loginternal"}}]]
    assert chains["drop-direct-access"][1][0] == [{"vmap": {"key": {"meta": {"key": "oifname"}}, "data": "@logdirect"}}]
    cmds = plan({}, desired([intent_for("br0", "same-bridge", "veth0", guard=Guard(host_deny=True, internal=True),
                                        log=True),
                             intent_for("br1", "open", "veth1", guard=Guard(direct_deny=True), log=True),
                             intent_for("br2", "same-bridge", "veth2", guard=Guard(host_deny=True, internal=True))]))
    elements = {c["add"]["element"]["name"]: c["add"]["element"]["elem"] for c in cmds if "element" in c.get("add", {})}
    assert elements["loginternal"] == [["br0", {"jump": {"target": "loginternal-br0"}}]]
    assert elements["logdirect"] == [["br1", {"jump": {"target": "logdirect-br1"}}]]
    logs = {x["log"]["prefix"] for c in cmds if "rule" in c.get("add", {}) for x in c["add"]["rule"]["expr"] if "log" in x}
    assert {p for p in logs if "internal" in p or "direct" in p} == {"isolation internal br0",
                                                                    "isolation direct-access br1"}
