"""The pure policy layer: what isolation the attachments need, independent of any backend.

Each attachment asks for a BridgeIntent (its network's configuration, on its bridge).
desired() turns the intents of a set of attachments into the one value the backends
render: a Desired, holding per bridge what it needs (BridgeNeeds). What a departing
attachment frees is the difference between the desired state with and without it
(released()). Nothing here touches the host, so every decision can be unit-tested and
pinned in golden files.
"""

from plugin import reasons
from plugin.links import valid_name
from plugin.record import value_class

# Neighbour discovery a container sends its host: router and neighbour solicitation, neighbour
# advertisement. Router advertisements and redirects come from routers, never from a container.
ND_TYPES = (133, 135, 136)
ND_HOP_LIMIT = 255  # RFC 4861: a receiver ignores ND with any other hop limit (it was routed)


def family_of(cidr: str) -> int:
    """4 or 6 for a canonical CIDR (plugin.model refuses IPv4 written inside IPv6)."""
    return 6 if ":" in cidr else 4


def split_cidr(cidr: str) -> tuple[str, int, bool]:
    """(address, prefix length, whether it is a single address) of a canonical CIDR."""
    addr, _, length = cidr.partition("/")
    return addr, int(length), int(length) == (128 if ":" in addr else 32)


@value_class(frozen=True)
class Hole:
    """A destination containers may open connections to despite a deny: an `allowEgress`
    entry (cidr set) or an `allowHostPorts` entry (cidr empty: any host address).
    protocol: tcp, udp, icmp or any; ports: canonical "N" / "N-M" strings (tcp and udp)."""

    protocol: str
    ports: tuple[str, ...] = ()
    cidr: str = ""

    @property
    def family(self) -> int | None:
        return family_of(self.cidr) if self.cidr else None


@value_class(frozen=True)
class Guard:
    """Where containers of one bridge may open connections, besides other bridges.

    deny: canonical CIDRs (IPv4 first) they cannot reach, forwarded or on the host itself,
          matched against the destination they addressed (before any DNAT);
    allow: exceptions to `deny` (Holes with a cidr);
    host_deny: the host's own addresses are closed to them (`hostAccess: deny`) except
          host_ports (Holes without cidr), IPv6 neighbour discovery and replies.
    internal: nothing is forwarded out of the bridge or into it, replies and published
          ports included (`internal: true`, which also sets host_deny).
    direct_deny: packets forwarded into the bridge from an interface that is neither a
          bridge the plugin isolates or guards nor one of `trusted` drop, unless they are
          replies or DNAT'd by a published port (`directAccess: deny`, `trustedInterfaces`).
    Replies (conntrack established/related) always pass; traffic within the bridge is
    never a Guard's business.
    """

    deny: tuple[str, ...] = ()
    allow: tuple[Hole, ...] = ()
    host_deny: bool = False
    host_ports: tuple[Hole, ...] = ()
    internal: bool = False
    direct_deny: bool = False
    trusted: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.deny) or self.host_deny or self.internal or self.direct_deny

    def deny_in(self, family: int) -> tuple[str, ...]:
        return tuple(c for c in self.deny if family_of(c) == family)

    def allow_in(self, family: int) -> tuple[Hole, ...]:
        return tuple(h for h in self.allow if h.family == family)

    def to_json(self) -> dict | None:
        if not self.active:
            return None
        return {"deny": list(self.deny), "allow": [[h.cidr, h.protocol, list(h.ports)] for h in self.allow],
                "hostDeny": self.host_deny, "hostPorts": [[h.protocol, list(h.ports)] for h in self.host_ports],
                **({"internal": True} if self.internal else {}),  # absent: registries written before them
                **({"directDeny": True, "trusted": list(self.trusted)} if self.direct_deny else {})}

    @classmethod
    def from_json(cls, data: dict | None) -> "Guard":
        if not data:
            return NO_GUARD
        return cls(deny=tuple(data["deny"]), allow=tuple(Hole(p, tuple(ports), c) for c, p, ports in data["allow"]),
                   host_deny=bool(data["hostDeny"]),
                   host_ports=tuple(Hole(p, tuple(ports)) for p, ports in data["hostPorts"]),
                   internal=data.get("internal", False) is True,
                   direct_deny=data.get("directDeny", False) is True, trusted=_names(data.get("trusted", [])))


NO_GUARD = Guard()


