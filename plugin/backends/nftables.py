"""The nftables backend: tables of our own, driven in-process through libnftables' JSON API.

    table inet isolation                       (IPv4 and IPv6 in one rule set)
      set isolated  { type ifname }            bridges that are isolated
      set self      { type ifname . ifname }   (BR . BR) for each isolated or guarded bridge
      set published { type ifname }            isolated bridges whose published ports stay reachable
      set intra     { type ifname }            `isolated` bridges (no traffic between their ports)
      set peers     { type ifname . ifname }   (A . B) for bridges A != B of one isolationGroup
      set internal  { type ifname }            `internal` bridges (nothing forwarded in or out)
      set direct    { type ifname }            bridges with directAccess deny
      set trusted   { type ifname . ifname }   (BR . IF) for each of BR's trustedInterfaces
      set tcross4/6 { type ifname . address }  (BR . address) one tenant group reaches across bridges
      map egress    { type ifname : verdict }  BR : jump egress-BR (bridges with denyEgress)
      map host      { type ifname : verdict }  BR : jump host-BR (bridges with hostAccess deny)
      map count-R   { type ifname : counter }  BR : "R-BR", for each drop reason R the bridge has
      counter R-BR                             its drops of reason R (plugin.reasons), named
      map logR      { type ifname : verdict }  BR : jump logR-BR (R: cross, intra, egress, host,
                                               internal, direct), for bridges with logDrops
                                               (LOG_MAPS, log_rules)
      sets flows4/6, other4/6 (timeout 1m)     flows logged lately, filled by the log chains
      limit log-BR                             the log's rate for one bridge, all reasons together
      chain forward  hook forward, priority -5, policy accept
        iifname @intra iifname . oifname @self goto drop-intra-bridge   within an `isolated` bridge
                                                          (hairpin through the host, or bridged via br_netfilter)
        iifname . oifname @self return                    within one bridge: nothing else applies
        iifname @internal goto drop-internal              out of an internal bridge, and into one:
        oifname @internal goto drop-internal              replies, DNAT'd, invalid, fragments alike
        oifname @direct jump direct                       into a bridge closed to direct access
        iifname vmap @egress                              the bridge's deny list
        ct direction original ct status dnat oifname @published return   a published port (the
        ct direction reply ct status dnat iifname @published return      publisher decides, replies too)
        iifname . oifname @peers return                   the same isolationGroup
        ct status ! dnat iifname . ip daddr @tcross4 return   one tenant group across bridges (ip6:
                                                          tcross6; the bridge table keeps other ports
                                                          from it; never a DNAT'd packet)
        iifname @isolated oifname @isolated goto drop-cross-network
      chain input  hook input, priority -5, policy accept
        icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }
               ip6 hoplimit 255 return            neighbour discovery to the host (never forwarded)
        iifname vmap @egress                              deny ranges cover the host's addresses too
        iifname vmap @host
      chain egress-BR                          replies to connections opened toward the container
                                               return (ct direction reply); each allowEgress entry
                                               returns; the deny ranges drop what the container
                                               addressed (`ct original ip daddr`) and, without a
                                               valid conntrack entry, the packet's own destination
      chain host-BR                            replies and each allowHostPorts entry return;
                                               everything else drops
      chain drop-R                             every drop of reason R ends here (goto):
        iifname vmap @logR                       the sending bridge's log chain, when it logs
                                                 (drop-direct-access: oifname, the bridge it was
                                                 going into)
        counter name oifname map @count-R        counted for its bridge: the one a cross-network
                                                 packet was going into, else the one it came from
        counter drop                             (a bridge missing from the map breaks only the
                                                 rule above: the drop holds)
      chain direct                             what may enter a directAccess deny bridge:
        iifname . iifname @self return           from a bridge the plugin isolates or guards
        oifname . iifname @trusted return        through one of its trustedInterfaces
        ct state established,related ct direction reply return    replies
        ct direction original ct status dnat return               a published port
        goto drop-direct-access                  the rest (invalid and untracked included),
                                                 counted for the bridge it was going into
      chain drop-internal                      counted for the bridge it left and the one it was
        iifname vmap @loginternal                 going into, whichever of them is internal; logged
        oifname vmap @loginternal                 by the one that logs (once: the flow sets)
        counter name iifname map @count-internal
        counter name oifname map @count-internal
        counter drop

    table bridge isolation                     (only once an attachment has antiSpoofing)
      sets guarded, mac, src4, src6, nd6, ndopt   per port: its MAC and addresses (see SPOOF_RULES)
      chain prerouting  hook prerouting, priority -300, policy accept
        iifname != @guarded return             then every frame from a guarded port is checked,
                                               each drop a `goto drop-anti-spoofing`, counted by
                                               map count-anti-spoofing (port : its bridge's counter)
      chains forward, input                    tenants: each drop a `goto drop-cross-tenant`
      map logspoof, logtenant                  port : jump logR-BR, for the ports of logging bridges
      sets flows4/6, other4/6, frames; limit log-BR   the bridge table's own log state and rate

`isolated` between the ports of a bridge is the kernel's bridge-port isolation flag, set on
the ports (plugin/backends/ports.py); the forward rule above catches what the host routes
back into the bridge.

Bridges and ports are set elements, so the base rule count is constant and a packet
costs hash lookups, however many networks exist; a guarded bridge adds a chain whose
length follows its own configuration, reached through a verdict map. Traffic within one bridge is exempted by
the `self` set (the diagonal of bridge pairs), because nftables cannot compare
iifname with oifname directly. A drop in these tables is final whatever other tables
accept, so chain order with iptables, firewalld or Docker does not matter.

Named counters count per bridge at the cost of one map lookup per dropped packet; an ADD
adds its bridge's counters with its elements (adding one that exists keeps its count), so
adding or removing another network never resets them; a rebuilt table starts at zero.

Each change is one libnftables transaction. When the table is intact, ADD only adds
elements (kernels make a transaction that deletes or re-declares anything wait ~10 ms
when its socket closes); a damaged table is deleted and rebuilt in one transaction,
keeping the elements it still had. (The bridge table's two raw-payload sets can only be
declared with `typeof`, which libnftables 1.0.6 reads only from text: creating that table
runs one text command before the JSON transaction.)
"""

from plugin import reasons
from plugin.backends.base import Backend, first_bridge
from plugin.backends.libnft import Library, apply, flagged_tables, load, table_objects, terse_table_objects
from plugin.errors import CniError
from plugin.policy import ND_HOP_LIMIT, ND_TYPES, TENANCY_INET, TENANCY_SETS, Desired, Guard, Hole, Release, split_cidr, tenancy
from plugin.record import Factory, replace, value_class

TABLE = "isolation"
# The drop log (networks with logDrops): per reason, a verdict map from the sending bridge to
# its chain "logR-BR", jumped to by the reason's drop chain before it counts and drops.
LOG_MAPS = {reasons.CROSS_NETWORK: "logcross", reasons.INTRA_BRIDGE: "logintra",
            reasons.EGRESS_DENY: "logegress", reasons.HOST_ACCESS: "loghost",
            reasons.INTERNAL: "loginternal", reasons.DIRECT_ACCESS: "logdirect"}
# Which side of the packet names the logging bridge (default: the one it came from, the sender's):
# an internal drop is logged by the internal bridge, whichever side it is on (the one it left
# first: the flow sets then keep the other's chain from logging it again), a direct-access drop
# by the bridge it was going into.
LOG_KEYS = {reasons.INTERNAL: ("iifname", "oifname"), reasons.DIRECT_ACCESS: ("oifname",)}
# The bridge table's drop log: per reason, a verdict map from each port of a logging bridge to
# that bridge's chain "logR-BR" in the bridge table (its own limit and flow sets there).
BRIDGE_LOG_MAPS = {reasons.ANTI_SPOOFING: "logspoof", reasons.CROSS_TENANT: "logtenant"}
# verdict maps: bridge -> jump to its chain "egress-BR" / "host-BR" / "logR-BR"
GUARD_MAPS = ("egress", "host", *LOG_MAPS.values())
VERDICT_MAPS = GUARD_MAPS + tuple(BRIDGE_LOG_MAPS.values())  # (the bridge table's: port -> jump)
# The log's rate, per bridge (all its reasons together: one named limit "log-BR"), and how
# long a logged flow stays quiet (per family: sets of flows, keyed from the packet's own header,
# since a dropped packet never gets a confirmed conntrack entry).
LOG_RATE, LOG_BURST, LOG_QUIET = 10, 20, 60
FLOW_SETS = {"flows4": ["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"],
             "flows6": ["ipv6_addr", "ipv6_addr", "inet_proto", "inet_service"],
             "other4": ["ipv4_addr", "ipv4_addr", "inet_proto"],
             "other6": ["ipv6_addr", "ipv6_addr", "inet_proto"]}
# The bridge table sees ARP and other ethertypes too: such a flow is (port, source MAC, ethertype).
FRAME_SETS = {"frames": ["ifname", "ether_addr", "ether_type"]}
# The reasons each table drops for, and what names the bridge a drop is counted for: the
# inet side counts a cross-network drop for the bridge it was going into (whose ingressPolicy
# refused it), the others for the bridge the packet came from; the bridge family knows only
# the port a frame entered by, so its counter maps hold one element per port, all naming
# their bridge's counter.
DROP_KEYS = {
    "inet": {reasons.CROSS_NETWORK: "oifname", reasons.INTRA_BRIDGE: "iifname", reasons.EGRESS_DENY: "iifname",
             reasons.HOST_ACCESS: "iifname", reasons.INTERNAL: ("iifname", "oifname"),
             reasons.DIRECT_ACCESS: "oifname"},
    "bridge": {reasons.ANTI_SPOOFING: "iifname", reasons.CROSS_TENANT: "iifname"},
}


def drop_chain(reason: str) -> str:
    """The chain every drop of `reason` goes to: it counts the packet for its bridge, then drops."""
    return f"drop-{reason}"


def count_map(reason: str) -> str:
    """The map naming each bridge's (bridge family: each port's) counter of `reason`."""
    return f"count-{reason}"


def counter_name(reason: str, bridge: str) -> str:
    """The named counter of `reason` drops for `bridge` (kept until the bridge's last attachment goes)."""
    return f"{reason}-{bridge}"


def parse_counter(name: str) -> tuple[str, str] | None:
    """(reason, bridge) of one of our counters' names, or None."""
    for reason in reasons.REASONS:
        if name.startswith(reason + "-") and len(name) > len(reason) + 1:
            return reason, name[len(reason) + 1:]
    return None


