"""The pure policy layer: what isolation one bridge needs, independent of any backend.

A backend renders a BridgeIntent into its own rules; nothing here touches the host,
so every decision can be unit-tested and pinned in golden files.
"""

from plugin.record import record

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
    return addr, int(length), int(length) == (128 if ":" in addr else 32)  # IPv6 router/neighbour solicitation and advertisement, redirect


@record(frozen=True)
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


@record(frozen=True)
class Guard:
    """Where containers of one bridge may open connections, besides other bridges.

    deny: canonical CIDRs (IPv4 first) they cannot reach, forwarded or on the host itself,
          matched against the destination they addressed (before any DNAT);
    allow: exceptions to `deny` (Holes with a cidr);
    host_deny: the host's own addresses are closed to them (`hostAccess: deny`) except
          host_ports (Holes without cidr), IPv6 neighbour discovery and replies.
    Replies (conntrack established/related) always pass; traffic within the bridge is
    never a Guard's business.
    """

    deny: tuple[str, ...] = ()
    allow: tuple[Hole, ...] = ()
    host_deny: bool = False
    host_ports: tuple[Hole, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.deny) or self.host_deny

    def deny_in(self, family: int) -> tuple[str, ...]:
        return tuple(c for c in self.deny if family_of(c) == family)

    def allow_in(self, family: int) -> tuple[Hole, ...]:
        return tuple(h for h in self.allow if h.family == family)

    def to_json(self) -> dict | None:
        if not self.active:
            return None
        return {"deny": list(self.deny), "allow": [[h.cidr, h.protocol, list(h.ports)] for h in self.allow],
                "hostDeny": self.host_deny, "hostPorts": [[h.protocol, list(h.ports)] for h in self.host_ports]}

    @classmethod
    def from_json(cls, data: dict | None) -> "Guard":
        if not data:
            return NO_GUARD
        return cls(tuple(data["deny"]), tuple(Hole(p, tuple(ports), c) for c, p, ports in data["allow"]),
                   bool(data["hostDeny"]), tuple(Hole(p, tuple(ports)) for p, ports in data["hostPorts"]))


NO_GUARD = Guard()


def guard_for(conf) -> Guard:
    """The Guard a validated configuration (plugin.model.NetConf, dumped) asks for."""
    host_deny = conf.hostAccess == "deny"
    return Guard(
        deny=tuple(conf.denyEgress),
        allow=tuple(Hole(e["protocol"], tuple(e["ports"]), e["cidr"]) for e in conf.allowEgress) if conf.denyEgress else (),
        host_deny=host_deny,
        host_ports=tuple(Hole(h["protocol"], (h["port"],) if h["port"] else ()) for h in conf.allowHostPorts)
        if host_deny else (),
    )


def merge(guards) -> Guard:
    """The one Guard for a bridge whose attachments asked for `guards` (normally all equal).

    When they differ (a conflist edited while its containers run, or two conflists naming
    one bridge) the strictest combination holds until the older attachments are gone:
    every deny range, only the exceptions all denying configurations share, and the host
    closed if any closes it, with only the ports all closing configurations open.
    """
    distinct = list(dict.fromkeys(g for g in guards if g.active))
    if len(distinct) <= 1:
        return distinct[0] if distinct else NO_GUARD
    import ipaddress  # only here: ~1 ms to import, and guards rarely differ

    nets = [ipaddress.ip_network(c) for g in distinct for c in g.deny]
    deny = tuple(str(n) for v in (4, 6) for n in ipaddress.collapse_addresses(x for x in nets if x.version == v))
    deniers = [g for g in distinct if g.deny]
    allow = tuple(h for h in deniers[0].allow if all(h in g.allow for g in deniers)) if deniers else ()
    closers = [g for g in distinct if g.host_deny]
    ports = tuple(h for h in closers[0].host_ports if all(h in g.host_ports for g in closers)) if closers else ()
    return Guard(deny, allow, bool(closers), ports)


def guards(intents) -> dict[str, Guard]:
    """Each bridge's merged Guard, for the bridges that have an active one."""
    by_bridge: dict[str, list[Guard]] = {}
    for i in intents:
        by_bridge.setdefault(i.bridge, []).append(i.guard)
    merged = {b: merge(gs) for b, gs in by_bridge.items()}
    return {b: g for b, g in merged.items() if g.active}


@record(frozen=True)
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