def _names(values) -> tuple[str, ...]:
    """Interface names read back from a registry: each must be one, or the guard is malformed."""
    if not isinstance(values, list) or not all(valid_name(v) for v in values):
        raise ValueError("trusted: not a list of interface names")
    return tuple(values)


def guard_for(conf) -> Guard:
    """The Guard a validated configuration (plugin.model.NetConf, dumped) asks for."""
    internal = getattr(conf, "internal", False)
    host_deny = conf.hostAccess == "deny" or internal  # an internal network's host is closed too
    allow = ()
    if conf.denyEgress:
        allow = tuple(Hole(e["protocol"], tuple(e["ports"]), e["cidr"]) for e in conf.allowEgress)
    host_ports = ()
    if host_deny:
        host_ports = tuple(Hole(h["protocol"], (h["port"],) if h["port"] else ()) for h in conf.allowHostPorts)
    direct_deny = getattr(conf, "directAccess", "allow") == "deny"
    trusted = tuple(dict.fromkeys(getattr(conf, "trustedInterfaces", []))) if direct_deny else ()
    return Guard(deny=tuple(conf.denyEgress), allow=allow, host_deny=host_deny, host_ports=host_ports,
                 internal=internal, direct_deny=direct_deny, trusted=trusted)


def merge(guards) -> Guard:
    """The one Guard for a bridge whose attachments asked for `guards` (normally all equal).

    When they differ (a conflist edited while its containers run, or two conflists naming
    one bridge) the strictest combination holds until the older attachments are gone:
    every deny range, only the exceptions all denying configurations share, and the host
    closed if any closes it, with only the ports all closing configurations open, and the
    bridge internal if any attachment asks, closed to direct access if any closes it, with only
    the trusted interfaces all closing configurations share.
    """
    distinct = list(dict.fromkeys(g for g in guards if g.active))
    if len(distinct) <= 1:
        return distinct[0] if distinct else NO_GUARD
    import ipaddress  # only here: ~1 ms to import, and guards rarely differ

    nets = [ipaddress.ip_network(c) for g in distinct for c in g.deny]
    deny = tuple(str(n) for v in (4, 6) for n in ipaddress.collapse_addresses(x for x in nets if x.version == v))
    deniers = [g for g in distinct if g.deny]
    allow = _shared_by([g.allow for g in deniers])
    closers = [g for g in distinct if g.host_deny]
    ports = _shared_by([g.host_ports for g in closers])
    directs = [g for g in distinct if g.direct_deny]
    return Guard(deny=deny, allow=allow, host_deny=bool(closers), host_ports=ports,
                 internal=any(g.internal for g in distinct), direct_deny=bool(directs),
                 trusted=_shared_by([g.trusted for g in directs]))


def _shared_by(lists: list[tuple]) -> tuple:
    """The items of the first of `lists` that every one of them holds (none: nothing)."""
    if not lists:
        return ()
    return tuple(h for h in lists[0] if all(h in other for other in lists))


@value_class(frozen=True)
class Spoof:
    """Anti-spoofing for one attachment: frames entering the bridge from its host-side `port`
    must come from `mac` (the container interface's, from prevResult), and their IPv4/IPv6
    sources (ARP sender, IP source, neighbour advertisement target, ND link-layer options)
    must be one of `ips` (addresses without prefix), or IPv6 link-local."""

    port: str
    mac: str
    ips: tuple[str, ...] = ()

    def ips_in(self, family: int) -> tuple[str, ...]:
        return tuple(a for a in self.ips if (6 if ":" in a else 4) == family)


