"""The nftables backend: tables of our own, driven in-process through libnftables' JSON API.

    table inet isolation                       (IPv4 and IPv6 in one rule set)
      set isolated  { type ifname }            bridges that are isolated
      set self      { type ifname . ifname }   (BR . BR) for each isolated or guarded bridge
      set published { type ifname }            isolated bridges whose published ports stay reachable
      set intra     { type ifname }            `isolated` bridges (no traffic between their ports)
      set peers     { type ifname . ifname }   (A . B) for bridges A != B of one isolationGroup
      map egress    { type ifname : verdict }  BR : jump egress-BR (bridges with denyEgress)
      map host      { type ifname : verdict }  BR : jump host-BR (bridges with hostAccess deny)
      chain forward  hook forward, priority -5, policy accept
        iifname @intra iifname . oifname @self counter drop   within an `isolated` bridge (hairpin
                                                          through the host, or bridged via br_netfilter)
        iifname . oifname @self return                    within one bridge: nothing else applies
        iifname vmap @egress                              the bridge's deny list
        ct direction original ct status dnat oifname @published return   a published port (the
        ct direction reply ct status dnat iifname @published return      publisher decides, replies too)
        iifname . oifname @peers return                   the same isolationGroup
        iifname @isolated oifname @isolated counter drop
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

    table bridge isolation                     (only once an attachment has antiSpoofing)
      sets guarded, mac, src4, src6, nd6, ndopt   per port: its MAC and addresses (see SPOOF_RULES)
      chain prerouting  hook prerouting, priority -300, policy accept
        iifname != @guarded return             then every frame from a guarded port is checked

`isolated` between the ports of a bridge is the kernel's bridge-port isolation flag, set on
the ports (plugin/backends/ports.py); the forward rule above catches what the host routes
back into the bridge.

Bridges and ports are set elements, so the base rule count is constant and a packet
costs hash lookups, however many networks exist; a guarded bridge adds a chain whose
length follows its own configuration, reached through a verdict map. Traffic within one bridge is exempted by
the `self` set (the diagonal of bridge pairs), because nftables cannot compare
iifname with oifname directly. A drop in these tables is final whatever other tables
accept, so chain order with iptables, firewalld or Docker does not matter.

Each change is one libnftables transaction. When the table is intact, ADD only adds
elements (kernels make a transaction that deletes or re-declares anything wait ~10 ms
when its socket closes); a damaged table is deleted and rebuilt in one transaction,
keeping the elements it still had. (The bridge table's two raw-payload sets can only be
declared with `typeof`, which libnftables 1.0.6 reads only from text: creating that table
runs one text command before the JSON transaction.)
"""

import os
import sys

from plugin.record import Factory, record, replace
from plugin.errors import ENFORCEMENT_FAILED, CniError
from plugin.backends.ports import ensure_flags, flag_problems, release_flags
from plugin.links import valid_name
from plugin.policy import (ND_HOP_LIMIT, ND_TYPES, BridgeIntent, Guard, Hole, Release, guards, peers, shared_needs,
                           split_cidr)

TABLE = "isolation"
LIBRARY = "libnftables.so.1"
GUARD_MAPS = ("egress", "host")  # verdict maps: bridge -> jump to its chain "egress-BR" / "host-BR"


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _in_set(left: dict, name: str) -> dict:
    return {"match": {"op": "==", "left": left, "right": f"@{name}"}}


def _eq(left: dict, right) -> dict:
    return {"match": {"op": "==", "left": left, "right": right}}


COUNTER = {"counter": {"packets": 0, "bytes": 0}}
RETURN = {"return": None}
ND_NAMES = {133: "nd-router-solicit", 134: "nd-router-advert", 135: "nd-neighbor-solicit",
            136: "nd-neighbor-advert", 137: "nd-redirect"}
# Neighbour discovery to the host itself (input hook): hop limit 255 proves it was not routed.
# Forwarded traffic never carries it (routers do not forward ND), so no exemption there.
NEIGHBOUR_DISCOVERY = [_eq({"payload": {"protocol": "icmpv6", "field": "type"}}, {"set": [ND_NAMES[t] for t in ND_TYPES]}),
                       _eq({"payload": {"protocol": "ip6", "field": "hoplimit"}}, ND_HOP_LIMIT), RETURN]


@record(frozen=True)
class TableSpec:
    """One of our tables, exactly as it must be (besides the per-bridge guard chains)."""

    family: str
    prio: int
    sets: dict
    chains: dict  # name -> (hook, rules)
    maps: dict = Factory(dict)  # name -> key type (values are verdicts)
    typeof: dict = Factory(dict)  # name -> `typeof` text of sets JSON cannot declare (listed as in `sets`)
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
        cmds += [{"add": {"map": {**base, "name": n, "type": t, "map": "verdict"}}} for n, t in self.maps.items()]
        for name, (hook, rules) in self.chains.items():
            chain = {**base, "name": name, "type": "filter", "hook": hook, "prio": self.prio, "policy": "accept"}
            cmds.append({"add": {"chain": chain}})
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


def _vmap(name: str) -> list[dict]:
    return [{"vmap": {"key": _meta("iifname"), "data": f"@{name}"}}]


