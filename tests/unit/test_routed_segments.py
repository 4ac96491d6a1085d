"""Routed segments (networks chained after `ptp`: no bridge, a host-side veth per container):
the policy layer, both backends' rendering and release, and explain.

Segment S ("rt.n1") has members m1, m2 (veths); bridge br is a bridge network. Expected
elements and rules are written by hand from the layouts (nftables: the members stand in
the sets where a bridge's name would; iptables: a bridge's rules, written per member).
"""

from plugin.backends import iptables as ipt
from plugin.backends import nftables as nft
from plugin.explain import Probe, answer, find_source
from plugin.links import valid_name
from plugin.policy import NO_GUARD, Guard, desired, intent_for, release, segment_of
from plugin.registry import Attachment

S = "rt.n1"


def routed(port, policy="same-bridge", group=None, guard=NO_GUARD, bridge=S):
    return intent_for(bridge, policy, port, group=group, guard=guard, routed=True)


def test_segment_names_are_interface_shaped():
    assert segment_of("n1") == "rt.n1"
    long = segment_of("a-network-name-longer-than-an-interface")
    assert valid_name(long) and long.startswith("rt.") and long != segment_of("another-long-network-name-here")


def test_members_stand_for_the_segment_and_carry_no_bridge_port_flag():
    needs = desired([routed("m1", "isolated"), routed("m2", "isolated")]).get(S)
    assert needs.routed and needs.interfaces == ("m1", "m2") and needs.flagged == ()


def test_nftables_elements_of_a_segment_and_a_bridge_in_one_group():
    want = nft.wanted(desired([routed("m1", group="g"), routed("m2", group="g"),
                               intent_for("br", "same-bridge", "vb", group="g")]))["inet"]
    assert want["isolated"] == {"m1", "m2", "br"}
    assert want["self"] == {("m1", "m1"), ("m1", "m2"), ("m2", "m1"), ("m2", "m2"), ("br", "br")}
    assert want["peers"] == {("m1", "br"), ("m2", "br"), ("br", "m1"), ("br", "m2")}
    assert want["count-cross-network"] == {("m1", "cross-network-rt.n1"), ("m2", "cross-network-rt.n1"),
                                           ("br", "cross-network-br")}
    assert want["intra"] == set()


def test_nftables_guard_of_a_segment_is_reached_from_each_member():
    want = nft.wanted(desired([routed("m1", guard=Guard(host_deny=True)), routed("m2", guard=Guard(host_deny=True))]))
    assert want["inet"]["host"] == {("m1", "host-rt.n1"), ("m2", "host-rt.n1")}


def _att(port, container, policy="same-bridge"):
    return Attachment("n1", container, "eth0", S, port, policy, "nftables", (), routed=True)


def test_a_departing_member_takes_its_elements_only():
    a1, a2 = _att("m1", "c1", "isolated"), _att("m2", "c2", "isolated")
    r = release(a2, [a1])
    assert r.routed and r.members == ("m2",) and not r.isolate and not r.last
    state = nft.TableState(exists=True, intact=True, counters={"cross-network-rt.n1": 3, "intra-bridge-rt.n1": 1},
                           elements=nft.wanted(desired([routed("m1", "isolated"), routed("m2", "isolated")]))["inet"])
    cmds = nft.release_plan({"inet": state}, r)
    gone = sorted(str(c["delete"]["element"]["elem"]) + c["delete"]["element"]["name"] for c in cmds)
    assert len(cmds) == 8, cmds  # isolated, intra, published, 3 self pairs, 2 counter map entries; counters stay
    assert all("m2" in g for g in gone)
    alone = nft.TableState(exists=True, intact=True, elements=nft.wanted(desired([routed("m1", "isolated")]))["inet"])
    assert nft.release_plan({"inet": alone}, release(a1, [])) == [
        {"delete": {"table": {"family": "inet", "name": "isolation"}}}]  # the last member: the table goes
    # while the table still names another segment's member, only m1's elements go
    kept = nft.release_plan({"inet": state}, release(a1, []))
    assert kept and all("m1" in str(c) or "counter" in c["delete"] for c in kept)


def test_iptables_segment_rules_are_a_bridges_per_member():
    needs = desired([routed("m1"), routed("m2")]).get(S)
    rules = ipt.bridge_rules(needs, "ipv4")
    assert rules[ipt.STAGE1] == [
        ["-i", "m1", "-o", "m1", "-j", "RETURN"], ["-i", "m1", "-o", "m2", "-j", "RETURN"],
        ["-i", "m1", *ipt.PUBLISHED_OUT], ["-i", "m1", "-j", ipt.STAGE2],
        ["-i", "m2", "-o", "m1", "-j", "RETURN"], ["-i", "m2", "-o", "m2", "-j", "RETURN"],
        ["-i", "m2", *ipt.PUBLISHED_OUT], ["-i", "m2", "-j", ipt.STAGE2]]
    assert rules[ipt.STAGE2] == [["-o", "m1", *ipt.PUBLISHED_IN], ["-o", "m1", "-j", "DROP"],
                                 ["-o", "m2", *ipt.PUBLISHED_IN], ["-o", "m2", "-j", "DROP"]]
    isolated = ipt.bridge_rules(desired([routed("m1", "isolated"), routed("m2", "isolated")]).get(S), "ipv4")
    assert ["-i", "m1", "-o", "m2", "-j", "DROP"] in isolated[ipt.STAGE1]


