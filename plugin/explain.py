"""`isolation explain`: would a packet from a container pass, and why (pure: no kernel).

The answer walks README's "How the keys combine" table top to bottom, over a View: what
the rules hold for each bridge. ConfigView is what the registered attachments need
(policy.desired(): several attachments on one bridge merge into the strictest
combination, grants stay while one attachment has them); plugin.kernelview builds the
same View from what the kernel really holds, so `explain --check` runs the same walk
twice and names every fact on which the two differ. Every fact the walk consults is
recorded (Recorder), so only what decided this packet is compared.

The probe is one new flow (a TCP SYN, a UDP datagram, an ICMP echo request) sent from the
container's own address: replies and neighbour discovery (the table's reply row) and
spoofed sources (its first row) are never the question.
"""

import ipaddress

from plugin import reasons
from plugin.policy import NO_GUARD, Guard, Hole, desired, intent_of, tenancy
from plugin.record import value_class

PROTOCOLS = ("tcp", "udp", "icmp")
CONTAINER, HOST, PUBLISHED, OUTSIDE = "container", "host", "published", "outside"


@value_class(frozen=True)
class Dnat:
    """One port published by portmap: proto HOST[:port] -> to_addr:to_port. host is the
    address it is bound to ("" for every address of the host)."""

    proto: str
    ports: tuple[int, int]  # first, last
    to_addr: str
    to_port: int | None = None
    host: str = ""


@value_class(frozen=True)
class Probe:
    """A new flow from a container to `address` (protocol, destination port for tcp/udp)."""

    address: str
    proto: str
    port: int | None = None

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version


@value_class(frozen=True)
class Target:
    """Where the probe goes: a registered container (attachment), the host itself, a
    published port (dnat, and the container it leads to when one is registered), or
    anything else (outside)."""

    kind: str
    address: str
    attachment: object = None
    dnat: Dnat | None = None


def endpoint(address: str, port: int | None) -> str:
    """ADDR:PORT, [ADDR]:PORT for IPv6; the address alone without a port."""
    if port is None:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _plain(address: str) -> str:
    return address.split("/")[0]


