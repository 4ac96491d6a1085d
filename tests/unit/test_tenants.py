"""Per-container isolationGroups (tenants): reading them from CNI args, the registry line,
the bridge table's elements, and explain's verdicts.

Expected values are written from the definitions (plugin/tenant.py, policy.tenancy): a
container's own group replaces its network's; two ports of one bridge, one of them a
tenant's, exchange frames only within one effective group; a packet a port sends the host
for a tenant's address passes only from a port of that tenant's group.
"""

import json

import pytest

from plugin.errors import CniError
from plugin.explain import Probe, answer, find_source
from plugin.policy import desired, intent_of, released, tenancy
from plugin.registry import Attachment, _attachment
from plugin.tenant import container_group

HOSTS = {"10.1.0.1", "10.2.0.1"}


# --- reading the group -------------------------------------------------------------------------
def test_args_cni_wins_over_cni_args_and_unknown_keys_are_ignored():
    both = {"args": {"cni": {"isolationGroup": "t2"}}}
    assert container_group(both, {"CNI_ARGS": "ISOLATION_GROUP=t1"}) == "t2"
    assert container_group({}, {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web;ISOLATION_GROUP=t1;odd"}) == "t1"
    assert container_group({"args": {"cni": {"other": 1}}}, {"CNI_ARGS": "ISOLATION_GROUP=t1"}) == "t1"
    assert container_group({}, {"CNI_ARGS": "IgnoreUnknown=1"}) is None
    assert container_group({}, {}) is None
    # `args` that is not an object cannot hold args.cni (a runtime's own business): ignored
    assert container_group({"args": [[]]}, {"CNI_ARGS": "ISOLATION_GROUP=t1"}) == "t1"
    assert container_group({"args": "x"}, {}) is None


@pytest.mark.parametrize("raw,env", [
    ({}, {"CNI_ARGS": "ISOLATION_GROUP="}),
    ({}, {"CNI_ARGS": "ISOLATION_GROUP"}),
    ({}, {"CNI_ARGS": "ISOLATION_GROUP=t1;ISOLATION_GROUP=t2"}),
    ({}, {"CNI_ARGS": "ISOLATION_GROUP=-lead"}),
    ({"args": {"cni": {"isolationGroup": "two words"}}}, {}),
    ({"args": {"cni": {"isolationGroup": "x" * 65}}}, {}),
    ({"args": {"cni": {"isolationGroup": 7}}}, {}),
    ({"args": {"cni": "t1"}}, {}),
])
def test_a_malformed_group_is_error_7(raw, env):
    with pytest.raises(CniError) as err:
        container_group(raw, env)
    assert err.value.code == 7


# --- the registry ------------------------------------------------------------------------------
def test_an_old_registry_line_without_tenant_still_loads():
    old = {"network": "n", "container": "c", "ifname": "eth0", "bridge": "br0", "port": "veth0",
           "policy": "same-bridge", "backend": "nftables", "addresses": ["10.1.0.2/24"], "published": True,
           "group": None, "guard": None, "portindex": None, "mac": None, "spoof": None, "logdrops": False}
    assert _attachment(json.loads(json.dumps(old))).tenant is None
    assert _attachment(old | {"tenant": "t1"}).tenant == "t1"
    with pytest.raises(ValueError):
        _attachment(old | {"tenant": 5})


# --- the elements ------------------------------------------------------------------------------
def att(net, ctr, n, host, tenant=None, group=None, bridge=None):
    return Attachment(net, ctr, "eth0", bridge or f"b{n}", f"v{n}{host}", "same-bridge", "nftables",
                      (f"10.{n}.0.{host}/24", f"fd0{n}::{host}/64"), True, group, None,
                      mac=f"02:00:00:00:0{n}:0{host}", spoof=(f"10.{n}.0.{host}", f"fd0{n}::{host}"), tenant=tenant)


# b1: a (t1), b (t1), x (t2), u (no tenant, network group g); b2: y (t1)
ATTS = [att("n1", "a", 1, 2, "t1", "g"), att("n1", "b", 1, 3, "t1", "g"), att("n1", "x", 1, 4, "t2", "g"),
        att("n1", "u", 1, 5, None, "g"), att("n2", "y", 2, 2, "t1", "g")]


def test_tenancy_elements_by_hand():
    els = tenancy(desired(intent_of(a) for a in ATTS))
    assert els["tports"] == {"v12", "v13", "v14", "v15", "v22"}
    assert els["tenanted"] == {"v12", "v13", "v14", "v22"}
    # one bridge, one of the two a tenant's, same effective group: a-b only (u is g, x is t2),
    # and each tenant's port with itself (hairpin mode)
    assert els["tpair"] == {("v12", "v13"), ("v13", "v12"), ("v12", "v12"), ("v13", "v13"), ("v14", "v14"),
                            ("v22", "v22")}
    assert els["taddr4"] == {"10.1.0.2", "10.1.0.3", "10.1.0.4", "10.2.0.2"}
    t1 = {"10.1.0.2", "10.1.0.3", "10.2.0.2"}
    assert els["tok4"] == {(p, a) for p in ("v12", "v13", "v22") for a in t1} | {("v14", "10.1.0.4")}
    assert els["tok6"] == {(p, a) for p in ("v12", "v13", "v22") for a in ("fd01::2", "fd01::3", "fd02::2")} | {
        ("v14", "fd01::4")}
    # every member's addresses, u's too: what a tenant's port may send the host for only within its group
    assert els["maddr4"] == {"10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.2.0.2"}
    assert els["maddr6"] == {"fd01::2", "fd01::3", "fd01::4", "fd01::5", "fd02::2"}
    # t1 spans b1 (a, b) and b2 (y): b1 may pass to y's addresses, b2 to a's and b's
    assert els["tcross4"] == {("b1", "10.2.0.2"), ("b2", "10.1.0.2"), ("b2", "10.1.0.3")}
    assert els["tcross6"] == {("b1", "fd02::2"), ("b2", "fd01::2"), ("b2", "fd01::3")}
    assert els["xaddr4"] == {"10.2.0.2", "10.1.0.2", "10.1.0.3"}
    assert els["xaddr6"] == {"fd02::2", "fd01::2", "fd01::3"}
    # b1 and b2 share the network group g: every port may route to those addresses without the pass
    assert els["xok4"] == {(p, x) for p in els["tports"] for x in els["xaddr4"]}
    assert tenancy(desired(intent_of(a) for a in ATTS if not a.tenant)) == {n: set() for n in els}


def plain(net, ctr, n, host, group=None, policy="same-bridge"):
    """An attachment without anti-spoofing: tenancy knows it by its registered addresses alone."""
    return Attachment(net, ctr, "eth0", f"b{n}", f"v{n}{host}", policy, "nftables",
                      (f"10.{n}.0.{host}/24", f"fd0{n}::{host}/64"), True, group, None)


# no network group: b1 a (t1), w (plain, network group t1: the same effective group as a);
# b2 y (t1), z (t2), o (plain, open network: no group at all)
APART = [att("n1", "a", 1, 2, "t1"), plain("n1", "w", 1, 3, "t1"), att("n2", "y", 2, 2, "t1"),
         att("n2", "z", 2, 3, "t2"), plain("n2", "o", 2, 4, None, "open")]


def test_tenancy_across_bridges_without_a_network_group_by_hand():
    els = tenancy(desired(intent_of(a) for a in APART))
    # w has no anti-spoofing: its registered addresses make it a member all the same
    assert els["maddr4"] == {"10.1.0.2", "10.1.0.3", "10.2.0.2", "10.2.0.3", "10.2.0.4"}
    assert els["taddr4"] == {"10.1.0.2", "10.2.0.2", "10.2.0.3"}
    # group t1: a, w (its network's t1), y; group t2: z; o is in no group (open network)
    t1 = {"10.1.0.2", "10.1.0.3", "10.2.0.2"}
    assert els["tok4"] == {(p, x) for p in ("v12", "v13", "v22") for x in t1} - {("v13", "10.1.0.3")} | {
        ("v23", "10.2.0.3")}, "two plain members are the network rules' business (w to itself)"
    assert els["tcross4"] == {("b1", "10.2.0.2"), ("b2", "10.1.0.2"), ("b2", "10.1.0.3")}
    assert els["tcross6"] == {("b1", "fd02::2"), ("b2", "fd01::2"), ("b2", "fd01::3")}


def ask_apart(src, dst, proto="tcp"):
    out, _, _ = answer(find_source(src, APART), Probe(dst, proto, 80 if proto != "icmp" else None), APART, HOSTS, [])
    return out["verdict"], out["reason"], out["key"], out["rule"]


def test_explain_knows_one_tenant_group_across_bridges_and_the_leak_closed():
    v, reason, key, rule = ask_apart("a", "10.2.0.2")  # t1 -> t1 across two isolating bridges
    assert (v, reason, key) == ("pass", None, "isolationGroup") and "tcross4" in rule and "(b1 . 10.2.0.2)" in rule
    assert ask_apart("y", "fd01::3", "icmp")[:2] == ("pass", None), "a tenant to its group's plain member"
    assert ask_apart("w", "10.2.0.2")[:2] == ("pass", None), "and back"
    assert ask_apart("a", "10.2.0.3")[:2] == ("drop", "cross-tenant"), "t1 -> t2"
    assert ask_apart("z", "10.1.0.3")[:2] == ("drop", "cross-tenant"), "t2 -> a plain member of t1"
    v, reason, _, rule = ask_apart("y", "10.2.0.4")  # a tenant to an open network's container, one bridge, bridged
    assert (v, reason) == ("drop", "cross-tenant") and "forward" in rule
    v, reason, _, rule = ask_apart("a", "fd02::4")  # the same routed: the tenant's port judged by member address
    assert (v, reason) == ("drop", "cross-tenant") and "@tenanted" in rule and "maddr6" in rule and "(v12 . fd02::4)" in rule


def test_a_port_nobody_registered_may_not_route_to_a_cross_bridge_members_address():
    from plugin.explain import routed_pass

    els = tenancy(desired(intent_of(a) for a in APART))
    assert not routed_pass(els, "uplink0", "10.2.0.2") and not routed_pass(els, "uplink0", "fd01::2")
    assert routed_pass(els, "uplink0", "10.2.0.3"), "z's address is no pass's: the network rules decide"
    assert routed_pass(els, "v12", "10.2.0.2"), "the group's own port"


def test_iptables_renders_the_pass_per_address_and_source_bridge():
    from plugin.backends.iptables import STAGE2, wanted

    chains = wanted(desired(intent_of(a) for a in APART), "ipv4")
    b2 = next(g for g in chains[STAGE2] if ["-o", "b2", "-j", "DROP"] in g)
    published = ["-m", "conntrack", "--ctstate", "DNAT", "--ctdir", "ORIGINAL", "-j", "RETURN"]  # allowPublishedPorts
    passing = ["-m", "conntrack", "!", "--ctstate", "DNAT", "-j", "RETURN"]  # a group's pass: never a DNAT'd packet
    assert b2 == [["-o", "b2", *published], ["-d", "10.2.0.2/32", "-i", "b1", "-o", "b2", *passing], ["-o", "b2", "-j", "DROP"]]
    six = wanted(desired(intent_of(a) for a in APART), "ipv6")[STAGE2]
    b1 = next(g for g in six if ["-o", "b1", "-j", "DROP"] in g)
    assert b1 == [["-o", "b1", *published], ["-d", "fd01::2/128", "-i", "b2", "-o", "b1", *passing],
                  ["-d", "fd01::3/128", "-i", "b2", "-o", "b1", *passing], ["-o", "b1", "-j", "DROP"]]


def test_the_last_tenant_leaving_frees_every_tenancy_element():
    before = desired(intent_of(a) for a in ATTS[2:4])  # x (t2) and u on b1
    r = released(before, desired([intent_of(ATTS[3])]), "b1")
    assert r.tenancy is not None and all(not v for v in r.tenancy.values())
    untouched = released(desired([intent_of(ATTS[3])]), desired([]), "b1")
    assert untouched.tenancy is None, "no tenant before or after: the tenancy elements are not its business"


# --- explain -----------------------------------------------------------------------------------
def ask(src, dst, proto="tcp"):
    out, _, _ = answer(find_source(src, ATTS), Probe(dst, proto, 80 if proto != "icmp" else None), ATTS, HOSTS, [])
    return out["verdict"], out["reason"], out["key"], out["rule"]


def test_explain_knows_tenants_on_one_bridge_and_across_two():
    assert ask("a", "10.1.0.3")[:2] == ("pass", None)  # same tenant, same bridge
    v, reason, key, rule = ask("a", "10.1.0.4")  # t1 -> t2, bridged
    assert (v, reason, key) == ("drop", "cross-tenant", "isolationGroup")
    assert rule.startswith("bridge isolation forward:") and "(v12 . v14)" in rule
    assert ask("x", "fd01::2", "icmp")[:2] == ("drop", "cross-tenant")
    assert ask("u", "10.1.0.2")[:2] == ("drop", "cross-tenant")  # g is not t1
    assert ask("a", "10.2.0.2")[:2] == ("pass", None)  # t1 on b1 -> t1 on b2 (networks share g)
    v, reason, _, rule = ask("x", "fd02::2")  # t2 -> t1 across bridges: routed through the host
    assert (v, reason) == ("drop", "cross-tenant") and "tok6" in rule and "(v14 . fd02::2)" in rule
    # y (t1) to u (no tenant: g) on a peer bridge: the networks' group g passes it in the inet
    # table, but t1 is not g (the one-way leak, closed by the tenant's port's rule)
    v, reason, _, rule = ask("y", "10.1.0.5")
    assert (v, reason) == ("drop", "cross-tenant") and "@tenanted" in rule and "(v22 . 10.1.0.5)" in rule


def test_a_cross_bridge_pass_no_tenant_group_needs_is_a_surplus_grant():
    from plugin.backends.nftables import INET, TableState, surplus, wanted

    held = TableState(exists=True, intact=True, elements={n: set(v) for n, v in
                                                          wanted(desired(intent_of(a) for a in APART))["inet"].items()})
    assert surplus(held, desired(intent_of(a) for a in APART), {"b1", "b2"}) == []
    # y (t1 on b2) is gone: the passes held for it, and for b1's members into b2, are grants nobody needs
    left = [a for a in APART if a.container != "y"]
    found = surplus(held, desired(intent_of(a) for a in left), {"b1", "b2"})
    texts = [t for t, _ in found]
    assert any("b1 . 10.2.0.2" in t and "tcross4" in t for t in texts), texts
    assert any("b2 . fd01::2" in t and "tcross6" in t for t in texts), texts
    assert INET.sets["tcross4"] == ["ifname", "ipv4_addr"]


def test_the_passes_go_with_the_last_member_of_their_group_on_a_bridge_both_backends():
    from plugin.backends.iptables import FilterTable
    from plugin.backends.iptables import release_plan as ipt_release
    from plugin.backends.nftables import TableState, release_plan, wanted
    from plugin.policy import release

    y = next(a for a in APART if a.container == "y")
    left = [a for a in APART if a is not y]
    r = release(y, left)
    # after y (t1, the group's only member on b2) leaves, t1 is on b1 alone (a, w): no pass is left
    assert r.tenancy is not None and r.tenancy["tcross4"] == set() and r.tenancy["tcross6"] == set()
    held = TableState(exists=True, intact=True, elements={n: set(v) for n, v in
                                                          wanted(desired(intent_of(a) for a in APART))["inet"].items()})
    gone = {(c["delete"]["element"]["name"], tuple(e.get("concat", [e]) if isinstance(e, dict) else [e]))
            for c in release_plan({"inet": held}, r) if "element" in c.get("delete", {})
            for e in c["delete"]["element"]["elem"]}
    assert {g for g in gone if g[0].startswith("tcross")} == {
        ("tcross4", ("b1", "10.2.0.2")), ("tcross4", ("b2", "10.1.0.2")), ("tcross4", ("b2", "10.1.0.3")),
        ("tcross6", ("b1", "fd02::2")), ("tcross6", ("b2", "fd01::2")), ("tcross6", ("b2", "fd01::3"))}
    ours = "-m comment --comment isolation-plugin"
    table = FilterTable.parse("*filter\n:FORWARD ACCEPT [0:0]\n:CNI-ISOLATION-STAGE-2 - [0:0]\n"
                              f"-A CNI-ISOLATION-STAGE-2 -d 10.2.0.2/32 -i b1 -o b2 {ours} -j RETURN\n"
                              f"-A CNI-ISOLATION-STAGE-2 -d 10.1.0.2/32 -i b2 -o b1 {ours} -j RETURN\n"
                              f"-A CNI-ISOLATION-STAGE-2 -d 10.1.0.9/32 -i b2 -o b1 -j RETURN\n"  # not ours: stays
                              f"-A CNI-ISOLATION-STAGE-2 -o b2 {ours} -j DROP\nCOMMIT\n")
    lines = ipt_release(table, r, "ipv4")
    assert f"-D CNI-ISOLATION-STAGE-2 -d 10.2.0.2/32 -i b1 -o b2 {ours} -j RETURN" in lines
    assert f"-D CNI-ISOLATION-STAGE-2 -d 10.1.0.2/32 -i b2 -o b1 {ours} -j RETURN" in lines
    assert not [x for x in lines if "10.1.0.9" in x]


# b1 (network group g): c (plain, so g); b2 (no network group): t (tenant g), v (plain, no group)
NEIGHBOUR = [plain("n1", "c", 1, 2, "g"), att("n2", "t", 2, 2, "g"), plain("n2", "v", 2, 3)]


def test_a_plain_neighbour_of_a_tenant_may_not_route_through_its_groups_pass():
    """Review 21: the pass (b2 . c's address) exists for t; v, on b2 beside t, in no group, must
    not route through it (b1 and b2 isolate each other, share no group, and v is no tenant)."""
    from plugin.explain import routed_pass

    els = tenancy(desired(intent_of(a) for a in NEIGHBOUR))
    assert els["tcross4"] == {("b2", "10.1.0.2"), ("b1", "10.2.0.2")}
    # c's address: t (its group), c (its own bridge); t's: c (its group), t and v (their own bridge)
    assert els["xok4"] == {("v12", "10.1.0.2"), ("v22", "10.1.0.2"), ("v12", "10.2.0.2"), ("v22", "10.2.0.2"),
                           ("v23", "10.2.0.2")}
    assert not routed_pass(els, "v23", "10.1.0.2") and not routed_pass(els, "v23", "fd01::2")
    assert routed_pass(els, "v22", "10.1.0.2") and routed_pass(els, "v22", "fd01::2"), "t, the pass's own member"
    out, _, _ = answer(find_source("v", NEIGHBOUR), Probe("10.1.0.2", "tcp", 80), NEIGHBOUR, HOSTS, [])
    assert (out["verdict"], out["reason"]) == ("drop", "cross-tenant")
    assert "@xaddr4" in out["rule"] and "@xok4" in out["rule"] and "(v23 . 10.1.0.2)" in out["rule"]
    out, _, _ = answer(find_source("t", NEIGHBOUR), Probe("10.1.0.2", "tcp", 80), NEIGHBOUR, HOSTS, [])
    assert (out["verdict"], out["reason"]) == ("pass", None)


def test_a_tenancy_grant_no_attachment_needs_is_a_surplus_grant():
    """Review 21: tpair, tok and xok open paths; an element there that tenancy() does not want
    (added by hand, or left by a crash) is named and removed, as the inet table's passes are."""
    from plugin.backends.nftables import TableState, tenancy_surplus

    want = desired(intent_of(a) for a in APART)
    els = tenancy(want)
    held = TableState(exists=True, intact=True, elements={n: set(v) for n, v in els.items()})
    assert tenancy_surplus(held, want, {"b1", "b2"}) == []
    # a (t1, v12) and z (t2, v23): frames between them, a routed to z's address, and an uplink
    # of b1 let through y's pass
    held.elements["tpair"].add(("v12", "v23"))
    held.elements["tok4"].add(("v12", "10.2.0.3"))
    held.elements["xok4"].add(("uplink0", "10.2.0.2"))
    found = tenancy_surplus(held, want, {"b1", "b2"})
    assert [(cmds[0]["delete"]["element"]["name"], concerned) for _, cmds, concerned in found] == [
        ("tpair", ["b1", "b2"]), ("tok4", ["b1"]), ("xok4", ["b1", "b2"])]
    assert "v12 . 10.2.0.3 is in set bridge isolation tok4" in found[1][0]
    assert [c for _, c, _ in tenancy_surplus(held, want, {"b2"})][:1] == [found[0][1]], "b2's CHECK: the pair names z"
    assert tenancy_surplus(held, desired(intent_of(a) for a in APART if not a.tenant), {"b1"}) == [], "no tenant"


def test_tenancy_knows_an_address_however_prevresult_writes_it():
    """Review 21: the kernel and anti-spoofing hold canonical addresses; tenancy must too."""
    from plugin.cni import _addresses
    from plugin.policy import plain_addresses

    assert plain_addresses(["FD77:1:0:0::0002/64", "10.1.0.2/24", "fd77:1::2/64"]) == ("fd77:1::2", "10.1.0.2")
    with pytest.raises(CniError) as err:
        _addresses({"ips": [{"address": "10.1.0.2/24"}, {"address": "10.1.0.3 -j ACCEPT/24"}]})
    assert err.value.code == 7 and "ips[1]" in err.value.msg


def test_the_tenants_group_check_and_the_models_pattern_give_one_verdict():
    """plugin.tenant checks a per-container group without pydantic (its import would cost each
    tenant's ADD ~100 ms); the configuration's isolationGroup is the model's GroupName: one rule."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from pydantic import TypeAdapter, ValidationError

    from plugin.model import GroupName
    from plugin.tenant import group_name

    model = TypeAdapter(GroupName)

    def verdicts(value) -> tuple[bool, bool]:
        try:
            group_name(value)
            ours = True
        except ValueError:
            ours = False
        try:
            model.validate_python(value, strict=True)
            theirs = True
        except ValidationError:
            theirs = False
        return ours, theirs

    for edge in ("a", "A" * 64, "A" * 65, "", "-a", "_a", ".a", "a-b.c_d", "a b", "é", "a\n", "9", 7, None, b"a"):
        ours, theirs = verdicts(edge)
        assert ours == theirs, edge
    assert verdicts("a" * 64) == (True, True) and verdicts("a" * 65) == (False, False)  # by hand: 1 + 63 characters

    @settings(max_examples=2000, deadline=None)
    @given(st.text(alphabet=st.characters(codec="utf-8"), max_size=70)
           | st.text(alphabet="Aa9_.-\n é", max_size=70))
    def agree(value):
        ours, theirs = verdicts(value)
        assert ours == theirs, value

    agree()