COUNT_MAPS = tuple(count_map(r) for keys in DROP_KEYS.values() for r in keys)
KEYED_MAPS = VERDICT_MAPS + COUNT_MAPS  # maps whose elements are (key, value) pairs, deleted by their key


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _in_set(left: dict, name: str) -> dict:
    return {"match": {"op": "==", "left": left, "right": f"@{name}"}}


def _eq(left: dict, right) -> dict:
    return {"match": {"op": "==", "left": left, "right": right}}


def _ne(left: dict, right) -> dict:
    return {"match": {"op": "!=", "left": left, "right": right}}


def _p(protocol: str, field: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field}}


COUNTER = {"counter": {"packets": 0, "bytes": 0}}
RETURN = {"return": None}


def _goto_drop(reason: str) -> dict:
    return {"goto": {"target": drop_chain(reason)}}


def drop_chains(family: str) -> dict:
    """The drop chains of a table: count the packet in its bridge's counter (a bridge without
    one, e.g. of a registry that lost it, breaks that rule only), then drop, counted once
    more for all bridges together. A drop site jumps here with `goto`: nothing returns."""
    return {drop_chain(r): (None, [*_log_jump(r),
                                   *([{"counter": {"map": {"key": _meta(k), "data": f"@{count_map(r)}"}}}]
                                     for k in (keys if isinstance(keys, tuple) else (keys,))),
                                   [COUNTER, {"drop": None}]])
            for r, keys in DROP_KEYS[family].items()}


def _log_jump(reason: str) -> list[list[dict]]:
    """The drop chain's first rules: a logging sending bridge's log chain (the packet's own
    input interface: for a cross-network drop too, whose counter counts the other side; in the
    bridge table, the port the frame came in by), or the bridges LOG_KEYS names."""
    maps = LOG_MAPS | BRIDGE_LOG_MAPS
    return [[{"vmap": {"key": _meta(k), "data": f"@{maps[reason]}"}}] for k in LOG_KEYS.get(reason, ("iifname",))] \
        if reason in maps else []


def limit_name(bridge: str) -> str:
    """The named limit all of `bridge`'s log chains share."""
    return f"log-{bridge}"


def _flow_key(family: int, ports: bool) -> dict:
    ip = "ip" if family == 4 else "ip6"
    keys = [{"payload": {"protocol": ip, "field": "saddr"}}, {"payload": {"protocol": ip, "field": "daddr"}},
            _meta("l4proto")]
    return {"concat": keys + ([{"payload": {"protocol": "th", "field": "dport"}}] if ports else [])}


def log_rules(reason: str, bridge: str, frames: bool = False) -> list[list[dict]]:
    """Chain logR-BR: a flow logged in the last LOG_QUIET seconds returns (its retries are not
    logged again); else, within the bridge's limit, the flow is remembered and the packet sent
    to the drop log's NFLOG group. A flow is (source, destination, protocol, and for TCP and
    UDP the destination port), from the packet's own header; per IP family. `frames` (the
    bridge table): any other ethertype's flow is (port, source MAC, ethertype)."""
    rules = []
    if frames:
        other = _ne(_p("ether", "type"), {"set": ["ip", "ip6"]})
        key = {"concat": [_meta("iifname"), _p("ether", "saddr"), _p("ether", "type")]}
        rules.append([other, _in_set(key, "frames"), RETURN])
        rules.append([other, {"limit": limit_name(bridge)}, {"set": {"op": "add", "elem": key, "set": "@frames"}},
                      {"log": {"prefix": reasons.log_prefix(reason, bridge), "group": reasons.NFLOG_GROUP}}])
    for family in (4, 6):
        for ports in (True, False):
            name = f"{'flows' if ports else 'other'}{family}"
            proto = {"match": {"op": "==" if ports else "!=", "left": _meta("l4proto"), "right": {"set": ["tcp", "udp"]}}}
            rules.append([proto, _in_set(_flow_key(family, ports), name), RETURN])
            rules.append([proto, {"limit": limit_name(bridge)},
                          {"set": {"op": "add", "elem": _flow_key(family, ports), "set": f"@{name}"}},
                          {"log": {"prefix": reasons.log_prefix(reason, bridge), "group": reasons.NFLOG_GROUP}}])
    return rules
# IPv6 router and neighbour solicitation and advertisement, redirect
ND_NAMES = {133: "nd-router-solicit", 134: "nd-router-advert", 135: "nd-neighbor-solicit",
            136: "nd-neighbor-advert", 137: "nd-redirect"}
# Neighbour discovery to the host itself (input hook): hop limit 255 proves it was not routed.
# Forwarded traffic never carries it (routers do not forward ND), so no exemption there.
NEIGHBOUR_DISCOVERY = [_eq({"payload": {"protocol": "icmpv6", "field": "type"}}, {"set": [ND_NAMES[t] for t in ND_TYPES]}),
                       _eq({"payload": {"protocol": "ip6", "field": "hoplimit"}}, ND_HOP_LIMIT), RETURN]


@value_class(frozen=True)
class TableSpec:
    """One of our tables, exactly as it must be (besides the per-bridge guard chains)."""

    family: str
    prio: int
    sets: dict
    chains: dict  # name -> (hook, rules)
    maps: dict = Factory(dict)  # name -> key type (values are verdicts)
    counts: dict = Factory(dict)  # name -> key type (values are named counters)
    typeof: dict = Factory(dict)  # name -> `typeof` text of sets JSON cannot declare (listed as in `sets`)
    dynamic: dict = Factory(dict)  # name -> type of sets the rules fill (with a timeout): never elements of ours
    name: str = TABLE

    def create(self, replace: bool = False) -> list[dict]:
        """The commands creating the table (`replace`: deleting the existing one first). Sets
        declared with `typeof` come first as one {"text": ...} command: _apply runs it as its
        own transaction before the JSON ones."""
        base = {"family": self.family, "table": self.name}
        cmds = [{"delete": {"table": {"family": self.family, "name": self.name}}}] if replace else []
        if self.typeof:
            text = [f"delete table {self.family} {self.name}"] if replace else []
            text.append(f"add table {self.family} {self.name}")
            text += [f"add set {self.family} {self.name} {n} {{ typeof {t} ; }}" for n, t in self.typeof.items()]
            cmds = [{"text": "\n".join(text)}]
        cmds.append({"add": {"table": {"family": self.family, "name": self.name}}})
        cmds += [{"add": {"set": {**base, "name": n, "type": t}}} for n, t in self.sets.items() if n not in self.typeof]
        cmds += [{"add": {"set": {**base, "name": n, "type": t, "flags": ["timeout"], "timeout": LOG_QUIET}}}
                 for n, t in self.dynamic.items()]
        cmds += [{"add": {"map": {**base, "name": n, "type": t, "map": "verdict"}}} for n, t in self.maps.items()]
        cmds += [{"add": {"map": {**base, "name": n, "type": t, "map": "counter"}}} for n, t in self.counts.items()]
        for name, (hook, _) in self.chains.items():  # every chain before any rule: rules jump to the regular ones
            chain = {**base, "name": name}
            if hook:
                chain |= {"type": "filter", "hook": hook, "prio": self.prio, "policy": "accept"}
            cmds.append({"add": {"chain": chain}})
        for name, (hook, rules) in self.chains.items():
            cmds += [{"add": {"rule": {**base, "chain": name, "expr": _creatable(expr)}}} for expr in rules]
        return cmds


def _creatable(expr: list[dict]) -> list[dict]:
    """A rule as it must be written: a 64-bit raw value with its top bit set lists back as a
    negative integer, but is only understood written in hex."""
    def fix(x: dict) -> dict:
        m = x.get("match")
        if m and isinstance(m.get("right"), int) and m["right"] < 0:
            return {"match": {**m, "right": f"0x{m['right'] + (1 << 64):x}"}}
        return x

    return [fix(x) for x in expr]


SAME_BRIDGE = _in_set({"concat": [_meta("iifname"), _meta("oifname")]}, "self")
DNAT = {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}
# A published port: the publishing bridge's setting alone decides, for the connection DNAT'd
# into it (original direction, out of oifname) and for its replies (reply direction, in by
# iifname); the client's own allowPublishedPorts never matters.
PUBLISHED_PORTS = [
    [_eq({"ct": {"key": "direction"}}, "original"), DNAT, _in_set(_meta("oifname"), "published"), RETURN],
    [_eq({"ct": {"key": "direction"}}, "reply"), DNAT, _in_set(_meta("iifname"), "published"), RETURN],
]


# one tenant group's members on two bridges (policy.tenancy's tcross: the bridge a packet came
# from . the member it is for); the bridge table keeps other ports of that bridge from it
# (only for packets addressed to the member itself: the bridge table guards the pass by the
# destination a port wrote, which a DNAT'd packet's is not; a published port follows
# allowPublishedPorts. An untracked packet has no status: it gets no pass either.)
NOT_DNAT = {"match": {"op": "!", "left": {"ct": {"key": "status"}}, "right": "dnat"}}
TENANT_PASS = [[NOT_DNAT, _in_set({"concat": [_meta("iifname"), _p(proto, "daddr")]}, f"tcross{v}"), RETURN]
               for proto, v in (("ip", 4), ("ip6", 6))]


def _vmap(name: str) -> list[dict]:
    return [{"vmap": {"key": _meta("iifname"), "data": f"@{name}"}}]


INET = TableSpec(
    family="inet",
    prio=-5,
    sets={"isolated": "ifname", "self": ["ifname", "ifname"], "published": "ifname", "intra": "ifname",
          "peers": ["ifname", "ifname"], "internal": "ifname", "direct": "ifname",
          "trusted": ["ifname", "ifname"], "tcross4": ["ifname", "ipv4_addr"], "tcross6": ["ifname", "ipv6_addr"]},
    chains={
        "forward": ("forward", [
            [_in_set(_meta("iifname"), "intra"), SAME_BRIDGE, _goto_drop(reasons.INTRA_BRIDGE)],
            [SAME_BRIDGE, RETURN],
            [_in_set(_meta("iifname"), "internal"), _goto_drop(reasons.INTERNAL)],
            [_in_set(_meta("oifname"), "internal"), _goto_drop(reasons.INTERNAL)],
            [_in_set(_meta("oifname"), "direct"), {"jump": {"target": "direct"}}],
            _vmap("egress"),
            *PUBLISHED_PORTS,
            [_in_set({"concat": [_meta("iifname"), _meta("oifname")]}, "peers"), RETURN],
            *TENANT_PASS,
            [_in_set(_meta("iifname"), "isolated"), _in_set(_meta("oifname"), "isolated"),
             _goto_drop(reasons.CROSS_NETWORK)],
        ]),
        "input": ("input", [NEIGHBOUR_DISCOVERY, _vmap("egress"), _vmap("host")]),
        "direct": (None, [
            [_in_set({"concat": [_meta("iifname"), _meta("iifname")]}, "self"), RETURN],
            [_in_set({"concat": [_meta("oifname"), _meta("iifname")]}, "trusted"), RETURN],
            [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
             _eq({"ct": {"key": "direction"}}, "reply"), RETURN],
            [_eq({"ct": {"key": "direction"}}, "original"), DNAT, RETURN],
            [_goto_drop(reasons.DIRECT_ACCESS)],
        ]),
        **drop_chains("inet"),
    },
    maps={m: "ifname" for m in GUARD_MAPS},
    counts={count_map(r): "ifname" for r in DROP_KEYS["inet"]},
    dynamic=FLOW_SETS,
)