def test_explain_routed_same_network():
    same = [_att("m1", "c1"), _att("m2", "c2")]
    same[0] = Attachment("n1", "c1", "eth0", S, "m1", "same-bridge", "nftables", ("10.1.0.2/24",), routed=True)
    same[1] = Attachment("n1", "c2", "eth0", S, "m2", "same-bridge", "nftables", ("10.1.0.3/24",), routed=True)
    out, _, _ = answer(find_source("m1", same), Probe("10.1.0.3", "tcp", 80), same, set(), [])
    assert (out["verdict"], out["cause"]) == ("pass", "same routed network rt.n1")
    iso = [Attachment(a.network, a.container, a.ifname, a.bridge, a.port, "isolated", a.backend, a.addresses,
                      routed=True) for a in same]
    out, _, _ = answer(find_source("m1", iso), Probe("10.1.0.3", "tcp", 80), iso, set(), [])
    assert (out["verdict"], out["reason"], out["key"]) == ("drop", "intra-bridge", "ingressPolicy")


INTERNAL = Guard(internal=True, host_deny=True)
CLOSED = Guard(direct_deny=True, trusted=("wg0",))


def test_iptables_internal_segment_holds_every_pair_then_each_members_drops():
    """Pairs first (so no member's traffic to another meets the closing drops), then a
    bridge's internal drops per member; its host is closed per member."""
    needs = desired([routed("m1", "open", guard=INTERNAL), routed("m2", "open", guard=INTERNAL)]).get(S)
    rules = ipt.bridge_rules(needs)
    assert rules[ipt.STAGE1] == [
        ["-i", "m1", "-o", "m1", "-j", "RETURN"], ["-i", "m1", "-o", "m2", "-j", "RETURN"],
        ["-i", "m2", "-o", "m1", "-j", "RETURN"], ["-i", "m2", "-o", "m2", "-j", "RETURN"],
        ["-i", "m1", "!", "-o", "m1", "-j", "DROP"], ["!", "-i", "m1", "-o", "m1", "-j", "DROP"],
        ["-i", "m2", "!", "-o", "m2", "-j", "DROP"], ["!", "-i", "m2", "-o", "m2", "-j", "DROP"]]
    assert rules[ipt.HOST][-1] == ["-i", "m2", "-j", "DROP"] and ["-i", "m1", "-j", "DROP"] in rules[ipt.HOST]
    assert rules[ipt.DIRECT] == [] and rules[ipt.STAGE2] == []
    # its drops count for the member, which status adds up as the segment's
    assert ipt.drop_reason(ipt.STAGE1, ["!", "-i", "m2", "-o", "m2", "-j", "DROP"]) == ("internal", "m2")
    assert ipt.drop_reason(ipt.STAGE1, ["-i", "m1", "!", "-o", "m1", "-j", "DROP"]) == ("internal", "m1")


def test_iptables_closed_segment_lets_in_members_of_managed_networks_trusted_and_replies_only():
    """directAccess deny: the jump per member after every pair; each member's group in DIRECT
    lets in the managed networks' interfaces (a bridge, another segment's members, not its
    own: their pairs returned), its trusted interface, replies and published ports."""
    d = desired([routed("m1", guard=CLOSED), routed("m2", guard=CLOSED),
                 routed("x1", "open", guard=Guard(host_deny=True), bridge="rt.n2"),
                 routed("y1", "open", bridge="rt.n3"), intent_for("br", "same-bridge", "vb")])
    assert sorted(ipt.managed_bridges(d)) == ["br", "m1", "m2", "x1"]  # y1: open and unguarded
    rules = ipt.wanted(d)
    stage1 = next(g for g in rules[ipt.STAGE1] if ["-i", "m1", "-o", "m2", "-j", "RETURN"] in g)
    assert stage1[:6] == [["-i", "m1", "-o", "m1", "-j", "RETURN"], ["-i", "m1", "-o", "m2", "-j", "RETURN"],
                          ["-i", "m2", "-o", "m1", "-j", "RETURN"], ["-i", "m2", "-o", "m2", "-j", "RETURN"],
                          ["!", "-i", "m1", "-o", "m1", "-j", ipt.DIRECT],
                          ["!", "-i", "m2", "-o", "m2", "-j", ipt.DIRECT]]
    direct = next(g for g in rules[ipt.DIRECT] if ["-o", "m1", "-j", "DROP"] in g)
    for m in ("m1", "m2"):
        assert [r for r in direct if r[r.index("-o") + 1] == m] == [
            ["-o", m, *ipt.ESTABLISHED], ["-o", m, *ipt.PUBLISHED_IN], ["-i", "br", "-o", m, "-j", "RETURN"],
            ["-i", "x1", "-o", m, "-j", "RETURN"], ["-i", "wg0", "-o", m, "-j", "RETURN"], ["-o", m, "-j", "DROP"]]
    assert ipt.drop_reason(ipt.DIRECT, ["-o", "m2", "-j", "DROP"]) == ("direct-access", "m2")


