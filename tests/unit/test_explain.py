"""plugin.explain, the pure part of `isolation explain`: every row of README's "How the keys
combine", and the merged semantics of bridges with several attachments.

The expected verdicts and reasons are written from the table, row by row, not from the
code: bridges b1 (network n1), b2 (n2), b3 (n3); the host has 10.0.0.1 (uplink) and each
bridge's gateway 10.N.0.1 / fd0N::1; 10.9.0.0/16 is "management", 192.0.2.7 "outside".
"""

import pytest

from plugin.explain import (CONTAINER, HOST, OUTSIDE, PUBLISHED, ConfigView, Dnat, Probe, Recorder, answer,
                            decide, find_source, resolve)
from plugin.kernelview import _dnat, dnats_of
from plugin.policy import Guard, Hole
from plugin.registry import Attachment

HOSTS = {"10.0.0.1", "fd00::1", "10.1.0.1", "10.2.0.1", "10.3.0.1", "fd01::1", "fd02::1", "fd03::1"}


def att(net, ctr, n, host, policy="same-bridge", guard=None, published=True, group=None, backend="nftables",
        bridge=None):
    return Attachment(net, ctr, "eth0", bridge or f"b{n}", f"v{n}{host}", policy, backend,
                      (f"10.{n}.0.{host}/24", f"fd0{n}::{host}/64"), published, group,
                      guard.to_json() if guard else None)


def ask(atts, src, dst, proto="tcp", port=80, dnats=()):
    source = find_source(src, atts)
    out, _, _ = answer(source, Probe(dst, proto, port if proto != "icmp" else None), atts, HOSTS, list(dnats))
    return out


def verdict(out):
    return out["verdict"], out["reason"], out["key"]


DENY = Guard(deny=("10.9.0.0/16", "fd09::/32"), allow=(Hole("tcp", ("8080",), "10.9.0.3/32"),
                                                       Hole("icmp", (), "fd09::3/128")))
HOST_DENY = Guard(host_deny=True, host_ports=(Hole("udp", ("53",)), Hole("tcp", ("8000-8100",))))


# --- row 1: anti-spoofing ----------------------------------------------------------------------
def test_a_probe_comes_from_a_registered_address_so_anti_spoofing_never_decides():
    atts = [att("n1", "c1", 1, 2, policy="isolated")]
    with pytest.raises(ValueError, match="no registered attachment"):
        find_source("10.1.0.99", atts)  # an address the container was not given: not explained
    assert verdict(ask(atts, "10.1.0.2", "192.0.2.7")) == ("pass", None, None)


# --- rows 2 and 3: within the bridge ---------------------------------------------------------
def test_within_an_isolated_bridge_everything_drops_bridged_or_hairpinned():
    atts = [att("n1", "c1", 1, 2, policy="isolated"), att("n1", "c2", 1, 3, policy="isolated")]
    out = ask(atts, "c1", "10.1.0.3")
    assert verdict(out) == ("drop", "intra-bridge", "ingressPolicy") and out["network"] == "n1"
    assert "v12 and v13" in out["rule"]  # the bridge-port isolation flag of both ports
    assert verdict(ask(atts, "c1", "fd01::3", "icmp")) == ("drop", "intra-bridge", "ingressPolicy")
    dnat = Dnat("tcp", (18080, 18080), "10.1.0.3", 80)  # c2's published port, from c1 through the host
    out = ask(atts, "c1", "10.0.0.1", port=18080, dnats=[dnat])
    assert verdict(out) == ("drop", "intra-bridge", "ingressPolicy")
    assert out["rule"] == "inet isolation forward: iifname @intra iifname . oifname @self goto drop-intra-bridge"


def test_within_a_bridge_otherwise_everything_passes_even_inside_a_deny_range():
    guard = Guard(deny=("10.1.0.0/16",))  # its own subnet
    atts = [att("n1", "c1", 1, 2, guard=guard), att("n1", "c2", 1, 3, guard=guard)]
    out = ask(atts, "c1", "10.1.0.3")
    assert verdict(out) == ("pass", None, "ingressPolicy") and out["cause"] == "same bridge b1"
    dnat = Dnat("tcp", (18080, 18080), "10.1.0.3", 80)
    assert verdict(ask(atts, "c1", "10.0.0.1", port=18080, dnats=[dnat]))[0] == "pass"