# --- anti-spoofing, in the bridge family: every frame entering the bridge from a guarded port ---
def _raw(offset: int, length: int) -> dict:
    return {"payload": {"base": "th", "offset": offset, "len": length}}


def _port_and(expr: dict) -> dict:
    return {"concat": [_meta("iifname"), expr]}


DROP = [_goto_drop(reasons.ANTI_SPOOFING)]
ICMP6_TYPE = _p("icmpv6", "type")
NA, NS, RS = "nd-neighbor-advert", "nd-neighbor-solicit", "nd-router-solicit"
# Rules in the form the kernel lists them back. ND messages must be bare (no extension
# header) and of the exact sizes Linux sends, so their first option sits at a known offset:
# NS/NA 24 bytes (+8 for one option: SLLA/TLLA, or DAD's nonce), RS 8 (+8 for its SLLA).
# Frames between two ports of an `isolated` bridge never reach a firewall hook: the bridge-port
# isolation flag drops them after prerouting. They are counted here, before anti-spoofing
# (a spoofed frame to such a MAC counts for both reasons): a unicast frame addressed to the
# MAC of a container of an isolated bridge (set intramac) counts for the bridge its port is
# on (map count-intra-bridge: port : counter), or for none when its port is on no isolated
# bridge (the map lookup fails, the rule ends). Flooded frames (broadcast, multicast, unknown
# unicast) are not counted.
INTRA_COUNT = [_in_set(_p("ether", "daddr"), "intramac"),
               {"counter": {"map": {"key": _meta("iifname"), "data": f"@{count_map(reasons.INTRA_BRIDGE)}"}}}]
SPOOF_RULES = [
    INTRA_COUNT,
    [_ne(_meta("iifname"), "@guarded"), RETURN],
    [_ne(_port_and(_p("ether", "saddr")), "@mac"), *DROP],  # another source MAC, any ethertype
    [_ne(_p("ether", "type"), {"set": ["ip", "arp", "ip6"]}), *DROP],  # VLAN-tagged, non-IP: unverifiable
    [_ne(_port_and(_p("arp", "saddr ether")), "@mac"), *DROP],
    [_ne(_p("arp", "saddr ip"), "0.0.0.0"), _ne(_port_and(_p("arp", "saddr ip")), "@src4"), *DROP],
    [_ne(_port_and(_p("ip", "saddr")), "@src4"), *DROP],
    [_ne(_p("ip6", "saddr"), {"set": ["::", {"prefix": {"addr": "fe80::", "len": 64}}]}),
     _ne(_port_and(_p("ip6", "saddr")), "@src6"), *DROP],
    [_eq(_p("ip6", "saddr"), "::"), _ne(_meta("l4proto"), "ipv6-icmp"), *DROP],  # :: only for DAD and MLD
    [_eq(ICMP6_TYPE, {"set": ["nd-router-advert", "nd-redirect"]}), *DROP],  # a container is no router
    [_eq(ICMP6_TYPE, {"set": [RS, NS, NA]}), _ne(_p("ip6", "nexthdr"), "ipv6-icmp"), *DROP],
    [_eq(ICMP6_TYPE, {"set": [NS, NA]}), _ne(_p("ip6", "length"), {"set": [24, 32]}), *DROP],
    [_eq(ICMP6_TYPE, RS), _ne(_p("ip6", "length"), {"set": [8, 16]}), *DROP],
    # an advertisement's target: one of the port's addresses, or link-local
    [_eq(ICMP6_TYPE, NA), _ne(_raw(64, 64), -0x180000000000000), _ne(_port_and(_raw(64, 128)), "@nd6"), *DROP],
    # link-layer address options: the port's own MAC
    [_eq(ICMP6_TYPE, NA), _eq(_p("ip6", "length"), 32), _ne(_port_and(_raw(192, 64)), "@ndopt"), *DROP],
    [_eq(ICMP6_TYPE, NS), _eq(_p("ip6", "length"), 32), _ne(_p("ip6", "saddr"), "::"),
     _ne(_port_and(_raw(192, 64)), "@ndopt"), *DROP],
    [_eq(ICMP6_TYPE, NS), _eq(_p("ip6", "length"), 32), _eq(_p("ip6", "saddr"), "::"), _ne(_raw(192, 16), 0x0E01),
     *DROP],  # duplicate address detection carries a nonce, never a link-layer address
    [_eq(ICMP6_TYPE, RS), _eq(_p("ip6", "length"), 16), _ne(_port_and(_raw(64, 64)), "@ndopt"), *DROP],
]
SPOOF_SETS = {"guarded": "ifname", "intramac": "ether_addr", "mac": ["ifname", "ether_addr"],
              "src4": ["ifname", "ipv4_addr"],
              "src6": ["ifname", "ipv6_addr"], "nd6": ["ifname", "integer"], "ndopt": ["ifname", "integer"]}
# Tenants (per-container isolationGroups, policy.tenancy): judged by port, so a forged MAC or
# address changes nothing here. Bridged frames between two known ports, one of them a tenant's,
# pass only between ports of one effective group (any ethertype: IP, ARP, the rest); packets a
# known port sends the host for a tenant's address (routed, to another bridge or back into its
# own) only from a port of that tenant. Each a set lookup per frame, however many tenants.
TENANT_DROP = _goto_drop(reasons.CROSS_TENANT)
PORT_PAIR = {"concat": [_meta("iifname"), _meta("oifname")]}
TENANT_FORWARD = [
    [_in_set(_meta("iifname"), "tports"), _in_set(_meta("oifname"), "tenanted"), _ne(PORT_PAIR, "@tpair"), TENANT_DROP],
    [_in_set(_meta("iifname"), "tenanted"), _in_set(_meta("oifname"), "tports"), _ne(PORT_PAIR, "@tpair"), TENANT_DROP],
]
# Routed packets: to a tenant's address only from its group's known ports; from a tenant's port
# to any member's address only within its group (else a tenant reached a plain container of
# another group through a `peers` or `self` pass); and to an address the inet table's
# cross-bridge pass (tcross) covers, only from a port that may reach it without the pass
# (xok): the pass is keyed by bridge, so a plain neighbour of the tenant or an uplink enslaved
# to the pass's bridge would use it (this kernel's bridge family cannot match `meta ibrname`).
TENANT_INPUT = [rule for proto, v in (("ip", 4), ("ip6", 6)) for rule in (
    [_in_set(_meta("iifname"), "tports"), _in_set(_p(proto, "daddr"), f"taddr{v}"),
     _ne(_port_and(_p(proto, "daddr")), f"@tok{v}"), TENANT_DROP],
    [_in_set(_meta("iifname"), "tenanted"), _in_set(_p(proto, "daddr"), f"maddr{v}"),
     _ne(_port_and(_p(proto, "daddr")), f"@tok{v}"), TENANT_DROP],
    [_in_set(_p(proto, "daddr"), f"xaddr{v}"), _ne(_port_and(_p(proto, "daddr")), f"@xok{v}"), TENANT_DROP])]
# Routed packets the host sends out of a bridge (bridge output: routed from elsewhere, or the
# host's own): one for a tenant's address leaves only by a port of that tenant's group (tok),
# and a tenant's port gets one for a member's address only within its group. A neighbour
# without anti-spoofing can teach the bridge a tenant's MAC on its own port, and a packet whose
# destination's entry aged out is flooded to every port: either would hand it to another group.
TENANT_OUTPUT = [rule for proto, v in (("ip", 4), ("ip6", 6)) for rule in (
    [_in_set(_p(proto, "daddr"), f"taddr{v}"), _ne({"concat": [_meta("oifname"), _p(proto, "daddr")]}, f"@tok{v}"),
     TENANT_DROP],
    [_in_set(_meta("oifname"), "tenanted"), _in_set(_p(proto, "daddr"), f"maddr{v}"),
     _ne({"concat": [_meta("oifname"), _p(proto, "daddr")]}, f"@tok{v}"), TENANT_DROP])]
TENANCY_TYPES = {"tports": "ifname", "tenanted": "ifname", "tpair": ["ifname", "ifname"], "taddr4": "ipv4_addr",
                 "taddr6": "ipv6_addr", "tok4": ["ifname", "ipv4_addr"], "tok6": ["ifname", "ipv6_addr"],
                 "maddr4": "ipv4_addr", "maddr6": "ipv6_addr", "tcross4": ["ifname", "ipv4_addr"],
                 "tcross6": ["ifname", "ipv6_addr"], "xaddr4": "ipv4_addr", "xaddr6": "ipv6_addr",
                 "xok4": ["ifname", "ipv4_addr"], "xok6": ["ifname", "ipv6_addr"]}
assert tuple(TENANCY_TYPES) == TENANCY_SETS
SPOOF_SETS |= TENANCY_TYPES
SPOOF_TYPEOF = {"nd6": "iifname . @th,64,128", "ndopt": "iifname . @th,192,64"}


def bridge_spec(name: str = TABLE) -> TableSpec:
    """The anti-spoofing table (the iptables backend keeps its own, under another name)."""
    return TableSpec(family="bridge", prio=-300, sets=SPOOF_SETS,
                     chains={"prerouting": ("prerouting", SPOOF_RULES), "forward": ("forward", TENANT_FORWARD),
                             "input": ("input", TENANT_INPUT), "output": ("output", TENANT_OUTPUT),
                             **drop_chains("bridge")},
                     counts={count_map(r): "ifname" for r in (*DROP_KEYS["bridge"], reasons.INTRA_BRIDGE)},
                     maps={m: "ifname" for m in BRIDGE_LOG_MAPS.values()}, dynamic=FLOW_SETS | FRAME_SETS,
                     typeof=SPOOF_TYPEOF, name=name)


def _ipv6_int(addr: str) -> int:
    import _socket

    return int.from_bytes(_socket.inet_pton(_socket.AF_INET6, addr), "big")


