"""Golden files: the exact iptables-restore lines the planner emits for each scenario.

The .before files are iptables-save output; the .plan files were first written by hand
from the layout documented in plugin/backends/iptables.py (upstream's STAGE-1/2). A
rendering change is regenerated with `pytest tests/unit --update-golden` and reviewed as
`git diff tests/golden`.
"""

import pytest

from plugin.backends.iptables import SPOOF_TABLE, FilterTable, plan, problems, release_plan, split_rule, strip_comment
from plugin.backends.nftables import TableState, bridge_plan, bridge_release, bridge_spec, spoof_elements
from plugin.policy import NO_GUARD, Guard, Hole, Release, Spoof, desired, intent_for, released
from plugin.record import replace
from golden import read as read_golden

SCENARIOS = [
    # (plan file, before file, bridge, ingressPolicy)
    ("empty-same-bridge", "empty", "br0", "same-bridge"),
    ("empty-isolated", "empty", "br0", "isolated"),
    ("empty-open", "empty", "br0", "open"),
    ("two-bridges-third", "two-bridges", "br2", "same-bridge"),
    ("two-bridges-existing", "two-bridges", "br1", "same-bridge"),
    ("firewall-same-bridge-br0", "firewall-same-bridge", "br0", "same-bridge"),
    ("displaced-br0", "displaced", "br0", "same-bridge"),
    ("first-layout-br0", "first-layout", "br0", "same-bridge"),
]


def read(name: str) -> str:
    return read_golden("iptables/" + name)