INET = TableSpec(
    "inet",
    -5,
    {"isolated": "ifname", "self": ["ifname", "ifname"], "published": "ifname", "intra": "ifname",
     "peers": ["ifname", "ifname"]},
    {
        "forward": ("forward", [
            [_in_set(_meta("iifname"), "intra"), SAME_BRIDGE, COUNTER, {"drop": None}],
            [SAME_BRIDGE, RETURN],
            _vmap("egress"),
            *PUBLISHED_PORTS,
            [_in_set({"concat": [_meta("iifname"), _meta("oifname")]}, "peers"), RETURN],
            [_in_set(_meta("iifname"), "isolated"), _in_set(_meta("oifname"), "isolated"), COUNTER, {"drop": None}],
        ]),
        "input": ("input", [NEIGHBOUR_DISCOVERY, _vmap("egress"), _vmap("host")]),
    },
    {"egress": "ifname", "host": "ifname"},
)


# --- anti-spoofing, in the bridge family: every frame entering the bridge from a guarded port ---
def _ne(left: dict, right) -> dict:
    return {"match": {"op": "!=", "left": left, "right": right}}


def _p(protocol: str, field: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field}}


def _raw(offset: int, length: int) -> dict:
    return {"payload": {"base": "th", "offset": offset, "len": length}}


def _port_and(expr: dict) -> dict:
    return {"concat": [_meta("iifname"), expr]}


DROP = [COUNTER, {"drop": None}]
ICMP6_TYPE = _p("icmpv6", "type")
NA, NS, RS = "nd-neighbor-advert", "nd-neighbor-solicit", "nd-router-solicit"
# Rules in the form the kernel lists them back. ND messages must be bare (no extension
# header) and of the exact sizes Linux sends, so their first option sits at a known offset:
# NS/NA 24 bytes (+8 for one option: SLLA/TLLA, or DAD's nonce), RS 8 (+8 for its SLLA).
SPOOF_RULES = [
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
SPOOF_SETS = {"guarded": "ifname", "mac": ["ifname", "ether_addr"], "src4": ["ifname", "ipv4_addr"],
              "src6": ["ifname", "ipv6_addr"], "nd6": ["ifname", "integer"], "ndopt": ["ifname", "integer"]}
SPOOF_TYPEOF = {"nd6": "iifname . @th,64,128", "ndopt": "iifname . @th,192,64"}


def bridge_spec(name: str = TABLE) -> TableSpec:
    """The anti-spoofing table (the iptables backend keeps its own, under another name)."""
    return TableSpec("bridge", -300, SPOOF_SETS, {"prerouting": ("prerouting", SPOOF_RULES)}, typeof=SPOOF_TYPEOF,
                     name=name)


def _ipv6_int(addr: str) -> int:
    import _socket

    return int.from_bytes(_socket.inet_pton(_socket.AF_INET6, addr), "big")


def spoof_elements(spoofs) -> dict[str, set]:
    """The bridge table's elements for `spoofs` (policy.Spoof): name -> elements."""
    want = {name: set() for name in SPOOF_SETS}
    for s in spoofs:
        if not valid_name(s.port):  # defence in depth
            raise ValueError(f"refusing to render an element for interface name {s.port!r}")
        mac = int(s.mac.replace(":", ""), 16)
        want["guarded"].add(s.port)
        want["mac"].add((s.port, s.mac))
        want["ndopt"].update({(s.port, (0x0101 << 48) | mac), (s.port, (0x0201 << 48) | mac)})  # SLLA, TLLA
        want["src4"].update((s.port, a) for a in s.ips_in(4))
        want["src6"].update((s.port, a) for a in s.ips_in(6))
        want["nd6"].update((s.port, _ipv6_int(a)) for a in s.ips_in(6))
    return want


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
            rules.append([_destination(family, ranges), COUNTER, {"drop": None}])
            rules.append([UNTRACKED, _eq(_p("ip" if family == 4 else "ip6", "daddr"), ranges), COUNTER, {"drop": None}])
    return rules


def host_rules(guard: Guard) -> list[list[dict]]:
    """Chain host-BR: replies to connections the host opened and the allowed host ports pass;
    the rest drops (neighbour discovery returned earlier, in the input chain)."""
    rules = [ESTABLISHED]
    for hole in guard.host_ports:
        rules += _hole(hole)
    return rules + [[COUNTER, {"drop": None}]]


def bridge_chains(bridge: str, guard: Guard) -> dict[str, list[list[dict]]]:
    """The guard chains of one bridge: name -> rules."""
    chains = {}
    if guard.deny:
        chains[f"egress-{bridge}"] = egress_rules(guard)
    if guard.host_deny:
        chains[f"host-{bridge}"] = host_rules(guard)
    return chains


def guard_chains(intents) -> dict[str, list[list[dict]]]:
    """The per-bridge chains `intents` need: name -> rules."""
    chains = {}
    for bridge, guard in guards(intents).items():
        chains |= bridge_chains(bridge, guard)
    return chains


def _is_guard_chain(name: str) -> bool:
    return name.split("-", 1)[0] in GUARD_MAPS and "-" in name


@record
class TableState:
    """What the kernel holds of one of our tables."""

    exists: bool = False
    intact: bool = False
    elements: dict[str, set] = Factory(dict)  # map elements as (key, jump target)
    chains: dict[str, list] = Factory(dict)  # the per-bridge guard chains and their rules
    dormant: bool = False  # `flags dormant`: the table is there and enforces nothing

    @classmethod
    def parse(cls, listing: list[dict] | None, spec: TableSpec) -> "TableState":
        """From the `nftables` array of `list table FAMILY isolation` (None: no such table)."""
        if listing is None:
            return cls()
        sets, maps, base, rules = {}, {}, {}, {}
        dormant = flagged = False
        for obj in listing:
            if "table" in obj:  # our tables carry no flags: any (dormant above all) is an alteration
                flags = obj["table"].get("flags") or []
                flags = [flags] if isinstance(flags, str) else flags
                dormant = "dormant" in flags
                flagged = bool(flags)
            elif "set" in obj:
                s = obj["set"]
                sets[s["name"]] = (s["type"], {_element(e) for e in s.get("elem", [])})
            elif "map" in obj:
                m = obj["map"]
                maps[m["name"]] = ((m["type"], m.get("map")), {_map_element(e) for e in m.get("elem", [])})
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
            and {n: t for n, (t, _) in maps.items()} == {n: (t, "verdict") for n, t in spec.maps.items()}
            and {n: b for n, b in base.items() if n not in guard}
            == {n: ("filter", hook, spec.prio, "accept") for n, (hook, _) in spec.chains.items()}
            and all(rules[n] == r for n, (_, r) in spec.chains.items())
        )
        elements = {n: elems for n, (t, elems) in sets.items() if spec.sets.get(n) == t}
        elements |= {n: elems for n, ((t, _), elems) in maps.items() if spec.maps.get(n) == t}
        return cls(True, intact, elements, guard, dormant)