def spoof_elements(spoofs) -> dict[str, set]:
    """The bridge table's elements for `spoofs` (policy.Spoof): name -> elements."""
    want = {name: set() for name in SPOOF_SETS}
    for s in spoofs:  # their names were checked when the desired state was built (policy.desired)
        mac = int(s.mac.replace(":", ""), 16)
        want["guarded"].add(s.port)
        want["mac"].add((s.port, s.mac))
        want["ndopt"].update({(s.port, (0x0101 << 48) | mac), (s.port, (0x0201 << 48) | mac)})  # SLLA, TLLA
        want["src4"].update((s.port, a) for a in s.ips_in(4))
        want["src6"].update((s.port, a) for a in s.ips_in(6))
        want["nd6"].update((s.port, _ipv6_int(a)) for a in s.ips_in(6))
    return want


def bridge_elements(desired: Desired) -> dict[str, set]:
    """The bridge table's elements for `desired`: its anti-spoofing, the MACs of its isolated
    bridges' containers, and each port naming its bridge's counters."""
    want = spoof_elements(desired.spoofs)
    want[count_map(reasons.ANTI_SPOOFING)] = {(s.port, counter_name(reasons.ANTI_SPOOFING, b.bridge))
                                             for b in desired for s in b.spoofs}
    want |= counted_elements(desired, lambda b: b.counted)
    want |= tenancy(desired)
    want[count_map(reasons.CROSS_TENANT)] = {(m.port, counter_name(reasons.CROSS_TENANT, b.bridge))
                                            for b in desired for m in b.members if desired.tenanted}
    for reason, ports in bridge_logged(desired).items():  # each port of a logging bridge: its log chain
        want[BRIDGE_LOG_MAPS[reason]] = {(port, bridge_log_chain(reason, b)) for b, p in ports for port in p}
    return want


def bridge_log_chain(reason: str, bridge: str) -> str:
    return f"{BRIDGE_LOG_MAPS[reason]}-{bridge}"


def bridge_logged(desired: Desired) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """reason -> (bridge, its ports) for the bridge table's drops that go to the drop log: the
    anti-spoofing ports and, with tenants, every port of the bridges that log (BridgeNeeds.log)."""
    return {reasons.ANTI_SPOOFING: [(b.bridge, tuple(s.port for s in b.spoofs)) for b in desired if b.log and b.spoofs],
            reasons.CROSS_TENANT: [(b.bridge, tuple(m.port for m in b.members)) for b in desired
                                   if b.log and b.members and desired.tenanted]}


# A broadcast or multicast frame the bridge floods to another tenant's port is dropped there,
# but it is nobody's attempt to reach that tenant (ARP, neighbour discovery): not logged.
# (Its destination MAC's group bit: the bridge's forward hook does not see them as `pkttype`.)
GROUP_BIT = "01:00:00:00:00:00"
FLOODED = [_eq({"&": [_p("ether", "daddr"), GROUP_BIT]}, GROUP_BIT), RETURN]


def bridge_log_chains(desired: Desired) -> dict[str, list[list[dict]]]:
    """The bridge table's log chains `desired` needs: name -> rules."""
    return {bridge_log_chain(reason, b): [*([FLOODED] if reason == reasons.CROSS_TENANT else []),
                                          *log_rules(reason, b, frames=True)]
            for reason, bridges in bridge_logged(desired).items() for b, _ in bridges}


def counted_elements(bridges, pairs) -> dict[str, set]:
    """The intra-bridge counting elements of `pairs(b)` ((port, MAC) pairs) for each of `bridges`."""
    return {"intramac": {mac for b in bridges for _, mac in pairs(b)},
            count_map(reasons.INTRA_BRIDGE): {(port, counter_name(reasons.INTRA_BRIDGE, b.bridge))
                                              for b in bridges for port, _ in pairs(b)}}


BRIDGE = bridge_spec()
SPECS = {"inet": INET, "bridge": BRIDGE}

# --- per-bridge guard chains, written in the form the kernel lists them back ----------------
ESTABLISHED = [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
               _eq({"ct": {"key": "direction"}}, "reply"), RETURN]
ICMP = {4: "icmp", 6: "ipv6-icmp"}


def _one_or_set(values: list):
    return values[0] if len(values) == 1 else {"set": values}


def _address(cidr: str):
    addr, length, single = split_cidr(cidr)
    return addr if single else {"prefix": {"addr": addr, "len": length}}


def _destination(family: int, right) -> dict:
    """The destination the container addressed: conntrack's original tuple, before any DNAT."""
    return _eq({"ct": {"key": f"ip{'' if family == 4 else '6'} daddr", "dir": "original"}}, right)


def _port(text: str):
    lo, _, hi = text.partition("-")
    return {"range": [int(lo), int(hi)]} if hi else int(lo)


def _hole(hole: Hole) -> list[list[dict]]:
    """The rules (one per IP family it concerns) letting `hole` through."""
    families = [hole.family] if hole.cidr else [4, 6]
    head = {f: [_destination(f, _address(hole.cidr))] if hole.cidr else [] for f in families}
    if hole.protocol in ("tcp", "udp") and hole.ports:
        match = [_eq({"payload": {"protocol": hole.protocol, "field": "dport"}},
                     _one_or_set([_port(p) for p in hole.ports]))]
        return [head[f] + match + [RETURN] for f in families] if hole.cidr else [match + [RETURN]]
    if hole.protocol in ("tcp", "udp"):
        match = [_eq(_meta("l4proto"), hole.protocol)]
        return [head[f] + match + [RETURN] for f in families] if hole.cidr else [match + [RETURN]]
    if hole.protocol == "icmp":
        return [head[f] + [_eq(_meta("l4proto"), ICMP[f]), RETURN] for f in families]
    return [head[f] + [RETURN] for f in families]


UNTRACKED = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["invalid", "untracked"]}}


def egress_rules(guard: Guard) -> list[list[dict]]:
    """Chain egress-BR: replies to connections opened toward the container pass, then the
    exceptions; then, per IP family, the deny ranges drop what the container addressed (the
    conntrack original destination, before DNAT) and, for packets conntrack does not track
    (invalid: a FIN, NULL or XMAS probe, an unsolicited echo reply; untracked), the
    packet's own destination."""
    rules = [ESTABLISHED]
    for hole in guard.allow:
        rules += _hole(hole)
    for family in (4, 6):
        cidrs = guard.deny_in(family)
        if cidrs:
            ranges = _one_or_set([_address(c) for c in cidrs])
            rules.append([_destination(family, ranges), _goto_drop(reasons.EGRESS_DENY)])
            rules.append([UNTRACKED, _eq(_p("ip" if family == 4 else "ip6", "daddr"), ranges),
                          _goto_drop(reasons.EGRESS_DENY)])
    return rules


def host_rules(guard: Guard) -> list[list[dict]]:
    """Chain host-BR: replies to connections the host opened and the allowed host ports pass;
    the rest drops (neighbour discovery returned earlier, in the input chain)."""
    rules = [ESTABLISHED]
    for hole in guard.host_ports:
        rules += _hole(hole)
    return rules + [[_goto_drop(reasons.HOST_ACCESS)]]


def bridge_chains(bridge: str, guard: Guard) -> dict[str, list[list[dict]]]:
    """The guard chains of one bridge: name -> rules."""
    chains = {}
    if guard.deny:
        chains[f"egress-{bridge}"] = egress_rules(guard)
    if guard.host_deny:
        chains[f"host-{bridge}"] = host_rules(guard)
    return chains


def log_chains(bridge: str, logged) -> dict[str, list[list[dict]]]:
    """The log chains of one bridge logging the drop reasons `logged`: name -> rules."""
    return {f"{LOG_MAPS[r]}-{bridge}": log_rules(r, bridge) for r in logged}


def guard_chains(desired: Desired) -> dict[str, list[list[dict]]]:
    """The per-bridge chains `desired` needs (guards and drop logs): name -> rules."""
    chains = {}
    for b in desired:
        if b.guard.active:
            chains |= bridge_chains(b.bridge, b.guard)
        chains |= log_chains(b.bridge, b.logged)
    return chains


def _is_log_chain(name: str) -> bool:
    return name.split("-", 1)[0] in (*LOG_MAPS.values(), *BRIDGE_LOG_MAPS.values())


def _is_guard_chain(name: str) -> bool:
    return name.split("-", 1)[0] in VERDICT_MAPS and "-" in name


@value_class
class TableState:
    """What the kernel holds of one of our tables."""

    exists: bool = False
    intact: bool = False
    elements: dict[str, set] = Factory(dict)  # map elements as (key, jump target)
    chains: dict[str, list] = Factory(dict)  # the per-bridge guard chains and their rules
    dormant: bool = False  # `flags dormant`: the table is there and enforces nothing
    counters: dict[str, int] = Factory(dict)  # our named counters -> packets counted
    limits: set[str] = Factory(set)  # our named limits (the drop log's, one per logging bridge)

    @classmethod
    def parse(cls, listing: list[dict] | None, spec: TableSpec) -> "TableState":
        """From the `nftables` array of `list table FAMILY isolation` (None: no such table)."""
        if listing is None:
            return cls()
        sets, maps, base, rules, counters, dynamic, limits = {}, {}, {}, {}, {}, {}, set()
        dormant = flagged = False
        for obj in listing:
            if "table" in obj:  # our tables carry no flags: any (dormant above all) is an alteration
                flags = obj["table"].get("flags") or []
                flags = [flags] if isinstance(flags, str) else flags
                dormant = "dormant" in flags
                flagged = bool(flags)
            elif "set" in obj:
                s = obj["set"]
                if s["name"] in spec.dynamic:  # the log's flows: the rules' business
                    dynamic[s["name"]] = s["type"]
                else:
                    sets[s["name"]] = (s["type"], {_element(e) for e in s.get("elem", [])})
            elif "map" in obj:
                m = obj["map"]
                maps[m["name"]] = ((m["type"], m.get("map")), {_map_element(e) for e in m.get("elem", [])})
            elif "counter" in obj:
                counters[obj["counter"]["name"]] = obj["counter"].get("packets", 0)
            elif "limit" in obj:
                limits.add(obj["limit"]["name"])
            elif "chain" in obj:
                c = obj["chain"]
                base[c["name"]] = (c.get("type"), c.get("hook"), c.get("prio"), c.get("policy"))
                rules.setdefault(c["name"], [])
            elif "rule" in obj:
                rules.setdefault(obj["rule"]["chain"], []).append(_normalise(obj["rule"]["expr"]))
        guard = {n: r for n, r in rules.items() if _is_guard_chain(n) and base[n] == (None, None, None, None)}
        intact = (
            not flagged
            and {n: t for n, (t, _) in sets.items()} == spec.sets
            and dynamic == spec.dynamic
            and {n: t for n, (t, _) in maps.items()}
            == {n: (t, "verdict") for n, t in spec.maps.items()} | {n: (t, "counter") for n, t in spec.counts.items()}
            and {n: b for n, b in base.items() if n not in guard}
            == {n: ("filter", hook, spec.prio, "accept") if hook else (None, None, None, None)
                for n, (hook, _) in spec.chains.items()}
            and all(rules[n] == r for n, (_, r) in spec.chains.items())
        )
        elements = {n: elems for n, (t, elems) in sets.items() if spec.sets.get(n) == t}
        elements |= {n: elems for n, ((t, kind), elems) in maps.items()
                     if (spec.maps if kind == "verdict" else spec.counts).get(n) == t}
        return cls(exists=True, intact=intact, elements=elements, chains=guard, dormant=dormant, counters=counters,
                   limits=limits)