@value_class(frozen=True)
class BridgeIntent:
    """The isolation one attachment asks for on its bridge.

    isolate: traffic forwarded from this bridge into another isolated bridge is dropped
             (Docker's inter-network isolation; `same-bridge` and `isolated`).
    drop_intra: traffic between two ports of this bridge is dropped too (`isolated`): the
             kernel's bridge-port isolation flag on every port of the bridge's attachments
             (frames), and a forward rule (packets routed back into the bridge by the host).
    port: the attachment's host-side port on the bridge (its veth), when prevResult names one.
    published: traffic DNAT'd into this bridge from another one (a published port, e.g. by
             portmap) passes the inter-bridge drop: another network reaches HOST_IP:PORT
             while the containers' own addresses stay unreachable (allowPublishedPorts).
             Within an `isolated` bridge nothing passes, published or not.
    """

    bridge: str
    isolate: bool
    drop_intra: bool
    port: str | None = None
    published: bool = False
    group: str | None = None  # isolationGroup: isolated bridges of one group reach each other
    guard: Guard = NO_GUARD  # denyEgress, allowEgress, hostAccess, allowHostPorts
    spoof: Spoof | None = None  # antiSpoofing: what this attachment's port may send
    log: bool = False  # logDrops: its bridge's drops go to the drop log (plugin.reasons.NFLOG_GROUP)
    mac: str | None = None  # the container interface's MAC: on an `isolated` bridge, frames to it are counted
    routed: bool = False  # `bridge` names a routed segment (segment_of), whose members are the ports
    tenant: str | None = None  # its own isolationGroup from CNI args: replaces `group` for this attachment
    addresses: tuple[str, ...] = ()  # the container's addresses (prevResult ips, no prefix): tenancy's members

    @property
    def enforces_anything(self) -> bool:
        return self.isolate or self.drop_intra or self.guard.active or self.spoof is not None


def intent_for(bridge: str, ingress_policy: str, port: str | None = None, published: bool = True,
               group: str | None = None, guard: Guard = NO_GUARD, spoof: Spoof | None = None,
               log: bool = False, mac: str | None = None, routed: bool = False,
               tenant: str | None = None, addresses: tuple[str, ...] = ()) -> BridgeIntent:
    """Translate a network's ingressPolicy, allowPublishedPorts, isolationGroup, Guard and
    anti-spoofing into the intent for one attachment to its bridge."""
    if ingress_policy not in ("open", "same-bridge", "isolated"):
        raise ValueError(f"unknown ingressPolicy {ingress_policy!r}")
    isolate = ingress_policy != "open"
    return BridgeIntent(bridge=bridge, isolate=isolate, drop_intra=ingress_policy == "isolated", port=port,
                        published=published and isolate, group=group if isolate else None, guard=guard, spoof=spoof,
                        log=log, mac=mac, routed=routed, tenant=tenant, addresses=addresses)


def anti_spoofing(setting: bool | None, ingress_policy: str) -> bool:
    """`antiSpoofing` as configured; unset (null) means on for `isolated` networks only."""
    return ingress_policy == "isolated" if setting is None else setting


def shared_needs(intents) -> list[BridgeIntent]:
    """`intents`, each distinct need of the bridge-wide rules once: ports and anti-spoofing
    are per attachment (each ADD brings its own), so a bridge with hundreds of containers
    of one network has a single need."""
    distinct = {}
    for i in intents:
        key = (i.bridge, i.isolate, i.drop_intra, i.published, i.group, i.guard, i.log, i.routed)
        if key not in distinct:
            distinct[key] = BridgeIntent(bridge=i.bridge, isolate=i.isolate, drop_intra=i.drop_intra,
                                         published=i.published, group=i.group, guard=i.guard, log=i.log,
                                         routed=i.routed)
    return list(distinct.values())


def spoof_of(att) -> Spoof | None:
    """The anti-spoofing a registered Attachment asked for (None: off)."""
    if att.spoof is None or not att.port or not att.mac:
        return None
    return Spoof(att.port, att.mac, tuple(att.spoof))


def plain_addresses(cidrs) -> tuple[str, ...]:
    """The addresses of prevResult's (or a registered Attachment's) `ips[].address` values,
    without their prefix, canonical (as the kernel lists them back and anti-spoofing writes
    them: `FD77:1:0:0::0002` is fd77:1::2, else CHECK missed its element for ever and reconcile
    took the kernel's for a surplus grant), each once: tenancy knows a container by them
    whatever antiSpoofing says. One that is no address is left out (ADD refuses it: cni)."""
    from plugin.result import canonical_ip

    return tuple(dict.fromkeys(a for a in (canonical_ip(c) for c in cidrs if c) if a is not None))


def intent_of(att) -> BridgeIntent:
    """The intent a registered Attachment stands for."""
    return intent_for(att.bridge, att.policy, att.port, att.published, att.group, Guard.from_json(att.guard),
                      spoof_of(att), att.logdrops, att.mac, att.routed, att.tenant, plain_addresses(att.addresses))


def group_peers(intents) -> dict[str, set[str]]:
    """For each isolating bridge, the other bridges of its isolationGroup (it may reach them)."""
    members: dict[str, set[str]] = {}
    for i in intents:
        if i.isolate and i.group:
            members.setdefault(i.group, set()).add(i.bridge)
    found: dict[str, set[str]] = {}
    for bridges in members.values():
        for b in bridges:
            if len(bridges) > 1:
                found.setdefault(b, set()).update(bridges - {b})
    return found