def _table_of(obj: dict) -> tuple[str, str] | None:
    """(family, table) of one object of a JSON listing."""
    for kind, body in obj.items():
        if kind == "table":
            return body.get("family"), body.get("name")
        if isinstance(body, dict) and "table" in body:
            return body.get("family"), body.get("table")
    return None


def _element(e) -> str | tuple:
    if isinstance(e, dict) and "elem" in e:  # an element with attributes
        e = e["elem"]["val"]
    if isinstance(e, dict) and "concat" in e:  # raw-payload values list as integers or hex
        return tuple(int(v, 16) if isinstance(v, str) and v.startswith("0x") else v for v in e["concat"])
    return e


def _map_element(e) -> tuple:
    key, verdict = e
    return (_element(key), (verdict.get("jump") or {}).get("target") if isinstance(verdict, dict) else None)


def _normalise(expr: list[dict]) -> list[dict]:
    """A listed rule's expressions, with counter values zeroed so it compares with our spec."""
    return [COUNTER if "counter" in x else x for x in expr]


def wanted(intents) -> dict[str, dict[str, set]]:
    """The set and map elements each table must hold for `intents`: family -> name -> elements."""
    want: dict[str, dict[str, set]] = {}
    intents = list(intents)
    group_peers = peers(intents)
    for intent in intents:
        for name in (intent.bridge, intent.port):
            if name is not None and not valid_name(name):  # defence in depth
                raise ValueError(f"refusing to render an element for interface name {name!r}")
        if intent.isolate or intent.guard.active:
            inet = want.setdefault("inet", {name: set() for name in [*INET.sets, *INET.maps]})
        if intent.isolate:
            inet["isolated"].add(intent.bridge)
            inet["self"].add((intent.bridge, intent.bridge))
            inet["peers"].update((intent.bridge, p) for p in group_peers.get(intent.bridge, ()))
            if intent.published:
                inet["published"].add(intent.bridge)
            if intent.drop_intra:
                inet["intra"].add(intent.bridge)
    spoofs = [i.spoof for i in intents if i.spoof is not None]
    if spoofs:
        want["bridge"] = spoof_elements(spoofs)
    if "inet" in want:
        for chain in guard_chains(intents):
            want["inet"][chain.split("-", 1)[0]].add((chain.split("-", 1)[1], chain))
        want["inet"]["self"].update((b, b) for b, _ in want["inet"]["egress"] | want["inet"]["host"])
    return want


def _value(name: str, e):
    """An element as libnftables JSON: map entries jump to their chain, pairs are concatenations
    (a raw-payload value as hex: JSON integers stop at 64 bits)."""
    if name in GUARD_MAPS:
        return [e[0], {"jump": {"target": e[1]}}]
    if isinstance(e, tuple):
        return {"concat": [f"0x{v:x}" if isinstance(v, int) else v for v in e]}
    return e


def _add_elements(family: str, elements: dict[str, set], table: str = TABLE) -> list[dict]:
    cmds = []
    for name, elems in sorted(elements.items()):
        if elems:
            values = [_value(name, e) for e in sorted(elems)]
            cmds.append({"add": {"element": {"family": family, "table": table, "name": name, "elem": values}}})
    return cmds


def _delete_element(family: str, name: str, elem, table: str = TABLE) -> dict:
    key = elem[0] if name in GUARD_MAPS else _value(name, elem)  # a map entry goes by its key
    return {"delete": {"element": {"family": family, "table": table, "name": name, "elem": [key]}}}


