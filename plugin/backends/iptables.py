"""The iptables backend: the upstream CNI-ISOLATION-STAGE-1/2 layout in the filter table.

    FORWARD:                -j CNI-ISOLATION-STAGE-1            (always first)
    CNI-ISOLATION-STAGE-1:  -i BR -o BR -j DROP                      (drop_intra)
                            -i BR ! -o BR -j DROP                    (internal: nothing out,
                            ! -i BR -o BR -j DROP                     nothing in, replies included)
                            ! -i BR -o BR -j CNI-ISOLATION-DIRECT    (directAccess deny)
                            -i BR ! -o BR -j CNI-ISOLATION-EGRESS    (denyEgress in this family)
                            -i BR ! -o BR -m conntrack --ctstate DNAT --ctdir REPLY -j RETURN
                                                                     (published: the replies)
                            -i BR ! -o BR -j CNI-ISOLATION-STAGE-2   (isolate)
                            -j RETURN
    CNI-ISOLATION-STAGE-2:  -o BR -m conntrack --ctstate DNAT --ctdir ORIGINAL -j RETURN (published)
                            -i PEER -o BR -j RETURN                  (each bridge of its isolationGroup)
                            -d ADDR -i P -o BR -j RETURN             (each address of BR's tenant group
                                                                      members another bridge P's members reach)
                            -o BR -j DROP                            (isolate)
                            -j RETURN
    INPUT:                  -j CNI-ISOLATION-HOST               (first; once any bridge has a guard)
    CNI-ISOLATION-HOST:     -i BR -p ipv6-icmp -m icmp6 --icmpv6-type 133|135|136 -m hl --hl-eq 255 -j RETURN
                                                                     (IPv6, one each: neighbour discovery)
                            -i BR -j CNI-ISOLATION-EGRESS            (denyEgress: the host's addresses too)
                            -i BR -m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY -j RETURN
                                                                     (hostAccess deny: replies,)
                            -i BR -p tcp -m tcp --dport 53 -j RETURN     (each allowHostPorts entry)
                            -i BR -j DROP
                            -j RETURN
    CNI-ISOLATION-EGRESS:   -i BR -m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY -j RETURN
                            -i BR [-p P] -m conntrack --ctorigdst CIDR [-m P --dport N] -j RETURN  (allowEgress)
                            -i BR -m conntrack --ctorigdst CIDR -j DROP                  (each denyEgress range)
                            -d CIDR -i BR -m conntrack --ctstate INVALID,UNTRACKED -j DROP   (and untracked)
                            -j RETURN
    CNI-ISOLATION-DIRECT:   -o BR -m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY -j RETURN
                                                                     (directAccess deny: replies,)
                            -o BR -m conntrack --ctstate DNAT --ctdir ORIGINAL -j RETURN  (published ports,)
                            -i M -o BR -j RETURN                     (each bridge M the plugin isolates
                                                                      or guards, each trustedInterface)
                            -o BR -j DROP                            (the rest: invalid, untracked too)
                            -j RETURN
    CNI-ISOLATION-DROPLOG:  -i BR <log limits> -j NFLOG --nflog-prefix "isolation cross-network BR"
                            -j RETURN                (each bridge logging cross-network drops)

The drop log (logDrops): above each DROP of a logging bridge, the same match with two
hashlimits (first packet per flow, the bridge's rate) and `-j NFLOG` (see log_tail): STAGE-1's
intra-bridge and internal drops (an internal bridge's two, out and in, name it as the logging
bridge), the guard chains', and CNI-ISOLATION-DIRECT's (`-o BR`: the bridge it was going into). STAGE-2's
DROP names only the receiving bridge, so while any bridge logs cross-network drops each
isolating bridge's DROP is preceded by `-o BR -j CNI-ISOLATION-DROPLOG`, where the logging
senders' rules are.

Neighbour discovery is exempted only on its way to the host (INPUT, hop limit 255): routers
never forward it. `isolated` between the ports of a bridge is the kernel's bridge-port
isolation flag (plugin/backends/ports.py), and anti-spoofing lives in nftables' bridge family
(table bridge isolation-iptables, the same layout as the nftables backend's): neither needs
br_netfilter, so this backend never touches bridge-nf-call-iptables.

A bridge's rules in one chain form an ordered group (a published-port RETURN above
its DROP); a group that is incomplete or out of order is re-inserted whole. A RETURN
of ours (a grant) that no registered attachment needs any more goes with the next
ADD, DEL, or `isolation reconcile`.

The chains are shared with the firewall plugin's `ingressPolicy`: a rule that
matches the same packets already (whatever its comment) is not added twice, and
chains are created with `-N` (never `:CHAIN`, which flushes an existing chain in
--noflush mode). Each family's change is one `iptables-restore --noflush`
transaction computed from one `iptables-save`; if another writer changed the
table in between, the transaction fails as a whole and is recomputed.
"""

import os
import re
import shlex

from plugin import reasons
from plugin.backends import libnft
from plugin.backends.base import Backend, first_bridge
from plugin.errors import ENFORCEMENT_FAILED, TRY_AGAIN_LATER, CniError
from plugin.policy import (ND_HOP_LIMIT, ND_TYPES, NO_GUARD, SEGMENT_PREFIX, BridgeNeeds, Desired, Guard, Hole, Release,
                           split_cidr, tenancy)
from plugin.record import Factory, replace, value_class
from plugin.tools import find, run_all

STAGE1 = "CNI-ISOLATION-STAGE-1"
STAGE2 = "CNI-ISOLATION-STAGE-2"
EGRESS = "CNI-ISOLATION-EGRESS"
HOST = "CNI-ISOLATION-HOST"
DROPLOG = "CNI-ISOLATION-DROPLOG"  # the drop log of cross-network drops, per sending bridge
DIRECT = "CNI-ISOLATION-DIRECT"  # what may enter a directAccess deny bridge (per bridge, by -o)
GUARD_CHAINS = (EGRESS, HOST, DIRECT)  # wholly ours: a rule of ours there that no bridge needs goes
WHOLLY_OURS = (*GUARD_CHAINS, DROPLOG)
FIREWALL_CHAIN = "CNI-FORWARD"  # the firewall plugin's per-container ACCEPT chain
TAG = "isolation-plugin"  # our comment; the old Go plugin used "CNI isolation plugin rules"
COMMENT = ["-m", "comment", "--comment", TAG]
TOOLS = {"ipv4": ("iptables-save", "iptables-restore"), "ipv6": ("ip6tables-save", "ip6tables-restore")}
XTABLES_WAIT_S = "10"
_SAFE = re.compile(r"[A-Za-z0-9_.!:/,-]+")  # our rules' tokens: validated names, our chains, our comment
ATTEMPTS = 3


BUILTIN = ("INPUT", "FORWARD", "OUTPUT")
HOOKED = ("FORWARD", "INPUT")  # the built-in chains our jumps sit in


@value_class
class FilterTable:
    """The filter table as iptables-save prints it: chain -> list of rule argument lists."""

    chains: dict[str, list[list[str]]] = Factory(dict)
    policies: dict[str, str] = Factory(dict)
    nft_variant: bool = False  # iptables-nft (tables are nftables tables) rather than legacy

    @classmethod
    def parse(cls, text: str) -> "FilterTable":
        table = cls()
        in_filter = False
        for line in text.splitlines():
            if line.startswith("# Generated by"):
                table.nft_variant = "(nf_tables)" in line
            if line.startswith("*"):
                in_filter = line == "*filter"
            elif not in_filter:
                continue
            elif line.startswith(":"):
                name, policy = line[1:].split(" ", 2)[:2]
                table.chains.setdefault(name, [])
                table.policies[name] = policy
            elif line.startswith("-A "):
                args = split_rule(line)
                table.chains.setdefault(args[1], []).append(args[2:])
        return table


    def pristine(self) -> bool:
        """Nothing but the built-in chains, empty, accepting: as if the table did not exist."""
        return sorted(self.chains) == sorted(BUILTIN) and not any(self.chains.values()) and all(
            self.policies.get(c) == "ACCEPT" for c in BUILTIN
        )


# iptables-save double-quotes (backslash-escaping \\ " ') only the values of free-text
# options; everything else, interface names included, is printed raw, quotes and all.
QUOTED_OPTIONS = {"--comment", "--log-prefix", "--nflog-prefix"}


