"""The pure policy: intents per ingressPolicy, guards merged per bridge, shared needs, and
what a departing attachment releases."""

import pytest

from plugin.policy import intent_for
from fakes import attachment


def test_policies():
    assert (intent_for("b", "open").isolate, intent_for("b", "open").drop_intra) == (False, False)
    assert (intent_for("b", "same-bridge").isolate, intent_for("b", "same-bridge").drop_intra) == (True, False)
    assert (intent_for("b", "isolated").isolate, intent_for("b", "isolated").drop_intra) == (True, True)


def test_release_keeps_what_others_still_need():
    from plugin.policy import NO_GUARD, Release, release

    gone = attachment("br0", "isolated", "veth0", "c0")
    # another container stays on br0: nothing of the bridge goes
    assert release(gone, [attachment("br0", "isolated", "veth1", "c1")]) == Release(
        bridge="br0", peers=frozenset(), guard=NO_GUARD, logged=(), last_guard=True, last_spoof=True)
    # br0 empties, br1 (same-bridge) stays: br0's rules, its published-port exception and the
    # intra-bridge table go, not everything
    assert release(gone, [attachment("br1", "same-bridge", "veth1", "c1")]) == Release(
        bridge="br0", isolate=True, drop_intra=True, within=True, published=True, peers=frozenset(), guard=NO_GUARD,
        logged=(), forget=True, last_guard=True, last_spoof=True)
    # only an `open` attachment remains: nothing enforces anything any more
    assert release(gone, [attachment("br1", "open", "veth1", "c1")]) == Release(
        bridge="br0", isolate=True, drop_intra=True, within=True, published=True, peers=frozenset(), guard=NO_GUARD,
        logged=(), forget=True, last=True, last_guard=True, last_spoof=True)
    assert release(attachment("br0", "open", None), []).last


def test_release_of_anti_spoofing_and_of_the_isolation_flag():
    """A departing attachment's anti-spoofing elements go with it (the table with the last
    one); when the last `isolated` attachment leaves a bridge shared with another
    conflist's attachments, their ports lose the isolation flag."""
    from plugin.policy import Spoof, intent_of, release
    from plugin.registry import Attachment

    def att(container, port, policy="isolated", ips=("10.0.0.2",)):
        return Attachment("net", container, "eth0", "br0", port, policy, "nftables", mac="02:00:00:00:00:01",
                          spoof=ips)

    gone, stays = att("c0", "veth0"), att("c1", "veth1")
    assert intent_of(gone).spoof == Spoof("veth0", "02:00:00:00:00:01", ("10.0.0.2",))
    r = release(gone, [stays])
    assert r.spoofs == (Spoof("veth0", "02:00:00:00:00:01", ("10.0.0.2",)),) and not r.last_spoof and r.unflag == ()
    assert release(gone, []).last_spoof
    mixed = release(gone, [att("c2", "veth2", "same-bridge", None)])
    assert mixed.unflag == ("veth2",) and mixed.last_spoof
    assert intent_of(att("c3", "veth3", ips=None)).spoof is None


def test_release_takes_the_grants_no_remaining_attachment_needs():
    """Issue 14: a network that left its isolationGroup, or turned allowPublishedPorts off,
    keeps the old grant only while an attachment of the old configuration remains."""
    from plugin.policy import release
    from plugin.registry import Attachment

    def att(bridge, container, group=None, published=True):
        return Attachment("net", container, "eth0", bridge, None, "same-bridge", "nftables", (), published, group)

    old_a = att("brA", "old", group="g")
    b, d = att("brB", "b", group="g"), att("brD", "d", group="g")
    # A's conflist dropped the group; its new container stays, its old one leaves
    r = release(old_a, [att("brA", "new"), b, d])
    assert (r.isolate, r.peers) == (False, frozenset())
    # while another old-configuration container remains, the pairs stay
    assert release(old_a, [att("brA", "old2", group="g"), b, d]).peers == {"brB", "brD"}
    # A moved to group h, where brE is: only the pair with brE is still needed
    assert release(old_a, [att("brA", "new", group="h"), b, att("brE", "e", group="h")]).peers == {"brE"}
    # allowPublishedPorts turned off: the departing attachment was published, no remaining one is
    assert release(att("brA", "old"), [att("brA", "new", published=False)]).published
    assert not release(att("brA", "old"), [att("brA", "new")]).published
    # the departing one did not publish but nobody remaining does either: nothing to keep
    assert release(att("brA", "old", published=False), [att("brA", "new", published=False)]).published