def bridge_plan(state: "TableState", want: dict[str, set], spec: TableSpec) -> list[dict]:
    """The commands making the anti-spoofing table hold `want` (every registered attachment's
    elements): missing ones added, stale ones of registered ports deleted, a damaged or
    missing table (re)created. Elements of ports no registered attachment names stay, also
    through a rebuild: a damaged registry may have lost the attachments they protect (their
    DEL, or cleanup, takes them)."""
    known = {_port_of(e) for elems in want.values() for e in elems}
    if state.exists and state.intact:
        missing = {n: want[n] - state.elements.get(n, set()) for n in want}
        stale = [_delete_element("bridge", n, e, spec.name) for n in want
                 for e in sorted(state.elements.get(n, set()) - want[n]) if _port_of(e) in known]
        return _add_elements("bridge", missing, spec.name) + stale
    kept = {n: {e for e in state.elements.get(n, set()) if _port_of(e) not in known} | want.get(n, set())
            for n in set(want) | set(state.elements)}
    return spec.create(replace=state.exists) + _add_elements("bridge", kept, spec.name)


def _port_of(elem) -> str:
    """The port an anti-spoofing element belongs to (its first field, or itself)."""
    return elem[0] if isinstance(elem, tuple) else elem


def bridge_release(state: "TableState", r: Release, spec: TableSpec) -> list[dict]:
    """The commands removing what `r` frees from the anti-spoofing table: the table once no
    attachment needs it and it holds no other port (a damaged registry may have lost the
    attachments of ports it still protects), else the departing port's elements."""
    if not state.exists:
        return []
    own = {r.port, r.spoof.port if r.spoof else None}
    held = {_port_of(e) for elems in state.elements.values() for e in elems}
    if (r.last or r.last_spoof) and held <= own:
        return [{"delete": {"table": {"family": "bridge", "name": spec.name}}}]
    if r.spoof is None:
        return []
    gone = spoof_elements([r.spoof])
    return [_delete_element("bridge", n, e, spec.name) for n in sorted(gone) for e in sorted(gone[n])
            if e in state.elements.get(n, set())]


def _converge_chains(state: "TableState", want: dict[str, list], scope) -> tuple[list[dict], list[dict]]:
    """Commands making the guard chains in `scope` (names) match `want`: (before elements are
    added: new or rewritten chains; after map elements are deleted: chains to delete)."""
    base = {"family": "inet", "table": TABLE}
    first, last = [], []
    for name in sorted(scope):
        rules, have = want.get(name), state.chains.get(name)
        if rules == have:
            continue
        if rules is None:
            last.append({"delete": {"chain": {**base, "name": name}}})
            continue
        first.append({("flush" if have is not None else "add"): {"chain": {**base, "name": name}}})
        first += [{"add": {"rule": {**base, "chain": name, "expr": expr}}} for expr in rules]
    return first, last


def plan(states: dict[str, TableState], intents) -> list[dict]:
    """The libnftables commands (one transaction) that make the kernel enforce `intents`,
    which are all the registered attachments on this backend (so guard chains and
    anti-spoofing elements of their bridges that none of them needs go; a bridge none of
    them is on keeps what it has, since a damaged registry may have lost its attachments)."""
    cmds = []
    intents = list(intents)
    chains = guard_chains(intents)
    # a bridge none of them is on is not theirs to undo; grants touching theirs that they do not need go
    known = {i.bridge for i in intents}
    for family, want in wanted(intents).items():
        spec, state = SPECS[family], states.get(family, TableState())
        if family == "bridge":
            cmds += bridge_plan(state, want, spec)
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
                | want.get(n, set()) for n in spec.sets}
        keep |= {n: want.get(n, set()) for n in spec.maps}
        cmds += _add_elements(family, keep)
    return cmds


def add_only_plan(states: dict[str, TableState], intents) -> list[dict] | None:
    """The commands enforcing `intents` (one bridge's attachments and those they depend on)
    in intact tables read tersely: their elements are added (adding one that exists is a
    no-op) and their bridges' guard chains converge; nothing else is touched. None when
    that is not enough: a guard chain to delete (its map entry must go first, and a
    terse reading cannot tell whether it is there)."""
    intents = list(intents)
    chains = guard_chains(intents)
    scope = [f"{m}-{i.bridge}" for i in intents for m in GUARD_MAPS]
    cmds = []
    for family, want in wanted(intents).items():
        first, last = _converge_chains(states[family], chains, scope) if family == "inet" else ([], [])
        if last:
            return None
        cmds += first + _add_elements(family, want)
    return cmds