SEGMENT_PREFIX = "rt."  # names a routed segment where a bridge's name would stand


def segment_of(network: str) -> str:
    """The key of the routed segment of CNI network `network` (networks chained after `ptp`
    and other plugins that leave one host-side interface per container and no bridge): it
    stands where a bridge's name does (registry, counters, guard chains, status), so it is an
    interface-shaped name: "rt." and the network's name, or a digest of a longer one."""
    key = SEGMENT_PREFIX + network
    if valid_name(key):
        return key
    import hashlib

    return SEGMENT_PREFIX + hashlib.sha256(network.encode()).hexdigest()[:12]


# --- the desired state: what the kernel must hold, per bridge --------------------------------
@value_class(frozen=True)
class Member:
    """One attachment's port as tenancy sees it: its own isolationGroup (`tenant`, from CNI
    args), else its network's (`group`: none on a network that does not isolate); `ips` its
    addresses (prevResult's, and those anti-spoofing lets it send from)."""

    port: str
    tenant: str | None = None
    group: str | None = None
    ips: tuple[str, ...] = ()

    @property
    def effective(self) -> str | None:
        return self.tenant or self.group


@value_class(frozen=True, keywords=True)
class BridgeNeeds:
    """What one bridge needs enforced, from every attachment on it (see desired()).

    isolate / drop_intra: some attachment isolates the bridge / drops traffic between its
          ports (the stricter policy holds for the whole bridge);
    published: some isolating attachment lets published ports through (allowPublishedPorts);
    peers: the other bridges of its isolationGroups: they reach each other;
    guard: its attachments' Guards merged (the strictest combination, see merge());
    spoofs: its attachments' anti-spoofing, one per port;
    ports: its attachments' host-side ports; while the bridge drops intra-bridge traffic
          each carries the bridge-port isolation flag (`flagged`);
    macs: (port, MAC) of its attachments whose MAC is known: while the bridge drops
          intra-bridge traffic, unicast frames to them are counted (`counted`: the bridge-port
          isolation flag drops them before any firewall hook sees them);
    log: some attachment on it has logDrops: the bridge's drops (every reason) go to the drop
          log. Logging is per bridge because the rules that drop are (they match the bridge,
          not the network whose attachment sent the packet); one network asking costs the
          bridge's other networks nothing but log lines.
    """

    bridge: str
    isolate: bool = False
    drop_intra: bool = False
    published: bool = False
    peers: frozenset = frozenset()
    guard: Guard = NO_GUARD
    spoofs: tuple[Spoof, ...] = ()
    ports: tuple[str, ...] = ()
    macs: tuple[tuple[str, str], ...] = ()
    log: bool = False
    routed: bool = False  # a routed segment (segment_of): no bridge, its members are its ports
    members: tuple[Member, ...] = ()

    @property
    def enforces_anything(self) -> bool:
        return self.isolate or self.drop_intra or self.guard.active or bool(self.spoofs)

    @property
    def interfaces(self) -> tuple[str, ...]:
        """The interface names its traffic enters and leaves the host by: the bridge, or the
        members' host-side interfaces of a routed segment."""
        return self.ports if self.routed else (self.bridge,)

    @property
    def within(self) -> bool:
        """Whether traffic within the bridge needs exempting (from the inter-bridge drop and
        the guard): only ingressPolicy governs it, and only while something isolates or
        guards the bridge does anything need exempting."""
        return self.isolate or self.guard.active

    @property
    def flagged(self) -> tuple[str, ...]:
        """The ports that carry the bridge-port isolation flag (the intra-bridge drop; a routed
        segment's members are no bridge ports: its forward rule drops instead)."""
        return self.ports if self.drop_intra and not self.routed else ()

    @property
    def counted(self) -> tuple[tuple[str, str], ...]:
        """The (port, MAC) pairs whose unicast frames count as intra-bridge drops."""
        return self.macs if self.drop_intra else ()

    @property
    def logged(self) -> tuple[str, ...]:
        """The drop reasons (plugin.reasons) of the bridge's routed drops that go to the drop
        log: those it has, when it logs (anti-spoofing is the bridge table's: see spoofs). Its
        `internal` drops are logged whichever side of the packet it is on, its `direct-access`
        drops those of packets going into it."""
        if not self.log:
            return ()
        return tuple(r for r, has in ((reasons.CROSS_NETWORK, self.isolate),
                                      (reasons.INTRA_BRIDGE, self.drop_intra),
                                      (reasons.EGRESS_DENY, bool(self.guard.deny)),
                                      (reasons.HOST_ACCESS, self.guard.host_deny),
                                      (reasons.INTERNAL, self.guard.internal),
                                      (reasons.DIRECT_ACCESS, self.guard.direct_deny)) if has)