def _element(e) -> str | tuple:
    if isinstance(e, dict) and "elem" in e:  # an element with attributes
        e = e["elem"]["val"]
    if isinstance(e, dict) and "concat" in e:  # raw-payload values list as integers or hex
        return tuple(int(v, 16) if isinstance(v, str) and v.startswith("0x") else v for v in e["concat"])
    return e


def _map_element(e) -> tuple:
    key, value = e
    if isinstance(value, str):  # a counter map's element names its counter
        return (_element(key), value)
    return (_element(key), (value.get("jump") or {}).get("target") if isinstance(value, dict) else None)


def _normalise(expr: list[dict]) -> list[dict]:
    """A listed rule's expressions, with counter values zeroed so it compares with our spec."""
    return [COUNTER if "counter" in x and "packets" in (x["counter"] or {}) else x for x in expr]


def wanted(desired: Desired) -> dict[str, dict[str, set]]:
    """The set and map elements each table must hold for `desired`: family -> name -> elements
    (the inet table once a bridge isolates or is guarded, the bridge table once a port is
    under anti-spoofing)."""
    want: dict[str, dict[str, set]] = {}
    for b in desired:
        names = b.interfaces  # a routed segment's members stand where a bridge's name does
        if b.isolate or b.guard.active:
            inet = want.setdefault("inet", {name: set() for name in [*INET.sets, *INET.maps, *INET.counts]})
        for reason, needed in ((reasons.CROSS_NETWORK, b.isolate), (reasons.INTRA_BRIDGE, b.drop_intra),
                               (reasons.EGRESS_DENY, bool(b.guard.deny)), (reasons.HOST_ACCESS, b.guard.host_deny),
                               (reasons.INTERNAL, b.guard.internal), (reasons.DIRECT_ACCESS, b.guard.direct_deny)):
            if needed:
                inet[count_map(reason)].update((n, counter_name(reason, b.bridge)) for n in names)
        if b.guard.internal:
            inet["internal"].update(names)
        if b.guard.direct_deny:
            inet["direct"].update(names)
            inet["trusted"].update((n, t) for n in names for t in b.guard.trusted)
        if b.isolate:
            inet["isolated"].update(names)
            inet["peers"].update((n, p) for peer in b.peers for n in names for p in desired.get(peer).interfaces)
            if b.published:
                inet["published"].update(names)
            if b.drop_intra:
                inet["intra"].update(names)
        if b.isolate or b.guard.active:
            inet["self"].update((m, n) for m in names for n in names)  # within the bridge (segment)
        chains = [*(bridge_chains(b.bridge, b.guard) if b.guard.active else ()), *log_chains(b.bridge, b.logged)]
        for chain in chains:  # guard and log chains: each of the bridge's (segment's) names jumps to it
            inet[chain.split("-", 1)[0]].update((n, chain) for n in names)
    if "inet" in want and desired.tenanted:  # the pass across bridges for one tenant group
        crossing = tenancy(desired)
        for name in TENANCY_INET:
            want["inet"][name] = crossing[name]
    if desired.spoofs or desired.counted:
        want["bridge"] = bridge_elements(desired)
    return want


def _value(name: str, e):
    """An element as libnftables JSON: map entries jump to their chain, pairs are concatenations
    (a raw-payload value as hex: JSON integers stop at 64 bits)."""
    if name in VERDICT_MAPS:
        return [e[0], {"jump": {"target": e[1]}}]
    if name in COUNT_MAPS:
        return [e[0], e[1]]
    if isinstance(e, tuple):
        return {"concat": [f"0x{v:x}" if isinstance(v, int) else v for v in e]}
    return e


def _add_elements(family: str, elements: dict[str, set], table: str = TABLE) -> list[dict]:
    """Commands adding `elements` (name -> elements), with the named counters their counter
    map elements name: adding a counter that exists leaves its count as it is, so an ADD
    never resets one."""
    counters = sorted({e[1] for name, elems in elements.items() if name in COUNT_MAPS for e in elems})
    cmds = [{"add": {"counter": {"family": family, "table": table, "name": c}}} for c in counters]
    for name, elems in sorted(elements.items()):
        if elems:
            values = [_value(name, e) for e in sorted(elems)]
            cmds.append({"add": {"element": {"family": family, "table": table, "name": name, "elem": values}}})
    return cmds


def _delete_element(family: str, name: str, elem, table: str = TABLE) -> dict:
    key = elem[0] if name in KEYED_MAPS else _value(name, elem)  # a map entry goes by its key
    return {"delete": {"element": {"family": family, "table": table, "name": name, "elem": [key]}}}


def bridge_plan(state: "TableState", want: dict[str, set], spec: TableSpec, chains: dict[str, list] | None = None,
                bridges=()) -> list[dict]:
    """The commands making the anti-spoofing table hold `want` (every registered attachment's
    elements) and the log chains `chains` (bridge_log_chains; `bridges`: the registered
    attachments' bridges, whose other log chains go): missing ones added, stale ones of
    registered ports deleted, a damaged or missing table (re)created. Elements of ports no
    registered attachment names stay, also through a rebuild (but for their log's jumps: a
    rebuilt table holds only the log chains wanted): a damaged registry may have lost the
    attachments they protect (their DEL, or cleanup, takes them)."""
    known = {_port_of(e) for elems in want.values() for e in elems}
    chains = chains or {}
    if state.exists and state.intact:
        scope = set(chains) | {c for c in state.chains if c.split("-", 1)[1] in bridges}
        first, last = _converge_chains(state, chains, scope, spec)
        missing = {n: want[n] - state.elements.get(n, set()) for n in want}
        stale = [_delete_element("bridge", n, e, spec.name) for n in want
                 for e in sorted(state.elements.get(n, set()) - want[n])
                 if _port_of(e) in known or (n in spec.maps and e[1] in scope)]
        return first + _add_elements("bridge", missing, spec.name) + stale + last
    kept = {n: {e for e in state.elements.get(n, set()) if _port_of(e) not in known and n not in spec.maps}
            | want.get(n, set()) for n in set(want) | set(state.elements)}
    return (spec.create(replace=state.exists) + _converge_chains(TableState(), chains, chains, spec)[0]
            + _add_elements("bridge", kept, spec.name))


def _port_of(elem) -> str:
    """The port an anti-spoofing element belongs to (its first field, or itself)."""
    return elem[0] if isinstance(elem, tuple) else elem


def bridge_release(state: "TableState", r: Release, spec: TableSpec) -> list[dict]:
    """The commands removing what `r` frees from the anti-spoofing table: the table once no
    attachment needs it and it holds no port but those leaving (a damaged registry may have
    lost the attachments of ports it still protects), else the leaving ports' elements."""
    if not state.exists:
        return []
    spoofing = {s.port for s in r.spoofs}
    leaving = spoofing | {p for p, _ in r.uncount} | {m for _, m in r.uncount}  # MACs: the intramac set's
    tenants = {}  # tenancy elements the state after does not hold (None: left as they are)
    if r.tenancy is not None:
        tenants = {n: state.elements.get(n, set()) - r.tenancy[n] for n in TENANCY_SETS}
        for name in (count_map(reasons.CROSS_TENANT), BRIDGE_LOG_MAPS[reasons.CROSS_TENANT]):
            tenants[name] = {e for e in state.elements.get(name, set()) if e[0] not in r.tenancy["tports"]}
    held = {_port_of(e) for n, elems in state.elements.items() for e in elems - tenants.get(n, set())}
    if (r.last or r.last_spoof) and held <= leaving:
        return [{"delete": {"table": {"family": "bridge", "name": spec.name}}}]
    gone = spoof_elements(r.spoofs) | counted_elements([r], lambda _: r.uncount)
    for n, elems in tenants.items():
        gone[n] = gone.get(n, set()) | elems
    name = count_map(reasons.ANTI_SPOOFING)
    gone[name] = {e for e in state.elements.get(name, set()) if e[0] in spoofing}
    logspoof = BRIDGE_LOG_MAPS[reasons.ANTI_SPOOFING]
    gone[logspoof] = {e for e in state.elements.get(logspoof, set()) if e[0] in spoofing}
    logs = {c for c in state.chains if c.split("-", 1)[1] == r.bridge}  # the bridge's log chains
    if r.unlog:  # the bridge stopped logging: every port's jump to its log chains goes
        for m in spec.maps:
            gone[m] = gone.get(m, set()) | {e for e in state.elements.get(m, set()) if e[1] in logs}
    if r.forget:  # every port still naming the bridge's counters (a lost registry's) lets go of them
        for reason in (reasons.ANTI_SPOOFING, reasons.INTRA_BRIDGE, reasons.CROSS_TENANT):
            mine = counter_name(reason, r.bridge)
            gone[count_map(reason)] = gone.get(count_map(reason), set()) | {
                e for e in state.elements.get(count_map(reason), set()) if e[1] == mine}
    cmds = [_delete_element("bridge", n, e, spec.name) for n in sorted(gone) for e in sorted(gone[n])
            if e in state.elements.get(n, set())]
    counters = (name, count_map(reasons.INTRA_BRIDGE), count_map(reasons.CROSS_TENANT))
    cmds += [c for n in counters for c in _unused_counters(state, n, gone.get(n, set()), spec)]
    # log chains no port jumps to any more go after the jumps, the bridge's limit after its last chain
    jumped = {e[1] for m in spec.maps for e in state.elements.get(m, set()) - gone.get(m, set())}
    unused = {c for c in logs if c not in jumped}
    return cmds + _converge_chains(state, {c: state.chains[c] for c in logs - unused}, unused, spec)[1]