def split_rule(line: str) -> list[str]:
    """The arguments of one iptables-save rule line. Never fails: a name like a"b stays a"b."""
    args: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i] == " ":
            i += 1
            continue
        if line[i] == '"' and args and args[-1] in QUOTED_OPTIONS:
            value, i = [], i + 1
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(line[i])
                i += 1
            args.append("".join(value))
            i += 1  # the closing quote
        else:
            end = line.find(" ", i)
            end = n if end < 0 else end
            args.append(line[i:end])
            i = end
    return args


def strip_comment(args: list[str]) -> list[str]:
    """A rule's arguments without its `-m comment --comment X` part: what it matches and does."""
    out, i = [], 0
    while i < len(args):
        if args[i : i + 3] == ["-m", "comment", "--comment"]:
            i += 4
        else:
            out.append(args[i])
            i += 1
    return out


def is_ours(args: list[str]) -> bool:
    return "--comment" in args and args[args.index("--comment") + 1] == TAG


DNAT = ["-m", "conntrack", "--ctstate", "DNAT"]
# A published port: the publishing bridge's setting alone decides, for the connection DNAT'd
# into it (STAGE-2, by -o) and for its replies (STAGE-1, by -i: STAGE-2 holds each bridge's
# DROP in its own group, and a reply must not meet the client bridge's DROP first).
PUBLISHED_IN = [*DNAT, "--ctdir", "ORIGINAL", "-j", "RETURN"]
PUBLISHED_OUT = [*DNAT, "--ctdir", "REPLY", "-j", "RETURN"]


VERSION = {"ipv4": 4, "ipv6": 6}
ESTABLISHED = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "--ctdir", "REPLY", "-j", "RETURN"]
UNTRACKED = ["-m", "conntrack", "--ctstate", "INVALID,UNTRACKED"]
ICMP = {"ipv4": ["-p", "icmp"], "ipv6": ["-p", "ipv6-icmp"]}


def _address(cidr: str) -> str:
    """As iptables-save prints it: a single address without its /32 or /128."""
    addr, _, single = split_cidr(cidr)
    return addr if single else cidr


def _hole(br: str, hole: Hole, family: str) -> list[list[str]]:
    """The rules letting `hole` through for bridge `br` in `family` (none if it is of the other)."""
    if hole.cidr and hole.family != VERSION[family]:
        return []
    dest = ["-m", "conntrack", "--ctorigdst", _address(hole.cidr)] if hole.cidr else []
    if hole.protocol in ("tcp", "udp"):
        proto = ["-p", hole.protocol]
        ports = [["-m", hole.protocol, "--dport", p.replace("-", ":")] for p in hole.ports] or [[]]
        return [["-i", br, *proto, *dest, *port, "-j", "RETURN"] for port in ports]
    proto = ICMP[family] if hole.protocol == "icmp" else []
    return [["-i", br, *proto, *dest, "-j", "RETURN"]]


def _neighbour_discovery(br: str, family: str) -> list[list[str]]:
    """IPv6 neighbour discovery to the host (INPUT): hop limit 255 proves it was not routed."""
    if family != "ipv6":
        return []
    return [["-i", br, "-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", str(t), "-m", "hl", "--hl-eq",
             str(ND_HOP_LIMIT), "-j", "RETURN"] for t in ND_TYPES]


# The drop log (networks with logDrops): before each DROP of a logging bridge, the same match
# sends the packet to NFLOG when it is the first of its flow (a hashlimit per bridge and reason
# keyed by source, destination and destination port, one packet a minute) and the bridge is
# within its rate (a hashlimit per bridge shared by all its log rules, no key: 10/s, burst 20).
LOG_RATE, LOG_BURST = "10/sec", "20"
FLOW = ["--hashlimit-upto", "1/min", "--hashlimit-burst", "1", "--hashlimit-mode", "srcip,dstip,dstport"]
LOG_NAMES = {reasons.CROSS_NETWORK: "c", reasons.INTRA_BRIDGE: "i", reasons.EGRESS_DENY: "e", reasons.HOST_ACCESS: "h",
             reasons.INTERNAL: "n", reasons.DIRECT_ACCESS: "d"}


def log_tail(reason: str, br: str) -> list[str]:
    """What follows a drop's match in its log rule: the two limits, then NFLOG."""
    return ["-m", "hashlimit", *FLOW, "--hashlimit-name", f"f{LOG_NAMES[reason]}-{br}",
            "-m", "hashlimit", "--hashlimit-upto", LOG_RATE, "--hashlimit-burst", LOG_BURST, "--hashlimit-name",
            f"l-{br}", "-j", "NFLOG", "--nflog-prefix", reasons.log_prefix(reason, br),
            "--nflog-group", str(reasons.NFLOG_GROUP)]


def logging(rules: list[list[str]], reason: str, br: str, logged) -> list[list[str]]:
    """`rules` with, before each DROP, its log rule when `br` logs `reason`."""
    if reason not in logged:
        return rules
    out = []
    for rule in rules:
        if rule[-2:] == ["-j", "DROP"]:
            out.append(rule[:-2] + log_tail(reason, br))
        out.append(rule)
    return out


def is_log_rule(rule: list[str]) -> bool:
    return "NFLOG" in rule and "--nflog-prefix" in rule


def guard_rules(br: str, guard: Guard, family: str, logged=()) -> dict[str, list[list[str]]]:
    """The rules of `br`'s guard in `family`: its group in CNI-ISOLATION-EGRESS and -HOST.
    Replies to connections opened toward the container pass (conntrack reply direction);
    a deny range drops what the container addressed (before DNAT) and, for packets
    conntrack does not track (invalid, untracked), the packet's own destination."""
    deny = guard.deny_in(VERSION[family])
    egress, host = [], []
    if deny:
        egress = [["-i", br, *ESTABLISHED]] + [r for h in guard.allow for r in _hole(br, h, family)]
        for c in deny:
            egress.append(["-i", br, "-m", "conntrack", "--ctorigdst", _address(c), "-j", "DROP"])
            egress.append(["-d", c, "-i", br, *UNTRACKED, "-j", "DROP"])
        host.append(["-i", br, "-j", EGRESS])
    if guard.host_deny:
        host += [["-i", br, *ESTABLISHED]] + [r for h in guard.host_ports for r in _hole(br, h, family)]
        host.append(["-i", br, "-j", "DROP"])
    if host:
        host = _neighbour_discovery(br, family) + host
    return {EGRESS: logging(egress, reasons.EGRESS_DENY, br, logged),
            HOST: logging(host, reasons.HOST_ACCESS, br, logged)}


def internal_rules(br: str) -> list[list[str]]:
    """An internal bridge's drops in STAGE-1: whatever is forwarded out of it or into it (the
    host's own traffic never is: INPUT and OUTPUT)."""
    return [["-i", br, "!", "-o", br, "-j", "DROP"], ["!", "-i", br, "-o", br, "-j", "DROP"]]


def internal_log_rules(br: str) -> list[list[str]]:
    """An internal bridge's log rules in STAGE-1 (logDrops), each above its DROP: the internal
    bridge names the log whichever side of the packet it is on."""
    return [r for r in logging(internal_rules(br), reasons.INTERNAL, br, (reasons.INTERNAL,)) if is_log_rule(r)]


def direct_log_rule(br: str) -> list[str]:
    """A directAccess deny bridge's log rule in CNI-ISOLATION-DIRECT (logDrops), above its DROP:
    the bridge the packet was going into names the log."""
    return ["-o", br, *log_tail(reasons.DIRECT_ACCESS, br)]


def direct_jump(br: str) -> list[str]:
    """STAGE-1's jump for a directAccess deny bridge: whatever is forwarded into it from elsewhere."""
    return ["!", "-i", br, "-o", br, "-j", DIRECT]


def direct_rules(br: str, guard: Guard, managed=()) -> list[list[str]]:
    """A directAccess deny bridge's group in CNI-ISOLATION-DIRECT (every rule names it with -o,
    so groups never meet): replies and published ports return, and so does what comes from
    one of the `managed` bridges (those the plugin isolates or guards) or a trusted
    interface; the rest drops, invalid and untracked packets included."""
    if not guard.direct_deny:
        return []
    sources = [m for m in dict.fromkeys([*sorted(managed), *guard.trusted]) if m != br]
    return [["-o", br, *ESTABLISHED], ["-o", br, *PUBLISHED_IN],
            *(["-i", m, "-o", br, "-j", "RETURN"] for m in sources), ["-o", br, "-j", "DROP"]]