class Desired:
    """The desired state of a set of attachments: per bridge, its BridgeNeeds, in the order
    the attachments came (renderings list bridges in that order). Built by desired()."""

    __slots__ = ("bridges",)

    def __init__(self, bridges: dict[str, BridgeNeeds]) -> None:
        self.bridges = bridges

    def __iter__(self):
        return iter(self.bridges.values())

    def __eq__(self, other) -> bool:
        return isinstance(other, Desired) and self.bridges == other.bridges

    def __repr__(self) -> str:
        return f"Desired({list(self.bridges.values())!r})"

    def get(self, bridge: str) -> BridgeNeeds:
        """What `bridge` needs (nothing, for a bridge none of the attachments is on)."""
        return self.bridges.get(bridge) or BridgeNeeds(bridge=bridge)

    @property
    def enforces_anything(self) -> bool:
        return any(b.enforces_anything for b in self)

    @property
    def guarded(self) -> bool:
        return any(b.guard.active for b in self)

    @property
    def spoofs(self) -> tuple[Spoof, ...]:
        return tuple(s for b in self for s in b.spoofs)

    @property
    def counted(self) -> tuple[tuple[str, str], ...]:
        return tuple(m for b in self for m in b.counted)

    @property
    def tenanted(self) -> bool:
        return any(m.tenant for b in self for m in b.members)


TENANCY_SETS = ("tports", "tenanted", "tpair", "taddr4", "taddr6", "tok4", "tok6", "maddr4", "maddr6",
                "tcross4", "tcross6", "xaddr4", "xaddr6", "xok4", "xok6")
TENANCY_INET = ("tcross4", "tcross6")  # also held by the inet table: the pass across bridges


def tenancy(desired: "Desired") -> dict[str, set]:
    """The bridge table's tenancy elements for `desired` (empty sets when no attachment has a
    per-container isolationGroup): frames between two ports of one bridge pass only as a
    `tpair` when either is tenanted; packets a port sends the host (routed: to another
    bridge, or hairpinned into its own) pass only as a `tok` pair when they come from a
    tenant's port or go to a tenant's address, and across two bridges only as a `tcross`
    pair when those bridges do not reach each other otherwise.

    Two members are of one group when their effective groups (Member.effective) are equal and
    one of them is a tenant (two plain containers are the network rules' business).
    tports: every port (only ports we know are judged: an uplink enslaved to the bridge is not);
    tenanted: ports with a per-container group;
    tpair: (p, q) on one bridge, one of them tenanted, same effective group (p itself included:
          a bridge in hairpin mode sends a port's flooded frames back to it);
    taddr4/6: the tenants' addresses;
    maddr4/6: every member's addresses (what a tenant's port may send the host for only
          within its group);
    tok4/6: (p, address of q) for members p, q of one group;
    tcross4/6: (bridge of p, address of q) for members p, q of one group on two bridges: the
          inet table lets these through its cross-network drop;
    xaddr4/6: the addresses of tcross4/6: only the ports of xok4/6 may route to them;
    xok4/6: (p, address of q in xaddr) for the known bridge ports p that may route to it
          without the pass: p and q of one group (tok), or bridges whose network rules let p
          through anyway (one bridge, isolationGroup peers, either not isolating). The pass is
          keyed by bridge, so every other port of the pass's bridge (a plain neighbour of the
          tenant, an uplink nobody registered) would ride it through the inter-bridge drop;
          the bridge family cannot match the bridge a frame entered, so the ports are listed."""
    want = {name: set() for name in TENANCY_SETS}
    if not desired.tenanted:
        return want
    placed = [(p.port if b.routed else b.bridge, p, b) for b in desired for p in b.members]
    for b in desired:
        for p in b.members:
            want["tports"].add(p.port)
            if p.tenant:
                want["tenanted"].add(p.port)
            for q in b.members:
                if (p.tenant or q.tenant) and p.effective == q.effective:  # p == q: hairpin mode reflects frames
                    want["tpair"].add((p.port, q.port))
    for bq, q, _ in placed:
        for ip in q.ips:
            family = family_of(ip)
            want[f"maddr{family}"].add(ip)
            if q.tenant:
                want[f"taddr{family}"].add(ip)
            for bp, p, _ in placed:
                if (p.tenant or q.tenant) and p.effective is not None and p.effective == q.effective:
                    want[f"tok{family}"].add((p.port, ip))
                    if bp != bq:
                        want[f"tcross{family}"].add((bp, ip))
                        want[f"xaddr{family}"].add(ip)
    for _, q, nq in placed:
        for ip in q.ips:
            family = family_of(ip)
            if ip not in want[f"xaddr{family}"]:
                continue
            for _, p, np in placed:
                if not np.routed and ((p.port, ip) in want[f"tok{family}"] or _reaches(np, nq)):
                    want[f"xok{family}"].add((p.port, ip))
    return want