def _unused_counters(state: "TableState", name: str, gone: set, spec: TableSpec) -> list[dict]:
    """Commands deleting the counters that the elements `gone` of counter map `name` named and
    that no element left names (after the elements: a counter in use cannot be deleted)."""
    left = {e[1] for e in state.elements.get(name, set()) - gone}
    return [{"delete": {"counter": {"family": spec.family, "table": spec.name, "name": c}}}
            for c in sorted({e[1] for e in gone} - left) if c in state.counters]


def _converge_chains(state: "TableState", want: dict[str, list], scope,
                     spec: TableSpec = INET) -> tuple[list[dict], list[dict]]:
    """Commands making the guard chains in `scope` (names) match `want`: (before elements are
    added: new or rewritten chains; after map elements are deleted: chains to delete)."""
    base = {"family": spec.family, "table": spec.name}
    first, last = [], []
    for bridge in sorted({n.split("-", 1)[1] for n in want if _is_log_chain(n) and want[n] != state.chains.get(n)}):
        first.append({"add": {"limit": {**base, "name": limit_name(bridge), "rate": LOG_RATE, "per": "second",
                                        "burst": LOG_BURST}}})  # adding one that exists changes nothing
    limits = []  # a bridge's limit goes after its last log chain
    for bridge in sorted({n.split("-", 1)[1] for n in scope if _is_log_chain(n) and n in state.chains}):
        if limit_name(bridge) in state.limits and not any(_is_log_chain(n) and n.split("-", 1)[1] == bridge
                                                          for n in [*want, *(set(state.chains) - set(scope))]):
            limits.append({"delete": {"limit": {**base, "name": limit_name(bridge)}}})
    for name in sorted(scope):
        rules, have = want.get(name), state.chains.get(name)
        if rules == have:
            continue
        if rules is None:
            last.append({"delete": {"chain": {**base, "name": name}}})
            continue
        first.append({("flush" if have is not None else "add"): {"chain": {**base, "name": name}}})
        first += [{"add": {"rule": {**base, "chain": name, "expr": expr}}} for expr in rules]
    return first, last + limits


def plan(states: dict[str, TableState], desired: Desired) -> list[dict]:
    """The libnftables commands (one transaction) that make the kernel enforce `desired`,
    the desired state of all the registered attachments on this backend (so guard chains
    and anti-spoofing elements of their bridges that none of them needs go; a bridge none
    of them is on keeps what it has, since a damaged registry may have lost its attachments)."""
    cmds = []
    chains = guard_chains(desired)
    # a bridge none of them is on is not theirs to undo; grants touching theirs that they do not need go
    known = set(desired.bridges) | {p for b in desired if b.routed for p in b.ports}
    for family, want in wanted(desired).items():
        spec, state = SPECS[family], states.get(family, TableState())
        if family == "bridge":
            cmds += bridge_plan(state, want, spec, bridge_log_chains(desired), known)
            continue
        if state.exists and state.intact:
            scope = set(chains) | {c for c in state.chains if c.split("-", 1)[1] in known}
            first, last = _converge_chains(state, chains, scope)
            missing = {n: want[n] - state.elements.get(n, set()) for n in want}
            stale = [_delete_element(family, n, e) for n in GUARD_MAPS if n in want
                     for e in sorted(state.elements.get(n, set()) - want[n]) if e[0] in known]
            stale += [_delete_element(family, n, e) for n in GRANT_SETS if n in want
                      for e in sorted(state.elements.get(n, set()) - want[n]) if _touches(e, known)]
            cmds += first + _add_elements(family, missing) + stale + last
            continue
        cmds += spec.create(replace=state.exists)  # damaged: rebuilt, keeping what it still held (no stale grant)
        cmds += _converge_chains(TableState(), chains, chains)[0]
        keep = {n: {e for e in state.elements.get(n, set()) if n not in GRANT_SETS or not _touches(e, known)}
                | want.get(n, set()) for n in [*spec.sets, *spec.counts]}  # counters: recreated, at zero
        keep |= {n: want.get(n, set()) for n in spec.maps}
        cmds += _add_elements(family, keep)
    return cmds


def add_only_plan(states: dict[str, TableState], addition: Desired) -> list[dict] | None:
    """The commands enforcing `addition` (policy.addition(): one bridge's attachments and
    those they depend on) in intact tables read tersely: their elements are added (adding
    one that exists is a no-op) and their bridges' guard chains converge; nothing else is
    touched. None when that is not enough: a guard chain to delete (its map entry must go
    first, and a terse reading cannot tell whether it is there). Only the ADD's own bridge
    (the first) is known whole: of a bridge of its isolationGroup the addition holds only
    the attachments in the group, so that bridge's guard chains are left as they are
    (converged to that part's guard they would lose what its other attachments deny), and
    one it needs that is missing needs the full path."""
    bridge = first_bridge(addition)
    chains = {"inet": guard_chains(addition), "bridge": bridge_log_chains(addition)}
    scope = {"inet": [f"{m}-{bridge}" for m in GUARD_MAPS], "bridge": [f"{m}-{bridge}" for m in BRIDGE_LOG_MAPS.values()]}
    for family in chains:
        held = states.get(family, TableState()).chains
        if any(name not in held for name in chains[family] if name not in scope[family]):
            return None
    cmds = []
    for family, want in wanted(addition).items():
        first, last = _converge_chains(states[family], chains[family], scope[family], SPECS[family])
        if last:
            return None
        cmds += first + _add_elements(family, want)
    return cmds


def release_families(r: Release) -> list[str]:
    """The tables release_plan(states, r) reads anything of: a table it would not read plans
    nothing, so it need not be listed (a listing of the whole table, elements included).
    inet: when something of the bridge goes, or when the whole table may (`last`: then
    whether another bridge still has anything in it decides); bridge: when ports leave
    anti-spoofing, or when the whole table may."""
    families = []
    if r.last or r.isolate or r.within or r.published or r.drop_intra or r.peers is not None or r.guard is not None:
        families.append("inet")
    if r.members and "inet" not in families:
        families.append("inet")
    if r.spoofs or r.uncount or r.forget or r.last or r.last_spoof or r.unlog or r.tenancy is not None:
        families.append("bridge")
    return families


def release_plan(states: dict[str, TableState], r: Release) -> list[dict]:
    """The commands (one transaction) removing what `r` frees; only what is present, since
    deleting an absent element fails the whole transaction. The whole inet table goes
    once nothing needs it, unless it holds something of another bridge (rules a lost or
    damaged registry no longer accounts for: they stay)."""
    inet, bridge = states.get("inet", TableState()), states.get("bridge", TableState())
    if mentioned(inet) - {r.bridge} - set(r.members):
        r = replace(r, last=False)
    cmds = []
    if inet.exists and r.last:
        cmds.append({"delete": {"table": {"family": "inet", "name": TABLE}}})
    elif inet.exists:
        cmds += _bridge_release(inet, r)
    return cmds + bridge_release(bridge, r, BRIDGE)


def _bridge_release(inet: TableState, r: Release) -> list[dict]:
    """The commands taking what `r` frees of its bridge out of the inet table: its elements,
    its pairs with bridges it no longer shares a group with, and its guard chains rewritten
    to the Guard it keeps (added first, deleted last: a map entry must not outlive its
    chain's rules, nor a chain its map entry)."""
    b = r.bridge
    if r.routed:
        return _segment_release(inet, r)
    gone = []
    if r.isolate:
        gone.append(("isolated", b))
    if r.within:
        gone.append(("self", (b, b)))
    if r.published or r.isolate:
        gone.append(("published", b))
    if r.drop_intra or r.isolate:
        gone.append(("intra", b))
    if r.guard is not None and not r.guard.internal:
        gone.append(("internal", b))
    if r.guard is not None and not r.guard.direct_deny:
        gone.append(("direct", b))
    if r.guard is not None:  # trusted interfaces the bridge's remaining guard does not keep
        gone += [("trusted", pair) for pair in sorted(inet.elements.get("trusted", set()))
                 if pair[0] == b and pair[1] not in r.guard.trusted]
    if r.peers is not None:  # None: its group pairs are left as they are
        for pair in sorted(inet.elements.get("peers", set())):
            if b in pair and _other(pair, b) not in r.peers:
                gone.append(("peers", pair))
    first, last = [], []
    maps = [m for m in ("egress", "host") if r.guard is not None] + [m for m in LOG_MAPS.values() if r.logged is not None]
    if maps:  # None: the bridge's guard, or its log, is left as it is
        chains = {**(bridge_chains(b, r.guard) if r.guard is not None else {}),
                  **(log_chains(b, r.logged) if r.logged is not None else {})}
        first, last = _converge_chains(inet, chains, [f"{m}-{b}" for m in maps])
        entries = {m: (b, f"{m}-{b}") for m in maps}
        added = {}
        for m, entry in entries.items():
            if entry[1] in chains:
                added[m] = {entry} - inet.elements.get(m, set())
            else:
                gone.append((m, entry))
        first += _add_elements("inet", added)
    for reason, goes in ((reasons.CROSS_NETWORK, r.isolate), (reasons.INTRA_BRIDGE, r.drop_intra or r.isolate),
                         (reasons.EGRESS_DENY, r.guard is not None and not r.guard.deny),
                         (reasons.HOST_ACCESS, r.guard is not None and not r.guard.host_deny),
                         (reasons.INTERNAL, r.guard is not None and not r.guard.internal),
                         (reasons.DIRECT_ACCESS, r.guard is not None and not r.guard.direct_deny)):
        if goes:
            gone.append((count_map(reason), (b, counter_name(reason, b))))
    if r.tenancy is not None:  # the cross-bridge passes nothing after needs
        gone += [(n, e) for n in TENANCY_INET for e in sorted(inet.elements.get(n, set()) - r.tenancy[n])]
    deleted = [_delete_element("inet", name, elem) for name, elem in gone if elem in inet.elements.get(name, set())]
    counters = [c for name, elem in gone if name in COUNT_MAPS
                for c in _unused_counters(inet, name, {elem} & inet.elements.get(name, set()), INET)]
    return first + deleted + counters + last


def _segment_release(inet: TableState, r: Release) -> list[dict]:
    """What `r` frees of a routed segment: every element naming one of its leaving members
    (sets, pairs with the others and with group peers, map entries), the counters no element
    names any more, and its guard chains once its Guard goes (after their map entries)."""
    leaving = set(r.members)
    gone = {name: {e for e in elems if _touches(e[:1] if name in KEYED_MAPS else e, leaving)}
            for name, elems in inet.elements.items()}
    cmds = [_delete_element("inet", name, e) for name in sorted(gone) for e in sorted(gone[name])]
    cmds += [c for name in COUNT_MAPS for c in _unused_counters(inet, name, gone.get(name, set()), INET)]
    maps = [m for m in ("egress", "host") if r.guard is not None] + [m for m in LOG_MAPS.values() if r.logged is not None]
    if maps:  # None: the segment's guard, or its log, is left as it is
        # only chains nothing needs go (log chains before their limit); a Guard that changed
        # while members stay is the full path's
        chains = {**(bridge_chains(r.bridge, r.guard) if r.guard is not None else {}),
                  **(log_chains(r.bridge, r.logged) if r.logged is not None else {})}
        cmds += _converge_chains(inet, chains, [f"{m}-{r.bridge}" for m in maps])[1]
    return cmds