def bridge_rules(needs: BridgeNeeds, family: str = "ipv4", interfaces_of=None,
                 log_cross: bool = False, managed=(), crossing=()) -> dict[str, list[list[str]]]:
    """Per chain, the matches-and-targets one bridge needs in `family`, top to bottom
    (comments left out): the bridges of its isolationGroups may reach it, and its merged
    Guard gives its rules in the guard chains. `interfaces_of(peer)`: the interfaces a
    peer's traffic comes by (a routed segment's members; default: its name); `managed`: the
    bridges the plugin isolates or guards, which a directAccess deny bridge lets in;
    `crossing`: the bridge's RETURNs for one tenant group across bridges (tenant_passes)."""
    interfaces_of = interfaces_of or (lambda name: (name,))
    if needs.routed:
        return segment_rules(needs, family, interfaces_of, log_cross, managed)
    br = needs.bridge
    logged = needs.logged
    stage1, stage2 = [], []
    if needs.drop_intra:  # published or not: within an `isolated` bridge nothing passes
        stage1 += logging([["-i", br, "-o", br, "-j", "DROP"]], reasons.INTRA_BRIDGE, br, logged)
    stage1 += logging(internal_rules(br), reasons.INTERNAL, br, logged) if needs.guard.internal else []
    stage1 += [direct_jump(br)] if needs.guard.direct_deny else []
    if needs.guard.deny_in(VERSION[family]):
        stage1.append(["-i", br, "!", "-o", br, "-j", EGRESS])
    if needs.isolate:
        if needs.published:
            stage1.append(["-i", br, "!", "-o", br, *PUBLISHED_OUT])
        stage1.append(["-i", br, "!", "-o", br, "-j", STAGE2])
        if needs.published:
            stage2.append(["-o", br, *PUBLISHED_IN])
        stage2 += [["-i", i, "-o", br, "-j", "RETURN"] for peer in sorted(needs.peers) for i in interfaces_of(peer)]
        stage2 += list(crossing)
        if log_cross:  # some bridge logs its cross-network drops: the sender's rule there
            stage2.append(["-o", br, "-j", DROPLOG])
        stage2.append(["-o", br, "-j", "DROP"])
    droplog = [["-i", br, *log_tail(reasons.CROSS_NETWORK, br)]] if reasons.CROSS_NETWORK in logged else []
    return {STAGE1: stage1, STAGE2: stage2, **guard_rules(br, needs.guard, family, logged), DROPLOG: droplog,
            DIRECT: logging(direct_rules(br, needs.guard, managed), reasons.DIRECT_ACCESS, br, logged)}


def segment_rules(needs: BridgeNeeds, family: str, interfaces_of, log_cross: bool = False,
                  managed=()) -> dict[str, list[list[str]]]:
    """A routed segment's rules: a bridge's, written per member (its host-side interface),
    since iptables cannot say "not into any member". Traffic between two members (routed
    by the host) drops (`isolated`) or returns before anything else applies; what is left
    of a member's traffic leaves the segment, and meets the guard and STAGE-2 like a
    bridge's. Rules per member pair: a segment of n members holds n*n of them. A segment
    closed by `internal` or `directAccess: deny` holds every pair first, then each member's
    closing rules (segment_closing), so that no member's pair meets another's drop."""
    members = sorted(needs.ports)  # one order, whichever attachment came first
    guard, seg, logged = needs.guard, needs.bridge, needs.logged
    closed = guard.internal or guard.direct_deny
    within = "DROP" if needs.drop_intra else \
        "RETURN" if needs.isolate or guard.deny_in(VERSION[family]) or closed else None
    pairs = {m: logging([["-i", m, "-o", n, "-j", within] for n in members] if within else [],
                        reasons.INTRA_BRIDGE, seg, logged) for m in members}
    stage1, stage2, chains = [], [], {EGRESS: [], HOST: []}
    if closed:
        stage1 += [rule for m in members for rule in pairs.pop(m)] + logging(
            segment_closing(members, guard), reasons.INTERNAL, seg, logged)  # its internal drops, named by the segment
    for m in members:
        stage1 += pairs.get(m, [])
        if guard.deny_in(VERSION[family]):
            stage1.append(["-i", m, "-j", EGRESS])
        if needs.isolate:
            if needs.published:
                stage1.append(["-i", m, *PUBLISHED_OUT])
            stage1.append(["-i", m, "-j", STAGE2])
            if needs.published:
                stage2.append(["-o", m, *PUBLISHED_IN])
            stage2 += [["-i", i, "-o", m, "-j", "RETURN"] for peer in sorted(needs.peers) for i in interfaces_of(peer)]
            if log_cross:  # as a bridge's: the logging sender's rule in DROPLOG first
                stage2.append(["-o", m, "-j", DROPLOG])
            stage2.append(["-o", m, "-j", "DROP"])
        for chain, rules in guard_rules(m, guard, family).items():
            chains[chain] += rules
    strangers = [i for i in managed if i not in members]  # the segment's own members passed as pairs
    direct = logging([rule for m in members for rule in direct_rules(m, guard, strangers)], reasons.DIRECT_ACCESS, seg,
                     logged)
    # the drop log names the segment (the reader finds the sender among its attachments),
    # whichever member the rule matches
    droplog = [["-i", m, *log_tail(reasons.CROSS_NETWORK, seg)] for m in members] \
        if reasons.CROSS_NETWORK in logged else []
    return {STAGE1: stage1, STAGE2: stage2,
            EGRESS: logging(chains[EGRESS], reasons.EGRESS_DENY, seg, logged),
            HOST: logging(chains[HOST], reasons.HOST_ACCESS, seg, logged), DROPLOG: droplog, DIRECT: direct}


def segment_closing(members: list[str], guard: Guard) -> list[list[str]]:
    """A closed segment's rules in STAGE-1 after its pairs, per member as a bridge's: internal,
    whatever leaves the member or enters it (from outside the segment: the pairs returned
    already); directAccess deny, the jump to CNI-ISOLATION-DIRECT for whatever enters it."""
    rules = [rule for m in members for rule in internal_rules(m)] if guard.internal else []
    return rules + ([direct_jump(m) for m in members] if guard.direct_deny else [])


def wanted(desired: Desired, family: str = "ipv4", managed=None) -> dict[str, list[list[list[str]]]]:
    """Per chain, the ordered groups of rules `desired` needs: one group per bridge. The guard
    chains appear only when some bridge needs them in `family`. `managed`: the bridges a
    directAccess deny bridge lets in, when `desired` is not every attachment (default: its own)."""
    chains: dict[str, list[list[list[str]]]] = {STAGE1: [], STAGE2: [], EGRESS: [], HOST: [], DIRECT: [], DROPLOG: []}
    managed = managed_bridges(desired) if managed is None else managed
    log_cross = any(reasons.CROSS_NETWORK in needs.logged for needs in desired)
    passes = tenant_passes(desired, family)
    for needs in desired:
        for chain, group in bridge_rules(needs, family, lambda peer: desired.get(peer).interfaces,
                                          log_cross, managed, passes.get(needs.bridge, ())).items():
            if group:
                chains[chain].append(group)
    return {c: groups for c, groups in chains.items() if groups or c in (STAGE1, STAGE2)}


def tenant_passes(desired: Desired, family: str) -> dict[str, list[list[str]]]:
    """Per bridge, the STAGE-2 RETURNs of policy.tenancy's tcross pairs in `family` (the
    nftables backend's `iifname . ip daddr @tcross4 return`): `-d ADDR -i P -o BR`, ADDR an
    address of a member on BR, P the bridge of a member of its group (the bridge table keeps
    P's other ports from it). Sorted per bridge: one order whichever attachment came first."""
    if not desired.tenanted:
        return {}
    sources: dict[str, list[str]] = {}  # address -> the bridges its group's pass admits
    for source, address in tenancy(desired)[f"tcross{VERSION[family]}"]:
        sources.setdefault(address, []).append(source)
    found: dict[str, list[list[str]]] = {}
    for b in desired:
        for q in b.members:
            out = q.port if b.routed else b.bridge
            found.setdefault(b.bridge, []).extend(
                tenant_pass(ip, source, out) for ip in q.ips for source in sources.get(ip, ()))
    return {bridge: sorted(rules) for bridge, rules in found.items() if rules}