# --- row 5: denyEgress and allowEgress -------------------------------------------------------
def test_deny_egress_drops_forwarded_and_host_addresses_in_its_ranges():
    atts = [att("n1", "c1", 1, 2, guard=DENY), att("n2", "c2", 2, 2)]
    out = ask(atts, "c1", "10.9.0.2")
    assert verdict(out) == ("drop", "egress-deny", "denyEgress") and out["network"] == "n1"
    assert "10.9.0.0/16" in out["cause"] and out["rule"].startswith("inet isolation egress-b1: ct original ip daddr")
    HOSTS.add("10.9.0.1")
    try:
        assert verdict(ask(atts, "c1", "10.9.0.1"))[:2] == ("drop", "egress-deny")  # the host's own, in a range
    finally:
        HOSTS.discard("10.9.0.1")
    assert verdict(ask(atts, "c2", "10.9.0.2")) == ("pass", None, None)  # per network


def test_allow_egress_punches_holes_by_address_protocol_and_port_only():
    atts = [att("n1", "c1", 1, 2, guard=DENY)]
    assert verdict(ask(atts, "c1", "10.9.0.3", port=8080)) == ("pass", None, "allowEgress")
    assert verdict(ask(atts, "c1", "10.9.0.3", port=8081))[1] == "egress-deny"
    assert verdict(ask(atts, "c1", "10.9.0.3", "udp", 8080))[1] == "egress-deny"
    assert verdict(ask(atts, "c1", "10.9.0.3", "icmp"))[1] == "egress-deny"
    assert verdict(ask(atts, "c1", "fd09::3", "icmp")) == ("pass", None, "allowEgress")  # ICMPv6 toward IPv6
    assert verdict(ask(atts, "c1", "fd09::2", "icmp"))[1] == "egress-deny"


def test_an_allow_egress_hole_opens_nothing_isolation_closes():
    guard = Guard(deny=("10.2.0.0/16",), allow=(Hole("any", (), "10.2.0.0/24"),))
    atts = [att("n1", "c1", 1, 2, guard=guard), att("n2", "c2", 2, 2)]
    assert verdict(ask(atts, "c1", "10.2.0.2")) == ("drop", "cross-network", "ingressPolicy")


def test_iptables_rule_of_a_deny():
    atts = [att("n1", "c1", 1, 2, guard=DENY, backend="iptables")]
    out = ask(atts, "c1", "10.9.0.2")
    assert out["rule"] == "-A CNI-ISOLATION-EGRESS -i b1 -m conntrack --ctorigdst 10.9.0.0/16 -j DROP"


# --- row 6: hostAccess and allowHostPorts ----------------------------------------------------
def test_host_access_deny_closes_every_host_address_but_the_allowed_services():
    atts = [att("n1", "c1", 1, 2, guard=HOST_DENY), att("n2", "c2", 2, 2)]
    for addr in ("10.1.0.1", "10.2.0.1", "10.0.0.1", "fd00::1"):  # own gateway, another's, the uplink
        out = ask(atts, "c1", addr)
        assert verdict(out) == ("drop", "host-access", "hostAccess") and out["network"] == "n1"
    assert verdict(ask(atts, "c1", "10.1.0.1", "udp", 53)) == ("pass", None, "allowHostPorts")
    assert verdict(ask(atts, "c1", "10.1.0.1", "tcp", 8050)) == ("pass", None, "allowHostPorts")
    assert verdict(ask(atts, "c1", "10.1.0.1", "tcp", 53))[1] == "host-access"
    assert verdict(ask(atts, "c1", "10.1.0.1", "icmp"))[1] == "host-access"
    assert verdict(ask(atts, "c1", "192.0.2.7"))[0] == "pass"  # not the host
    assert verdict(ask(atts, "c2", "10.1.0.1"))[0] == "pass"  # per network
    icmp = [att("n1", "c1", 1, 2, guard=Guard(host_deny=True, host_ports=(Hole("icmp"),)))]
    assert verdict(ask(icmp, "c1", "fd01::1", "icmp")) == ("pass", None, "allowHostPorts")


def test_a_published_port_is_no_host_service():
    atts = [att("n1", "c1", 1, 2, guard=HOST_DENY), att("n2", "c2", 2, 2, policy="open")]
    dnat = Dnat("tcp", (18080, 18090), "10.2.0.2", 80)
    out = ask(atts, "c1", "10.0.0.1", port=18085, dnats=[dnat])
    assert out["destination"]["kind"] == PUBLISHED and verdict(out) == ("pass", None, None)


