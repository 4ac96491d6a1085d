"""The nftables backend: tables of our own, driven in-process through libnftables' JSON API.

    table inet isolation                       (IPv4 and IPv6 in one rule set)
      set isolated  { type ifname }            bridges that are isolated
      set self      { type ifname . ifname }   (BR . BR) for each isolated bridge
      set published { type ifname }            isolated bridges whose published ports stay reachable
      set intra     { type ifname }            `isolated` bridges (no traffic between their ports)
      set peers     { type ifname . ifname }   (A . B) for bridges A != B of one isolationGroup
      chain forward  hook forward, priority -5, policy accept
        iifname @intra iifname . oifname @self counter drop   within an `isolated` bridge (hairpin
                                                          through the host, or bridged via br_netfilter)
        ct status dnat oifname @published return          a published port: isolation does not apply
        iifname . oifname @self return                    within one bridge: nothing else applies
        iifname . oifname @peers return                   the same isolationGroup
        iifname @isolated oifname @isolated counter drop

    table bridge isolation                     (only once a network is `isolated`)
      set ports { type ifname }                host-side ports of `isolated` bridges
      chain forward  hook forward, priority -205, policy accept
        iifname @ports counter drop            frames bridged between two ports of such a bridge

Bridges and ports are set elements, so the rule count is constant and a packet costs
hash lookups, however many networks exist. Traffic within one bridge is exempted by
the `self` set (the diagonal of bridge pairs), because nftables cannot compare
iifname with oifname directly. Intra-bridge drops match ports, not the bridge name:
`meta ibrname` needs nft_meta_bridge, which kernels may lack; this also needs no
br_netfilter. A drop in these tables is final whatever other tables accept, so
chain order with iptables, firewalld or Docker does not matter.

Each change is one libnftables transaction. When the table is intact, ADD only adds
elements (kernels make a transaction that deletes or re-declares anything wait ~10 ms
when its socket closes); a damaged table is deleted and rebuilt in one transaction,
keeping the elements it still had.
"""

import os
import sys
from dataclasses import dataclass, field

from plugin.errors import ENFORCEMENT_FAILED, CniError
from plugin.links import valid_name
from plugin.policy import BridgeIntent, Release, peers

TABLE = "isolation"
LIBRARY = "libnftables.so.1"


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _in_set(left: dict, name: str) -> dict:
    return {"match": {"op": "==", "left": left, "right": f"@{name}"}}


COUNTER = {"counter": {"packets": 0, "bytes": 0}}


@dataclass(frozen=True)
class TableSpec:
    """One of our tables, exactly as it must be."""

    family: str
    prio: int
    sets: dict
    rules: list

    def create(self) -> list[dict]:
        base = {"family": self.family, "table": TABLE}
        cmds = [{"add": {"table": {"family": self.family, "name": TABLE}}}]
        cmds += [{"add": {"set": {**base, "name": n, "type": t}}} for n, t in self.sets.items()]
        chain = {**base, "name": "forward", "type": "filter", "hook": "forward", "prio": self.prio, "policy": "accept"}
        cmds.append({"add": {"chain": chain}})
        cmds += [{"add": {"rule": {**base, "chain": "forward", "expr": expr}}} for expr in self.rules]
        return cmds