def release_plan(states: dict[str, TableState], r: Release) -> list[dict]:
    """The commands (one transaction) removing what `r` frees; only what is present, since
    deleting an absent element fails the whole transaction. The bridge's guard chains are
    rewritten to what its remaining attachments need, or removed."""
    def delete(family: str, what: str, body: dict) -> dict:
        return {"delete": {what: {"family": family, **body}}}

    cmds = []
    inet, bridge = states.get("inet", TableState()), states.get("bridge", TableState())
    others = mentioned(inet) - {r.bridge}
    if others:  # rules the registry does not account for (lost or damaged): they stay
        r = replace(r, last=False, last_intra=r.last_intra and not inet.elements.get("intra", set()) - {r.bridge})
    if inet.exists and r.last:
        cmds.append(delete("inet", "table", {"name": TABLE}))
    elif inet.exists:
        gone = [("isolated", r.bridge)] if r.isolate else []
        gone += [("self", (r.bridge, r.bridge))] if (r.isolate and not r.guard.active) or r.bridge_done else []
        gone += [("published", r.bridge)] if r.published or r.isolate else []
        gone += [("intra", r.bridge)] if r.drop_intra or r.isolate else []
        gone += [("peers", pair) for pair in sorted(inet.elements.get("peers", set()))
                 if r.peers is not None and r.bridge in pair and _other(pair, r.bridge) not in r.peers]
        first, last = [], []
        if r.guard is not None:  # None: the bridge's guard is left as it is
            want = bridge_chains(r.bridge, r.guard)
            first, last = _converge_chains(inet, want, [f"{m}-{r.bridge}" for m in GUARD_MAPS])
            entries = {m: (r.bridge, f"{m}-{r.bridge}") for m in GUARD_MAPS}
            gone += [(m, e) for m, e in entries.items() if e[1] not in want]
            added = {m: {e} - inet.elements.get(m, set()) for m, e in entries.items() if e[1] in want}
            cmds += first + _add_elements("inet", added)
        cmds += [_delete_element("inet", name, elem) for name, elem in gone if elem in inet.elements.get(name, set())]
        cmds += last
    return cmds + bridge_release(bridge, r, BRIDGE)


def mentioned(state: TableState) -> set[str]:
    """Every bridge our inet table holds anything for (an element or a guard chain)."""
    found = set()
    for name, elems in state.elements.items():
        for e in elems:
            if name in GUARD_MAPS:
                found.add(e[0])
            elif isinstance(e, tuple):
                found.update(e)
            else:
                found.add(e)
    found.update(c.split("-", 1)[1] for c in state.chains)
    return found


def _other(pair: tuple, bridge: str) -> str:
    return pair[1] if pair[0] == bridge else pair[0]


GRANT_SETS = ("peers", "published")  # elements that open a path; the other sets close one


def _touches(elem, bridges) -> bool:
    return any(b in bridges for b in (elem if isinstance(elem, tuple) else (elem,)))


def surplus(state: TableState, intents, bridges) -> list[tuple[str, list[dict]]]:
    """What the inet table grants for `bridges` beyond what `intents` (every registered
    attachment that could grant anything to them) need: (description, commands removing it).

    Grants are the peers and published elements, and the returns of a guard chain (its
    exceptions); extra drops (an `isolated` element, a guard nobody needs any more) are not
    grants: they close more than configured, never less."""
    if not state.exists or not state.intact:
        return []
    intents = list(intents)
    want = wanted(intents).get("inet", {})
    found = []
    for pair in sorted(state.elements.get("peers", set()) - want.get("peers", set())):
        if _touches(pair, bridges):
            found.append((f"{pair[0]} . {pair[1]} is in set inet {TABLE} peers ({pair[0]} reaches {pair[1]}) "
                          "though no registered attachment puts both in one isolationGroup",
                          [_delete_element("inet", "peers", pair)]))
    for bridge in sorted(state.elements.get("published", set()) - want.get("published", set())):
        if bridge in bridges:
            found.append((f"{bridge} is in set inet {TABLE} published though no registered attachment of it "
                          "has allowPublishedPorts", [_delete_element("inet", "published", bridge)]))
    for name, rules in sorted(guard_chains(intents).items()):
        have = state.chains.get(name)
        if name.split("-", 1)[1] not in bridges or have is None or have == rules:
            continue
        extra = [r for r in have if r not in rules and r and r[-1] == RETURN]
        if extra:
            shown = "; ".join(describe(r) for r in extra)
            found.append((f"chain inet {TABLE} {name} lets through what no registered attachment allows: {shown}",
                          _converge_chains(state, {name: rules}, [name])[0]))
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


def problems(states: dict[str, TableState], intents) -> list[str]:
    """What the kernel lacks to enforce `intents` (one attachment and the others on its bridge)."""
    found = []
    intents = list(intents)
    for family, want in wanted(intents).items():
        state = states.get(family, TableState())
        found += table_problems(state, want, SPECS[family])
        if state.exists and state.intact:
            if family == "inet":
                for name, rules in sorted(guard_chains(intents).items()):
                    if state.chains.get(name) != rules:
                        found.append(f"chain inet {TABLE} {name} is {'altered' if name in state.chains else 'missing'}")
    return found


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
            shown = f"{e[0]} : jump {e[1]}" if name in GUARD_MAPS else _shown(e)
            found.append(f"{shown} is not in {'map' if name in GUARD_MAPS else 'set'} {where} {name}")
    return found


def spoof_cleanup(state: TableState, ports, spec: TableSpec) -> list[list[str]]:
    """nft commands deleting the anti-spoofing elements of `ports` from table `spec`."""
    cmds = []
    for name in SPOOF_SETS:
        for e in sorted(state.elements.get(name, set())):
            if (e[0] if isinstance(e, tuple) else e) in ports:
                shown = " . ".join(f"0x{v:x}" if isinstance(v, int) else f'"{v}"' if i == 0 else v
                                   for i, v in enumerate(e)) if isinstance(e, tuple) else f'"{e}"'
                cmds.append(["nft", "delete", "element", "bridge", spec.name, name, "{", shown, "}"])
    return cmds


