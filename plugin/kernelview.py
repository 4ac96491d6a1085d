"""What the kernel holds, as `isolation explain` needs it (reads only; admin paths only).

The host's own addresses (every address of this network namespace), the ports portmap
publishes (its DNAT rules in the nat table, read like `iptables-save -t nat`), and a View
(plugin.explain) of each backend's actual rules: for every fact the explanation consults,
whether the kernel holds the rules or elements that implement it. Which rules those are
comes from the backends' own rendering (bridge_rules, guard_rules, egress_rules...) of
the one need in question, so a rule the backend renders differently is looked for as it
renders it now. Order within a chain is not checked (CHECK and `status` report it).
"""

import ipaddress

from plugin.explain import Dnat
from plugin.policy import Guard, BridgeNeeds
from plugin.tools import find, run_all

NAT_TOOLS = {4: "iptables-save", 6: "ip6tables-save"}


def host_addresses() -> set[str]:
    """Every address of this network namespace (what portmap's `--dst-type LOCAL` matches)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = {m.get("IFA_LOCAL") or m.get("IFA_ADDRESS") for m in ipr.get_addr()}
    return {a.split("%")[0] for a in found if a}


def published_ports() -> list[Dnat]:
    """portmap's DNAT rules of both families (its iptables backend), read like
    `iptables-save -t nat`; a family whose tool is missing or fails has none."""
    jobs = [(v, find(tool)) for v, tool in NAT_TOOLS.items()]
    jobs = [(v, path) for v, path in jobs if path]
    results = run_all([([path, "-t", "nat"], None) for _, path in jobs])
    return [d for (v, _), (rc, out, _) in zip(jobs, results) if rc == 0 for d in dnats_of(out, v)]


def dnats_of(text: str, version: int) -> list[Dnat]:
    """The DNATs of the CNI-DN-* chains that CNI-HOSTPORT-DNAT jumps to, in a nat table as
    iptables-save prints it (IPv`version`)."""
    from plugin.backends.iptables import split_rule

    rules = [split_rule(line)[1:] for line in text.splitlines() if line.startswith("-A ")]
    used = {r[r.index("-j") + 1] for r in rules if r[0] == "CNI-HOSTPORT-DNAT" and "-j" in r}
    found = []
    for r in rules:
        d = _dnat(r[1:]) if r[0] in used and r[0].startswith("CNI-DN-") and "DNAT" in r else None
        if d is not None and ipaddress.ip_address(d.to_addr).version == version:
            found.append(d)
    return found


def _dnat(args: list[str]) -> Dnat | None:
    """One `-p P [-d HOST] --dport N[:M] -j DNAT --to-destination ADDR[:PORT]` rule."""
    opts = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("-")}
    proto, dport, to = opts.get("-p"), opts.get("--dport") or opts.get("--dports"), opts.get("--to-destination")
    if proto not in ("tcp", "udp") or not dport or not to:
        return None
    lo, _, hi = dport.partition(":")
    if to.startswith("["):
        addr, _, port = to[1:].partition("]")
        port = port.lstrip(":")
    elif to.count(":") == 1:
        addr, port = to.split(":")
    else:
        addr, port = to, ""
    host = opts.get("-d", "").split("/")[0]
    return Dnat(proto, (int(lo), int(hi or lo)), addr, int(port.split("-")[0]) if port else None, host)


class _Base:
    """Shared by both backends' views: the ports' isolation flags, and the configuration's
    merged Guard per bridge (which guard rules to look for)."""

    def __init__(self, config, flags: frozenset) -> None:
        self.config, self.flags = config, flags
        self.trouble: list[str] = []  # what makes the kernel's rules unreadable as facts

    def _guard(self, bridge: str) -> Guard:
        return self.config.needs.get(bridge).guard

    def flagged(self, bridge: str, port: str) -> bool:
        return port in self.flags

    def _tenancy(self) -> dict:
        """The tenancy elements of this backend's bridge table, read once; none when the table is
        missing, dormant or altered (its rules cannot be trusted to hold them)."""
        if not hasattr(self, "_tenant_els"):
            from plugin.backends import libnft
            from plugin.backends.nftables import read_table

            lib, spec = libnft.load()[0], self._bridge_spec()
            state = read_table(lib, spec) if lib is not None else None
            self._tenant_els = state.elements if state is not None and state.exists and state.intact \
                and not state.dormant else {}
        return self._tenant_els

    def tenant_frames(self, bridge: str, src_port: str, dst_port: str) -> bool:
        from plugin.explain import frames_pass

        return frames_pass(self._tenancy(), src_port, dst_port)

    def tenant_routed(self, bridge: str, port: str, address: str) -> bool:
        from plugin.explain import routed_pass

        return routed_pass(self._tenancy(), port, address)

    def _tenant_where(self, name: str, args: tuple) -> str:
        table = self._bridge_spec().name
        if name == "tenant_cross":
            return self._cross_where(*args)
        if name == "tenant_frames":
            return f"{args[1]} . {args[2]} in set bridge {table} tpair (or the ports' tports/tenanted elements)"
        return f"{args[1]} . {args[2]} in set bridge {table} tok{6 if ':' in args[2] else 4} (or taddr, maddr, " \
               "tports, tenanted, xaddr, xok)"

    def describe(self, name: str, args: tuple, want, have) -> str:
        where = self.where(name, args)
        if isinstance(want, bool):
            return f"{where}: the configuration {'needs' if want else 'does not need'} it, the kernel " \
                   f"{'holds' if have else 'lacks'} it"
        shown = lambda v: ", ".join(getattr(x, "cidr", None) or str(x) for x in v) or "none"  # noqa: E731
        return f"{where}: the configuration needs {shown(want)}, the kernel holds {shown(have)}"


class NftablesView(_Base):
    """The facts as table inet isolation holds them (elements, guard chains)."""

    def __init__(self, backend, config, flags: frozenset) -> None:
        from plugin.backends.nftables import INET, read_table

        super().__init__(config, flags)
        self.inet = read_table(backend.lib, INET)
        if not self.inet.exists:
            self.trouble.append("table inet isolation is missing")
        elif self.inet.dormant:
            self.trouble.append("table inet isolation is dormant: it enforces nothing")
        elif not self.inet.intact:
            self.trouble.append("table inet isolation has been altered (its sets, base chains or rules differ)")

    def _els(self, name: str) -> set:
        return self.inet.elements.get(name, set()) if self.inet.exists and not self.inet.dormant else set()

    def _names(self, bridge: str) -> tuple[str, ...]:
        """The interfaces standing for `bridge` in the sets: itself, or a routed segment's members."""
        return self.config.needs.get(bridge).interfaces

    def _all_in(self, name: str, bridge: str) -> bool:
        names = self._names(bridge)
        return bool(names) and all(n in self._els(name) for n in names)

    def _pairs_in(self, name: str, bridge: str, other: str) -> bool:
        pairs = [(m, n) for m in self._names(bridge) for n in self._names(other)]
        return bool(pairs) and all(p in self._els(name) for p in pairs)

    def _chain_has(self, bridge: str, kind: str, rules) -> bool:
        names = self._names(bridge)
        if not names or any((n, f"{kind}-{bridge}") not in self._els(kind) for n in names):
            return False
        chain = self.inet.chains.get(f"{kind}-{bridge}", [])
        return all(r in chain for r in rules)

    def intra(self, bridge):
        return self._all_in("intra", bridge) and self._pairs_in("self", bridge, bridge)

    def deny(self, bridge, family):
        from plugin.backends.nftables import egress_rules

        g = self._guard(bridge)
        if not g.deny_in(family):
            return ()
        without = egress_rules(Guard(deny=tuple(c for c in g.deny if c not in g.deny_in(family)), allow=g.allow))
        drops = [r for r in egress_rules(g) if r not in without]
        return g.deny_in(family) if self._chain_has(bridge, "egress", drops) else ()

    def allow(self, bridge, family):
        from plugin.backends.nftables import _hole

        return tuple(h for h in self.config.allow(bridge, family) if self._chain_has(bridge, "egress", _hole(h)))

    def host_deny(self, bridge):
        from plugin.backends.nftables import host_rules

        return self._chain_has(bridge, "host", host_rules(Guard(host_deny=True)))

    def host_ports(self, bridge):
        from plugin.backends.nftables import _hole

        return tuple(h for h in self.config.host_ports(bridge) if self._chain_has(bridge, "host", _hole(h)))

    def published(self, bridge):
        return self._all_in("published", bridge)

    published_reply = published  # one set for both directions

    def internal(self, bridge):
        return self._all_in("internal", bridge) and self._pairs_in("self", bridge, bridge)

    def direct(self, bridge):
        return self._all_in("direct", bridge)

    def managed(self, bridge):
        names = self._names(bridge)
        return bool(names) and all((n, n) in self._els("self") for n in names)

    def trusted(self, bridge, interface):
        names = self._names(bridge)
        return bool(names) and all((n, interface) in self._els("trusted") for n in names)

    def peer(self, bridge, other):
        return self._pairs_in("peers", bridge, other)

    def tenant_cross(self, bridge, dest, address):
        from plugin.explain import cross_pass

        return cross_pass({n: self._els(n) for n in ("tcross4", "tcross6")}, bridge, address)

    def _cross_where(self, bridge, dest, address):
        return f"{bridge} . {address} in set inet isolation tcross{6 if ':' in address else 4}"

    def isolate_from(self, bridge):
        return self._all_in("isolated", bridge)

    isolate_to = isolate_from

    def _bridge_spec(self):
        from plugin.backends.nftables import BRIDGE

        return BRIDGE

    def where(self, name: str, args: tuple) -> str:
        b = args[0]
        if name.startswith("tenant_"):
            return self._tenant_where(name, args)
        names = " and ".join(self._names(b))  # a routed segment's members stand for it
        return {
            "flagged": lambda: f"the bridge-port isolation flag of {args[-1]} (on {b})",
            "intra": lambda: f"{b} in set inet isolation intra",
            "deny": lambda: f"the IPv{args[1]} deny rule of chain inet isolation egress-{b} (map egress: {b})",
            "allow": lambda: f"the allowEgress returns of chain inet isolation egress-{b}",
            "host_deny": lambda: f"the final drop of chain inet isolation host-{b} (map host: {b})",
            "host_ports": lambda: f"the allowHostPorts returns of chain inet isolation host-{b}",
            "published": lambda: f"{b} in set inet isolation published",
            "published_reply": lambda: f"{b} in set inet isolation published",
            "peer": lambda: f"{b} . {args[-1]} in set inet isolation peers",
            "isolate_from": lambda: f"{b} in set inet isolation isolated",
            "isolate_to": lambda: f"{b} in set inet isolation isolated",
            "internal": lambda: f"{names} in set inet isolation internal",
            "direct": lambda: f"{names} in set inet isolation direct",
            "managed": lambda: f"{' and '.join(f'{n} . {n}' for n in self._names(b))} in set inet isolation self",
            "trusted": lambda: f"{' and '.join(f'{n} . {args[-1]}' for n in self._names(b))} in set inet "
                               "isolation trusted",
        }[name]()