def _reaches(source: "BridgeNeeds", dest: "BridgeNeeds") -> bool:
    """Whether the network rules let a packet routed from `source` into `dest` through the
    inter-bridge drop (one bridge, isolationGroup peers, or either not isolating); a tenant's
    pass across bridges is not asked here."""
    return source.bridge == dest.bridge or dest.bridge in source.peers or not (source.isolate and dest.isolate)


def desired(intents) -> Desired:
    """The one desired state of the attachments asking for `intents`: per bridge, what its
    attachments need together, its isolationGroup peers among them, its merged Guard.
    Every interface name is checked here, once, before any backend renders it (defence in
    depth: the protocol layer and the registry validated them already)."""
    intents = list(intents)
    by_bridge: dict[str, list[BridgeIntent]] = {}
    for i in intents:
        for name in (i.bridge, i.port):
            if name is not None and not valid_name(name):
                raise ValueError(f"refusing to render rules for interface name {name!r}")
        by_bridge.setdefault(i.bridge, []).append(i)
    peers = group_peers(intents)
    return Desired({bridge: BridgeNeeds(
        bridge=bridge,
        isolate=any(i.isolate for i in its),
        drop_intra=any(i.drop_intra for i in its),
        published=any(i.isolate and i.published for i in its),
        peers=frozenset(peers.get(bridge, ())),
        guard=merge(i.guard for i in its),
        spoofs=tuple(dict.fromkeys(i.spoof for i in its if i.spoof is not None)),
        ports=tuple(dict.fromkeys(i.port for i in its if i.port)),
        macs=tuple(dict.fromkeys((i.port, i.mac) for i in its if i.port and i.mac)),
        log=any(i.log for i in its),
        routed=any(i.routed for i in its),
        members=tuple(dict.fromkeys(Member(i.port, i.tenant, i.group,
                                           tuple(dict.fromkeys((*(i.spoof.ips if i.spoof else ()), *i.addresses))))
                                    for i in its if i.port)) if any(i.tenant for i in intents) else (),
    ) for bridge, its in by_bridge.items()})


def addition(intent: BridgeIntent, related) -> Desired:
    """What an ADD of `intent` needs the kernel to hold, for a backend's add-only path:
    `related` are the other attachments on its bridge or in its isolationGroup. Their
    distinct bridge-wide needs count once (ports and anti-spoofing are each attachment's
    own: a network of hundreds of containers is one need), plus one anti-spoofed
    neighbour: its elements are there already, and it makes a missing anti-spoofing table
    a reason for the full path."""
    related = list(related)
    spoofed = next((i for i in related if i.spoof is not None), None)
    return desired([intent, *shared_needs(related), *([spoofed] if spoofed else [])])