@pytest.mark.parametrize("plan_file,before,bridge,policy", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_plan_matches_golden(plan_file, before, bridge, policy, golden):
    table = FilterTable.parse(read(before + ".before"))
    got = plan(table, desired([intent_for(bridge, policy)]))
    golden.check(f"iptables/{plan_file}.plan", got)


def test_fully_enforced_table_has_no_problems():
    table = FilterTable.parse(read("two-bridges.before"))
    assert problems(table, desired([intent_for("br0", "same-bridge")])) == []
    assert problems(table, desired([intent_for("br2", "same-bridge")])) == [
        "CNI-ISOLATION-STAGE-1 lacks '-i br2 ! -o br2 -m conntrack --ctstate DNAT --ctdir REPLY -j RETURN', "
        "'-i br2 ! -o br2 -j CNI-ISOLATION-STAGE-2'",
        "CNI-ISOLATION-STAGE-2 lacks '-o br2 -m conntrack --ctstate DNAT --ctdir ORIGINAL -j RETURN', '-o br2 -j DROP'",
    ]


def test_a_published_port_exception_below_its_drop_is_a_problem():
    text = read("two-bridges.before")
    dnat = ("-A CNI-ISOLATION-STAGE-2 -o br0 -m conntrack --ctstate DNAT --ctdir ORIGINAL -m comment --comment "
            "isolation-plugin -j RETURN\n")
    swapped = FilterTable.parse(text.replace(dnat, "").replace("-A CNI-ISOLATION-STAGE-2 -m comment", dnat + "-A CNI-ISOLATION-STAGE-2 -m comment"))
    assert problems(swapped, desired([intent_for("br0", "same-bridge")])) == [
        "CNI-ISOLATION-STAGE-2 holds '-o br0 -m conntrack --ctstate DNAT --ctdir ORIGINAL -j RETURN', '-o br0 -j DROP' "
        "out of order"
    ]
    assert problems(swapped, desired([intent_for("br0", "same-bridge", published=False)])) == []


def test_displaced_jump_is_a_problem():
    table = FilterTable.parse(read("displaced.before"))
    assert problems(table, desired([intent_for("br0", "same-bridge")])) == [
        "FORWARD rule 1 (-j DOCKER-USER) comes before the jump to CNI-ISOLATION-STAGE-1"
    ]


def test_guarded_firewall_chain_may_come_first():
    """firewall's CNI-FORWARD above our jump is fine once it holds our jump before its ACCEPTs."""
    text = read("firewall-same-bridge.before").replace(
        '-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN\n',
        '-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN\n'
        "-A CNI-FORWARD -m comment --comment isolation-plugin -j CNI-ISOLATION-STAGE-1\n",
    ).replace(
        '-A FORWARD -m comment --comment "CNI firewall plugin rules (ingressPolicy: same-bridge)" -j CNI-ISOLATION-STAGE-1\n',
        "",
    )
    table = FilterTable.parse(text)
    assert table.chains["FORWARD"][0][-1] == "CNI-FORWARD"
    unpublished = intent_for("br0", "same-bridge", published=False)  # the firewall's rules suffice then
    assert problems(table, desired([unpublished])) == []
    assert plan(table, desired([unpublished])) == []


# denyEgress 10.98.0.0/16 and fd98::/32 with TCP 53 and 8000-8100 to 10.98.0.3 allowed, and
# hostAccess deny with the default allowHostPorts (TCP and UDP 53).
GUARD = Guard(("10.98.0.0/16", "fd98::/32"), (Hole("tcp", ("53", "8000-8100"), "10.98.0.3/32"),), True,
              (Hole("tcp", ("53",)), Hole("udp", ("53",))))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_guarded_plan_matches_golden(family, golden):
    """Each family gets its own deny ranges and exceptions; IPv6 also neighbour discovery."""
    table = FilterTable.parse(read("empty.before"))
    got = plan(table, desired([intent_for("br0", "same-bridge", guard=GUARD)]), family)
    golden.check(f"iptables/empty-guarded-{family}.plan", got)


def test_guarded_table_read_back_has_no_problems_and_needs_nothing():
    """The .before files are iptables-save after applying GUARD to br0 next to a plain br1."""
    intents = [intent_for("br0", "same-bridge", guard=GUARD), intent_for("br1", "same-bridge")]
    for family in ("ipv4", "ipv6"):
        table = FilterTable.parse(read(f"guarded-{family}.before"))
        assert problems(table, desired(intents[:1]), family) == [] and plan(table, desired(intents), family) == []
        opened = FilterTable.parse(read(f"guarded-{family}.before").replace("-A INPUT -m comment", "-A INPUT -j ACCEPT\n-A INPUT -m comment"))
        assert problems(opened, desired(intents[:1]), family) == ["INPUT does not start with the jump to CNI-ISOLATION-HOST"]


GUARD_RELEASES = [
    # br0's last attachment goes; br1 (no guard) stays: every guard rule, chain and the INPUT jump go
    ("guarded-release-br0-ipv4", Release(bridge="br0", isolate=True, within=True, published=True,
                                         peers=frozenset(), guard=NO_GUARD, last_guard=True)),
    # br0 stays with a remaining attachment that only denies 10.98.0.0/16: the rest goes
    ("guarded-relax-br0-ipv4", Release(bridge="br0", peers=frozenset(), guard=Guard(("10.98.0.0/16",)))),
]


@pytest.mark.parametrize("plan_file,release", GUARD_RELEASES, ids=[r[0] for r in GUARD_RELEASES])
def test_guard_release_matches_golden(plan_file, release, golden):
    table = FilterTable.parse(read("guarded-ipv4.before"))
    golden.check(f"iptables/{plan_file}.plan", release_plan(table, release, "ipv4"))


def test_stale_guard_rules_go_on_the_next_add():
    """A rule of ours in a guard chain that no registered bridge needs (a configuration that
    changed) is removed by the next ADD, which knows every attachment."""
    table = FilterTable.parse(read("guarded-ipv4.before"))
    lines = plan(table, desired([intent_for("br0", "same-bridge", guard=Guard(("10.98.0.0/16",), (), True, ()))]), "ipv4")
    c = "-m comment --comment isolation-plugin"
    assert f"-D CNI-ISOLATION-EGRESS -i br0 -p tcp -m conntrack --ctorigdst 10.98.0.3 -m tcp --dport 53 {c} -j RETURN" in lines
    assert f"-D CNI-ISOLATION-HOST -i br0 -p udp -m udp --dport 53 {c} -j RETURN" in lines
    assert not any(line.startswith("-I CNI-ISOLATION-HOST") for line in lines), "the group itself is in order"


def test_parse_keeps_quoted_comments_whole():
    table = FilterTable.parse(read("firewall-same-bridge.before"))
    assert table.chains["CNI-ISOLATION-STAGE-2"][0] == [
        "-o", "br0", "-m", "comment", "--comment", "CNI firewall plugin rules (ingressPolicy: same-bridge)", "-j", "DROP"
    ]
    assert "nat" not in str(table.chains)


RELEASES = [
    # (plan file, before file, Release: the bridge's isolation goes, and with `last` everything)
    ("two-bridges-release-br1", "two-bridges", Release(bridge="br1", isolate=True, within=True, peers=frozenset(), guard=NO_GUARD)),
    # a registry that lost br0 claims br1 was the last: br0's rules stay, so does the layout
    ("two-bridges-release-last", "two-bridges", Release(bridge="br1", isolate=True, within=True, peers=frozenset(), guard=NO_GUARD, last=True)),
    ("one-bridge-release-last", "one-bridge", Release(bridge="br1", isolate=True, within=True, peers=frozenset(), guard=NO_GUARD, last=True)),
    ("firewall-guarded-release-last", "firewall-guarded", Release(bridge="br0", isolate=True, within=True, peers=frozenset(), guard=NO_GUARD, last=True)),
]


@pytest.mark.parametrize("plan_file,before,release", RELEASES, ids=[r[0] for r in RELEASES])
def test_release_matches_golden(plan_file, before, release, golden):
    table = FilterTable.parse(read(before + ".before"))
    golden.check(f"iptables/{plan_file}.plan", release_plan(table, release))


@pytest.mark.parametrize(
    "line,args",
    [
        # iptables-save prints interface names raw, quotes included: they are not quoting
        ('-A X -i a"b ! -o a\'b -j DROP', ["-A", "X", "-i", 'a"b', "!", "-o", "a'b", "-j", "DROP"]),
        ("-A X -i b\\x -o c\\ -j DROP", ["-A", "X", "-i", "b\\x", "-o", "c\\", "-j", "DROP"]),
        # a comment is double-quoted with backslash escapes
        ('-A X -m comment --comment "name: \\"net1\\" id: \\"c1\\"" -j ACCEPT',
         ["-A", "X", "-m", "comment", "--comment", 'name: "net1" id: "c1"', "-j", "ACCEPT"]),
        ("-A X -m comment --comment isolation-plugin -j RETURN",
         ["-A", "X", "-m", "comment", "--comment", "isolation-plugin", "-j", "RETURN"]),
    ],
)
def test_split_rule_reads_iptables_save_as_it_is_printed(line, args):
    assert split_rule(line) == args


def test_foreign_rules_with_hostile_names_do_not_break_planning(golden):
    text = read("two-bridges.before").replace(
        "COMMIT", "-A FORWARD -i x'y -o a\"b -j ACCEPT\n-A FORWARD -i q\\ -j ACCEPT\nCOMMIT")
    table = FilterTable.parse(text)
    assert table.chains["FORWARD"][1:] == [["-i", "x'y", "-o", 'a"b', "-j", "ACCEPT"], ["-i", "q\\", "-j", "ACCEPT"]]
    golden.check("iptables/two-bridges-third.plan", plan(table, desired([intent_for("br2", "same-bridge")])))


def test_registered_bridges_missing_from_the_table_are_restored():
    table = FilterTable.parse(read("two-bridges.before"))
    got = plan(table, desired([intent_for("br2", "same-bridge"), intent_for("br0", "same-bridge"),
                       intent_for("br3", "isolated")]))
    c = "-m comment --comment isolation-plugin"
    assert got == [
        f"-I CNI-ISOLATION-STAGE-1 1 -i br2 ! -o br2 {c} -j CNI-ISOLATION-STAGE-2",
        f"-I CNI-ISOLATION-STAGE-1 1 -i br2 ! -o br2 -m conntrack --ctstate DNAT --ctdir REPLY {c} -j RETURN",
        f"-I CNI-ISOLATION-STAGE-1 1 -i br3 ! -o br3 {c} -j CNI-ISOLATION-STAGE-2",
        f"-I CNI-ISOLATION-STAGE-1 1 -i br3 ! -o br3 -m conntrack --ctstate DNAT --ctdir REPLY {c} -j RETURN",
        f"-I CNI-ISOLATION-STAGE-1 1 -i br3 -o br3 {c} -j DROP",
        f"-I CNI-ISOLATION-STAGE-2 1 -o br2 {c} -j DROP",
        f"-I CNI-ISOLATION-STAGE-2 1 -o br2 -m conntrack --ctstate DNAT --ctdir ORIGINAL {c} -j RETURN",
        f"-I CNI-ISOLATION-STAGE-2 1 -o br3 {c} -j DROP",
        f"-I CNI-ISOLATION-STAGE-2 1 -o br3 -m conntrack --ctstate DNAT --ctdir ORIGINAL {c} -j RETURN",
    ]


def test_group_peers_return_above_the_drop_and_leave_with_their_bridge():
    c = "-m comment --comment isolation-plugin"
    table = FilterTable.parse(read("two-bridges.before"))
    got = plan(table, desired([intent_for("br0", "same-bridge", group="a"), intent_for("br1", "same-bridge", group="a")]))
    # each bridge's STAGE-2 group gains a RETURN for its peer: re-inserted whole, in order
    assert got == [
        f"-D CNI-ISOLATION-STAGE-2 -o br0 -m conntrack --ctstate DNAT --ctdir ORIGINAL {c} -j RETURN",
        f"-D CNI-ISOLATION-STAGE-2 -o br0 {c} -j DROP",
        f"-I CNI-ISOLATION-STAGE-2 1 -o br0 {c} -j DROP",
        f"-I CNI-ISOLATION-STAGE-2 1 -i br1 -o br0 {c} -j RETURN",
        f"-I CNI-ISOLATION-STAGE-2 1 -o br0 -m conntrack --ctstate DNAT --ctdir ORIGINAL {c} -j RETURN",
        f"-D CNI-ISOLATION-STAGE-2 -o br1 -m conntrack --ctstate DNAT --ctdir ORIGINAL {c} -j RETURN",
        f"-D CNI-ISOLATION-STAGE-2 -o br1 {c} -j DROP",
        f"-I CNI-ISOLATION-STAGE-2 1 -o br1 {c} -j DROP",
        f"-I CNI-ISOLATION-STAGE-2 1 -i br0 -o br1 {c} -j RETURN",
        f"-I CNI-ISOLATION-STAGE-2 1 -o br1 -m conntrack --ctstate DNAT --ctdir ORIGINAL {c} -j RETURN",
    ]
    grouped = FilterTable.parse(read("two-bridges.before").replace(
        f"-A CNI-ISOLATION-STAGE-2 -o br1 {c} -j DROP", f"-A CNI-ISOLATION-STAGE-2 -i br0 -o br1 {c} -j RETURN\n"
        f"-A CNI-ISOLATION-STAGE-2 -o br1 {c} -j DROP"))
    assert f"-D CNI-ISOLATION-STAGE-2 -i br0 -o br1 {c} -j RETURN" in release_plan(
        grouped, Release(bridge="br0", isolate=True, within=True, peers=frozenset(), guard=NO_GUARD))


def test_firewall_chain_left_without_accepts_still_needs_our_jumps():
    """After the firewall plugin's last container, FORWARD still jumps to its CNI-FORWARD, which
    holds only the CNI-ADMIN jump: that is no guard. (Taking it for one left every later
    network unisolated: STAGE-1/2 filled, nothing jumping to them.)"""
    table = FilterTable.parse(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        ":CNI-ADMIN - [0:0]\n:CNI-FORWARD - [0:0]\n"
        '-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD\n'
        '-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN\n'
        "COMMIT\n"
    )
    intent = intent_for("br0", "same-bridge")
    assert "FORWARD rule 1 (-m comment --comment CNI firewall plugin rules -j CNI-FORWARD) comes before the jump " \
           "to CNI-ISOLATION-STAGE-1" in problems(table, desired([intent]))
    got = plan(table, desired([intent]))
    jump = "-m comment --comment isolation-plugin -j CNI-ISOLATION-STAGE-1"
    assert f"-I FORWARD 1 {jump}" in got and f"-I CNI-FORWARD 1 {jump}" in got, got


def test_a_full_plan_never_undoes_guard_rules_of_a_bridge_no_intent_is_on():
    """Issue 15 item 1: br0's attachments lost from a damaged registry; an ADD on br1 must not
    delete br0's guard rules (its egress and host protection)."""
    table = FilterTable.parse(read("guarded-ipv4.before"))
    lines = plan(table, desired([intent_for("br1", "same-bridge", guard=Guard(("10.0.0.0/8",)))]), "ipv4")
    assert any(line.startswith("-I CNI-ISOLATION-EGRESS 1 -i br1") for line in lines), lines
    assert not [line for line in lines if line.startswith("-D ") and "br0" in line], lines


SPOOF = Spoof("veth0", "02:00:00:00:00:0a", ("10.77.1.2", "fd77:1::2"))


def test_anti_spoofing_table_matches_golden(golden):
    """The iptables backend keeps anti-spoofing in nftables' bridge family (ebtables and
    arptables are not guaranteed installed), in a table of its own with the nftables
    backend's layout: created with the port's MAC and addresses, and emptied of them when
    the port leaves while another port stays."""
    spec = bridge_spec(SPOOF_TABLE)
    assert spec.name == "isolation-iptables"
    golden.check("iptables/spoof-fresh.jsonl", bridge_plan(TableState(), spoof_elements([SPOOF]), spec))
    other = Spoof("veth1", "02:00:00:00:00:0b", ("10.77.1.3",))
    state = TableState(True, True, spoof_elements([SPOOF, other]))
    gone = Release(bridge="br0", spoofs=(SPOOF,))
    golden.check("iptables/spoof-release-veth0.jsonl", bridge_release(state, gone, spec))
    alone = TableState(True, True, spoof_elements([SPOOF]))
    assert bridge_release(alone, Release(bridge="br0", spoofs=(SPOOF,), last_spoof=True),
                          spec) == [{"delete": {"table": {"family": "bridge", "name": "isolation-iptables"}}}]
    # the last registered one leaves while the table still protects veth1 (lost by a damaged
    # registry): the table stays, only veth0's elements go
    golden.check("iptables/spoof-release-veth0.jsonl", bridge_release(
        state, Release(bridge="br0", spoofs=(SPOOF,), last_spoof=True), spec))


def test_an_upgrade_replaces_the_direction_blind_published_port_rule(golden):
    """Before issue 14 the published-port RETURN matched both directions by -o; the next ADD
    (which knows every attachment) removes it as a grant nobody needs and puts the
    per-direction pair in, one transaction per family."""
    table = FilterTable.parse(read("two-bridges-old-dnat.before"))
    got = plan(table, desired([intent_for("br0", "same-bridge"), intent_for("br1", "same-bridge")]))
    golden.check("iptables/upgrade-old-dnat.plan", got)


def _with_peers(text: str, *pairs) -> str:
    """two-bridges.before with group RETURNs (src, dst) inserted above dst's DROP."""
    c = "-m comment --comment isolation-plugin"
    for src, dst in pairs:
        text = text.replace(f"-A CNI-ISOLATION-STAGE-2 -o {dst} {c} -j DROP",
                            f"-A CNI-ISOLATION-STAGE-2 -i {src} -o {dst} {c} -j RETURN\n-A CNI-ISOLATION-STAGE-2 -o {dst} {c} -j DROP")
    return text


def test_a_group_left_loses_its_peer_returns_once_its_old_attachments_leave():
    from plugin.backends.iptables import surplus

    c = "-m comment --comment isolation-plugin"
    table = FilterTable.parse(_with_peers(read("two-bridges.before"), ("br1", "br0"), ("br0", "br1")))
    peer_lines = [f"-D CNI-ISOLATION-STAGE-2 -i br1 -o br0 {c} -j RETURN", f"-D CNI-ISOLATION-STAGE-2 -i br0 -o br1 {c} -j RETURN"]
    # br0's last attachment of group "a" leaves; br0 stays (a newer attachment, no group)
    left = release_plan(table, Release(bridge="br0", peers=frozenset(), guard=NO_GUARD))
    assert sorted(left) == sorted(peer_lines)
    # an old attachment of the group remains on br0: the pair stays
    assert release_plan(table, Release(bridge="br0", peers=frozenset({"br1"}), guard=NO_GUARD)) == []
    # the same grants left behind (a crash between forgetting and removing) are named, then go on the next ADD
    ungrouped = [intent_for("br0", "same-bridge"), intent_for("br1", "same-bridge")]
    assert [(ch, " ".join(strip_comment(r))) for ch, r in surplus(table, desired(ungrouped), {"br0"})] == [
        ("CNI-ISOLATION-STAGE-2", "-i br0 -o br1 -j RETURN"), ("CNI-ISOLATION-STAGE-2", "-i br1 -o br0 -j RETURN")]
    assert surplus(table, desired(ungrouped), {"br9"}) == []
    assert sorted(plan(table, desired(ungrouped))) == sorted(peer_lines)
    grouped = [intent_for("br0", "same-bridge", group="a"), intent_for("br1", "same-bridge", group="a")]
    assert surplus(table, desired(grouped), {"br0", "br1"}) == [] and plan(table, desired(grouped)) == []


def test_a_published_port_turned_off_loses_its_returns():
    from plugin.backends.iptables import surplus

    c = "-m comment --comment isolation-plugin"
    table = FilterTable.parse(read("two-bridges.before"))
    intents = [intent_for("br0", "same-bridge", published=False), intent_for("br1", "same-bridge")]
    expected = [f"-D CNI-ISOLATION-STAGE-1 -i br0 ! -o br0 -m conntrack --ctstate DNAT --ctdir REPLY {c} -j RETURN",
                f"-D CNI-ISOLATION-STAGE-2 -o br0 -m conntrack --ctstate DNAT --ctdir ORIGINAL {c} -j RETURN"]
    assert [" ".join(strip_comment(r)) for _, r in surplus(table, desired(intents), {"br0", "br1"})] == [
        "-i br0 ! -o br0 -m conntrack --ctstate DNAT --ctdir REPLY -j RETURN",
        "-o br0 -m conntrack --ctstate DNAT --ctdir ORIGINAL -j RETURN"]
    assert plan(table, desired(intents)) == expected
    assert release_plan(table, Release(bridge="br0", published=True, peers=frozenset(), guard=NO_GUARD)) == expected[::-1]


def applied(lines: list[str]) -> FilterTable:
    """empty.before once iptables-restore applied `lines` (-N, -I CHAIN N, -A only)."""
    table = FilterTable.parse(read("empty.before"))
    for line in lines:
        args = split_rule(line)
        if args[0] == "-N":
            table.chains[args[1]] = []
        elif args[0] == "-I":
            table.chains[args[1]].insert(int(args[2]) - 1, args[3:])
        else:
            table.chains[args[1]].append(args[2:])
    return table


LOGGING = [intent_for("br0", "isolated", guard=Guard(("10.98.0.2/32", "fd98::2/128"), (), True, ()), log=True),
           intent_for("br1", "same-bridge")]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_logging_plan_matches_golden(family, golden):
    """br0 logs (logDrops): a log rule right above each of its DROPs, its cross-network log in
    CNI-ISOLATION-DROPLOG behind a jump above every isolating bridge's STAGE-2 DROP; br1 logs nothing."""
    got = plan(FilterTable.parse(read("empty.before")), desired(LOGGING), family)
    golden.check(f"iptables/empty-logging-{family}.plan", got)


def test_log_rules_say_reason_and_sending_bridge_and_limit_per_flow_and_per_bridge():
    lines = plan(FilterTable.parse(read("empty.before")), desired(LOGGING), "ipv4")
    logs = [line for line in lines if "NFLOG" in line]
    # by hand: br0 drops intra-bridge (isolated), cross-network, host-access, and egress to
    # 10.98.0.2 twice (by conntrack's original destination, and untracked): a log rule each
    assert sorted(line.split('"')[1] for line in logs) == [
        "isolation cross-network br0", "isolation egress-deny br0", "isolation egress-deny br0",
        "isolation host-access br0", "isolation intra-bridge br0"]
    for line in logs:
        assert "--hashlimit-upto 1/min --hashlimit-burst 1 --hashlimit-mode srcip,dstip,dstport" in line
        assert "--hashlimit-upto 10/sec --hashlimit-burst 20 --hashlimit-name l-br0 " in line
        assert line.endswith("--nflog-group 1907")
    assert "-I CNI-ISOLATION-STAGE-2 1 -o br1 -m comment --comment isolation-plugin -j CNI-ISOLATION-DROPLOG" in lines
    assert not any("br1" in line for line in logs)


def test_a_bridge_that_stops_logging_or_leaves_loses_its_log_rules():
    table = applied(plan(FilterTable.parse(read("empty.before")), desired(LOGGING), "ipv4"))
    assert problems(table, desired(LOGGING), "ipv4") == [] and plan(table, desired(LOGGING), "ipv4") == []
    quiet = [intent_for("br0", "isolated", guard=Guard(("10.98.0.2/32", "fd98::2/128"), (), True, ())), LOGGING[1]]
    lines = release_plan(table, released(desired(LOGGING), desired(quiet), "br0"), "ipv4")
    assert sum("NFLOG" in line for line in lines) == 5 and all(line.startswith("-D ") for line in lines)
    stale = plan(table, desired(quiet), "ipv4")
    assert any(line.startswith("-D CNI-ISOLATION-STAGE-2 -o br1") and "DROPLOG" in line for line in stale)
    gone = release_plan(table, released(desired(LOGGING), desired(LOGGING[1:]), "br0"), "ipv4")
    assert sum("NFLOG" in line for line in gone) == 5  # br0's log rules go with it


def test_check_names_a_logging_bridges_missing_log_rule():
    table = applied(plan(FilterTable.parse(read("empty.before")), desired(LOGGING), "ipv4"))
    table.chains["CNI-ISOLATION-HOST"] = [r for r in table.chains["CNI-ISOLATION-HOST"] if "NFLOG" not in r]
    found = problems(table, desired(LOGGING), "ipv4")
    assert len(found) == 1 and found[0].startswith("CNI-ISOLATION-HOST lacks '-i br0 -m hashlimit") \
        and "isolation host-access br0" in found[0], found
    assert problems(table, desired([intent_for("br0", "isolated", guard=LOGGING[0].guard), LOGGING[1]]), "ipv4") == []


# --- directAccess deny (issue 21) ------------------------------------------------------------
DIRECT_GUARD = Guard(direct_deny=True, trusted=("wg0",))
DIRECT_INTENTS = [intent_for("br0", "open", guard=DIRECT_GUARD), intent_for("br1", "isolated"),
                  intent_for("br2", "open")]  # br1: managed (isolated); br2: left alone, a stranger


def _applied(table: FilterTable, lines: list[str]) -> FilterTable:
    """`table` after iptables-restore --noflush ran `lines` (-N, -I CHAIN 1, -A, -D, -X)."""
    chains = {c: list(r) for c, r in table.chains.items()}
    for line in lines:
        op, chain, *rest = line.split(" ")
        if op == "-N":
            chains[chain] = []
        elif op == "-X":
            del chains[chain]
        elif op == "-I":
            chains[chain].insert(int(rest[0]) - 1, rest[1:])
        elif op == "-A":
            chains[chain].append(rest)
        elif op == "-D":
            chains[chain].remove(rest)
    return FilterTable(chains, dict(table.policies), table.nft_variant)


def test_direct_access_plan_matches_golden(golden):
    """br0 (directAccess deny, wg0 trusted) lets in replies, published ports, wg0 and br1 (which
    the plugin isolates), and drops the rest; br2 (open, unguarded) is a stranger to it."""
    got = plan(FilterTable.parse(read("empty.before")), desired(DIRECT_INTENTS), "ipv4")
    golden.check("iptables/empty-direct-ipv4.plan", got)
    c = "-m comment --comment isolation-plugin"
    assert f"-I CNI-ISOLATION-STAGE-1 1 ! -i br0 -o br0 {c} -j CNI-ISOLATION-DIRECT" in got
    assert f"-I CNI-ISOLATION-DIRECT 1 -i br1 -o br0 {c} -j RETURN" in got
    assert f"-I CNI-ISOLATION-DIRECT 1 -i wg0 -o br0 {c} -j RETURN" in got
    assert not any("-i br2" in line for line in got)


def test_direct_access_applied_needs_nothing_and_counts_its_drop():
    from plugin.backends.iptables import DIRECT, drop_reason

    for family in ("ipv4", "ipv6"):
        table = _applied(FilterTable.parse(read("empty.before")), plan(FilterTable.parse(read("empty.before")),
                                                                     desired(DIRECT_INTENTS), family))
        assert problems(table, desired(DIRECT_INTENTS), family) == []
        assert plan(table, desired(DIRECT_INTENTS), family) == []
    assert drop_reason(DIRECT, ["-o", "br0", "-j", "DROP"]) == ("direct-access", "br0")


def test_direct_access_release_of_a_managed_bridge_takes_its_returns_along():
    """br1's last container goes: its RETURN into br0 goes with it (br1, no longer isolated by the
    plugin, is a stranger to br0 from then on); br0's own group stays."""
    table = _applied(FilterTable.parse(read("empty.before")), plan(FilterTable.parse(read("empty.before")),
                                                                 desired(DIRECT_INTENTS)))
    gone = release_plan(table, Release(bridge="br1", isolate=True, drop_intra=True, within=True, published=True,
                                       peers=frozenset(), guard=NO_GUARD, forget=True))
    after = _applied(table, gone)
    rest = [DIRECT_INTENTS[0], DIRECT_INTENTS[2]]
    assert problems(after, desired(rest)) == [] and plan(after, desired(rest)) == []
    assert not any("br1" in a for r in after.chains["CNI-ISOLATION-DIRECT"] for a in r)


def test_direct_access_release_of_the_protected_bridge_removes_its_group_and_jump():
    table = _applied(FilterTable.parse(read("empty.before")), plan(FilterTable.parse(read("empty.before")),
                                                                 desired(DIRECT_INTENTS)))
    after = _applied(table, release_plan(table, Release(bridge="br0", within=True, peers=frozenset(), guard=NO_GUARD,
                                                        forget=True, last_guard=True)))
    assert "CNI-ISOLATION-DIRECT" not in after.chains
    assert not any(r[-1] == "CNI-ISOLATION-DIRECT" for r in after.chains["CNI-ISOLATION-STAGE-1"])
    assert problems(after, desired(DIRECT_INTENTS[1:])) == []


def test_a_trusted_interface_no_longer_trusted_is_a_surplus_grant_and_goes_on_the_next_add():
    from plugin.backends.iptables import surplus

    table = _applied(FilterTable.parse(read("empty.before")), plan(FilterTable.parse(read("empty.before")),
                                                                 desired(DIRECT_INTENTS)))
    now = [intent_for("br0", "open", guard=Guard(direct_deny=True)), *DIRECT_INTENTS[1:]]
    assert [(c, strip_comment(r)) for c, r in surplus(table, desired(now), {"br0", "br1", "br2"})] == [
        ("CNI-ISOLATION-DIRECT", ["-i", "wg0", "-o", "br0", "-j", "RETURN"])]
    after = _applied(table, plan(table, desired(now)))
    assert problems(after, desired(now)) == [] and not any("wg0" in r for r in after.chains["CNI-ISOLATION-DIRECT"])


# --- the drop log of internal and direct-access drops (issue 21 logged) -----------------------
INTERNAL_LOGGING = [intent_for("br0", "same-bridge", guard=Guard(host_deny=True, internal=True), log=True),
                    intent_for("br1", "open", guard=Guard(direct_deny=True), log=True),
                    intent_for("br2", "same-bridge", guard=Guard(host_deny=True, internal=True))]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_internal_and_direct_access_drops_of_a_logging_bridge_are_logged_above_each_drop(family):
    """By hand: br0 (internal, logs) gets a log rule above each of its two STAGE-1 DROPs (out of
    it, into it), both naming br0; br1 (directAccess deny, logs) one above its DIRECT DROP, naming
    br1 (the bridge the packet was going into); br2 (internal, no logDrops) none."""
    table = applied(plan(FilterTable.parse(read("empty.before")), desired(INTERNAL_LOGGING), family))
    stage1 = [strip_comment(r) for r in table.chains["CNI-ISOLATION-STAGE-1"]]
    tail = ["-m", "hashlimit", "--hashlimit-upto", "1/min", "--hashlimit-burst", "1", "--hashlimit-mode",
            "srcip,dstip,dstport", "--hashlimit-name", "fn-br0", "-m", "hashlimit", "--hashlimit-upto", "10/sec",
            "--hashlimit-burst", "20", "--hashlimit-name", "l-br0", "-j", "NFLOG", "--nflog-prefix",
            "isolation internal br0", "--nflog-group", "1907"]
    out, into = ["-i", "br0", "!", "-o", "br0"], ["!", "-i", "br0", "-o", "br0"]
    at = stage1.index(out + ["-j", "DROP"])
    assert stage1[at - 1:at + 3] == [out + tail, out + ["-j", "DROP"], into + tail, into + ["-j", "DROP"]]
    direct = [strip_comment(r) for r in table.chains["CNI-ISOLATION-DIRECT"]]
    at = direct.index(["-o", "br1", "-j", "DROP"])
    assert direct[at - 1][:2] == ["-o", "br1"] and direct[at - 1][-4:] == [
        "--nflog-prefix", "isolation direct-access br1", "--nflog-group", "1907"] and "fd-br1" in direct[at - 1]
    logs = [r for rules in table.chains.values() for r in rules if "NFLOG" in r]
    assert sorted(r[r.index("--nflog-prefix") + 1] for r in logs if "isolation internal" in " ".join(r)
                  or "isolation direct-access" in " ".join(r)) == [
        "isolation direct-access br1", "isolation internal br0", "isolation internal br0"]
    assert not any("br2" in r for r in logs)
    assert problems(table, desired(INTERNAL_LOGGING), family) == []


def test_internal_and_direct_access_log_rules_go_when_the_bridge_stops_logging():
    table = applied(plan(FilterTable.parse(read("empty.before")), desired(INTERNAL_LOGGING), "ipv4"))
    quiet = [replace(i, log=False) for i in INTERNAL_LOGGING]
    for bridge, reason in (("br0", "internal"), ("br1", "direct-access")):
        lines = release_plan(table, released(desired(INTERNAL_LOGGING), desired(quiet), bridge), "ipv4")
        assert all(line.startswith("-D ") and "NFLOG" in line for line in lines), lines  # its log rules only
        assert sum(f'"isolation {reason} {bridge}"' in line for line in lines) == (2 if bridge == "br0" else 1)
    stale = plan(table, desired(quiet), "ipv4")  # an ADD finds them stale too
    assert sorted(line.split('"')[1] for line in stale if "internal" in line or "direct-access" in line) == [
        "isolation direct-access br1", "isolation internal br0", "isolation internal br0"]
    gone = release_plan(table, released(desired(INTERNAL_LOGGING), desired(INTERNAL_LOGGING[1:]), "br0"), "ipv4")
    assert sum('"isolation internal br0"' in line for line in gone) == 2  # with the internal drops themselves


def test_a_routed_segments_log_rules_go_with_its_members_and_with_its_log():
    """A logging segment's rules name its members, its log rules (prefix with spaces) too: by
    hand, its last DEL deletes all three (egress-deny twice, cross-network once) before its
    chains, and an ADD after it stopped logging finds its log rules in EGRESS stale, and its
    jump to DROPLOG (the rule left there is reached by nothing, and goes with its member)."""
    seg, guard = "rt.n1", Guard(("10.98.0.2/32",), (), False, ())
    logging = [intent_for(seg, "same-bridge", port="m1", guard=guard, log=True, routed=True)]
    table = applied(plan(FilterTable.parse(read("empty.before")), desired(logging)))
    assert sum("NFLOG" in r for rules in table.chains.values() for r in rules) == 3
    gone = release_plan(table, released(desired(logging), desired([]), seg))
    assert sum('"isolation egress-deny rt.n1"' in line for line in gone) == 2
    assert sum('"isolation cross-network rt.n1"' in line for line in gone) == 1
    assert gone.index(next(line for line in gone if "NFLOG" in line)) < gone.index("-X CNI-ISOLATION-EGRESS")
    stale = plan(table, desired([replace(i, log=False) for i in logging]))
    assert sorted(line.split('"')[1] for line in stale if "NFLOG" in line) == [
        "isolation egress-deny rt.n1", "isolation egress-deny rt.n1"]
    assert any(line.startswith("-D CNI-ISOLATION-STAGE-2 -o m1") and "DROPLOG" in line for line in stale)