SAME_BRIDGE = _in_set({"concat": [_meta("iifname"), _meta("oifname")]}, "self")
INET = TableSpec(
    "inet",
    -5,
    {"isolated": "ifname", "self": ["ifname", "ifname"], "published": "ifname", "intra": "ifname",
     "peers": ["ifname", "ifname"]},
    [
        [_in_set(_meta("iifname"), "intra"), SAME_BRIDGE, COUNTER, {"drop": None}],
        [{"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
         _in_set(_meta("oifname"), "published"), {"return": None}],
        [SAME_BRIDGE, {"return": None}],
        [_in_set({"concat": [_meta("iifname"), _meta("oifname")]}, "peers"), {"return": None}],
        [_in_set(_meta("iifname"), "isolated"), _in_set(_meta("oifname"), "isolated"), COUNTER, {"drop": None}],
    ],
)
BRIDGE = TableSpec("bridge", -205, {"ports": "ifname"}, [[_in_set(_meta("iifname"), "ports"), COUNTER, {"drop": None}]])
SPECS = {"inet": INET, "bridge": BRIDGE}


@dataclass
class TableState:
    """What the kernel holds of one of our tables."""

    exists: bool = False
    intact: bool = False
    elements: dict[str, set] = field(default_factory=dict)

    @classmethod
    def parse(cls, listing: list[dict] | None, spec: TableSpec) -> "TableState":
        """From the `nftables` array of `list table FAMILY isolation` (None: no such table)."""
        if listing is None:
            return cls()
        sets, chains, rules = {}, [], []
        for obj in listing:
            if "set" in obj:
                s = obj["set"]
                sets[s["name"]] = (s["type"], {_element(e) for e in s.get("elem", [])})
            elif "chain" in obj:
                c = obj["chain"]
                chains.append((c["name"], c.get("type"), c.get("hook"), c.get("prio"), c.get("policy")))
            elif "rule" in obj:
                rules.append(_normalise(obj["rule"]["expr"]))
        intact = (
            {n: t for n, (t, _) in sets.items()} == spec.sets
            and chains == [("forward", "filter", "forward", spec.prio, "accept")]
            and rules == spec.rules
        )
        elements = {n: elems for n, (t, elems) in sets.items() if spec.sets.get(n) == t}
        return cls(True, intact, elements)


def _element(e) -> str | tuple:
    if isinstance(e, dict) and "elem" in e:  # an element with attributes
        e = e["elem"]["val"]
    if isinstance(e, dict) and "concat" in e:
        return tuple(e["concat"])
    return e


def _normalise(expr: list[dict]) -> list[dict]:
    """A listed rule's expressions, with counter values zeroed so it compares with our spec."""
    return [COUNTER if "counter" in x else x for x in expr]


def wanted(intents) -> dict[str, dict[str, set]]:
    """The set elements each table must hold for `intents`: family -> set -> elements."""
    want: dict[str, dict[str, set]] = {}
    intents = list(intents)
    group_peers = peers(intents)
    for intent in intents:
        for name in (intent.bridge, intent.port):
            if name is not None and not valid_name(name):  # defence in depth
                raise ValueError(f"refusing to render an element for interface name {name!r}")
        if intent.isolate:
            inet = want.setdefault("inet", {name: set() for name in INET.sets})
            inet["isolated"].add(intent.bridge)
            inet["self"].add((intent.bridge, intent.bridge))
            inet["peers"].update((intent.bridge, p) for p in group_peers.get(intent.bridge, ()))
            if intent.published:
                inet["published"].add(intent.bridge)
            if intent.drop_intra:
                inet["intra"].add(intent.bridge)
        if intent.drop_intra:
            if intent.port is None:
                raise CniError(
                    ENFORCEMENT_FAILED,
                    f"ingressPolicy 'isolated' needs the host-side port of the attachment to {intent.bridge}, "
                    "and prevResult names none",
                )
            want.setdefault("bridge", {"ports": set()})["ports"].add(intent.port)
    return want


def _add_elements(family: str, elements: dict[str, set]) -> list[dict]:
    cmds = []
    for name, elems in sorted(elements.items()):
        if elems:
            values = [{"concat": list(e)} if isinstance(e, tuple) else e for e in sorted(elems)]
            cmds.append({"add": {"element": {"family": family, "table": TABLE, "name": name, "elem": values}}})
    return cmds


def plan(states: dict[str, TableState], intents) -> list[dict]:
    """The libnftables commands (one transaction) that make the kernel enforce `intents`."""
    cmds = []
    for family, want in wanted(intents).items():
        spec, state = SPECS[family], states.get(family, TableState())
        if state.exists and state.intact:
            missing = {n: want[n] - state.elements.get(n, set()) for n in want}
            cmds += _add_elements(family, missing)
            continue
        if state.exists:  # damaged: rebuild, keeping what it still held
            cmds.append({"delete": {"table": {"family": family, "name": TABLE}}})
        cmds += spec.create()
        keep = {n: state.elements.get(n, set()) | want.get(n, set()) for n in spec.sets}
        cmds += _add_elements(family, keep)
    return cmds


def release_plan(states: dict[str, TableState], r: Release) -> list[dict]:
    """The commands (one transaction) removing what `r` frees; only what is present, since
    deleting an absent element fails the whole transaction."""
    def delete(family: str, what: str, body: dict) -> dict:
        return {"delete": {what: {"family": family, **body}}}

    cmds = []
    inet, bridge = states.get("inet", TableState()), states.get("bridge", TableState())
    if inet.exists and r.last:
        cmds.append(delete("inet", "table", {"name": TABLE}))
    elif inet.exists:
        gone = [("isolated", r.bridge), ("self", (r.bridge, r.bridge))] if r.isolate else []
        gone += [("published", r.bridge)] if r.published or r.isolate else []
        gone += [("intra", r.bridge)] if r.drop_intra or r.isolate else []
        gone += [("peers", pair) for pair in sorted(inet.elements.get("peers", set())) if r.isolate and r.bridge in pair]
        for name, elem in gone:
            if elem in inet.elements.get(name, set()):
                value = {"concat": list(elem)} if isinstance(elem, tuple) else elem
                cmds.append(delete("inet", "element", {"table": TABLE, "name": name, "elem": [value]}))
    if bridge.exists and (r.last or r.last_intra):
        cmds.append(delete("bridge", "table", {"name": TABLE}))
    elif bridge.exists and r.port and r.port in bridge.elements.get("ports", set()):
        cmds.append(delete("bridge", "element", {"table": TABLE, "name": "ports", "elem": [r.port]}))
    return cmds


def problems(states: dict[str, TableState], intent: BridgeIntent) -> list[str]:
    """What the kernel lacks to enforce `intent`."""
    found = []
    for family, want in wanted([intent]).items():
        state = states.get(family, TableState())
        if not state.exists:
            found.append(f"table {family} {TABLE} is missing")
        elif not state.intact:
            found.append(f"table {family} {TABLE} has been altered (its sets, chain or rules differ)")
        else:
            for name, elems in sorted(want.items()):
                for e in sorted(elems - state.elements.get(name, set())):
                    found.append(f"{' . '.join(e) if isinstance(e, tuple) else e} is not in set {family} {TABLE} {name}")
    return found


def library_path() -> str:
    """The bundled libnftables when frozen (so the binary needs no nftables package), else the system's."""
    bundled = os.path.join(getattr(sys, "_MEIPASS", ""), LIBRARY)
    return bundled if getattr(sys, "frozen", False) and os.path.exists(bundled) else LIBRARY


class NftablesBackend:
    name = "nftables"

    def __init__(self) -> None:
        self.nft = None
        self.load_error = None
        try:
            from nftables import Nftables

            self.nft = Nftables(sofile=library_path())
        except (ImportError, OSError, AttributeError) as exc:
            self.load_error = f"{LIBRARY} cannot be loaded: {exc}"

    def _run(self, cmds: list[dict]) -> tuple[int, object, str]:
        return self.nft.json_cmd({"nftables": cmds})

    def unavailable_reason(self) -> str | None:
        if self.nft is None:
            return self.load_error
        rc, _, err = self._run([{"list": {"tables": {"family": "inet"}}}])
        return None if rc == 0 else f"the kernel refuses nftables: {err.strip()}"

    def read(self, families) -> dict[str, TableState]:
        states = {}
        for family in families:
            rc, out, err = self._run([{"list": {"table": {"family": family, "name": TABLE}}}])
            if rc != 0:
                if "No such file or directory" not in err:
                    raise CniError(ENFORCEMENT_FAILED, f"cannot read table {family} {TABLE}", err.strip())
                out = None
            states[family] = TableState.parse(out["nftables"] if out else None, SPECS[family])
        return states

    def ensure(self, intent: BridgeIntent, others=()) -> dict:
        """Apply `intent`, and re-apply `others` (the registered attachments) where anything of
        theirs is missing; nothing needs remembering (our tables are wholly ours)."""
        intents = [intent, *others]
        want = wanted(intents)
        if want:
            self._apply(plan(self.read(want), intents), f"could not apply isolation for {intent.bridge}")
        return {}

    def release(self, r: Release, facts: dict) -> None:
        self._apply(release_plan(self.read(SPECS), r), f"could not remove the isolation of {r.bridge}")

    def _apply(self, cmds: list[dict], failure: str) -> None:
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
        if rc != 0:
            return 0
        return sum(x["counter"]["packets"] for o in out["nftables"] if "rule" in o
                   for x in o["rule"]["expr"] if "counter" in x)

    def cleanup_commands(self, bridge: str | None, ports: list[str]) -> list[list[str]]:
        """nft commands removing our tables, or (bridge given) that bridge's elements and `ports`."""
        states = self.read(SPECS)
        if bridge is None:
            return [["nft", "delete", "table", f, TABLE] for f in SPECS if states[f].exists]
        cmds = []
        for name, elem in (("isolated", f'"{bridge}"'), ("self", f'"{bridge}" . "{bridge}"')):
            raw = bridge if name == "isolated" else (bridge, bridge)
            if raw in states["inet"].elements.get(name, set()):
                cmds.append(["nft", "delete", "element", "inet", TABLE, name, "{", elem, "}"])
        for port in ports:
            if port in states["bridge"].elements.get("ports", set()):
                cmds.append(["nft", "delete", "element", "bridge", TABLE, "ports", "{", f'"{port}"', "}"])
        return cmds

    def run_command(self, argv: list[str]) -> str | None:
        """Execute one `nft ...` command through libnftables (no nft binary needed)."""
        rc, _, err = self.nft.cmd(" ".join(argv[1:]))
        return None if rc == 0 else err.strip()

    def verify(self, intent: BridgeIntent) -> list[str]:
        want = wanted([intent])
        return [f"nftables: {p}" for p in problems(self.read(want), intent)] if want else []


def table_exists(family: str, name: str) -> bool:
    """True when the table exists, or when nftables cannot tell (then nothing is deleted later)."""
    backend = NftablesBackend()
    if backend.nft is None:
        return True
    rc, _, _ = backend._run([{"list": {"table": {"family": family, "name": name}}}])
    return rc == 0


def delete_tables(tables: list[tuple[str, str]]) -> None:
    """Delete (family, name) tables in one transaction: used to remove the filter tables the
    iptables backend created on iptables-nft once they are pristine again. Best effort."""
    if tables:
        backend = NftablesBackend()
        if backend.nft is not None:
            backend._run([{"delete": {"table": {"family": f, "name": n}}} for f, n in tables])