# --- row 7: published ports ------------------------------------------------------------------
def test_the_publishing_network_alone_decides_for_published_ports():
    atts = [att("n1", "c1", 1, 2, published=False), att("n2", "c2", 2, 2, published=True),
            att("n3", "c3", 3, 2, published=False)]
    to_c2 = Dnat("tcp", (18080, 18080), "10.2.0.2", 80)
    to_c3 = Dnat("tcp", (18081, 18081), "fd03::2", 80)
    out = ask(atts, "c1", "10.0.0.1", port=18080, dnats=[to_c2, to_c3])
    assert verdict(out) == ("pass", None, "allowPublishedPorts") and out["network"] == "n2"
    assert out["destination"]["dnat"] == "10.2.0.2:80"
    assert verdict(ask(atts, "c1", "fd00::1", port=18081, dnats=[to_c2, to_c3]))[1] == "cross-network"
    assert verdict(ask(atts, "c1", "10.2.0.2", port=80))[1] == "cross-network"  # the address itself stays closed
    # no DNAT for this protocol, port or family: the host itself
    assert ask(atts, "c1", "10.0.0.1", "udp", 18080, [to_c2])["destination"]["kind"] == HOST
    assert ask(atts, "c1", "fd00::1", port=18080, dnats=[to_c2])["destination"]["kind"] == HOST


def test_a_published_port_bound_to_one_host_address():
    atts = [att("n1", "c1", 1, 2), att("n2", "c2", 2, 2)]
    dnat = Dnat("tcp", (18080, 18080), "10.2.0.2", 80, host="10.0.0.1")
    assert ask(atts, "c1", "10.0.0.1", port=18080, dnats=[dnat])["destination"]["kind"] == PUBLISHED
    assert ask(atts, "c1", "10.1.0.1", port=18080, dnats=[dnat])["destination"]["kind"] == HOST


# --- rows 8 to 10: groups, isolating pairs, the rest -----------------------------------------
def test_an_isolation_group_reaches_across_its_bridges():
    atts = [att("n1", "c1", 1, 2, group="g1"), att("n2", "c2", 2, 2, policy="isolated", group="g1"),
            att("n3", "c3", 3, 2, group="g2")]
    out = ask(atts, "c1", "10.2.0.2")
    assert verdict(out) == ("pass", None, "isolationGroup") and out["cause"] == "same isolationGroup g1"
    assert out["networks"] == ["n1", "n2"]
    assert verdict(ask(atts, "c2", "fd01::2", "icmp"))[0] == "pass"
    assert verdict(ask(atts, "c1", "10.3.0.2")) == ("drop", "cross-network", "ingressPolicy")


def test_two_isolating_networks_drop_each_other_and_open_ones_do_not():
    atts = [att("n1", "c1", 1, 2), att("n2", "c2", 2, 2, policy="isolated"), att("n3", "c3", 3, 2, policy="open")]
    out = ask(atts, "c1", "10.2.0.2")
    assert verdict(out) == ("drop", "cross-network", "ingressPolicy") and out["network"] == "n2"
    assert out["rule"] == "inet isolation forward: iifname @isolated oifname @isolated goto drop-cross-network"
    ipt = [Attachment(**{**a.__dict__, "backend": "iptables"}) for a in atts]
    assert ask(ipt, "c1", "10.2.0.2")["rule"].startswith("-A CNI-ISOLATION-STAGE-2 -o b2 -j DROP")
    for src, dst in (("c1", "10.3.0.2"), ("c3", "10.1.0.2"), ("c2", "10.1.0.1"), ("c2", "192.0.2.7")):
        assert verdict(ask(atts, src, dst)) == ("pass", None, None), (src, dst)


def test_only_the_source_backend_isolates():
    """A bridge on the other backend is not in this backend's rules (status reports the mix)."""
    atts = [att("n1", "c1", 1, 2), att("n2", "c2", 2, 2, backend="iptables")]
    assert verdict(ask(atts, "c1", "10.2.0.2"))[0] == "pass"


# --- several attachments on one bridge: the strictest combination ------------------------------
def test_merged_attachments_get_the_strictest_combination():
    old = Guard(deny=("10.9.0.0/16",), allow=(Hole("tcp", ("80",), "10.9.0.3/32"), Hole("tcp", ("22",), "10.9.0.4/32")),
                host_deny=True, host_ports=(Hole("udp", ("53",)), Hole("tcp", ("53",))))
    new = Guard(deny=("10.8.0.0/16",), allow=(Hole("tcp", ("80",), "10.9.0.3/32"),), host_deny=True,
                host_ports=(Hole("udp", ("53",)),))
    atts = [att("n1", "c1", 1, 2, guard=old), att("n1b", "c2", 1, 3, guard=new, bridge="b1")]
    assert verdict(ask(atts, "c2", "10.9.0.2"))[1] == "egress-deny"  # every deny range
    assert verdict(ask(atts, "c1", "10.8.0.2"))[1] == "egress-deny"
    assert verdict(ask(atts, "c2", "10.9.0.3", port=80))[2] == "allowEgress"  # the shared exception
    assert verdict(ask(atts, "c1", "10.9.0.4", port=22))[1] == "egress-deny"  # one only: gone
    assert verdict(ask(atts, "c2", "10.0.0.1", "tcp", 53))[1] == "host-access"  # only the ports all open
    assert verdict(ask([atts[1], att("n1c", "c3", 1, 4, bridge="b1")], "c3", "10.0.0.1", "tcp", 80))[1] == \
        "host-access"  # closed if any closes
    assert verdict(ask(atts, "c2", "10.0.0.1", "udp", 53))[2] == "allowHostPorts"