def _guard(deny=(), allow=(), host_deny=False, ports=()):
    from plugin.policy import Guard

    return Guard(tuple(deny), tuple(allow), host_deny, tuple(ports))


def test_guards_of_one_bridge_merge_to_the_strictest():
    from plugin.policy import NO_GUARD, Hole, merge

    dns, web = Hole("udp", ("53",), "10.0.0.53/32"), Hole("tcp", ("80",), "10.0.0.80/32")
    first = _guard(["10.0.0.0/8"], [dns, web], True, [Hole("tcp", ("53",)), Hole("udp", ("53",))])
    second = _guard(["10.0.0.0/16", "192.168.0.0/16"], [dns], True, [Hole("udp", ("53",))])
    assert merge([first, first]) == first
    assert merge([first, NO_GUARD]) == first  # an attachment without a guard adds nothing
    assert merge([first, second]) == _guard(["10.0.0.0/8", "192.168.0.0/16"], [dns], True, [Hole("udp", ("53",))])
    assert merge([NO_GUARD, NO_GUARD]) == NO_GUARD


def test_guard_round_trips_through_the_registry_form():
    from plugin.policy import Guard, Hole

    g = _guard(["10.0.0.0/8", "fd00::/8"], [Hole("tcp", ("53", "80-90"), "10.0.0.53/32")], True, [Hole("icmp")])
    assert Guard.from_json(g.to_json()) == g
    assert Guard.from_json(None) == Guard() and Guard().to_json() is None


def test_shared_needs_collapse_a_bridges_attachments():
    """Ports and anti-spoofing are each attachment's own (the isolation flag, the anti-spoofing
    elements): the bridge-wide needs of hundreds of attachments are one per configuration."""
    from plugin.policy import BridgeIntent, Guard, shared_needs

    deny = Guard(deny=("10.0.0.0/8",))
    same = [BridgeIntent("br0", True, False, f"veth{i}", True) for i in range(300)]
    assert shared_needs(same) == [BridgeIntent("br0", True, False, None, True)]
    mixed = same + [BridgeIntent("br0", True, False, "veth9", True, guard=deny),
                    BridgeIntent("br0", True, True, "vethA", True), BridgeIntent("br0", True, True, "vethB", True)]
    assert shared_needs(mixed) == [BridgeIntent("br0", True, False, None, True),
                                   BridgeIntent("br0", True, False, None, True, guard=deny),
                                   BridgeIntent("br0", True, True, None, True)]


def test_internal_and_direct_access_round_trip_through_the_registry_and_merge_strictly():
    from plugin.policy import Guard, merge

    g = Guard(host_deny=True, internal=True, direct_deny=True, trusted=("wg0", "eth1"))
    assert Guard.from_json(g.to_json()) == g
    assert "internal" not in Guard(host_deny=True).to_json()  # registries without it read as before
    merged = merge([g, Guard(direct_deny=True, trusted=("eth1",))])
    assert merged.internal and merged.direct_deny and merged.trusted == ("eth1",)
    with pytest.raises(ValueError):
        Guard.from_json({**g.to_json(), "trusted": ["bad name/"]})


def test_internal_defaults_allow_host_ports_to_none():
    from plugin.model import parse
    from plugin.policy import guard_for
    from types import SimpleNamespace

    conf = parse({"type": "isolation", "internal": True})
    g = guard_for(SimpleNamespace(**conf.model_dump(mode="json")))
    assert g.internal and g.host_deny and g.host_ports == ()
    conf = parse({"type": "isolation"})
    assert len(conf.allowHostPorts) == 2