def library_path() -> str:
    """The bundled libnftables when frozen (so the binary needs no nftables package), else the system's."""
    bundled = os.path.join(getattr(sys, "_MEIPASS", ""), LIBRARY)
    return bundled if getattr(sys, "frozen", False) and os.path.exists(bundled) else LIBRARY


UNPARSEABLE = {"nftables": []}  # a listing libnftables could not print as JSON (compared by identity)


class Library:
    """The process's one libnftables context, shared by every backend object and serialised.

    A fresh context per backend object leaked ~60 bytes in libnftables 1.0.6 for each one
    that ran a command: nothing to a plugin run, but the agent makes one per request
    (300 KiB per 2000 requests). One context, reused, stays flat; the lock keeps the
    agent's concurrent requests off it one at a time (a context is not thread-safe, and
    terse output is a setting of the context)."""

    _shared: "Library | None" = None

    def __init__(self) -> None:
        import _thread  # the C module: no `threading` import on a plugin run

        from plugin.backends.libnft import Nftables  # the binding without its `json` import

        self.nft = Nftables(sofile=library_path())
        self.lock = _thread.allocate_lock()

    @classmethod
    def get(cls) -> "Library":
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def json_cmd(self, cmds: list[dict], terse: bool = False) -> tuple[int, object, str]:
        """(rc, output, error); output is UNPARSEABLE when libnftables printed broken JSON
        (1.0.6 cuts a listing short at a table's `flags`, e.g. a dormant table's)."""
        with self.lock:
            if terse:
                self.nft.set_terse_output(True)
            try:
                return self.nft.json_cmd({"nftables": cmds})
            except ValueError:  # the binding's json.loads; the context is left as it was
                return 0, UNPARSEABLE, "libnftables printed a listing it cannot parse"
            finally:
                if terse:
                    self.nft.set_terse_output(False)

    def cmd(self, text: str, terse: bool = False) -> tuple[int, str, str]:
        with self.lock:
            if terse:
                self.nft.set_terse_output(True)
            try:
                return self.nft.cmd(text)
            finally:
                if terse:
                    self.nft.set_terse_output(False)