def test_a_stricter_policy_holds_the_whole_bridge_and_grants_stay_while_one_has_them():
    atts = [att("n1", "c1", 1, 2, policy="isolated", published=False), att("n1b", "c2", 1, 3, bridge="b1"),
            att("n2", "c3", 2, 2, published=False)]
    out = ask(atts, "c2", "10.1.0.2")  # c2's own network is same-bridge, the bridge is isolated
    assert verdict(out) == ("drop", "intra-bridge", "ingressPolicy") and out["networks"] == ["n1"]
    dnat = Dnat("tcp", (18080, 18080), "10.1.0.2", 80)
    out = ask(atts, "c3", "10.0.0.1", port=18080, dnats=[dnat])  # n1b (on b1) still allows published ports
    assert verdict(out) == ("pass", None, "allowPublishedPorts") and out["networks"] == ["n1b"]


# --- sources, destinations, what is consulted ------------------------------------------------
def test_sources_by_id_prefix_interface_or_address():
    atts = [att("n1", "abc123", 1, 2), att("n1", "abd456", 1, 3)]
    assert find_source("abc", atts).container == "abc123"
    assert find_source("v13", atts).container == "abd456"
    assert find_source("fd01::3", atts).container == "abd456"
    with pytest.raises(ValueError, match="several"):
        find_source("ab", atts)
    with pytest.raises(ValueError):
        ask(atts, "abc", "10.1.0.3", "tcp", None)  # tcp needs a port


def test_resolve_kinds():
    atts = [att("n1", "c1", 1, 2)]
    assert resolve(Probe("10.1.0.2", "tcp", 80), atts, HOSTS, []).kind == CONTAINER
    assert resolve(Probe("fd01::1", "tcp", 80), atts, HOSTS, []).kind == HOST
    assert resolve(Probe("192.0.2.7", "icmp"), atts, HOSTS, []).kind == OUTSIDE


def test_replies_must_pass_too_when_a_view_is_asymmetric():
    """The inter-bridge drop has no conntrack exemption: a kernel that isolates only the way
    back still drops the flow (the configuration never does: its grants are symmetric)."""
    atts = [att("n1", "c1", 1, 2), att("n2", "c2", 2, 2)]

    class OneWay(ConfigView):
        def isolate_to(self, bridge):
            return bridge == "b1"

    source = find_source("c1", atts)
    target = resolve(Probe("10.2.0.2", "tcp", 80), atts, HOSTS, [])
    rec = Recorder(OneWay(atts))
    dec = decide(rec, source, target, Probe("10.2.0.2", "tcp", 80))
    assert (dec.verdict, dec.reason, dec.step) == ("drop", "cross-network", "cross-reply")
    assert ("isolate_to", ("b1",)) in rec.asked


def test_portmap_dnat_lines():
    assert _dnat("-p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.77.1.2:8080".split()) == \
        Dnat("tcp", (18080, 18080), "10.77.1.2", 8080)
    assert _dnat("-d 10.99.0.1/32 -p udp -m udp --dport 5000:5010 -j DNAT --to-destination [fd77:1::2]:53".split()) \
        == Dnat("udp", (5000, 5010), "fd77:1::2", 53, "10.99.0.1")
    assert _dnat("-p tcp -j CNI-HOSTPORT-SETMARK".split()) is None


# as portmap 1.1 (Debian 12) writes it in the lab (tests/e2e/test_e2e_explain.py), plus a chain
# nothing jumps to any more
NAT = """*nat
:PREROUTING ACCEPT [0:0]
:CNI-DN-12df519fcb81d08560622 - [0:0]
:CNI-DN-0rphan - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-DN-12df519fcb81d08560622 -s 10.77.1.0/24 -p tcp -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-12df519fcb81d08560622 -s 127.0.0.1/32 -p tcp -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-12df519fcb81d08560622 -p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.77.1.2:8080
-A CNI-DN-0rphan -p tcp -m tcp --dport 18099 -j DNAT --to-destination 10.77.1.9:8080
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"t-net1\\" id: \\"t-ctr1\\"" -m multiport --dports 18080 -j CNI-DN-12df519fcb81d08560622
COMMIT
"""