def mentioned(state: TableState) -> set[str]:
    """Every bridge our inet table holds anything for (an element or a guard chain)."""
    found = set()
    for name, elems in state.elements.items():
        for e in elems:
            if name in KEYED_MAPS:
                found.add(e[0])
            elif isinstance(e, tuple):
                found.update(e)
            else:
                found.add(e)
    found.update(c.split("-", 1)[1] for c in state.chains)
    return found


def _other(pair: tuple, bridge: str) -> str:
    return pair[1] if pair[0] == bridge else pair[0]


GRANT_SETS = ("peers", "published", "trusted")  # elements that open a path; the other sets close one


def _touches(elem, bridges) -> bool:
    return any(b in bridges for b in (elem if isinstance(elem, tuple) else (elem,)))


def surplus(state: TableState, desired: Desired, bridges) -> list[tuple[str, list[dict]]]:
    """What the inet table grants for `bridges` beyond what `desired` (of every registered
    attachment that could grant anything to them) needs: (description, commands removing it).

    Grants are the peers, tcross and published elements, and the returns of a guard chain (its
    exceptions); extra drops (an `isolated` element, a guard nobody needs any more) are not
    grants: they close more than configured, never less."""
    if not state.exists or not state.intact:
        return []
    want = wanted(desired).get("inet", {})
    found = []
    for pair in sorted(state.elements.get("peers", set()) - want.get("peers", set())):
        if _touches(pair, bridges):
            found.append((f"{pair[0]} . {pair[1]} is in set inet {TABLE} peers ({pair[0]} reaches {pair[1]}) "
                          "though no registered attachment puts both in one isolationGroup",
                          [_delete_element("inet", "peers", pair)]))
    for pair in sorted(state.elements.get("trusted", set()) - want.get("trusted", set())):
        if pair[0] in bridges:
            found.append((f"{pair[0]} . {pair[1]} is in set inet {TABLE} trusted ({pair[1]} reaches {pair[0]} "
                          "directly) though no registered attachment trusts it",
                          [_delete_element("inet", "trusted", pair)]))
    for name in TENANCY_INET:
        for pair in sorted(state.elements.get(name, set()) - want.get(name, set())):
            if pair[0] in bridges:
                found.append((f"{pair[0]} . {pair[1]} is in set inet {TABLE} {name} ({pair[0]} reaches {pair[1]}) "
                              "though no registered tenant group has members on both sides",
                              [_delete_element("inet", name, pair)]))
    for bridge in sorted(state.elements.get("published", set()) - want.get("published", set())):
        if bridge in bridges:
            found.append((f"{bridge} is in set inet {TABLE} published though no registered attachment of it "
                          "has allowPublishedPorts", [_delete_element("inet", "published", bridge)]))
    for name, rules in sorted(guard_chains(desired).items()):
        have = state.chains.get(name)
        if name.split("-", 1)[1] not in bridges or have is None or have == rules:
            continue
        extra = [r for r in have if r not in rules and r and r[-1] == RETURN]
        if extra:
            shown = "; ".join(describe(r) for r in extra)
            found.append((f"chain inet {TABLE} {name} lets through what no registered attachment allows: {shown}",
                          _converge_chains(state, {name: rules}, [name])[0]))
    return found


TENANCY_GRANTS = {"tpair": "frames pass between the two ports", "tok4": "the port may route to the address",
                  "tok6": "the port may route to the address",
                  "xok4": "the port may route to the address through a tenant group's pass across bridges",
                  "xok6": "the port may route to the address through a tenant group's pass across bridges"}


def tenancy_surplus(state: TableState, desired: Desired, bridges,
                    spec: TableSpec = BRIDGE) -> list[tuple[str, list[dict], list[str]]]:
    """What bridge table `spec` grants beyond the tenancy `desired` (every registered attachment
    of the backend, when tenants are in use) needs: (description, commands removing it, the
    bridges of `bridges` it concerns). The grant sets are tpair, tok and xok (elements that
    open a path; the other tenancy sets close one): an element there naming a port of
    `bridges`, or no registered port at all (an uplink's), that no attachment needs."""
    if not state.exists or not state.intact or not desired.tenanted:  # no tenant: nothing judged, nothing granted
        return []
    want = tenancy(desired)
    bridge_of = {p: b.bridge for b in desired for p in b.ports}
    found = []
    for name, grants in TENANCY_GRANTS.items():
        for e in sorted(state.elements.get(name, set()) - want[name]):
            ports = e if name == "tpair" else e[:1]
            concerned = sorted({bridge_of[p] for p in ports if p in bridge_of} & set(bridges))
            if not concerned and any(p in bridge_of for p in ports):
                continue  # another bridge's business (a partial view)
            found.append((f"{e[0]} . {e[1]} is in set bridge {spec.name} {name} ({grants}) though no registered "
                          "attachment's tenant group needs it", [_delete_element("bridge", name, e, spec.name)],
                          concerned or sorted(bridges)))
    return found


def _bridges_of(cmds: list[dict], text: str, bridges) -> list[str]:
    """The bridges of `bridges` a surplus grant (its removal `cmds`, its `text`) concerns."""
    elems = [e for c in cmds for e in c.get("delete", {}).get("element", {}).get("elem", [])]
    names = {n for e in elems for n in (e["concat"] if isinstance(e, dict) else [e])}
    names |= {c[k]["chain"]["name"].split("-", 1)[1] for c in cmds for k in ("add", "flush") if "chain" in c.get(k, {})}
    return [b for b in bridges if b in names]


def describe(expr: list[dict]) -> str:
    """A rule as text, near enough to `nft list` to name it in a message."""
    def value(v) -> str:
        if isinstance(v, dict):
            if "set" in v:
                return "{ " + ", ".join(value(x) for x in v["set"]) + " }"
            if "prefix" in v:
                return f"{v['prefix']['addr']}/{v['prefix']['len']}"
            if "range" in v:
                return "-".join(value(x) for x in v["range"])
            if "meta" in v:
                return v["meta"]["key"]
            if "payload" in v:
                return f"{v['payload']['protocol']} {v['payload']['field']}"
            if "ct" in v:
                return " ".join(x for x in ("ct", v["ct"].get("dir", ""), v["ct"]["key"]) if x)
            if "concat" in v:
                return " . ".join(value(x) for x in v["concat"])
        if isinstance(v, list):
            return ", ".join(value(x) for x in v)
        return str(v)

    parts = []
    for x in expr:
        if "match" in x:
            m = x["match"]
            op = "" if m["op"] in ("==", "in") else f" {m['op']}"
            parts.append(f"{value(m['left'])}{op} {value(m['right'])}")
        else:
            parts += [f"{k} {v['target']}" if k in ("jump", "goto") else k for k, v in x.items()]
    return " ".join(parts)


def problems(states: dict[str, TableState], desired: Desired) -> list[str]:
    """What the kernel lacks to enforce `desired`."""
    found = []
    for family, want in wanted(desired).items():
        state = states.get(family, TableState())
        found += table_problems(state, want, SPECS[family])
        if state.exists and state.intact:
            found += chain_problems(state, guard_chains(desired) if family == "inet" else bridge_log_chains(desired),
                                    SPECS[family])
    return found


def chain_problems(state: TableState, chains: dict[str, list], spec: TableSpec) -> list[str]:
    """What table `spec` lacks of the per-bridge chains `chains` (name -> rules)."""
    return [f"chain {spec.family} {spec.name} {name} is {'altered' if name in state.chains else 'missing'}"
            for name, rules in sorted(chains.items()) if state.chains.get(name) != rules]


def _shown(e) -> str:
    if isinstance(e, tuple):
        return " . ".join(f"0x{v:x}" if isinstance(v, int) else v for v in e)
    return e


def table_problems(state: TableState, want: dict[str, set], spec: TableSpec) -> list[str]:
    """What table `spec` lacks of the elements `want` (or that it is missing or altered)."""
    where = f"{spec.family} {spec.name}"
    if not state.exists:
        return [f"table {where} is missing"]
    if state.dormant:
        return [f"table {where} is dormant (flags dormant): it enforces nothing"]
    if not state.intact:
        return [f"table {where} has been altered (its sets, chain or rules differ)"]
    found = []
    for name, elems in sorted(want.items()):
        for e in sorted(elems - state.elements.get(name, set())):
            shown = f"{e[0]} : jump {e[1]}" if name in VERDICT_MAPS else f"{e[0]} : {e[1]}" if name in COUNT_MAPS \
                else _shown(e)
            found.append(f"{shown} is not in {'map' if name in KEYED_MAPS else 'set'} {where} {name}")
    return found


def spoof_cleanup(state: TableState, ports, spec: TableSpec, bridge: str) -> list[list[str]]:
    """nft commands deleting the anti-spoofing elements of `ports` from table `spec`, their
    counter map elements, and `bridge`'s counters once no port left there names them (the
    MACs of set intramac stay: without their ports they count nothing), their jumps to their
    bridge's log chains, and `bridge`'s log chains no port jumps to any more, then its limit."""
    cmds, jumped = [], set()
    for name in spec.maps:  # the drop log's jumps (port : jump logR-BR)
        for e in sorted(state.elements.get(name, set())):
            if e[0] in ports:
                cmds.append(["nft", "delete", "element", "bridge", spec.name, name, "{", f'"{e[0]}"', "}"])
            else:
                jumped.add(e[1])
    logs = sorted(c for c in state.chains if c.split("-", 1)[1] == bridge and c not in jumped)
    unused = [["nft", "delete", "chain", "bridge", spec.name, c] for c in logs]
    if logs and limit_name(bridge) in state.limits and not any(
            c.split("-", 1)[1] == bridge for c in set(state.chains) - set(logs)):
        unused.append(["nft", "delete", "limit", "bridge", spec.name, limit_name(bridge)])
    for reason in (reasons.ANTI_SPOOFING, reasons.INTRA_BRIDGE, reasons.CROSS_TENANT):
        name = count_map(reason)
        counted = {e for e in state.elements.get(name, set()) if e[0] in ports}
        cmds += [["nft", "delete", "element", "bridge", spec.name, name, "{", f'"{e[0]}"', "}"]
                 for e in sorted(counted)]
        counter = counter_name(reason, bridge)
        if counter in state.counters and not {e for e in state.elements.get(name, set()) - counted if e[1] == counter}:
            cmds.append(["nft", "delete", "counter", "bridge", spec.name, counter])
    for name in SPOOF_SETS:
        for e in sorted(state.elements.get(name, set())):
            if (e[0] if isinstance(e, tuple) else e) in ports or (name == "tpair" and e[1] in ports) or (
                    name in TENANCY_INET and e[0] == bridge):  # a tenant group's passes out of the bridge
                shown = " . ".join(f"0x{v:x}" if isinstance(v, int) else f'"{v}"' if i == 0 or name == "tpair" else v
                                   for i, v in enumerate(e)) if isinstance(e, tuple) else f'"{e}"'
                cmds.append(["nft", "delete", "element", "bridge", spec.name, name, "{", shown, "}"])
    return cmds + unused