class IptablesView(_Base):
    """The facts as the filter table of one IP family holds them (our rules, our jumps)."""

    def __init__(self, backend, config, flags: frozenset, family: int, to_host: bool) -> None:
        from plugin.backends import iptables as ipt

        super().__init__(config, flags)
        self.ipt, self.fam, self.to_host = ipt, "ipv4" if family == 4 else "ipv6", to_host
        self.table = backend._read()[self.fam]  # the backend's own reading (iptables-save -t filter)
        self.forward_ok = ipt.forward_problem(self.table) is None
        self.input_ok = ipt.input_problem(self.table) is None
        if not self.forward_ok:
            self.trouble.append(f"{self.fam}: {ipt.forward_problem(self.table)}")
        self._index = {c: ipt.positions(r) for c, r in self.table.chains.items()}

    def _has(self, chain: str, rules) -> bool:
        index = self._index.get(chain, {})
        return bool(rules) and all(tuple(r) in index for r in rules)

    def _rendered(self, needs: BridgeNeeds) -> dict:
        return self.ipt.bridge_rules(needs, self.fam, self._ifs)

    def _ifs(self, bridge: str) -> tuple[str, ...]:
        """The interfaces `bridge`'s rules name: itself, or a routed segment's members."""
        return self.config.needs.get(bridge).interfaces

    def _needs(self, bridge: str, **need) -> BridgeNeeds:
        """One need of `bridge` alone (a routed segment's with its members)."""
        known = self.config.needs.get(bridge)
        return BridgeNeeds(bridge=bridge, routed=known.routed, ports=known.ports if known.routed else (), **need)

    def _guard_rules(self, bridge: str, guard: Guard) -> dict:
        """guard_rules of `bridge`'s interfaces (a routed segment's: each member's)."""
        rules = {}
        for i in self._ifs(bridge):
            for chain, got in self.ipt.guard_rules(i, guard, self.fam).items():
                rules[chain] = rules.get(chain, []) + got
        return rules or {self.ipt.EGRESS: [], self.ipt.HOST: []}

    def _holes(self, bridge: str, hole) -> list:
        return [r for i in self._ifs(bridge) for r in self.ipt._hole(i, hole, self.fam)]

    def _only(self, chain: str, needs: BridgeNeeds, base: BridgeNeeds) -> list:
        """The rules `needs` renders in `chain` that `base` does not: those of one need."""
        have = self._rendered(base)[chain]
        return [r for r in self._rendered(needs)[chain] if r not in have]

    def intra(self, bridge):
        ipt = self.ipt
        return self.forward_ok and self._has(ipt.STAGE1, self._only(
            ipt.STAGE1, self._needs(bridge, drop_intra=True), self._needs(bridge)))

    def _guard_reached(self, bridge: str, guard: Guard) -> bool:
        """The jump into the guard chains from FORWARD's STAGE-1 (forwarded) or INPUT's HOST."""
        ipt = self.ipt
        if self.to_host:
            return self.input_ok and self._has(ipt.HOST, [r for r in self._guard_rules(bridge, guard)[ipt.HOST]
                                                          if r[-1] == ipt.EGRESS])
        return self.forward_ok and self._has(ipt.STAGE1, [r for r in self._rendered(self._needs(bridge, guard=guard))[
            ipt.STAGE1] if r[-1] == ipt.EGRESS])  # (a segment's pair rules are ingressPolicy's)

    def deny(self, bridge, family):
        ipt = self.ipt
        found = []
        for c in self.config.deny(bridge, family):
            g = Guard(deny=(c,))
            rules = self._guard_rules(bridge, g)[ipt.EGRESS]
            if self._has(ipt.EGRESS, rules) and self._guard_reached(bridge, g):
                found.append(c)
        return tuple(found)

    def allow(self, bridge, family):
        return tuple(h for h in self.config.allow(bridge, family)
                     if self._has(self.ipt.EGRESS, self._holes(bridge, h)))

    def host_deny(self, bridge):
        ipt = self.ipt
        return self.input_ok and self._has(ipt.HOST, self._guard_rules(bridge, Guard(host_deny=True))[ipt.HOST])

    def host_ports(self, bridge):
        return tuple(h for h in self.config.host_ports(bridge)
                     if self._has(self.ipt.HOST, self._holes(bridge, h)))

    def published(self, bridge):
        ipt = self.ipt
        return self._has(ipt.STAGE2, self._only(ipt.STAGE2, self._needs(bridge, isolate=True, published=True),
                                                self._needs(bridge, isolate=True)))

    def published_reply(self, bridge):
        ipt = self.ipt
        return self.forward_ok and self._has(ipt.STAGE1, self._only(
            ipt.STAGE1, self._needs(bridge, isolate=True, published=True),
            self._needs(bridge, isolate=True)))

    def peer(self, bridge, other):
        ipt = self.ipt
        return self._has(ipt.STAGE2, self._only(ipt.STAGE2, self._needs(other, isolate=True, peers=frozenset([bridge])),
                                                self._needs(other, isolate=True)))

    def _cross_rules(self, bridge, dest, address):
        import ipaddress

        return [self.ipt.tenant_pass(str(ipaddress.ip_address(address)), bridge, out) for out in self._ifs(dest)]

    def tenant_cross(self, bridge, dest, address):
        return self._has(self.ipt.STAGE2, self._cross_rules(bridge, dest, address))

    def _cross_where(self, bridge, dest, address):
        return f"{self.fam} {self.ipt.STAGE2}: " + " | ".join(" ".join(r) for r in self._cross_rules(bridge, dest, address))

    def isolate_from(self, bridge):
        ipt = self.ipt
        rules = [r for r in self._rendered(self._needs(bridge, isolate=True))[ipt.STAGE1] if r[-1] == ipt.STAGE2]
        return self.forward_ok and self._has(ipt.STAGE1, rules)

    def direct(self, bridge):
        ipt = self.ipt
        ifs = self._ifs(bridge)
        return self.forward_ok and self._has(ipt.STAGE1, [ipt.direct_jump(i) for i in ifs]) and self._has(
            ipt.DIRECT, [["-o", i, "-j", "DROP"] for i in ifs])

    def _lets_in(self, bridge, interface):
        """Every interface of `bridge` (a routed segment's members) lets `interface` in."""
        return self._has(self.ipt.DIRECT, [["-i", interface, "-o", i, "-j", "RETURN"] for i in self._ifs(bridge)])

    def managed(self, bridge):
        """Our other chains hold rules for the bridge (each member of a routed segment), and every
        directAccess deny bridge's group lets it in (a managed bridge's RETURN looks like a
        trusted interface's: both are asked)."""
        ipt = self.ipt
        ours, ifs = ipt.managed_in(self.table), self._ifs(bridge)
        protected = [r[1] for r in self.table.chains.get(ipt.DIRECT, [])
                     if ipt.is_ours(r) and ipt.strip_comment(r)[:1] == ["-o"] and r[-2:] == ["-j", "DROP"]]
        return bool(ifs) and all(i in ours for i in ifs) and all(
            self._has(ipt.DIRECT, [["-i", i, "-o", p, "-j", "RETURN"]]) for p in protected if p not in ifs
            for i in ifs)

    def trusted(self, bridge, interface):
        return self._lets_in(bridge, interface)

    def internal(self, bridge):
        return self.forward_ok and self._has(self.ipt.STAGE1, [r for i in self._ifs(bridge)
                                                               for r in self.ipt.internal_rules(i)])

    def isolate_to(self, bridge):
        ipt = self.ipt
        return self._has(ipt.STAGE2, self._rendered(self._needs(bridge, isolate=True))[ipt.STAGE2])

    def _bridge_spec(self):
        return self.ipt._spoof_spec()

    def where(self, name: str, args: tuple) -> str:
        b, ipt = args[0], self.ipt
        if name.startswith("tenant_"):
            return self._tenant_where(name, args)
        m, tail = b, ""  # a routed segment's rules are written per member M
        if name in ("internal", "direct", "trusted") and self.config.needs.get(b).routed:
            m, tail = "M", f" (M: each member of {b}, {', '.join(self._ifs(b))})"
        s1, s2, last = f"{self.fam} {ipt.STAGE1}", f"{self.fam} {ipt.STAGE2}", args[-1]
        rules = {
            "flagged": f"the bridge-port isolation flag of {last} (on {b})",
            "peer": f"{s2}: -i {b} -o {last} -j RETURN",
            "intra": f"{s1}: -i {b} -o {b} -j DROP",
            "isolate_from": f"{s1}: -i {b} ! -o {b} -j {ipt.STAGE2}",
            "isolate_to": f"{s2}: -o {b} -j DROP",
            "internal": f"{s1}: -i {m} ! -o {m} -j DROP and ! -i {m} -o {m} -j DROP{tail}",
            "direct": f"{s1}: ! -i {m} -o {m} -j {ipt.DIRECT} and {ipt.DIRECT}: -o {m} -j DROP{tail}",
            "managed": f"{self.fam}: rules of {b} in our chains, and {ipt.DIRECT}: -i {b} -o BR -j RETURN for each BR",
            "trusted": f"{self.fam} {ipt.DIRECT}: -i {last} -o {m} -j RETURN{tail}",
            "published_reply": f"{s1}: -i {b} ! -o {b} -m conntrack --ctstate DNAT --ctdir REPLY -j RETURN",
            "published": f"{s2}: -o {b} -m conntrack --ctstate DNAT --ctdir ORIGINAL -j RETURN",
        }
        if name in rules:
            return rules[name]
        chain = {"deny": ipt.EGRESS, "allow": ipt.EGRESS, "host_deny": ipt.HOST, "host_ports": ipt.HOST}[name]
        return f"{self.fam} {chain}: {b}'s {name.replace('_', ' ')} rules"