class NftablesBackend:
    name = "nftables"

    def __init__(self) -> None:
        self.nft = None
        self.load_error = None
        try:
            self.nft = Library.get()
        except (ImportError, OSError, AttributeError) as exc:
            self.load_error = f"{LIBRARY} cannot be loaded: {exc}"

    def _run(self, cmds: list[dict], terse: bool = False) -> tuple[int, object, str]:
        return self.nft.json_cmd(cmds, terse)

    def unavailable_reason(self) -> str | None:
        if self.nft is None:
            return self.load_error
        try:
            self._flagged("inet")  # one terse text listing: cheap whatever the ruleset holds (see read)
        except CniError as err:
            return f"the kernel refuses nftables: {err.details or err.msg}"
        return None

    def read(self, families, terse: bool = False) -> dict[str, TableState]:
        """Our tables as the kernel holds them. `terse` leaves the set elements out and costs
        the same however many networks exist: it lists the family's whole ruleset, because
        libnftables (1.0.6) fetches every set element for `list table` even when terse
        (3.7 ms with 1000 bridges), but not for a terse `list ruleset` (0.2 ms)."""
        return {family: self.read_table(SPECS[family], terse) for family in families}

    def read_table(self, spec: TableSpec, terse: bool = False) -> TableState:
        listing = self._terse_ruleset(spec.family, spec.name) if terse else self._table(spec.family, spec.name)
        return TableState.parse(listing, spec)

    def _flagged(self, family: str) -> dict[str, list[str]]:
        """The tables of `family` that carry flags (e.g. dormant) -> their flags, from a terse
        text listing. libnftables 1.0.6 prints a flagged table's `flags` in JSON from a stale
        pointer ("inet", its release name, or garbage that makes it abort the process), so
        no table with flags is ever listed in JSON."""
        rc, text, err = self.nft.cmd(f"list ruleset {family}", terse=True)
        if rc != 0:
            raise CniError(ENFORCEMENT_FAILED, f"cannot read the {family} ruleset", err.strip())
        found, current = {}, None
        for line in text.splitlines():
            words = line.split()
            if line.startswith("table ") and len(words) >= 3:
                current = words[2]
            elif line.startswith("\tflags ") and current:  # the table's own (a set's is indented twice)
                found[current] = [f for word in words[1:] for f in word.split(",") if f] or ["unknown"]
        return found

    def _table(self, family: str, table: str = TABLE) -> list[dict] | None:
        """The objects of table `table` in `family` (None: no such table)."""
        flagged = self._flagged(family)
        if table in flagged:  # it counts as altered and is rebuilt
            return [{"table": {"family": family, "name": table, "flags": flagged[table]}}]
        rc, out, err = self._run([{"list": {"table": {"family": family, "name": table}}}])
        if rc != 0:
            if "No such file or directory" not in err:
                raise CniError(ENFORCEMENT_FAILED, f"cannot read table {family} {table}", err.strip())
            return None
        if out is UNPARSEABLE:  # described by its flags only: it counts as altered and is rebuilt
            return [{"table": {"family": family, "name": table, "flags": self._flags(family, table)}}]
        return self._true_flags(out["nftables"], family, table) if out else None

    def _terse_ruleset(self, family: str, table: str = TABLE) -> list[dict] | None:
        """The objects of our table in `family`, set elements left out (None: no such table)."""
        if self._flagged(family):  # never a JSON listing with a flagged table in it
            return self._table(family, table)
        rc, out, err = self._run([{"list": {"ruleset": {"family": family}}}], terse=True)
        if rc != 0:
            raise CniError(ENFORCEMENT_FAILED, f"cannot read the {family} ruleset", err.strip())
        if out is UNPARSEABLE:  # some table of the family (ours or not) cannot be listed as JSON
            return self._table(family, table)
        ours = [o for o in out["nftables"] if _table_of(o) == (family, table)]
        return self._true_flags(ours, family, table) or None

    def _true_flags(self, listing: list[dict], family: str, table: str = TABLE) -> list[dict]:
        """`listing` with our table's flags as the text listing gives them: libnftables 1.0.6
        prints a flagged table's `flags` wrongly in JSON (`"inet"`, or cuts the listing short)."""
        for obj in listing:
            if "table" in obj and obj["table"].get("flags"):
                obj["table"]["flags"] = self._flags(family, table)
        return listing

    def _flags(self, family: str, table: str = TABLE) -> list[str]:
        rc, text, _ = self.nft.cmd(f"list table {family} {table}")
        flags = next((line.split()[1:] for line in text.splitlines() if line.strip().startswith("flags ")), [])
        return [f for word in flags for f in word.split(",") if f] or ["unknown"]

    def ensure(self, intent: BridgeIntent, others=(), related=None) -> dict:
        """Apply `intent`; `others` are the other registered attachments (a sequence, or a
        function returning one, called only if needed), `related` those of them on the same
        bridge or in the same isolationGroup (derived from `others` when not given).
        Nothing needs remembering: our tables are wholly ours. Without `related` (reconcile,
        the agent) everything registered is re-applied from a full reading.

        When both tables are intact (a terse reading, without elements, tells), only this
        bridge's elements and guard chains are added, with the distinct needs of the
        attachments on the same bridge or in the same isolationGroup: the cost does not
        grow with the number of networks. Otherwise (a table missing, e.g. after `nft
        flush ruleset`, or altered) every registered attachment is re-applied from a full
        reading. Elements deleted one by one from an intact table are CHECK's, `isolation
        reconcile`'s and the agent's to find.
        """
        intents = [intent]
        want = wanted(intents)
        if not want:
            return {}
        failure = f"could not apply isolation for {intent.bridge}"
        def everyone():
            return others() if callable(others) else others

        full = related is None
        if related is None:
            related = [o for o in everyone() if o.bridge == intent.bridge or (intent.group and o.group == intent.group)]
        ensure_flags(intent, None if full else related, everyone() if full else ())
        # one anti-spoofed neighbour stands for all of them: its elements are there already
        # (adding them again is a no-op), and it makes a missing bridge table a reason to rebuild
        spoofed = next((i for i in related if i.spoof is not None), None)
        related = shared_needs(related) + ([spoofed] if spoofed else [])
        quick = self.read(SPECS, terse=True) if not full else {}
        if not full and all(quick[f].exists and quick[f].intact for f in wanted([intent, *related])):
            cmds = add_only_plan(quick, [intent, *related])
            if cmds is not None:
                self._apply(cmds, failure)
                return {}
        intents += everyone()
        self._apply(plan(self.read(wanted(intents)), intents), failure)
        return {}

    def release(self, r: Release, facts: dict) -> None:
        self._apply(release_plan(self.read(SPECS), r), f"could not remove the isolation of {r.bridge}")
        release_flags(r)

    def _apply(self, cmds: list[dict], failure: str) -> None:
        """Run `cmds` as one transaction; {"text": ...} commands (declaring `typeof` sets) run
        first, as their own."""
        texts = [c["text"] for c in cmds if "text" in c]
        cmds = [c for c in cmds if "text" not in c]
        if texts:
            rc, _, err = self.nft.cmd("\n".join(texts))
            if rc != 0:
                raise CniError(ENFORCEMENT_FAILED, f"nftables {failure}", err.strip())
        if cmds:
            rc, _, err = self._run(cmds)
            if rc != 0:
                raise CniError(ENFORCEMENT_FAILED, f"nftables {failure}", err.strip())

    def enforced(self) -> dict[str, int | None]:
        """Bridges in our `isolated` set -> None (drops are counted per table, see drops())."""
        state = self.read(["inet"])["inet"]
        return {b: None for b in state.elements.get("isolated", set())}

    def drops(self) -> int:
        """Packets the inet table's drop rule dropped, all bridges together."""
        rc, out, _ = self._run([{"list": {"chain": {"family": "inet", "table": TABLE, "name": "forward"}}}])
        if rc != 0 or out is UNPARSEABLE:
            return 0
        return sum(x["counter"]["packets"] for o in out["nftables"] if "rule" in o
                   for x in o["rule"]["expr"] if "counter" in x)

    def cleanup_commands(self, bridge: str | None, ports: list[str]) -> list[list[str]]:
        """nft commands removing our tables, or (bridge given) that bridge's elements and `ports`."""
        states = self.read(SPECS)
        if bridge is None:
            return [["nft", "delete", "table", f, TABLE] for f in SPECS if states[f].exists]
        cmds = []
        for name in ("isolated", "self", "published", "intra"):
            raw = (bridge, bridge) if name == "self" else bridge
            if raw in states["inet"].elements.get(name, set()):
                shown = f'"{bridge}" . "{bridge}"' if name == "self" else f'"{bridge}"'
                cmds.append(["nft", "delete", "element", "inet", TABLE, name, "{", shown, "}"])
        for pair in sorted(states["inet"].elements.get("peers", set())):  # its group's grants, both ways
            if bridge in pair:
                cmds.append(["nft", "delete", "element", "inet", TABLE, "peers", "{", f'"{pair[0]}" . "{pair[1]}"', "}"])
        for name in GUARD_MAPS:
            entry = (bridge, f"{name}-{bridge}")
            if entry in states["inet"].elements.get(name, set()):
                cmds.append(["nft", "delete", "element", "inet", TABLE, name, "{", f'"{bridge}"', "}"])
            if entry[1] in states["inet"].chains:
                cmds.append(["nft", "delete", "chain", "inet", TABLE, entry[1]])  # a valid name, unquoted
        return cmds + spoof_cleanup(states["bridge"], set(ports), BRIDGE)

    def run_command(self, argv: list[str]) -> str | None:
        """Execute one `nft ...` command through libnftables (no nft binary needed)."""
        rc, _, err = self.nft.cmd(" ".join(argv[1:]))
        return None if rc == 0 else err.strip()

    def verify(self, intent: BridgeIntent, same_bridge=()) -> list[str]:
        intents = [intent, *same_bridge]
        want = wanted(intents)
        found = [f"nftables: {p}" for p in problems(self.read(want), intents)] if want else []
        return found + flag_problems(intents)

    def audit(self, intent: BridgeIntent, same_bridge=(), related=()) -> tuple[list[str], list[str]]:
        """CHECK's question in one reading: (what verify() finds missing, the grants the kernel
        holds for the bridge that `related`, the registered attachments on it and in its
        isolationGroups, do not need)."""
        intents = [intent, *same_bridge]
        want = wanted(intents)
        states = self.read(sorted(set(want) | {"inet"}))
        missing = [f"nftables: {p}" for p in problems(states, intents)] if want else []
        missing += flag_problems(intents)
        return missing, [f"nftables: {t}" for t, _ in surplus(states["inet"], related, {intent.bridge})]

    def surplus(self, bridges, intents) -> dict[str, list[str]]:
        """Per bridge of `bridges`, the grants the kernel holds for it that `intents` (the
        registered attachments on them and in their isolationGroups) do not need."""
        found: dict[str, list[str]] = {}
        for text, cmds in surplus(self.read(["inet"])["inet"], intents, set(bridges)):
            for bridge in _bridges_of(cmds, text, bridges):
                found.setdefault(bridge, []).append(f"nftables: {text}")
        return found

    def revoke(self, intents) -> list[str]:
        """Remove every grant touching a bridge of `intents` (all registered attachments on this
        backend) that none of them needs, in one transaction; returns what went."""
        intents = list(intents)
        found = surplus(self.read(["inet"])["inet"], intents, {i.bridge for i in intents})
        self._apply([c for _, cmds in found for c in cmds], "could not remove grants no attachment needs")
        return [f"nftables: {text}" for text, _ in found]