# A tenant group's pass is for packets addressed to the member itself: the bridge table guards
# it by the destination a port wrote, which a DNAT'd packet's is not (a published port of the
# member follows allowPublishedPorts, as anyone's does).
TENANT_PASS_TAIL = ["-m", "conntrack", "!", "--ctstate", "DNAT", "-j", "RETURN"]


def tenant_pass(address: str, source: str, out: str) -> list[str]:
    """One STAGE-2 RETURN of a tenant group's pass: from bridge `source` to `address` (canonical)
    by `out`, never for a DNAT'd packet."""
    return ["-d", address + ("/128" if ":" in address else "/32"), "-i", source, "-o", out, *TENANT_PASS_TAIL]


def managed_bridges(desired: Desired) -> list[str]:
    """The interfaces of the bridges the plugin isolates or guards (the nftables backend's set
    `self`): a bridge's name, a routed segment's members."""
    return [i for b in desired if b.within for i in b.interfaces]


def positions(rules: list[list[str]]) -> dict[tuple, int]:
    """Where each rule (comment left out) first occurs in a chain: read once per chain, so
    checking every bridge's group stays linear in the number of rules."""
    index: dict[tuple, int] = {}
    for n, rule in enumerate(rules):
        index.setdefault(tuple(strip_comment(rule)), n)
    return index


def group_problem(rules: list[list[str]], group: list[list[str]], index: dict | None = None) -> str | None:
    """Why `rules` (a chain; `index` its positions(), if at hand) does not hold `group` in
    order, or None."""
    index = positions(rules) if index is None else index
    places = [index.get(tuple(spec), -1) for spec in group]
    missing = [spec for spec, at in zip(group, places) if at < 0]
    if missing:
        return "lacks " + ", ".join(f"'{' '.join(s)}'" for s in missing)
    if places != sorted(places):
        return "holds " + ", ".join(f"'{' '.join(s)}'" for s in group) + " out of order"
    return None


def _tagged(spec: list[str]) -> list[str]:
    """Our rule text: the match, our comment, then the target (iptables-save's order)."""
    at = len(spec) - 1 - spec[::-1].index("-j")
    return spec[:at] + COMMENT + spec[at:]


def _safe(rule: list[str]) -> bool:
    """Whether every token of `rule` is one we write: validated names, our chains, our comment,
    our drop log's prefix."""
    return all(_SAFE.fullmatch(a) or (reasons.parse_prefix(a) is not None and _SAFE.fullmatch(a.replace(" ", "")))
               for a in rule)


def _text(rule: list[str]) -> str:
    """`rule` as an iptables-restore line's arguments (the drop log's prefix quoted)."""
    return " ".join(f'"{a}"' if " " in a else a for a in rule)


def _first(rules: list[list[str]], pred) -> int:
    return next((i for i, r in enumerate(rules) if pred(strip_comment(r))), len(rules))


def _is_jump(spec: list[str], target: str = STAGE1) -> bool:
    return spec == ["-j", target]


def firewall_chain_lacks_jump(table: FilterTable) -> bool:
    """True unless the firewall plugin's CNI-FORWARD sends packets to STAGE-1 before any of
    its ACCEPT rules (our jump there guards isolation against them)."""
    rules = table.chains.get(FIREWALL_CHAIN)
    if rules is None:
        return True
    jump = _first(rules, _is_jump)  # len(rules) when there is none: the firewall plugin's
    # chain left with only its CNI-ADMIN jump after its last container still lacks ours
    return jump == len(rules) or jump > _first(rules, lambda s: s[-2:] == ["-j", "ACCEPT"])


def forward_problem(table: FilterTable) -> str | None:
    """Why some packet could leave FORWARD accepted before STAGE-1 sees it, or None."""
    for n, rule in enumerate(table.chains.get("FORWARD", []), start=1):
        spec = strip_comment(rule)
        if _is_jump(spec):
            return None
        if spec == ["-j", FIREWALL_CHAIN] and not firewall_chain_lacks_jump(table):
            return None
        return f"FORWARD rule {n} ({' '.join(rule)}) comes before the jump to {STAGE1}"
    return f"FORWARD has no jump to {STAGE1}"


def input_problem(table: FilterTable) -> str | None:
    """Why a packet from a guarded bridge could be accepted by INPUT before our HOST chain."""
    rules = table.chains.get("INPUT", [])
    if rules and _is_jump(strip_comment(rules[0]), HOST):
        return None
    return f"INPUT does not start with the jump to {HOST}"


def _move_to_top(table: FilterTable, chain: str, lines: list[str], target: str = STAGE1) -> None:
    jump = " ".join(_tagged(["-j", target]))
    ours = [r for r in table.chains.get(chain, []) if is_ours(r) and _is_jump(strip_comment(r), target)]
    lines += [f"-D {chain} {jump}"] * len(ours)  # keep exactly one, on top
    lines.append(f"-I {chain} 1 {jump}")


def _sync_group(rules: list[list[str]], chain: str, group: list[list[str]], theirs: set, ours: set,
                lines: list[str], index: dict) -> None:
    """Re-insert `group` whole on top of `chain` unless it is there in order: ours out, then in."""
    if group_problem(rules, group, index) is None:
        return
    for spec in group:
        if tuple(spec) in ours:
            lines.append(f"-D {chain} " + _text(_tagged(spec)))
    for spec in reversed(group):
        if tuple(spec) not in theirs:
            lines.append(f"-I {chain} 1 " + _text(_tagged(spec)))


def plan(table: FilterTable, desired: Desired, family: str = "ipv4") -> list[str]:
    """The iptables-restore lines (between *filter and COMMIT) that make `table` enforce `desired`,
    the desired state of all the attachments on this backend.

    Besides the FORWARD jump, a jump sits atop the firewall plugin's CNI-FORWARD
    (created if absent): when `firewall` runs after `isolation` it inserts its
    jump above ours, and its per-container ACCEPTs would otherwise win. In the guard
    chains, which are wholly ours, a rule of one of their bridges that none needs any
    more is deleted (a bridge none of them is on keeps its rules: a damaged registry
    may have lost its attachments).
    """
    if not desired.enforces_anything:
        return []
    chains = wanted(desired, family)
    known = set(desired.bridges)  # a bridge none of them is on is not theirs to undo
    members = {p for b in desired if b.routed for p in b.ports}  # a routed segment's rules name them
    lacks_jump = firewall_chain_lacks_jump(table)
    needed = [*chains, FIREWALL_CHAIN] if lacks_jump else list(chains)
    lines = [f"-N {chain}" for chain in needed if chain not in table.chains]  # before any jump to them
    for chain, groups in chains.items():
        rules = table.chains.get(chain, [])
        theirs = {tuple(strip_comment(r)) for r in rules if not is_ours(r)}
        ours = {tuple(strip_comment(r)) for r in rules if is_ours(r)}
        if chain in WHOLLY_OURS:
            keep = {tuple(spec) for g in groups for spec in g} | {("-j", "RETURN")}
            lines += [f"-D {chain} " + _text(r) for r in rules if is_ours(r) and tuple(strip_comment(r)) not in keep
                      and (_guard_rule_of(chain, r, known) or (is_log_rule(r) and _interfaces(r) & members))
                      and _safe(r)]
        elif chain in (STAGE1, STAGE2):  # grants no registered attachment needs any more
            lines += [f"-D {chain} " + " ".join(r) for r in surplus_rules(table, chain, groups, known)]
            lines += [f"-D {chain} " + _text(r) for r in stale_log_rules(table, chain, groups, known | members)]
        index = positions(rules)
        for group in groups:
            _sync_group(rules, chain, group, theirs, ours, lines, index)
        if ("-j", "RETURN") not in theirs | ours:
            lines.append(f"-A {chain} " + " ".join(_tagged(["-j", "RETURN"])))
    if lacks_jump:
        _move_to_top(table, FIREWALL_CHAIN, lines)
    if forward_problem(table):
        _move_to_top(table, "FORWARD", lines)
    if HOST in chains and input_problem(table):
        _move_to_top(table, "INPUT", lines, HOST)
    return lines


def _guard_rule_of(chain: str, rule: list[str], known: set) -> bool:
    """Whether `rule`, ours in a guard chain, is one of the `known` bridges' (their business to
    keep or remove): by -i, but in CNI-ISOLATION-DIRECT by the bridge it protects (-o; the -i
    there is a source let in)."""
    if chain == DIRECT:
        return bool(_granted_to(DIRECT, rule) & known)
    return rule[:1] == ["-i"] and rule[1] in known