def member_cleanup(state: TableState, ports) -> list[list[str]]:
    """nft commands deleting the inet table's elements naming one of `ports`: a routed
    segment's members stand in its sets and maps themselves (a bridge's ports never do)."""
    cmds = []
    for name, elems in sorted(state.elements.items()):
        for e in sorted(elems):
            key = e[:1] if name in KEYED_MAPS else e if isinstance(e, tuple) else (e,)
            if any(n in ports for n in key):
                shown = " . ".join(f'"{n}"' for n in key)
                cmds.append(["nft", "delete", "element", "inet", TABLE, name, "{", shown, "}"])
    return cmds


def read_counters(lib: Library, family: str, table: str) -> dict[tuple[str, str], int]:
    """(reason, bridge) -> packets, from the named counters of one of our tables (none when
    the table is missing or unreadable). A text listing: it costs no element listing, and
    never meets libnftables 1.0.6's JSON trouble with a flagged table."""
    rc, text, _ = lib.cmd(f"list counters table {family} {table}")
    if rc != 0:
        return {}
    found, current = {}, None
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["counter"] and len(words) >= 2:
            current = parse_counter(words[1].strip('"'))
        elif words[:1] == ["packets"] and current is not None:
            found[current] = found.get(current, 0) + int(words[1])
            current = None
    return found


def add_counts(into: dict[str, dict[str, int]], counts: dict[tuple[str, str], int]) -> None:
    """Add (reason, bridge) -> packets into bridge -> reason -> packets."""
    for (reason, bridge), packets in counts.items():
        per = into.setdefault(bridge, {})
        per[reason] = per.get(reason, 0) + packets


def read_table(lib: Library, spec: TableSpec, terse: bool = False) -> TableState:
    """One of our tables as the kernel holds it. `terse` leaves the set elements out, at a
    cost that does not grow with the number of networks (see libnft.terse_table_objects)."""
    listing = terse_table_objects(lib, spec.family, spec.name) if terse else table_objects(lib, spec.family, spec.name)
    return TableState.parse(listing, spec)


class NftablesBackend(Backend):
    """Tables of our own, each change one libnftables transaction (see the module)."""

    name = "nftables"

    def __init__(self) -> None:
        self.lib, self.load_error = load()

    def unavailable_reason(self) -> str | None:
        if self.lib is None:
            return self.load_error
        try:
            flagged_tables(self.lib, "inet")  # one terse text listing: cheap whatever the ruleset holds
        except CniError as err:
            return f"the kernel refuses nftables: {err.details or err.msg}"
        return None

    def _read(self, families, terse: bool = False) -> dict[str, TableState]:
        """Our tables of `families` as the kernel holds them (`terse`: without elements)."""
        return {family: read_table(self.lib, SPECS[family], terse) for family in families}

    def ensure(self, addition: Desired) -> bool:
        """When both tables are intact (a terse reading, without elements, tells), add the
        elements and converge the guard chains of `addition`'s bridges: the cost does not
        grow with the number of networks. Elements deleted one by one from an intact table
        are CHECK's, `isolation reconcile`'s and the agent's to find."""
        want = wanted(addition)
        if not want:
            return True
        if any(b.routed for b in addition):  # a member's pairs with all others: the full path computes them
            return False
        quick = self._read(want, terse=True)  # only the tables `addition` needs: the other is not touched
        if not all(quick[f].exists and quick[f].intact for f in want):
            return False
        cmds = add_only_plan(quick, addition)
        if cmds is None:
            return False
        self._apply(cmds, f"could not apply isolation for {first_bridge(addition)}")
        return True

    def apply(self, desired: Desired) -> dict:
        """A full reading, then one transaction: a missing or altered table is rebuilt with
        every element it still held. Nothing needs remembering: our tables are wholly ours."""
        self._apply(plan(self._read(wanted(desired)), desired), f"could not apply isolation for {first_bridge(desired)}")
        return {}

    def release(self, change: Release, facts: dict) -> None:
        """A full reading of the tables `change` can take anything from (release_families),
        then one transaction; a change that frees nothing (a container leaving a bridge that
        keeps others) reads nothing and applies nothing."""
        states = self._read(release_families(change))
        self._apply(release_plan(states, change), f"could not remove the isolation of {change.bridge}")

    def _apply(self, cmds: list[dict], failure: str) -> None:
        apply(self.lib, cmds, failure)

    def verify(self, desired: Desired) -> list[str]:
        want = wanted(desired)
        return [f"nftables: {p}" for p in problems(self._read(want), desired)] if want else []

    def audit(self, desired: Desired, granted: Desired) -> tuple[list[str], list[str]]:
        want = wanted(desired)
        states = self._read(sorted(set(want) | {"inet"} | ({"bridge"} if granted.tenanted else set())))
        missing = [f"nftables: {p}" for p in problems(states, desired)] if want else []
        bridges = set(desired.bridges)
        extra = [t for t, _ in surplus(states["inet"], granted, bridges)]
        extra += [t for t, _, _ in tenancy_surplus(states.get("bridge", TableState()), granted, bridges)]
        return missing, [f"nftables: {t}" for t in extra]

    def surplus(self, desired: Desired) -> dict[str, list[str]]:
        bridges = set(desired.bridges)
        states = self._read(SPECS)
        found: dict[str, list[str]] = {}
        for text, cmds in surplus(states["inet"], desired, bridges):
            for bridge in _bridges_of(cmds, text, bridges):
                found.setdefault(bridge, []).append(f"nftables: {text}")
        for text, _, concerned in tenancy_surplus(states["bridge"], desired, bridges):
            for bridge in concerned:
                found.setdefault(bridge, []).append(f"nftables: {text}")
        return found

    def revoke(self, desired: Desired) -> list[str]:
        states = self._read(SPECS)
        found = surplus(states["inet"], desired, set(desired.bridges))
        found += [(t, cmds) for t, cmds, _ in tenancy_surplus(states["bridge"], desired, set(desired.bridges))]
        self._apply([c for _, cmds in found for c in cmds], "could not remove grants no attachment needs")
        return [f"nftables: {text}" for text, _ in found]

    def enforced(self) -> set[str]:
        """The bridges in our `isolated` set, and those a guard chain is kept for (an `open`
        network's denyEgress or hostAccess isolates nothing, yet its rules are ours)."""
        inet = self._read(["inet"])["inet"]
        guarded = {e[0] for m in GUARD_MAPS for e in inet.elements.get(m, set())}
        closed = {b for name in ("internal", "direct") for b in inet.elements.get(name, set())}
        return set(inet.elements.get("isolated", set())) | guarded | closed | {c.split("-", 1)[1] for c in inet.chains}

    def drops(self) -> dict[str, dict[str, int]]:
        """Our named counters, in both tables (see DROP_KEYS)."""
        found: dict[str, dict[str, int]] = {}
        for family in SPECS:
            add_counts(found, read_counters(self.lib, family, TABLE))
        return found

    def cleanup_commands(self, bridge: str | None, facts: dict, ports: list[str]) -> list[list[str]]:
        """nft commands removing our tables, or (bridge given) that bridge's elements and the
        anti-spoofing elements of `ports`. No facts are kept on this backend."""
        states = self._read(SPECS)
        if bridge is None:
            return [["nft", "delete", "table", f, TABLE] for f in SPECS if states[f].exists]
        cmds = member_cleanup(states["inet"], set(ports))
        for name in ("isolated", "self", "published", "intra", "internal", "direct"):
            raw = (bridge, bridge) if name == "self" else bridge
            if raw in states["inet"].elements.get(name, set()):
                shown = f'"{bridge}" . "{bridge}"' if name == "self" else f'"{bridge}"'
                cmds.append(["nft", "delete", "element", "inet", TABLE, name, "{", shown, "}"])
        for pair in sorted(states["inet"].elements.get("trusted", set())):
            if pair[0] == bridge:
                shown = f'"{pair[0]}" . "{pair[1]}"'
                cmds.append(["nft", "delete", "element", "inet", TABLE, "trusted", "{", shown, "}"])
        for name in TENANCY_INET:  # its tenant groups' passes out of it
            for pair in sorted(states["inet"].elements.get(name, set())):
                if pair[0] == bridge:
                    cmds.append(["nft", "delete", "element", "inet", TABLE, name, "{", f'"{pair[0]}" . {pair[1]}', "}"])
        for pair in sorted(states["inet"].elements.get("peers", set())):  # its group's grants, both ways
            if bridge in pair:
                cmds.append(["nft", "delete", "element", "inet", TABLE, "peers", "{", f'"{pair[0]}" . "{pair[1]}"', "}"])
        for reason in DROP_KEYS["inet"]:
            name, counter = count_map(reason), counter_name(reason, bridge)
            if (bridge, counter) in states["inet"].elements.get(name, set()):
                cmds.append(["nft", "delete", "element", "inet", TABLE, name, "{", f'"{bridge}"', "}"])
            if counter in states["inet"].counters:
                cmds.append(["nft", "delete", "counter", "inet", TABLE, counter])
        for name in GUARD_MAPS:
            entry = (bridge, f"{name}-{bridge}")
            if entry in states["inet"].elements.get(name, set()):
                cmds.append(["nft", "delete", "element", "inet", TABLE, name, "{", f'"{bridge}"', "}"])
            if entry[1] in states["inet"].chains:
                cmds.append(["nft", "delete", "chain", "inet", TABLE, entry[1]])  # a valid name, unquoted
        if limit_name(bridge) in states["inet"].limits:
            cmds.append(["nft", "delete", "limit", "inet", TABLE, limit_name(bridge)])
        return cmds + spoof_cleanup(states["bridge"], set(ports), BRIDGE, bridge)
