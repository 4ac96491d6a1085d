"""The policy layer's one desired-state value, and what a change of it frees (policy.desired,
policy.released and the Releases built from them). Pure: no kernel, no state directory."""

import pytest

from plugin.policy import (NO_GUARD, BridgeIntent, BridgeNeeds, Desired, Guard, Release, Spoof, addition, desired,
                           intent_for, orphan_release, port_only, released)

DENY_10 = Guard(deny=("10.0.0.0/8",))
DENY_172 = Guard(deny=("172.16.0.0/12",))


def spoof(port: str) -> Spoof:
    return Spoof(port, "02:00:00:00:00:01", ("10.0.0.2",))


def test_one_value_per_bridge_from_all_its_attachments():
    intents = [
        intent_for("brA", "same-bridge", "v1", group="g", guard=DENY_10),
        intent_for("brB", "open", "v2", guard=DENY_172),
        intent_for("brA", "isolated", "v3", published=False, guard=DENY_172, spoof=spoof("v3")),
        intent_for("brC", "same-bridge", "v4", group="g"),
        intent_for("brA", "isolated", "v3", spoof=spoof("v3")),  # the same port registered twice counts once
    ]
    d = desired(intents)
    assert list(d.bridges) == ["brA", "brB", "brC"], "in the order the attachments came"
    assert d.get("brA") == BridgeNeeds(bridge="brA", isolate=True, drop_intra=True, published=True,
                                       peers=frozenset({"brC"}), guard=Guard(deny=("10.0.0.0/8", "172.16.0.0/12")),
                                       spoofs=(spoof("v3"),), ports=("v1", "v3"))
    # an open network: no isolation, no published grant (it isolates nothing to grant past), its Guard still holds
    assert d.get("brB") == BridgeNeeds(bridge="brB", guard=DENY_172, ports=("v2",))
    assert d.get("brC").peers == {"brA"} and d.get("brA").flagged == ("v1", "v3") and d.get("brC").flagged == ()
    assert d.get("brX") == BridgeNeeds(bridge="brX") and not d.get("brX").enforces_anything
    assert d.enforces_anything and d.guarded and d.spoofs == (spoof("v3"),)
    assert desired([]) == Desired({}) and not desired([]).enforces_anything


@pytest.mark.parametrize("bridge,port", [("br-0;", None), ("br0", "-j ACCEPT"), ("a" * 16, None)])
def test_a_hostile_name_never_reaches_a_rendering(bridge, port):
    with pytest.raises(ValueError, match="refusing to render"):
        desired([BridgeIntent(bridge, True, False, port)])


def test_records_of_many_fields_take_them_by_name():
    with pytest.raises(TypeError, match="by name"):
        Release("br0", True, False)
    with pytest.raises(TypeError, match="by name"):
        BridgeNeeds("br0", True)
    assert Release(bridge="br0") == Release(bridge="br0", peers=None, guard=None), "the defaults take nothing"


def test_a_drop_goes_only_with_what_brought_it():
    stays = intent_for("br0", "same-bridge", "v1")
    leaves = intent_for("br0", "isolated", "v2")
    r = released(desired([stays, leaves]), desired([stays]), "br0")
    assert (r.isolate, r.drop_intra, r.within) == (False, True, False), "br0 still isolates: only the intra drop goes"
    assert r.unflag == ("v1",), "the port left on the bridge loses its isolation flag"
    # the other way round: the stricter attachment stays, nothing goes
    r = released(desired([stays, leaves]), desired([leaves]), "br0")
    assert (r.isolate, r.drop_intra, r.within, r.unflag) == (False, False, False, ())


def test_a_grant_goes_once_nothing_after_needs_it_whoever_made_it():
    unpublished = intent_for("br0", "same-bridge", "v1", published=False)
    r = released(desired([unpublished, intent_for("br0", "same-bridge", "v2", published=False)]),
                 desired([unpublished]), "br0")
    assert r.published, "nobody left grants published ports: the grant goes even though the leaver made none"
    r = released(desired([intent_for("br0", "same-bridge", group="g"), intent_for("br1", "same-bridge", group="g")]),
                 desired([intent_for("br0", "same-bridge"), intent_for("br1", "same-bridge", group="g")]), "br0")
    assert r.peers == frozenset() and r.guard == NO_GUARD


def test_what_all_bridges_share_goes_with_the_last_need_of_each_kind():
    guarded = intent_for("br0", "same-bridge", "v1", guard=DENY_10, spoof=spoof("v1"))
    plain = intent_for("br1", "open", "v2")
    r = released(desired([guarded, plain]), desired([plain]), "br0")
    assert r == Release(bridge="br0", isolate=True, within=True, published=True, peers=frozenset(), guard=NO_GUARD,
                        spoofs=(spoof("v1"),), logged=(), forget=True, last=True, last_guard=True, last_spoof=True)


def test_port_only_and_orphans_say_what_they_are():
    leaving = intent_for("br0", "isolated", "v1", spoof=spoof("v1"))
    whole = released(desired([leaving]), desired([]), "br0")
    assert port_only(whole) == Release(bridge="br0", spoofs=(spoof("v1"),)), "only the port's own elements"
    after = desired([intent_for("br1", "same-bridge", "v2", guard=DENY_10)])
    assert orphan_release("br9", after) == Release(
        bridge="br9", isolate=True, drop_intra=True, within=True, published=True, peers=frozenset(), guard=NO_GUARD,
        logged=(), forget=True, last_spoof=True)


def test_an_addition_counts_a_networks_hundreds_of_attachments_once():
    own = intent_for("br0", "isolated", "vnew", spoof=spoof("vnew"))
    related = [intent_for("br0", "isolated", f"v{i}", spoof=spoof(f"v{i}")) for i in range(300)]
    related.append(intent_for("br1", "same-bridge", "w1", group="g"))
    got = addition(own, related)
    assert got.get("br0").spoofs == (spoof("vnew"), spoof("v0")), "its own, and one neighbour's as a witness"
    assert got.get("br0").ports == ("vnew", "v0") and list(got.bridges) == ["br0", "br1"]