def test_published_ports_are_read_from_portmaps_nat_chains():
    assert dnats_of(NAT, 4) == [Dnat("tcp", (18080, 18080), "10.77.1.2", 8080)]
    assert dnats_of(NAT, 6) == []


def test_a_container_to_its_own_address_never_leaves_it():
    atts = [att("n1", "c1", 1, 2, policy="isolated")]
    assert verdict(ask(atts, "c1", "10.1.0.2")) == ("pass", None, None)


# --- internal (issue 21) -------------------------------------------------------------------------
INTERNAL = Guard(host_deny=True, internal=True)


def test_an_internal_network_reaches_itself_only():
    atts = [att("n1", "c1", 1, 2, guard=INTERNAL), att("n1", "c2", 1, 3, guard=INTERNAL),
            att("n2", "c3", 2, 2, policy="open")]
    assert verdict(ask(atts, "c1", "10.1.0.3")) == ("pass", None, "ingressPolicy")  # its own network
    out = ask(atts, "c1", "192.0.2.7")
    assert verdict(out) == ("drop", "internal", "internal") and out["network"] == "n1"
    assert out["rule"] == "inet isolation forward: iifname @internal goto drop-internal (b1)"
    assert verdict(ask(atts, "c1", "fd02::2", "icmp")) == ("drop", "internal", "internal")  # another network
    out = ask(atts, "c3", "10.1.0.2")  # into it, from an open network nothing else stops
    assert verdict(out) == ("drop", "internal", "internal") and out["network"] == "n1"
    dnat = Dnat("tcp", (18080, 18080), "10.1.0.2", 80)  # its published port, from another network
    assert verdict(ask(atts, "c3", "10.0.0.1", port=18080, dnats=[dnat])) == ("drop", "internal", "internal")
    out = ask(atts, "c1", "10.1.0.1", "udp", 53)  # the host: closed, no allowHostPorts by default
    assert verdict(out) == ("drop", "host-access", "internal")


def test_an_internal_network_gets_the_host_ports_it_lists():
    guard = Guard(host_deny=True, host_ports=(Hole("udp", ("53",)),), internal=True)
    atts = [att("n1", "c1", 1, 2, guard=guard)]
    assert verdict(ask(atts, "c1", "10.1.0.1", "udp", 53)) == ("pass", None, "allowHostPorts")
    assert verdict(ask(atts, "c1", "10.1.0.1", "tcp", 53))[:2] == ("drop", "host-access")


# --- directAccess deny (issue 21) ----------------------------------------------------------------
def test_direct_access_deny_drops_containers_of_unmanaged_bridges_only():
    direct = Guard(direct_deny=True, trusted=("b3",))
    atts = [att("n1", "c1", 1, 2, guard=direct), att("n2", "c2", 2, 2, policy="open"),
            att("n3", "c3", 3, 2, policy="open"), att("n4", "c4", 4, 2, policy="open", guard=HOST_DENY)]
    out = ask(atts, "c2", "10.1.0.2")  # b2: an open, unguarded bridge, not trusted
    assert verdict(out) == ("drop", "direct-access", "directAccess") and out["network"] == "n1"
    assert verdict(ask(atts, "c3", "10.1.0.2"))[0] == "pass"  # b3 is trusted
    assert verdict(ask(atts, "c4", "fd01::2"))[0] == "pass"  # b4 is guarded: the plugin manages it
    dnat = Dnat("tcp", (18080, 18080), "10.1.0.2", 80)
    assert verdict(ask(atts, "c2", "10.0.0.1", port=18080, dnats=[dnat]))[0] == "pass"  # published
    assert verdict(ask(atts, "c1", "10.2.0.2"))[0] == "pass"  # out of it: not the key's business


def test_iptables_rule_of_a_direct_access_drop():
    """On iptables the drop is the bridge's DROP in CNI-ISOLATION-DIRECT, reached from STAGE-1."""
    direct = Guard(direct_deny=True)
    atts = [att("n1", "c1", 1, 2, guard=direct, backend="iptables"),
            att("n2", "c2", 2, 2, policy="open", backend="iptables")]
    out = ask(atts, "c2", "10.1.0.2")
    assert verdict(out) == ("drop", "direct-access", "directAccess")
    assert out["rule"] == ("-A CNI-ISOLATION-DIRECT -o b1 -j DROP (reached by -A CNI-ISOLATION-STAGE-1 ! -i b1 -o b1 "
                           "-j CNI-ISOLATION-DIRECT)")