def problems(table: FilterTable, desired: Desired, family: str = "ipv4") -> list[str]:
    """What `table` lacks to enforce `desired`."""
    if not desired.enforces_anything:
        return []
    found = []
    chains = wanted(desired, family)
    for chain, groups in chains.items():
        if chain not in table.chains:
            found.append(f"chain {chain} is missing")
            continue
        index = positions(table.chains[chain])
        found += [f"{chain} {p}" for p in (group_problem(table.chains[chain], g, index) for g in groups) if p]
    reason = forward_problem(table)
    if reason:
        found.append(reason)
    if HOST in chains and input_problem(table):
        found.append(input_problem(table))
    return found


def _interfaces(spec: list[str]) -> set[str]:
    return {spec[i + 1] for i, a in enumerate(spec[:-1]) if a in ("-i", "-o")}


def surplus_rules(table: FilterTable, chain: str, groups, bridges) -> list[list[str]]:
    """Our RETURNs in `chain` (rules that let something through: a published port, a group
    peer, a guard's exception) concerning one of `bridges` that no group of `groups` (what
    the registered attachments need in this chain) holds. Drops and jumps are not grants."""
    keep = {tuple(spec) for g in groups for spec in g}
    return [r for r in table.chains.get(chain, []) if is_ours(r) and r[-2:] == ["-j", "RETURN"]
            and all(_SAFE.fullmatch(a) for a in r) and tuple(strip_comment(r)) not in keep
            and _granted_to(chain, strip_comment(r)) & set(bridges)]


def _granted_to(chain: str, spec: list[str]) -> set[str]:
    """The bridges a grant concerns: those it names, but in CNI-ISOLATION-DIRECT only the one it
    lets into (-o; the -i there is the source, granted nothing)."""
    if chain == DIRECT:
        return {spec[i + 1] for i, a in enumerate(spec[:-1]) if a == "-o"}
    return _interfaces(spec)


def stale_log_rules(table: FilterTable, chain: str, groups, bridges) -> list[list[str]]:
    """Our drop log's rules (and jumps to it) in `chain` concerning one of `bridges` that no
    group of `groups` holds: the bridge stopped logging, or nothing logs cross-network drops."""
    keep = {tuple(spec) for g in groups for spec in g}
    return [r for r in table.chains.get(chain, []) if is_ours(r) and (is_log_rule(r) or r[-2:] == ["-j", DROPLOG])
            and _safe(r) and tuple(strip_comment(r)) not in keep and _interfaces(strip_comment(r)) & set(bridges)]


def _grant_kind(chain: str, spec: list[str]) -> str:
    if chain == DIRECT:
        return "a direct-access exception"
    if _is_peer_return(spec):
        return "an isolationGroup peer"
    if "DNAT" in spec:
        return "a published port"
    return "a guard's exception" if chain in GUARD_CHAINS else "a return"


def _surplus_text(family: str, chain: str, spec: list[str]) -> str:
    return (f"{family}: {chain} rule '{' '.join(spec)}' ({_grant_kind(chain, spec)}) lets through what no registered "
            "attachment needs")


def surplus(table: FilterTable, desired: Desired, bridges, family: str = "ipv4",
            managed=None) -> list[tuple[str, list[str]]]:
    """(chain, rule) of every grant for `bridges` that `desired` (of the registered attachments
    on them and in their isolationGroups) does not need (`managed`: see wanted)."""
    chains = wanted(desired, family, managed)
    return [(c, r) for c in (STAGE1, STAGE2, *GUARD_CHAINS) for r in surplus_rules(table, c, chains.get(c, []), bridges)]


def _jumps_to(table: FilterTable, chain: str) -> bool:
    return any(r[i + 1] == chain for rules in table.chains.values() for r in rules for i, a in enumerate(r[:-1])
               if a in ("-j", "-g"))


def release_plan(table: FilterTable, r: Release, family: str = "ipv4", everything: bool = False) -> list[str]:
    """The iptables-restore lines that remove what `r` says is no longer needed.

    Only rules carrying our comment are ever deleted. When nothing is left (`r.last`),
    every rule of ours goes, then each of our chains that is left empty and that no
    rule jumps to (the firewall plugin may still use them). When no guard is left
    (`r.last_guard`), the guard chains and the INPUT jump go the same way; otherwise
    the bridge's guard rules become what its remaining attachments need. Unless
    `everything` (`isolation cleanup`), `last` and `last_guard` hold only while our rules
    name no other bridge: rules a damaged registry lost track of are never swept along.
    """
    if r.routed and not everything:
        return segment_release_plan(table, r, family)
    others = set() if everything else mentioned(table) - {r.bridge}
    if others:  # rules the registry does not account for (lost or damaged): they stay
        guarded = others & (mentioned(table, (EGRESS, HOST)) | _protected(table))
        r = replace(r, last=False, last_guard=r.last_guard and not guarded)
    insert: list[str] = []
    if r.last:
        remove = [(c, rule) for c, rules in table.chains.items() for rule in rules if is_ours(rule)]
    else:
        remove = [(c, rule) for c, spec in _released_specs(r, family) for rule in table.chains.get(c, [])
                  if is_ours(rule) and strip_comment(rule) == spec]
        remove += _released_peer_returns(table, r)
        remove += _released_tenant_passes(table, r, family)
        remove += _released_direct(table, r)
        if r.last_guard:
            remove += [(c, rule) for c in GUARD_CHAINS for rule in table.chains.get(c, []) if is_ours(rule)]
            remove += [("INPUT", rule) for rule in table.chains.get("INPUT", [])
                       if is_ours(rule) and _is_jump(strip_comment(rule), HOST)]
            remove += [(STAGE1, rule) for rule in table.chains.get(STAGE1, [])
                       if is_ours(rule) and rule[-2:] == ["-j", DIRECT]]
        elif r.guard is not None:  # None: the bridge's guard is left as it is
            rewritten, insert = _guard_rewrite(table, r.bridge, r.guard, family, r.logged)
            remove += rewritten
    remove = list({id(rule): (chain, rule) for chain, rule in remove}.values())  # each rule of the table once
    lines = [f"-D {chain} " + _text(rule) for chain, rule in remove if _safe(rule)]
    lines += insert
    if r.last or r.last_guard:
        lines += [f"-X {chain}" for chain in without_ours(table, r.last)[1]]
    return lines


def segment_release_plan(table: FilterTable, r: Release, family: str) -> list[str]:
    """What a routed segment's departing members free: every rule of ours naming one of them
    (their own, the remaining members' pairs with them, peers' returns from them); with the
    last of everything, our chains as release_plan removes them."""
    leaving = set(r.members)
    others = mentioned(table) - leaving
    remove = [(c, rule) for c, rules in table.chains.items() for rule in rules
              if is_ours(rule) and _interfaces(strip_comment(rule)) & leaving]
    last, last_guard = r.last and not others, r.last_guard and not (others & mentioned(table, GUARD_CHAINS))
    if last:
        remove = [(c, rule) for c, rules in table.chains.items() for rule in rules if is_ours(rule)]
    elif last_guard:
        remove += [(c, rule) for c in GUARD_CHAINS for rule in table.chains.get(c, []) if is_ours(rule)
                   and (c, rule) not in remove]
        remove += [("INPUT", rule) for rule in table.chains.get("INPUT", [])
                   if is_ours(rule) and _is_jump(strip_comment(rule), HOST)]
    lines = [f"-D {chain} " + _text(rule) for chain, rule in remove if _safe(rule)]  # drop log rules too
    if last or last_guard:
        after = FilterTable({c: [x for x in rules if (c, x) not in remove] for c, rules in table.chains.items()},
                            dict(table.policies), table.nft_variant)
        lines += [f"-X {chain}" for chain in without_ours(after, last)[1]]
    return lines