def test_iptables_a_departing_member_of_a_closed_segment_takes_its_rules_only():
    d = desired([routed("m1", guard=INTERNAL), routed("m2", guard=INTERNAL)])
    table = ipt.FilterTable({c: [ipt._tagged(r) for g in groups for r in g] for c, groups in ipt.wanted(d).items()})
    r = release(_att("m2", "c2"), [_att("m1", "c1")])
    lines = ipt.release_plan(table, r)
    assert lines and all(" m2 " in line for line in lines), lines
    assert any("! -i m2 -o m2" in line for line in lines) and any("-i m2 ! -o m2" in line for line in lines)


def _member(net, ctr, port, address, guard=None, policy="same-bridge", backend="iptables", routed_=True):
    return Attachment(net, ctr, "eth0", segment_of(net) if routed_ else net, port, policy, backend, (address,),
                      guard=guard.to_json() if guard else None, routed=routed_)


def test_explain_internal_routed_network_names_each_members_rule():
    """Members of an internal segment reach each other (routed by the host) and nothing else;
    on iptables the drop is the member's own rule, not the segment's name."""
    atts = [_member("n1", "c1", "m1", "10.1.0.2/24", INTERNAL), _member("n1", "c2", "m2", "10.1.0.3/24", INTERNAL),
            _member("n2", "c3", "m3", "10.2.0.2/24", policy="open")]
    hosts = {"10.1.0.1"}
    same, _, _ = answer(find_source("m1", atts), Probe("10.1.0.3", "tcp", 80), atts, hosts, [])
    assert (same["verdict"], same["cause"]) == ("pass", "same routed network rt.n1")
    out, _, _ = answer(find_source("m1", atts), Probe("10.2.0.2", "tcp", 80), atts, hosts, [])
    assert (out["verdict"], out["reason"], out["key"]) == ("drop", "internal", "internal")
    assert out["rule"] == "-A CNI-ISOLATION-STAGE-1 -i m1 ! -o m1 -j DROP"
    into, _, _ = answer(find_source("m3", atts), Probe("10.1.0.3", "icmp"), atts, hosts, [])
    assert (into["reason"], into["rule"]) == ("internal", "-A CNI-ISOLATION-STAGE-1 ! -i m2 -o m2 -j DROP")
    host, _, _ = answer(find_source("m2", atts), Probe("10.1.0.1", "tcp", 53), atts, hosts, [])
    assert (host["reason"], host["key"]) == ("host-access", "internal")
    assert host["rule"] == "-A CNI-ISOLATION-HOST -i m2 -j DROP"


def test_explain_closed_routed_network_lets_in_managed_segments_only():
    atts = [_member("n1", "c1", "m1", "10.1.0.2/24", CLOSED),
            _member("n2", "c2", "x1", "10.2.0.2/24", Guard(host_deny=True), policy="open"),
            _member("n3", "c3", "y1", "10.3.0.2/24", policy="open")]
    managed, _, _ = answer(find_source("x1", atts), Probe("10.1.0.2", "tcp", 80), atts, set(), [])
    assert managed["verdict"] == "pass", managed
    out, _, _ = answer(find_source("y1", atts), Probe("10.1.0.2", "tcp", 80), atts, set(), [])
    assert (out["verdict"], out["reason"], out["key"]) == ("drop", "direct-access", "directAccess")
    assert out["network"] == "n1"
    assert out["rule"].startswith("-A CNI-ISOLATION-DIRECT -o m1 -j DROP (reached by -A CNI-ISOLATION-STAGE-1 ! -i m1")


def test_explain_check_names_a_segments_members_where_it_looks():
    """explain --check's differences point at the members' elements and rules, not the segment."""
    from plugin.explain import ConfigView
    from plugin.kernelview import IptablesView, NftablesView

    config = ConfigView([_member("n1", "c1", "m1", "10.1.0.2/24", INTERNAL),
                         _member("n1", "c2", "m2", "10.1.0.3/24", INTERNAL)])
    nft_view, ipt_view = NftablesView.__new__(NftablesView), IptablesView.__new__(IptablesView)
    nft_view.config = ipt_view.config = config
    ipt_view.ipt, ipt_view.fam = ipt, "ipv4"
    assert nft_view.where("internal", (S,)) == "m1 and m2 in set inet isolation internal"
    assert nft_view.where("managed", (S,)) == "m1 . m1 and m2 . m2 in set inet isolation self"
    assert ipt_view.where("internal", (S,)) == "ipv4 CNI-ISOLATION-STAGE-1: -i M ! -o M -j DROP and ! -i M -o M " \
                                               "-j DROP (M: each member of rt.n1, m1, m2)"