def table_exists(family: str, name: str) -> bool:
    """True when the table exists, or when nftables cannot tell (then nothing is deleted later)."""
    backend = NftablesBackend()
    if backend.nft is None:
        return True
    rc, _, _ = backend._run([{"list": {"table": {"family": family, "name": name}}}])
    return rc == 0


def chain_exists(family: str, table: str, chain: str) -> bool:
    """True when the chain exists, or when nftables cannot tell (then nothing is deleted later)."""
    backend = NftablesBackend()
    if backend.nft is None:
        return True
    rc, _, _ = backend._run([{"list": {"chain": {"family": family, "table": table, "name": chain}}}], terse=True)
    return rc == 0


def delete_empty_chains(chains: list[tuple[str, str, str]]) -> None:
    """Delete each (family, table, chain) that holds no rule: built-in chains iptables-nft made
    for our jumps in a table that was there before. Best effort, one transaction each (a chain
    some other rule still jumps to stays)."""
    backend = NftablesBackend() if chains else None
    if backend is None or backend.nft is None:
        return
    for family, table, name in chains:
        rc, out, _ = backend._run([{"list": {"chain": {"family": family, "table": table, "name": name}}}])
        if rc == 0 and out is not UNPARSEABLE and not any("rule" in o for o in out["nftables"]):
            backend._run([{"delete": {"chain": {"family": family, "table": table, "name": name}}}])


def delete_tables(tables: list[tuple[str, str]]) -> None:
    """Delete (family, name) tables, each in its own transaction (one already gone must not keep
    the others): used to remove the filter tables the iptables backend created on iptables-nft
    once they are pristine again. Best effort."""
    if tables:
        backend = NftablesBackend()
        if backend.nft is not None:
            for f, n in tables:
                backend._run([{"delete": {"table": {"family": f, "name": n}}}])