def _released_specs(r: Release, family: str) -> list[tuple[str, list[str]]]:
    """(chain, rule without comment) of each of the bridge's rules in STAGE-1/2 that `r` frees."""
    br = r.bridge
    specs = []
    if r.isolate:
        specs.append((STAGE1, ["-i", br, "!", "-o", br, "-j", STAGE2]))
        specs.append((STAGE2, ["-o", br, "-j", "DROP"]))
    if r.drop_intra:
        specs.append((STAGE1, ["-i", br, "-o", br, "-j", "DROP"]))
    if r.isolate:
        specs.append((STAGE2, ["-o", br, "-j", DROPLOG]))
    if r.drop_intra or (r.logged is not None and reasons.INTRA_BRIDGE not in r.logged):
        specs.append((STAGE1, ["-i", br, "-o", br, *log_tail(reasons.INTRA_BRIDGE, br)]))
    if r.isolate or (r.logged is not None and reasons.CROSS_NETWORK not in r.logged):
        specs.append((DROPLOG, ["-i", br, *log_tail(reasons.CROSS_NETWORK, br)]))
    if r.published or r.isolate:
        specs.append((STAGE2, ["-o", br, *PUBLISHED_IN]))
        specs.append((STAGE1, ["-i", br, "!", "-o", br, *PUBLISHED_OUT]))
    if r.guard is not None and not r.guard.internal:
        specs += [(STAGE1, spec) for spec in internal_rules(br)]
    if (r.guard is not None and not r.guard.internal) or (r.logged is not None and reasons.INTERNAL not in r.logged):
        specs += [(STAGE1, spec) for spec in internal_log_rules(br)]
    if r.logged is not None and reasons.DIRECT_ACCESS not in r.logged:  # (its whole group goes with the drop)
        specs.append((DIRECT, direct_log_rule(br)))
    if r.guard is not None and not r.guard.deny_in(VERSION[family]):
        specs.append((STAGE1, ["-i", br, "!", "-o", br, "-j", EGRESS]))
    if r.guard is not None and not r.guard.direct_deny:
        specs.append((STAGE1, direct_jump(br)))
    return specs


def _released_direct(table: FilterTable, r: Release) -> list[tuple[str, list[str]]]:
    """Our rules in CNI-ISOLATION-DIRECT that `r` frees: the bridge's whole group once it is no
    longer closed to direct access, and the RETURNs letting it into other bridges once the
    plugin no longer isolates or guards it (a trusted interface of theirs with its name comes
    back with the next ADD or reconcile: missing, it only closes)."""
    closed_no_more = r.guard is not None and not r.guard.direct_deny
    unmanaged = r.within or r.forget
    found = []
    for rule in table.chains.get(DIRECT, []):
        if not is_ours(rule):
            continue
        spec = strip_comment(rule)
        into = spec[spec.index("-o") + 1] if "-o" in spec[:-1] else None
        source = _in_interface(spec)
        if (closed_no_more and into == r.bridge) or (unmanaged and source == r.bridge and spec[-1] == "RETURN"):
            found.append((DIRECT, rule))
    return found


def _released_peer_returns(table: FilterTable, r: Release) -> list[tuple[str, list[str]]]:
    """Our isolationGroup RETURNs between the bridge and each bridge it shares no group with
    any more (none when `r.peers` is None: they are left as they are)."""
    if r.peers is None:
        return []
    found = []
    for rule in table.chains.get(STAGE2, []):
        if not is_ours(rule) or not _is_peer_return(strip_comment(rule)):
            continue
        source, destination = rule[1], rule[3]
        if r.bridge not in (source, destination):
            continue
        other = destination if source == r.bridge else source
        if other not in r.peers:
            found.append((STAGE2, rule))
    return found