def _same(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def find_source(spec: str, attachments) -> object:
    """The attachment SRC names: a container ID (a unique prefix), a host-side interface or an
    address. ValueError saying why when none or several match."""
    atts = list(attachments)
    for pick in ([a for a in atts if a.port == spec],
                 [a for a in atts if any(_same(_plain(x), spec) for x in a.addresses)],
                 [a for a in atts if a.container == spec],
                 [a for a in atts if a.container.startswith(spec)]):
        if len(pick) == 1:
            return pick[0]
        if len(pick) > 1:
            names = ", ".join(sorted(f"{a.network}/{a.container[:12]}/{a.ifname}" for a in pick))
            raise ValueError(f"{spec!r} names several attachments ({names}): give a longer ID or the interface")
    raise ValueError(f"no registered attachment has the container ID, host-side interface or address {spec!r}")


def resolve(probe: Probe, attachments, host_addresses, dnats) -> Target:
    """What the probe's destination is: a container's address, a published port of the host
    (portmap DNATs any local address unless bound to one), the host itself, or outside."""
    atts = list(attachments)
    owner = next((a for a in atts if any(_same(_plain(x), probe.address) for x in a.addresses)), None)
    if owner is not None:
        return Target(CONTAINER, probe.address, owner)
    if any(_same(h, probe.address) for h in host_addresses):
        for d in dnats:
            if d.proto == probe.proto and probe.port is not None and d.ports[0] <= probe.port <= d.ports[1] \
                    and (not d.host or _same(d.host, probe.address)) \
                    and ipaddress.ip_address(d.to_addr).version == probe.family:
                to = next((a for a in atts if any(_same(_plain(x), d.to_addr) for x in a.addresses)), None)
                return Target(PUBLISHED, probe.address, to, d)
        return Target(HOST, probe.address)
    return Target(OUTSIDE, probe.address)


# --- the facts the walk consults -------------------------------------------------------------
def frames_pass(els: dict, src_port: str, dst_port: str) -> bool:
    """Whether the bridge table's tenancy elements `els` (policy.tenancy) let frames from one
    port to another of one bridge through (nftables TENANT_FORWARD)."""
    judged = (src_port in els.get("tports", ()) and dst_port in els.get("tenanted", ())) or (
        src_port in els.get("tenanted", ()) and dst_port in els.get("tports", ()))
    return not judged or (src_port, dst_port) in els.get("tpair", ())


def routed_pass(els: dict, port: str, address: str) -> bool:
    """Whether a packet from `port` to the host for `address` gets through (TENANT_INPUT): to a
    tenant's address from a known port, or from a tenant's port to any member's address, only
    as a `tok` pair; to an address of a cross-bridge pass only as an `xok` pair."""
    v = 6 if ":" in address else 4
    address = str(ipaddress.ip_address(address))
    known = port in els.get("tports", ())
    judged = (known and address in els.get(f"taddr{v}", ())) or (
        port in els.get("tenanted", ()) and address in els.get(f"maddr{v}", ()))
    if address in els.get(f"xaddr{v}", ()) and (port, address) not in els.get(f"xok{v}", ()):
        return False
    return not judged or (port, address) in els.get(f"tok{v}", ())


def cross_pass(els: dict, bridge: str, address: str) -> bool:
    """Whether the tenants' pass across bridges lets a packet from `bridge` for `address` through
    the inter-bridge drop (the inet table's tcross sets, policy.tenancy)."""
    v = 6 if ":" in address else 4
    return (bridge, str(ipaddress.ip_address(address))) in els.get(f"tcross{v}", ())


class ConfigView:
    """The facts as the configuration of the registered attachments (of one backend) has them."""

    def __init__(self, attachments) -> None:
        self.needs = desired(intent_of(a) for a in attachments)
        self.tenancy = tenancy(self.needs)

    def tenant_frames(self, bridge: str, src_port: str, dst_port: str) -> bool:
        """Frames between the two ports of `bridge` pass the tenants' rule (per-container groups)."""
        return frames_pass(self.tenancy, src_port, dst_port)

    def tenant_routed(self, bridge: str, port: str, address: str) -> bool:
        """What `port` (on `bridge`) sends the host for `address` passes the tenants' rule."""
        return routed_pass(self.tenancy, port, address)

    def tenant_cross(self, bridge: str, dest: str, address: str) -> bool:
        """One tenant group's members on `bridge` may reach `address` on `dest` across the
        inter-bridge drop."""
        return cross_pass(self.tenancy, bridge, address)

    def flagged(self, bridge: str, port: str) -> bool:
        """The port carries the bridge-port isolation flag (frames between two such ports drop)."""
        return port in self.needs.get(bridge).flagged

    def intra(self, bridge: str) -> bool:
        """Traffic the host routes back into the bridge is dropped (forward rule of `isolated`)."""
        return self.needs.get(bridge).drop_intra

    def deny(self, bridge: str, family: int) -> tuple[str, ...]:
        return self.needs.get(bridge).guard.deny_in(family)

    def allow(self, bridge: str, family: int) -> tuple[Hole, ...]:
        g = self.needs.get(bridge).guard
        return g.allow_in(family) if g.deny else ()

    def host_deny(self, bridge: str) -> bool:
        return self.needs.get(bridge).guard.host_deny

    def host_ports(self, bridge: str) -> tuple[Hole, ...]:
        g = self.needs.get(bridge).guard
        return g.host_ports if g.host_deny else ()

    def published(self, bridge: str) -> bool:
        return self.needs.get(bridge).published

    def internal(self, bridge: str) -> bool:
        """Nothing is forwarded out of the bridge or into it (`internal: true`)."""
        return self.needs.get(bridge).guard.internal

    def direct(self, bridge: str) -> bool:
        """Unsolicited packets from untrusted interfaces into the bridge drop (`directAccess: deny`)."""
        return self.needs.get(bridge).guard.direct_deny

    def managed(self, bridge: str) -> bool:
        """The plugin isolates or guards the bridge: it is no stranger to a directAccess deny bridge."""
        return self.needs.get(bridge).within

    def trusted(self, bridge: str, interface: str) -> bool:
        return interface in self.needs.get(bridge).guard.trusted

    def published_reply(self, bridge: str) -> bool:
        """The replies of connections DNAT'd into the bridge pass back (allowPublishedPorts)."""
        return self.needs.get(bridge).published

    def peer(self, bridge: str, other: str) -> bool:
        return other in self.needs.get(bridge).peers

    def isolate_from(self, bridge: str) -> bool:
        """Traffic leaving this bridge for another one meets the inter-bridge drop."""
        return self.needs.get(bridge).isolate

    def isolate_to(self, bridge: str) -> bool:
        """Traffic entering this bridge from another isolating one is dropped."""
        return self.needs.get(bridge).isolate


FACTS = ("tenant_frames", "tenant_routed", "tenant_cross", "flagged", "intra",
         "deny", "allow", "host_deny", "host_ports", "published", "published_reply", "peer",
         "isolate_from", "isolate_to", "internal", "direct", "managed", "trusted")


class Recorder:
    """A View that remembers every fact asked of it, in order: (name, args) -> value."""

    def __init__(self, view) -> None:
        self.view, self.asked = view, {}

    def __getattr__(self, name: str):
        if name not in FACTS:
            raise AttributeError(name)

        def ask(*args):
            value = getattr(self.view, name)(*args)
            self.asked[(name, args)] = value
            return value

        return ask


# --- the walk --------------------------------------------------------------------------------
@value_class(frozen=True, keywords=True)
class Decision:
    """What the walk found: pass or drop, the reason (reasons.py, drops only), the step that
    decided (rule() names its rule) and what it matched."""

    verdict: str
    reason: str | None
    step: str
    source_bridge: str
    dest_bridge: str | None = None
    matched: str | None = None  # the deny range, or the exception, that matched
    exception: Hole | None = None  # the allowEgress entry the probe went through a deny by


def hole_matches(hole: Hole, probe: Probe, address: str | None) -> bool:
    """Whether `hole` lets the probe through: an allowEgress entry (cidr) or an allowHostPorts
    entry (no cidr: any address of the host). icmp means ICMPv6 toward IPv6."""
    if hole.cidr:
        net = ipaddress.ip_network(hole.cidr)
        if net.version != probe.family or ipaddress.ip_address(address) not in net:
            return False
    if hole.protocol == "any":
        return True
    if hole.protocol != probe.proto:
        return False
    if hole.protocol == "icmp" or not hole.ports:
        return True
    return any(int(p.split("-")[0]) <= probe.port <= int(p.split("-")[-1]) for p in hole.ports)


def _in_range(address: str, ranges) -> str | None:
    addr = ipaddress.ip_address(address)
    return next((c for c in ranges if addr in ipaddress.ip_network(c)), None)


def _reply_passes(view, s: str, d: str, target: Target) -> bool:
    """Whether the replies from bridge d back to s pass: the inter-bridge drop has no
    conntrack exemption, so a flow between two bridges needs both ways open (the published
    port's reply rule, the group's pair, or one side not isolating)."""
    if target.kind == PUBLISHED and view.published_reply(d):
        return True
    return view.peer(d, s) or not (view.isolate_from(d) and view.isolate_to(s))


def decide(view, source, target: Target, probe: Probe) -> Decision:
    """The table's rows, earlier rows winning, for a new flow from `source` (an Attachment).

    Anti-spoofing (row 1) never applies: the probe is sent from the container's own address.
    Replies and neighbour discovery (row 4) are not probes."""
    s = source.bridge
    dest = target.attachment
    d = dest.bridge if dest is not None else None
    if dest is not None and dest.key == source.key:  # its own address: the packet never leaves it
        return Decision(verdict="pass", reason=None, step="itself", source_bridge=s, dest_bridge=d)
    if target.kind == CONTAINER and source.port and dest.port:  # tenants: the bridge family, before anything inet
        if d == s and not view.tenant_frames(s, source.port, dest.port):
            return Decision(verdict="drop", reason=reasons.CROSS_TENANT, step="tenant-frames", source_bridge=s,
                            dest_bridge=d)
        if d != s and not view.tenant_routed(s, source.port, probe.address):
            return Decision(verdict="drop", reason=reasons.CROSS_TENANT, step="tenant-routed", source_bridge=s,
                            dest_bridge=d)
    if d == s and target.kind in (CONTAINER, PUBLISHED):
        if target.kind == CONTAINER and getattr(source, "routed", False):  # routed through the host: forward rule
            if view.intra(s):
                return Decision(verdict="drop", reason=reasons.INTRA_BRIDGE, step="intra-routed", source_bridge=s,
                                dest_bridge=d)
        elif target.kind == CONTAINER:  # bridged between two ports: the ports' isolation flags decide
            if view.flagged(s, source.port) and view.flagged(s, dest.port):
                return Decision(verdict="drop", reason=reasons.INTRA_BRIDGE, step="intra-flag", source_bridge=s,
                                dest_bridge=d)
        elif view.intra(s):  # a published port hairpinned through the host into the same bridge
            return Decision(verdict="drop", reason=reasons.INTRA_BRIDGE, step="intra-hairpin", source_bridge=s,
                            dest_bridge=d)
        return Decision(verdict="pass", reason=None, step="same-bridge", source_bridge=s, dest_bridge=d)
    if target.kind != HOST:  # forwarded: an internal bridge lets nothing out, nor in (published or not)
        if view.internal(s):
            return Decision(verdict="drop", reason=reasons.INTERNAL, step="internal-out", source_bridge=s,
                            dest_bridge=d)
        if d is not None and view.internal(d):
            return Decision(verdict="drop", reason=reasons.INTERNAL, step="internal-in", source_bridge=s,
                            dest_bridge=d)
    if target.kind == CONTAINER and d is not None and view.direct(d) and not view.managed(s) \
            and not view.trusted(d, s):  # from a bridge the plugin leaves alone: a stranger's interface
        return Decision(verdict="drop", reason=reasons.DIRECT_ACCESS, step="direct", source_bridge=s, dest_bridge=d)
    exception = None
    hit = _in_range(probe.address, view.deny(s, probe.family))  # the address the container chose
    if hit:
        exception = next((h for h in view.allow(s, probe.family) if hole_matches(h, probe, probe.address)), None)
        if exception is None:
            return Decision(verdict="drop", reason=reasons.EGRESS_DENY, step="egress-deny", source_bridge=s,
                            dest_bridge=d, matched=hit)
    if target.kind == HOST:
        if view.host_deny(s):
            port = next((h for h in view.host_ports(s) if hole_matches(h, probe, None)), None)
            if port is None:
                return Decision(verdict="drop", reason=reasons.HOST_ACCESS, step="host-deny", source_bridge=s)
            return Decision(verdict="pass", reason=None, step="host-port", source_bridge=s, exception=port)
    elif d is not None:
        if target.kind == PUBLISHED and view.published(d):
            return Decision(verdict="pass", reason=None, step="published", source_bridge=s, dest_bridge=d)
        if view.peer(s, d):
            return Decision(verdict="pass", reason=None, step="group", source_bridge=s, dest_bridge=d)
        if target.kind == CONTAINER and view.isolate_from(s) and view.isolate_to(d) \
                and view.tenant_cross(s, d, probe.address):  # (the replies' pair is there too: symmetric)
            return Decision(verdict="pass", reason=None, step="tenant-group", source_bridge=s, dest_bridge=d)
        if view.isolate_from(s) and view.isolate_to(d):
            return Decision(verdict="drop", reason=reasons.CROSS_NETWORK, step="cross", source_bridge=s,
                            dest_bridge=d)
        if not _reply_passes(view, s, d, target):  # the configuration never gets here: its grants are symmetric
            return Decision(verdict="drop", reason=reasons.CROSS_NETWORK, step="cross-reply", source_bridge=s,
                            dest_bridge=d)
    return Decision(verdict="pass", reason=None, step="allow-egress" if exception else "none", source_bridge=s,
                    dest_bridge=d, matched=hit, exception=exception)


# --- who and what decides --------------------------------------------------------------------
def _hole_text(h: Hole) -> str:
    parts = [h.cidr] if h.cidr else []
    parts.append(h.protocol)
    if h.ports:
        parts.append(",".join(h.ports))
    return " ".join(parts)


def _networks(attachments, bridge: str, pred) -> list[str]:
    return sorted({a.network for a in attachments if a.bridge == bridge and pred(a)})


def _guard(a) -> Guard:
    return Guard.from_json(a.guard) if a.guard else NO_GUARD


def attribute(dec: Decision, source, target: Target, probe: Probe, attachments) -> dict:
    """The short cause, the networks whose configuration decides, and the key."""
    s, d, step = dec.source_bridge, dec.dest_bridge, dec.step
    atts = list(attachments)
    isolating = lambda a: a.policy != "open"  # noqa: E731
    if step in ("intra-flag", "intra-hairpin", "intra-routed"):
        nets = _networks(atts, s, lambda a: a.policy == "isolated")
        how = {"intra-flag": "", "intra-routed": " (routed network)",
               "intra-hairpin": ", hairpinned through the host by a published port"}[step]
        return {"cause": f"both containers on {s}, network isolated{how}", "networks": nets, "key": "ingressPolicy"}
    if step == "itself":
        return {"cause": "the container's own address", "networks": [], "key": None}
    if step in ("tenant-frames", "tenant-routed"):
        dest = target.attachment
        mine, theirs = (source.tenant or source.group or "none"), (dest.tenant or dest.group or "none")
        return {"cause": f"different tenants: isolationGroup {mine} (of {source.container}) and {theirs} "
                         f"(of {dest.container}); a container's own group replaces its network's",
                "networks": sorted({source.network, dest.network}), "key": "isolationGroup"}
    if step == "tenant-group":
        dest = target.attachment
        group = source.tenant or dest.tenant
        return {"cause": f"same tenant group {group} across bridges {s} and {d} (of {source.container} and "
                         f"{dest.container})", "networks": sorted({source.network, dest.network}),
                "key": "isolationGroup"}
    if step == "same-bridge":
        what = "routed network" if getattr(source, "routed", False) else "bridge"
        return {"cause": f"same {what} {s}", "networks": [source.network], "key": "ingressPolicy"}
    if step == "egress-deny":
        nets = _networks(atts, s, lambda a: _in_range(target.address, _guard(a).deny) is not None)
        return {"cause": f"{target.address} is in denyEgress range {dec.matched}, no allowEgress entry matches",
                "networks": nets, "key": "denyEgress"}
    if step in ("internal-out", "internal-in"):
        b = s if step == "internal-out" else d
        nets = _networks(atts, b, lambda a: _guard(a).internal)
        return {"cause": f"{b} is internal: nothing is forwarded {'out of' if b == s else 'into'} it",
                "networks": nets, "key": "internal"}
    if step == "direct":
        return {"cause": f"{s} is neither a bridge or routed network the plugin isolates or guards nor a trusted "
                         f"interface of {d}",
                "networks": _networks(atts, d, lambda a: _guard(a).direct_deny), "key": "directAccess"}
    if step == "host-deny" and _networks(atts, s, lambda a: _guard(a).internal):
        return {"cause": f"{target.address} is the host; network internal (its host is closed as by hostAccess "
                         "deny), not an allowHostPorts service",
                "networks": _networks(atts, s, lambda a: _guard(a).internal), "key": "internal"}
    if step == "host-deny":
        nets = _networks(atts, s, lambda a: _guard(a).host_deny)
        return {"cause": f"{target.address} is the host; hostAccess deny, not an allowHostPorts service",
                "networks": nets, "key": "hostAccess"}
    if step == "host-port":
        nets = _networks(atts, s, lambda a: _guard(a).host_deny)
        return {"cause": f"allowHostPorts entry {_hole_text(dec.exception)} (hostAccess deny)", "networks": nets,
                "key": "allowHostPorts"}
    if step == "published":
        nets = _networks(atts, d, lambda a: isolating(a) and a.published)
        dn = target.dnat
        return {"cause": f"published port of network {', '.join(nets)} ({endpoint(target.address, probe.port)} -> "
                         f"{endpoint(dn.to_addr, dn.to_port)})", "networks": nets, "key": "allowPublishedPorts"}
    if step == "group":
        groups = {a.group for a in atts if a.bridge == d and isolating(a) and a.group}
        shared = sorted({a.group for a in atts if a.bridge == s and isolating(a) and a.group in groups})
        nets = _networks(atts, s, lambda a: a.group in shared) + _networks(atts, d, lambda a: a.group in shared)
        return {"cause": f"same isolationGroup {', '.join(shared)}", "networks": sorted(set(nets)),
                "key": "isolationGroup"}
    if step in ("cross", "cross-reply"):
        src_nets = _networks(atts, s, isolating)
        dst_nets = _networks(atts, d, isolating)
        return {"cause": f"{s} ({', '.join(src_nets)}) and {d} ({', '.join(dst_nets)}) both isolate, no shared "
                         "isolationGroup", "networks": dst_nets + [n for n in src_nets if n not in dst_nets],
                "key": "ingressPolicy"}
    if step == "allow-egress":
        nets = _networks(atts, s, lambda a: dec.exception in _guard(a).allow)
        return {"cause": f"allowEgress entry {_hole_text(dec.exception)} (exception to denyEgress {dec.matched})",
                "networks": nets, "key": "allowEgress"}
    return {"cause": "no rule applies", "networks": [], "key": None}


# --- the rule behind it, as README's layouts show it -----------------------------------------
def _nft_hole(h: Hole, family: int) -> str:
    dest = f"ct original ip{'' if family == 4 else '6'} daddr {h.cidr} " if h.cidr else ""
    if h.protocol in ("tcp", "udp"):
        ports = h.ports[0] if len(h.ports) == 1 else "{ " + ", ".join(h.ports) + " }"
        match = f"{h.protocol} dport {ports}" if h.ports else f"meta l4proto {h.protocol}"
    elif h.protocol == "icmp":
        match = f"meta l4proto {'icmp' if family == 4 else 'ipv6-icmp'}"
    else:
        match = ""
    return f"{dest}{match} return".replace("  ", " ").strip()


def _ipt_hole(br: str, h: Hole, family: int) -> str:
    from plugin.backends import iptables

    fam = "ipv4" if family == 4 else "ipv6"
    rules = iptables._hole(br, h, fam)
    return " | ".join(" ".join(r) for r in rules)


def _interface(a) -> str:
    """The interface iptables' rules name for attachment `a`: its bridge, or its own host-side
    veth on a routed segment (the segment's rules are written per member)."""
    return a.port if getattr(a, "routed", False) else a.bridge


def rule(backend: str, dec: Decision, source, target: Target, probe: Probe, config: ConfigView) -> str:
    """The rule (or kernel mechanism) that implements the decision on `backend`."""
    s, d, step, fam = dec.source_bridge, dec.dest_bridge, dec.step, probe.family
    dport = target.attachment.port if target.attachment is not None else None
    if step == "intra-flag":
        return f"bridge port isolation flag on {source.port} and {dport} (IFLA_BRPORT_ISOLATED): {s} forwards " \
               "no frame between them"
    nft = backend == "nftables"
    table = "bridge isolation" if nft else "bridge isolation-iptables"
    if step == "tenant-frames":
        return f"{table} forward: iifname @tports oifname @tenanted iifname . oifname != @tpair goto " \
               f"drop-cross-tenant ({source.port} . {dport})"
    if step == "tenant-routed":
        v, ip = probe.family, f"ip{'' if probe.family == 4 else '6'}"
        tenant = source.port in config.tenancy["tenanted"]
        address = str(ipaddress.ip_address(probe.address))
        held = tenant and address in config.tenancy[f"maddr{v}"] or address in config.tenancy[f"taddr{v}"]
        if not held or (source.port, address) in config.tenancy[f"tok{v}"]:  # the cross-bridge pass's guard
            return f"{table} input: {ip} daddr @xaddr{v} iifname . {ip} daddr != @xok{v} goto drop-cross-tenant " \
                   f"({source.port} . {probe.address})"
        return f"{table} input: iifname {'@tenanted' if tenant else '@tports'} {ip} daddr " \
               f"@{'maddr' if tenant else 'taddr'}{v} iifname . {ip} daddr != @tok{v} goto drop-cross-tenant " \
               f"({source.port} . {probe.address})"
    if step == "tenant-group":
        v, ip = probe.family, f"ip{'' if probe.family == 4 else '6'}"
        if nft:
            return f"inet isolation forward: ct status ! dnat iifname . {ip} daddr @tcross{v} return ({s} . " \
                   f"{probe.address})"
        from plugin.backends.iptables import tenant_pass

        pass_rule = tenant_pass(str(ipaddress.ip_address(probe.address)), s, _interface(target.attachment))
        return f"{'ip6tables' if v == 6 else 'iptables'} CNI-ISOLATION-STAGE-2: {' '.join(pass_rule)}"
    if step == "itself":
        return "none: the packet never leaves the container"
    if step == "same-bridge":
        return (f"none: frames between ports of {s} are bridged (inet isolation forward: iifname . oifname @self "
                "return, for traffic routed back into it)") if nft else \
            f"none: within {s} (CNI-ISOLATION-STAGE-1's rules for {s} match only ! -o {s})"
    if step == "intra-routed":
        return f"inet isolation forward: iifname @intra iifname . oifname @self goto drop-intra-bridge ({source.port} . " \
               f"{dport}, members of routed segment {s})" if nft else \
            f"-A CNI-ISOLATION-STAGE-1 -i {source.port} -o {dport} -j DROP"
    if step == "intra-hairpin":
        return "inet isolation forward: iifname @intra iifname . oifname @self goto drop-intra-bridge" if nft else \
            f"-A CNI-ISOLATION-STAGE-1 -i {s} -o {s} -j DROP"
    if step == "egress-deny":
        if nft:
            ip, ranges = "ip" if fam == 4 else "ip6", config.deny(s, fam)
            shown = ranges[0] if len(ranges) == 1 else "{ " + ", ".join(ranges) + " }"
            return f"inet isolation egress-{s}: ct original {ip} daddr {shown} goto drop-egress-deny " \
                   "(via forward/input: iifname vmap @egress)"
        from plugin.backends.iptables import _address

        return f"-A CNI-ISOLATION-EGRESS -i {s} -m conntrack --ctorigdst {_address(dec.matched)} -j DROP"
    if step == "allow-egress":
        return f"inet isolation egress-{s}: {_nft_hole(dec.exception, fam)}" if nft else \
            f"-A CNI-ISOLATION-EGRESS {_ipt_hole(s, dec.exception, fam)}"
    if step in ("internal-out", "internal-in"):
        b = s if step == "internal-out" else d
        if nft:
            return f"inet isolation forward: {'iif' if b == s else 'oif'}name @internal goto drop-internal ({b})"
        i = _interface(source) if b == s else _interface(target.attachment)
        return f"-A CNI-ISOLATION-STAGE-1 -i {i} ! -o {i} -j DROP" if b == s else \
            f"-A CNI-ISOLATION-STAGE-1 ! -i {i} -o {i} -j DROP"
    if step == "direct":
        i = _interface(target.attachment)
        return f"inet isolation direct: goto drop-direct-access (via forward: oifname @direct jump direct; {d})" \
            if nft else f"-A CNI-ISOLATION-DIRECT -o {i} -j DROP (reached by -A CNI-ISOLATION-STAGE-1 ! -i {i} " \
            f"-o {i} -j CNI-ISOLATION-DIRECT)"
    if step == "host-deny":
        return f"inet isolation host-{s}: goto drop-host-access (via input: iifname vmap @host)" if nft else \
            f"-A CNI-ISOLATION-HOST -i {_interface(source)} -j DROP"
    if step == "host-port":
        return f"inet isolation host-{s}: {_nft_hole(dec.exception, fam)}" if nft else \
            f"-A CNI-ISOLATION-HOST {_ipt_hole(s, dec.exception, fam)}"
    if step == "published":
        return "inet isolation forward: ct direction original ct status dnat oifname @published return" if nft else \
            f"-A CNI-ISOLATION-STAGE-2 -o {d} -m conntrack --ctstate DNAT --ctdir ORIGINAL -j RETURN"
    if step == "group":
        return f"inet isolation forward: iifname . oifname @peers return ({s} . {d})" if nft else \
            f"-A CNI-ISOLATION-STAGE-2 -i {s} -o {d} -j RETURN"
    if step == "cross-reply":
        return "inet isolation forward: iifname @isolated oifname @isolated goto drop-cross-network (the replies)" if nft else \
            f"-A CNI-ISOLATION-STAGE-2 -o {s} -j DROP (the replies from {d})"
    if step == "cross":
        return "inet isolation forward: iifname @isolated oifname @isolated goto drop-cross-network" if nft else \
            f"-A CNI-ISOLATION-STAGE-2 -o {d} -j DROP (reached by -A CNI-ISOLATION-STAGE-1 -i {s} ! -o {s} " \
            "-j CNI-ISOLATION-STAGE-2)"
    return "none: no rule of ours matches (our chains' policy is accept)"


# --- the whole answer ------------------------------------------------------------------------
def _describe_target(target: Target) -> dict:
    out = {"kind": target.kind, "address": target.address}
    a = target.attachment
    if a is not None:
        out |= {"container": a.container, "network": a.network, "bridge": a.bridge, "interface": a.port}
    if target.dnat is not None:
        out["dnat"] = endpoint(target.dnat.to_addr, target.dnat.to_port)
    return out


def answer(source, probe: Probe, attachments, host_addresses, dnats) -> tuple[dict, Target, Recorder]:
    """The explanation of one probe from the configuration: (answer as JSON, where the probe
    goes, the facts consulted). `attachments`: every registered one (only those on the source's
    backend matter: a backend isolates only its own bridges)."""
    if probe.proto not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
    if probe.proto != "icmp" and probe.port is None:
        raise ValueError(f"{probe.proto} needs a destination port")
    ipaddress.ip_address(probe.address)  # ValueError for a malformed address
    everyone = list(attachments)
    atts = [a for a in everyone if a.backend == source.backend]
    target = resolve(probe, everyone, host_addresses, dnats)
    rec = Recorder(ConfigView(atts))
    dec = decide(rec, source, target, probe)
    why = attribute(dec, source, target, probe, atts)
    out = {
        "source": {"container": source.container, "network": source.network, "bridge": source.bridge,
                   "interface": source.port, "backend": source.backend},
        "destination": _describe_target(target),
        "protocol": probe.proto,
        "port": probe.port,
        "verdict": dec.verdict,
        "reason": dec.reason,
        "cause": why["cause"] if dec.verdict == "pass" else f"{dec.reason}: {why['cause']}",
        "network": why["networks"][0] if why["networks"] else None,
        "networks": why["networks"],
        "key": why["key"],
        "rule": rule(source.backend, dec, source, target, probe, rec.view),
    }
    return out, target, rec


def compare(config: Recorder, kernel_view, source, target: Target, probe: Probe) -> tuple[Decision, list[str]]:
    """The decision the kernel's rules make (kernel_view: plugin.kernelview), and each fact the
    configuration's decision consulted that the kernel holds otherwise."""
    kernel = Recorder(kernel_view)
    dec = decide(kernel, source, target, probe)
    differ = []
    for (name, args), want in config.asked.items():
        have = getattr(kernel_view, name)(*args)
        if have != want:
            differ.append(kernel_view.describe(name, args, want, have))
    return dec, differ


def render(out: dict) -> str:
    """The text form of one answer."""
    src, dst = out["source"], out["destination"]
    where = f"{dst['address']}" + (f" ({dst['kind']}" + (f": {dst['network']}/{dst['container'][:12]} on "
                                                        f"{dst['bridge']}" if "network" in dst else "")
                                  + (f", DNAT to {dst['dnat']}" if "dnat" in dst else "") + ")")
    port = f" port {out['port']}" if out["port"] is not None else ""
    lines = [f"{out['verdict'].upper()}: {src['network']}/{src['container'][:12]} ({src['interface']} on "
             f"{src['bridge']}) -> {where} {out['protocol']}{port}",
             f"  cause:   {out['cause']}"]
    if out["key"]:
        lines.append(f"  decided: {out['key']} of network {', '.join(out['networks'])}")
    lines.append(f"  rule:    [{src['backend']}] {out['rule']}")
    if "check" in out:
        c = out["check"]
        if c["agrees"]:
            lines.append(f"  kernel:  agrees ({c['verdict']})")
        else:
            lines.append(f"  kernel:  DISAGREES: the kernel would {c['verdict']} it"
                         + (f" ({c['reason']})" if c["reason"] else ""))
            lines += [f"           {d}" for d in c["differences"]]
    return "\n".join(lines) + "\n"