# --- what a change of the desired state frees ------------------------------------------------
@value_class(frozen=True, keywords=True)
class Release:
    """What one bridge's rules on a backend lose when the desired state goes from `before`
    to `after` (see released()). The defaults take nothing away.

    isolate / drop_intra: the bridge isolated (dropped traffic between its ports) before
          and no longer does: that drop goes. A drop goes only with what brought it.
    within: traffic within the bridge needed exempting before and no longer does.
    published: nothing after lets published ports into the bridge: that grant goes, whoever
          made it (a grant nobody needs is never kept).
    peers: the bridges it shares an isolationGroup with after: its pairs with any other
          go. None: left as they are.
    guard: the bridge's merged Guard after (NO_GUARD: its guard rules go). None: left as it is.
    spoofs: the anti-spoofing of ports under none after: their elements go.
    uncount: (port, MAC) pairs whose frames are no longer counted as intra-bridge drops.
    logged: the drop reasons the bridge logs after (BridgeNeeds.logged): the log rules of
          the others go. None: left as they are.
    forget: after, nothing is on the bridge: its drop counters go, with every element naming them.
    unlog: the bridge logged its drops before, not after: its bridge-table log chains go.
    unflag: ports of the bridge whose isolation flag comes off (it stopped dropping traffic
          between its ports; these are the ports still on it).
    last / last_guard / last_spoof: after, nothing on the backend enforces anything / has a
          Guard / has anti-spoofing or counts intra-bridge frames (the bridge table's business): what all bridges share (tables, chains, jumps; the
          guard's; the anti-spoofing table) goes too, unless the kernel holds rules of a
          bridge the desired state does not know (the backends check).
    tenancy: the bridge table's tenancy elements after (tenancy()), when per-container groups
          were or are in use: the ones it holds beyond them go. None: left as they are.
    """

    bridge: str
    isolate: bool = False
    drop_intra: bool = False
    within: bool = False
    published: bool = False
    peers: frozenset | None = None
    guard: Guard | None = None
    spoofs: tuple[Spoof, ...] = ()
    uncount: tuple[tuple[str, str], ...] = ()
    logged: tuple[str, ...] | None = None
    forget: bool = False
    unlog: bool = False
    unflag: tuple[str, ...] = ()
    last: bool = False
    last_guard: bool = False
    last_spoof: bool = False
    routed: bool = False  # the bridge is a routed segment: `members` are its interfaces that leave
    members: tuple[str, ...] = ()
    tenancy: dict | None = None


def released(before: Desired, after: Desired, bridge: str) -> Release:
    """What `bridge` loses when the desired state goes from `before` to `after` (only its
    part of `before` matters): drops and exemptions that were needed and no longer are,
    grants that nothing after needs, and when `after` needs nothing at all on the backend
    (or no Guard, or no anti-spoofing), what all bridges shared."""
    was, now = before.get(bridge), after.get(bridge)
    protected = {s.port for s in after.spoofs}
    unflag = set(was.flagged) & (set(now.ports) - set(now.flagged))  # flagged before, still there, not after
    return Release(
        bridge=bridge,
        isolate=was.isolate and not now.isolate,
        drop_intra=was.drop_intra and not now.drop_intra,
        within=was.within and not now.within,
        published=not now.published,
        peers=now.peers,
        guard=now.guard,
        spoofs=tuple(s for s in was.spoofs if s.port not in protected),
        uncount=tuple(sorted(set(was.counted) - set(after.counted))),
        logged=now.logged,
        forget=bridge not in after.bridges,
        unlog=was.log and not now.log,
        unflag=tuple(sorted(unflag)),
        last=not after.enforces_anything,
        last_guard=not after.guarded,
        last_spoof=not after.spoofs and not after.counted,
        routed=was.routed,
        members=tuple(sorted(set(was.ports) - set(now.ports))) if was.routed else (),
        tenancy=tenancy(after) if before.tenanted or after.tenanted else None,
    )


def release(departing, remaining: list) -> Release:
    """What `departing` (an Attachment) frees, given the attachments still on its backend:
    the difference between the desired state with it and without it."""
    left = [intent_of(a) for a in remaining]
    gone = intent_of(departing)
    before = desired([i for i in left if i.bridge == gone.bridge] + [gone])  # released() reads its bridge only
    return released(before, desired(left), gone.bridge)


def port_only(r: Release) -> Release:
    """`r` cut down to what provably belonged to the departing attachment alone: the
    anti-spoofing elements of its port. The bridge's rules, Guard, group peers, isolation
    flags and every table stay, because attachments the registry does not know of (a
    damaged registry) may still need them."""
    return Release(bridge=r.bridge, spoofs=r.spoofs, uncount=r.uncount, routed=r.routed, members=r.members)


def orphan_release(bridge: str, after: Desired) -> Release:
    """Every rule of `bridge`, which none of the registered attachments (their desired state:
    `after`) is on, as far as what they need allows: the kernel may hold any kind of rule
    for it (a crash between applying rules and recording them), so before, it held all."""
    held = BridgeNeeds(bridge=bridge, isolate=True, drop_intra=True, published=True)
    return released(Desired({bridge: held}), after, bridge)