def _guard_rewrite(table: FilterTable, br: str, guard: Guard, family: str, logged=None
                   ) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(rules of ours to delete, lines inserting rules) making the bridge's groups in the guard
    chains what `guard` needs, logged as `logged` says (None: its log rules are left as they
    are): rules it no longer needs go; a group out of order or incomplete is rewritten whole
    (what is left of it goes too)."""
    remove, insert = [], []
    for chain, group in guard_rules(br, guard, family, logged or ()).items():
        rules = table.chains.get(chain, [])
        mine = [rule for rule in rules if is_ours(rule) and _in_interface(rule) == br
                and (logged is not None or not is_log_rule(rule))]
        remove += [(chain, rule) for rule in mine if strip_comment(rule) not in group]
        if group and group_problem(rules, group):
            remove += [(chain, rule) for rule in mine if strip_comment(rule) in group]
            insert += [f"-I {chain} 1 " + _text(_tagged(spec)) for spec in reversed(group)]
    return remove, insert


def mentioned(table: FilterTable, chains=None) -> set[str]:
    """Every interface our rules (in `chains`, default all) name with -i or -o."""
    found = set()
    for chain, rules in table.chains.items():
        if chains is None or chain in chains:
            for rule in rules:
                if is_ours(rule):
                    found.update(rule[i + 1] for i, a in enumerate(rule[:-1]) if a in ("-i", "-o"))
    return found


def managed_in(table: FilterTable) -> set[str]:
    """The bridges the table shows the plugin isolating or guarding: those our chains other than
    CNI-ISOLATION-DIRECT name (there, an -i is only a source let in)."""
    return mentioned(table, (STAGE1, STAGE2, EGRESS, HOST))


def _protected(table: FilterTable) -> set[str]:
    """The bridges our rules in CNI-ISOLATION-DIRECT protect (-o; an -i there is a source let in)."""
    return {r[1] for r in table.chains.get(DIRECT, []) if is_ours(r) and r[:1] == ["-o"]}


def _in_interface(rule: list[str]) -> str | None:
    """The `-i` interface a rule matches (iptables-save prints `-s`/`-d` before it)."""
    return rule[rule.index("-i") + 1] if "-i" in rule[:-1] else None


def _released_tenant_passes(table: FilterTable, r: Release, family: str) -> list[tuple[str, list[str]]]:
    """Our tenant group RETURNs across bridges (tenant_passes) that the tenancy after `r` does
    not hold (none when `r.tenancy` is None: they are left as they are)."""
    if r.tenancy is None:
        return []
    keep = r.tenancy[f"tcross{VERSION[family]}"]
    found = []
    for rule in table.chains.get(STAGE2, []):
        spec = strip_comment(rule)
        if is_ours(rule) and _is_tenant_pass(spec) and (spec[3], spec[1].partition("/")[0]) not in keep:
            found.append((STAGE2, rule))
    return found


def _is_tenant_pass(spec: list[str]) -> bool:
    """A tenant_pass rule, or one of an earlier build (without the DNAT exclusion: it must go too)."""
    return spec[:1] == ["-d"] and spec[2:3] == ["-i"] and spec[4:5] == ["-o"] and len(spec) > 6 and spec[6:] in (
        TENANT_PASS_TAIL, ["-j", "RETURN"])


def _is_peer_return(spec: list[str]) -> bool:
    return len(spec) == 6 and spec[0] == "-i" and spec[2] == "-o" and spec[4:] == ["-j", "RETURN"]


def without_ours(table: FilterTable, everything: bool = True) -> tuple[FilterTable, list[str]]:
    """`table` once every rule of ours is gone (only those of the guard chains, and the jumps
    to them, unless `everything`) and each of our chains left empty and unreferenced is
    deleted; with those chains, in an order that deletes referrers first."""
    def goes(chain: str, rule: list[str]) -> bool:
        return is_ours(rule) and (everything or chain in GUARD_CHAINS or strip_comment(rule)[-1] in GUARD_CHAINS)

    after = FilterTable({c: [x for x in rules if not goes(c, x)] for c, rules in table.chains.items()},
                        dict(table.policies), table.nft_variant)
    deleted = []
    progress = True
    while progress:
        progress = False
        for chain in (STAGE1, STAGE2, FIREWALL_CHAIN, *WHOLLY_OURS) if everything else GUARD_CHAINS:
            if chain in after.chains and not after.chains[chain] and not _jumps_to(after, chain):
                del after.chains[chain]
                deleted.append(chain)
                progress = True
    return after, deleted


def drop_reason(chain: str, spec: list[str]) -> tuple[str, str] | None:
    """(reason, bridge) of one of our DROP rules (`spec`: without its comment) in `chain`:
    STAGE-2 drops what goes into its bridge from another isolated one (counted for the
    bridge whose ingressPolicy refused it, as on the nftables backend), STAGE-1 what its
    bridge hairpins back into itself (-i BR -o BR) or, negated, what leaves or enters an
    internal bridge, the guard chains what the bridge's containers sent, and
    CNI-ISOLATION-DIRECT what was going into its directAccess deny bridge (-o)."""
    if chain == STAGE1 and "!" in spec:
        option = "-o" if spec[0] == "!" else "-i"
        return (reasons.INTERNAL, spec[spec.index(option) + 1]) if option in spec[:-1] else None
    reason = {STAGE1: reasons.INTRA_BRIDGE, STAGE2: reasons.CROSS_NETWORK, EGRESS: reasons.EGRESS_DENY,
              HOST: reasons.HOST_ACCESS, DIRECT: reasons.DIRECT_ACCESS}.get(chain)
    option = "-o" if chain in (STAGE2, DIRECT) else "-i"
    if reason is None or option not in spec[:-1]:
        return None
    return reason, spec[spec.index(option) + 1]


def families() -> list[str]:
    """IPv4 always; IPv6 whenever this network namespace has an IPv6 stack."""
    return ["ipv4", "ipv6"] if os.path.isdir("/proc/sys/net/ipv6") else ["ipv4"]


class IptablesBackend(Backend):
    """The filter table of both IP families, each change one iptables-restore per family (see
    the module); anti-spoofing in an nftables bridge-family table of its own."""

    name = "iptables"

    def __init__(self) -> None:
        self.families = families()
        self.tools = {fam: tuple(find(t) for t in TOOLS[fam]) for fam in self.families}

    def unavailable_reason(self) -> str | None:
        missing = [TOOLS[fam][i] for fam, paths in self.tools.items() for i, p in enumerate(paths) if p is None]
        return f"not found: {', '.join(missing)}" if missing else None

    def _read(self) -> dict[str, FilterTable]:
        results = run_all([([self.tools[fam][0], "-t", "filter"], None) for fam in self.families])
        tables = {}
        for fam, (rc, out, err) in zip(self.families, results):
            if rc != 0:
                raise CniError(ENFORCEMENT_FAILED, f"{TOOLS[fam][0]} failed", err.strip())
            tables[fam] = FilterTable.parse(out)
        return tables

    def ensure(self, addition: Desired) -> bool:
        """No add-only path: every change is planned from a whole reading of the table (one
        iptables-save per family, whatever the change), and that reading re-applies what any
        registered attachment lacks, so it needs them all: always the full path."""
        return False

    def apply(self, desired: Desired) -> dict:
        """Returns what of iptables-nft this made exist (the filter tables, or built-in chains
        of tables that were there), for the last DEL to remove. A failed ADD carries them too
        (CniError.facts): its undo may leave them behind."""
        if not desired.enforces_anything:
            return {}
        self._ensure_spoofing(desired)
        created: list[str] = []
        chains: list[str] = []

        def note_created(tables: dict[str, FilterTable]) -> None:
            for fam, t in tables.items():
                if not t.nft_variant:
                    continue
                if t.pristine() and not _nft_table(fam):
                    created.append(fam)
                    continue
                # iptables-save shows every built-in chain: ask nftables only about those this
                # ADD is about to jump from while they hold nothing (a host's first ADD)
                lines = plan(t, desired, fam)
                chains.extend(f"{fam}:{c}" for c in HOOKED if not t.chains.get(c)
                              and any(line.startswith(f"-I {c} ") for line in lines) and not _nft_chain(fam, c))

        failed = self._transact(lambda fam, table: plan(table, desired, fam), before=note_created)
        facts = {k: v for k, v in (("created_filter", created), ("created_chains", chains)) if v}
        if failed:
            fam, err = failed[0]
            code = TRY_AGAIN_LATER if "lock" in err else ENFORCEMENT_FAILED
            error = CniError(code, f"{TOOLS[fam][1]} could not apply isolation rules for {first_bridge(desired)}",
                             err.strip())
            error.facts = facts
            raise error
        return facts

    def _transact(self, planner, before=None) -> list[tuple[str, str]]:
        """Per family: read, plan with `planner(family, table)`, apply as one restore (families in parallel).

        Retried when another writer changed the table in between (the transaction then
        fails whole); `before` sees the first reading before anything is applied.
        Returns the last attempt's failures.
        """
        failed = []
        for attempt in range(ATTEMPTS):
            tables = self._read()
            if before and attempt == 0:
                before(tables)
            jobs = []
            for fam, table in tables.items():
                lines = planner(fam, table)
                if lines:
                    text = "*filter\n" + "\n".join(lines) + "\nCOMMIT\n"
                    jobs.append(([self.tools[fam][1], "--noflush", "-w", XTABLES_WAIT_S], text, fam))
            results = run_all([(argv, text) for argv, text, _ in jobs])
            failed = [(fam, err) for (_, _, fam), (rc, _, err) in zip(jobs, results) if rc != 0]
            if not failed:
                break
        return failed

    def _ensure_spoofing(self, desired: Desired) -> None:
        """Anti-spoofing for `desired` (every registered attachment on this backend and the new
        one): nftables' bridge family, in a table of this backend's own (the iptables world's
        ebtables/arptables are not guaranteed installed, and ebtables-nft is the same
        nf_tables underneath). The table is read whole: only the attachments asking for
        anti-spoofing have elements there."""
        spoofs = desired.spoofs
        if not spoofs and not desired.counted:
            return
        lib, reason = libnft.load()
        if lib is None and not spoofs:  # only counting intra-bridge frames: not worth failing for
            return
        if lib is None:
            raise CniError(ENFORCEMENT_FAILED, "antiSpoofing needs nf_tables' bridge family (libnftables), which is "
                           "unusable here (set antiSpoofing to false to run without it)", reason)
        from plugin.backends.nftables import bridge_elements, bridge_log_chains, bridge_plan, read_table

        spec = _spoof_spec()
        known = set(desired.bridges) | {p for b in desired if b.routed for p in b.ports}
        libnft.apply(lib, bridge_plan(read_table(lib, spec), bridge_elements(desired), spec,
                                      bridge_log_chains(desired), known),
                     f"could not apply anti-spoofing ({spec.family} {spec.name})")

    def release(self, change: Release, facts: dict) -> None:
        """Remove what `change` frees; after the last, also the filter tables this backend created."""
        failed = self._transact(lambda fam, table: release_plan(table, change, fam))
        if failed:
            raise CniError(ENFORCEMENT_FAILED, f"could not remove the rules of {change.bridge}", failed[0][1].strip())
        if (change.spoofs or change.uncount or change.forget or change.last or change.last_spoof
                or change.unlog or change.tenancy is not None):  # else nothing ours
            lib = libnft.load()[0]
            if lib is not None:
                from plugin.backends.nftables import bridge_release, read_table

                spec = _spoof_spec()
                libnft.apply(lib, bridge_release(read_table(lib, spec), change, spec),
                             f"could not remove the anti-spoofing of {change.bridge}")
        if change.last and (facts.get("created_filter") or facts.get("created_chains")):
            self._drop_created(facts.get("created_filter", []), facts.get("created_chains", []))

    def _drop_created(self, families: list[str], chains: list[str]) -> None:
        """A filter table we created and that is pristine again goes too, and so does a built-in
        chain our use created in a table that was there, once empty and accepting (iptables-nft
        only: there they are nftables objects; legacy tables and chains cannot be removed)."""
        tables = self._read()
        doomed = [fam for fam in families if fam in tables and tables[fam].nft_variant and tables[fam].pristine()]
        libnft.delete_tables([(NFT_FAMILY[fam], "filter") for fam in doomed])
        emptied = []
        for fam, _, chain in (c.partition(":") for c in chains):
            table = tables.get(fam)
            if table is not None and fam not in doomed and table.nft_variant and not table.chains.get(chain) \
                    and table.policies.get(chain) == "ACCEPT":
                emptied.append((NFT_FAMILY[fam], "filter", chain))
        libnft.delete_empty_chains(emptied)

    def _drop_counts(self) -> dict[tuple[str, str], int]:
        """(reason, bridge) -> packets our DROP rules dropped, both families together (see
        drop_reason; iptables-save -c prints each rule's counter)."""
        drops: dict[tuple[str, str], int] = {}
        for rc, out, _ in run_all([([self.tools[fam][0], "-c", "-t", "filter"], None) for fam in self.families]):
            for line in out.splitlines():
                if not (line.startswith("[") and "] -A " in line and TAG in line and line.endswith("-j DROP")):
                    continue
                count, rule = line.split("] ", 1)
                args = split_rule(rule)
                found = drop_reason(args[1], strip_comment(args[2:]))
                if found is not None:
                    drops[found] = drops.get(found, 0) + int(count[1:].split(":")[0])
        return drops

    def enforced(self) -> set[str]:
        """The bridges our STAGE-2 DROP isolates, in either family, those our internal and
        direct-access DROPs protect, and those our EGRESS and HOST chains hold rules for (an `open` network's denyEgress or hostAccess isolates nothing, yet
        its rules are ours)."""
        guarded = {_in_interface(rule) for table in self._read().values() for chain in (EGRESS, HOST)
                   for rule in table.chains.get(chain, []) if is_ours(rule)}
        isolated = {bridge for reason, bridge in self._drop_counts()
                    if reason in (reasons.CROSS_NETWORK, reasons.INTERNAL, reasons.DIRECT_ACCESS)}
        return isolated | (guarded - {None})

    def drops(self) -> dict[str, dict[str, int]]:
        """Our DROP rules' counters (both families), and the anti-spoofing table's named
        counters (nftables' bridge family, as on the nftables backend)."""
        from plugin.backends.nftables import add_counts, read_counters

        found: dict[str, dict[str, int]] = {}
        add_counts(found, self._drop_counts())
        lib = libnft.load()[0]
        if lib is not None:
            add_counts(found, read_counters(lib, "bridge", SPOOF_TABLE))
        return found

    def cleanup_commands(self, bridge: str | None, facts: dict, ports: list[str]) -> list[list[str]]:
        """Shell commands removing our rules: a bridge's, or (bridge None) all, with our chains
        and the filter tables we created once pristine (iptables-nft), and the anti-spoofing
        elements of `ports` (bridge None: the whole anti-spoofing table)."""
        routed = bridge is not None and bridge.startswith(SEGMENT_PREFIX)  # its members' rules name them
        everything = Release(bridge=bridge or "", isolate=True, drop_intra=True, within=True, published=True,
                             peers=frozenset(), guard=NO_GUARD, logged=(), last=bridge is None,
                             last_guard=bridge is None, routed=routed, members=tuple(ports) if routed else ())
        cmds = []
        lib = libnft.load()[0]
        if lib is not None:
            from plugin.backends.nftables import read_table, spoof_cleanup

            spec = _spoof_spec()
            state = read_table(lib, spec)
            if bridge is None and state.exists:
                cmds.append(["nft", "delete", "table", spec.family, spec.name])
            elif state.exists:
                cmds += spoof_cleanup(state, set(ports), spec, bridge)
        for fam, table in self._read().items():
            tool = "iptables" if fam == "ipv4" else "ip6tables"
            lines = release_plan(table, everything, fam, everything=bridge is None)
            if bridge is not None:  # its tenant groups' passes, out of it and into it
                lines += [f"-D {STAGE2} " + _text(r) for r in table.chains.get(STAGE2, []) if is_ours(r) and _safe(r)
                          and _is_tenant_pass(strip_comment(r)) and bridge in strip_comment(r)[3:6:2]]
            cmds += [[tool, "-w", "-t", "filter", *shlex.split(line)] for line in lines]
            created = bridge is None and fam in facts.get("created_filter", []) and table.nft_variant
            after = without_ours(table)[0]
            if created and after.pristine():
                cmds.append(["nft", "delete", "table", NFT_FAMILY[fam], "filter"])
            elif bridge is None and table.nft_variant:  # built-in chains our jumps made exist
                cmds += [["nft", "delete", "chain", NFT_FAMILY[fam], "filter", chain]
                         for f, _, chain in (c.partition(":") for c in facts.get("created_chains", []))
                         if f == fam and not after.chains.get(chain) and after.policies.get(chain) == "ACCEPT"]
        return cmds

    def surplus(self, desired: Desired) -> dict[str, list[str]]:
        bridges = set(desired.bridges)
        found: dict[str, list[str]] = {}
        for fam, table in self._read().items():
            for chain, r in surplus(table, desired, bridges, fam):
                spec = strip_comment(r)
                for bridge in sorted(_granted_to(chain, spec) & bridges):
                    found.setdefault(bridge, []).append(_surplus_text(fam, chain, spec))
        for text, _, concerned in _tenancy_surplus(desired, bridges):
            for bridge in concerned:
                found.setdefault(bridge, []).append(f"nftables: {text}")
        return found

    def revoke(self, desired: Desired) -> list[str]:
        bridges = set(desired.bridges)
        gone: list[str] = []

        def planner(fam: str, table: FilterTable) -> list[str]:
            found = surplus(table, desired, bridges, fam)
            gone.extend(f"{fam}: {chain} rule '{' '.join(strip_comment(r))}' ({_grant_kind(chain, strip_comment(r))})"
                        for chain, r in found)
            return [f"-D {chain} " + " ".join(r) for chain, r in found]

        failed = self._transact(planner)
        if failed:
            raise CniError(ENFORCEMENT_FAILED, "could not remove grants no attachment needs", failed[0][1].strip())
        tenants = _tenancy_surplus(desired, bridges)
        if tenants:
            from plugin.backends.nftables import apply

            apply(libnft.load()[0], [c for _, cmds, _ in tenants for c in cmds],
                  "could not remove grants no attachment needs")
            gone += [f"nftables: {text}" for text, _, _ in tenants]
        return list(dict.fromkeys(gone))

    def verify(self, desired: Desired) -> list[str]:
        return self._missing(self._read(), desired)

    def audit(self, desired: Desired, granted: Desired) -> tuple[list[str], list[str]]:
        tables = self._read()
        # `granted` is not every attachment: the bridges our other chains hold rules for stand in
        # for those the plugin manages (a directAccess deny bridge lets them in)
        extra = [_surplus_text(fam, chain, strip_comment(r)) for fam, table in tables.items()
                 for chain, r in surplus(table, granted, set(desired.bridges), fam,
                                         sorted(set(managed_bridges(granted)) | managed_in(table)))]
        extra += [f"nftables: {text}" for text, _, _ in _tenancy_surplus(granted, set(desired.bridges))]
        return self._missing(tables, desired), extra

    def _missing(self, tables: dict[str, FilterTable], desired: Desired) -> list[str]:
        """What `tables` (and the anti-spoofing table) lack to enforce `desired`."""
        missing = [f"{fam}: {p}" for fam, table in tables.items() for p in problems(table, desired, fam)]
        spoofs = desired.spoofs
        if spoofs or desired.counted:
            lib, reason = libnft.load()
            if lib is None and not spoofs:  # intra-bridge frames uncounted: nothing less enforced
                pass
            elif lib is None:
                missing.append(f"anti-spoofing cannot be read: {reason}")
            else:
                from plugin.backends.nftables import (bridge_elements, bridge_log_chains, chain_problems, read_table,
                                                      table_problems)

                spec = _spoof_spec()
                state = read_table(lib, spec)
                found = table_problems(state, bridge_elements(desired), spec)
                if state.exists and state.intact:
                    found += chain_problems(state, bridge_log_chains(desired), spec)
                missing += [f"nftables: {p}" for p in found]
        return missing


NFT_FAMILY = {"ipv4": "ip", "ipv6": "ip6"}
SPOOF_TABLE = "isolation-iptables"


def _tenancy_surplus(desired: Desired, bridges) -> list[tuple[str, list[dict], list[str]]]:
    """The tenancy grants of this backend's bridge table beyond what `desired` needs
    (nftables.tenancy_surplus); none when the table cannot be read (nothing of it to grant)."""
    lib = libnft.load()[0] if desired.tenanted else None  # no tenant: nothing judged, nothing granted
    if lib is None:
        return []
    from plugin.backends.nftables import read_table, tenancy_surplus

    spec = _spoof_spec()
    return tenancy_surplus(read_table(lib, spec), desired, bridges, spec)


def _spoof_spec():
    """The spec of this backend's anti-spoofing table (the nftables backend's layout, our name)."""
    from plugin.backends.nftables import bridge_spec

    return bridge_spec(SPOOF_TABLE)


def _nft_chain(family: str, chain: str) -> bool:
    """Whether iptables-nft's built-in `chain` exists in the filter table (see _nft_table)."""
    return libnft.chain_exists(NFT_FAMILY[family], "filter", chain)


def _nft_table(family: str) -> bool:
    """Whether iptables-nft's filter table really exists (iptables-save -t filter prints an
    empty one either way). Asked only when it looks pristine, i.e. on a first ADD."""
    return libnft.table_exists(NFT_FAMILY[family], "filter")