@record(frozen=True)
class BridgeIntent:
    """The isolation wanted for one bridge.

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

    @property
    def enforces_anything(self) -> bool:
        return self.isolate or self.drop_intra or self.guard.active or self.spoof is not None


def intent_for(bridge: str, ingress_policy: str, port: str | None = None, published: bool = True,
               group: str | None = None, guard: Guard = NO_GUARD, spoof: Spoof | None = None) -> BridgeIntent:
    """Translate a network's ingressPolicy, allowPublishedPorts, isolationGroup, Guard and
    anti-spoofing into the intent for one attachment to its bridge."""
    if ingress_policy not in ("open", "same-bridge", "isolated"):
        raise ValueError(f"unknown ingressPolicy {ingress_policy!r}")
    isolate = ingress_policy != "open"
    return BridgeIntent(bridge, isolate, ingress_policy == "isolated", port, published and isolate,
                        group if isolate else None, guard, spoof)


def anti_spoofing(setting: bool | None, ingress_policy: str) -> bool:
    """`antiSpoofing` as configured; unset (null) means on for `isolated` networks only."""
    return ingress_policy == "isolated" if setting is None else setting


def shared_needs(intents) -> list[BridgeIntent]:
    """`intents`, each distinct need of the bridge-wide rules once: ports and anti-spoofing
    are per attachment (each ADD brings its own), so a bridge with hundreds of containers
    of one network has a single need."""
    distinct = {}
    for i in intents:
        key = (i.bridge, i.isolate, i.drop_intra, None, i.published, i.group, i.guard)
        if key not in distinct:
            distinct[key] = BridgeIntent(*key)
    return list(distinct.values())


def spoof_of(att) -> Spoof | None:
    """The anti-spoofing a registered Attachment asked for (None: off)."""
    if att.spoof is None or not att.port or not att.mac:
        return None
    return Spoof(att.port, att.mac, tuple(att.spoof))


def intent_of(att) -> BridgeIntent:
    """The intent a registered Attachment stands for."""
    return intent_for(att.bridge, att.policy, att.port, att.published, att.group, Guard.from_json(att.guard),
                      spoof_of(att))


def peers(intents) -> dict[str, set[str]]:
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


@record(frozen=True)
class Release:
    """What one departing attachment takes with it, on the backend that enforced it.

    isolate / drop_intra: no remaining attachment of the bridge needs them.
    published: no remaining attachment of the bridge grants published ports (whether or
          not the departing one did: a grant nobody needs goes).
    peers: the bridges it still shares an isolationGroup with; its pairs with any other go
          (a network that left the group keeps none once its older attachments are gone).
    port: this attachment's port leaves the per-port intra-bridge drop (nftables).
    last_intra: no remaining attachment on the backend needs intra-bridge drops at all.
    last: no remaining attachment on the backend enforces anything: every trace goes.
    guard: the bridge's Guard as its remaining attachments need it (NO_GUARD: none; None:
           left as it is, when what others need of it is not known).
    last_guard: no remaining attachment on the backend has an active Guard.
    bridge_done: no remaining attachment of the bridge enforces anything.
    spoof: the departing attachment's anti-spoofing, when no remaining attachment on the
           backend uses its port with anti-spoofing: its elements go.
    last_spoof: no remaining attachment on the backend has anti-spoofing: the table goes.
    unflag: ports whose isolation flag comes off: those of the bridge's remaining
           attachments, once none of them is `isolated`.
    """

    bridge: str
    isolate: bool
    drop_intra: bool
    port: str | None
    last_intra: bool
    last: bool
    published: bool = False
    guard: Guard | None = NO_GUARD
    last_guard: bool = False
    bridge_done: bool = False
    spoof: Spoof | None = None
    last_spoof: bool = False
    unflag: tuple[str, ...] = ()
    peers: frozenset | None = frozenset()  # the group peers the bridge keeps (None: left as they are)

    @property
    def frees_bridge(self) -> bool:
        """Whether this may take away anything of the bridge beyond the departing port (its
        group peers are recomputed from the remaining attachments on every release)."""
        return (self.isolate or self.drop_intra or self.published or self.bridge_done or self.last
                or self.guard != NO_GUARD or self.peers is not None or bool(self.unflag) or self.last_spoof)


def port_only(r: Release) -> Release:
    """`r` cut down to what provably belonged to the departing attachment alone (its port and
    its anti-spoofing elements): the bridge's rules, Guard, group peers, isolation flags and
    every table stay, because attachments the registry does not know of (a damaged
    registry) may still need them."""
    return Release(r.bridge, False, False, r.port, False, False, guard=None, spoof=r.spoof, peers=None)


def release(departing, remaining: list) -> Release:
    """The Release for `departing` (an Attachment) given the attachments still on its backend."""
    return release_intent(intent_of(departing), [intent_of(a) for a in remaining])


def orphan_release(bridge: str, remaining: list) -> Release:
    """The Release removing every rule of `bridge` that no registered attachment accounts for
    (a crash between applying rules and recording them), given the attachments on its backend."""
    return release_intent(intent_for(bridge, "isolated"), [intent_of(a) for a in remaining])


def release_intent(gone: BridgeIntent, left: list[BridgeIntent]) -> Release:
    same_bridge = [i for i in left if i.bridge == gone.bridge]
    return Release(
        bridge=gone.bridge,
        isolate=gone.isolate and not any(i.isolate for i in same_bridge),
        drop_intra=gone.drop_intra and not any(i.drop_intra for i in same_bridge),
        port=gone.port if gone.drop_intra and gone.port not in {i.port for i in left if i.drop_intra} else None,
        last_intra=not any(i.drop_intra for i in left),
        last=not any(i.enforces_anything for i in left),
        published=not any(i.published for i in same_bridge),
        guard=merge(i.guard for i in same_bridge),
        last_guard=not any(i.guard.active for i in left),
        bridge_done=not any(i.enforces_anything for i in same_bridge),
        spoof=gone.spoof if gone.spoof and gone.spoof.port not in {i.spoof.port for i in left if i.spoof} else None,
        last_spoof=not any(i.spoof for i in left),
        unflag=tuple(sorted({i.port for i in same_bridge if i.port})) if gone.drop_intra
        and not any(i.drop_intra for i in same_bridge) else (),
        peers=frozenset(peers(left).get(gone.bridge, ())),
    )
