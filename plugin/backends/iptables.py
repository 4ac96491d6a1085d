"""The iptables backend: the upstream CNI-ISOLATION-STAGE-1/2 layout in the filter table.

    FORWARD:                -j CNI-ISOLATION-STAGE-1            (always first)
    CNI-ISOLATION-STAGE-1:  -i BR ! -o BR -j CNI-ISOLATION-STAGE-2   (isolate)
                            -i BR -o BR -j DROP                      (drop_intra)
                            -j RETURN
    CNI-ISOLATION-STAGE-2:  -o BR -j DROP                            (isolate)
                            -j RETURN

The chains are shared with the firewall plugin's `ingressPolicy`: a rule that
matches the same packets already (whatever its comment) is not added twice, and
chains are created with `-N` (never `:CHAIN`, which flushes an existing chain in
--noflush mode). Each family's change is one `iptables-restore --noflush`
transaction computed from one `iptables-save`; if another writer changed the
table in between, the transaction fails as a whole and is recomputed.
"""

import os
import shlex
from dataclasses import dataclass, field

from plugin import bridgenf
from plugin.errors import ENFORCEMENT_FAILED, TRY_AGAIN_LATER, CniError
from plugin.links import valid_name
from plugin.policy import BridgeIntent
from plugin.tools import find, run_all

STAGE1 = "CNI-ISOLATION-STAGE-1"
STAGE2 = "CNI-ISOLATION-STAGE-2"
FIREWALL_CHAIN = "CNI-FORWARD"  # the firewall plugin's per-container ACCEPT chain
TAG = "isolation-plugin"  # our comment; the old Go plugin used "CNI isolation plugin rules"
COMMENT = ["-m", "comment", "--comment", TAG]
TOOLS = {"ipv4": ("iptables-save", "iptables-restore"), "ipv6": ("ip6tables-save", "ip6tables-restore")}
XTABLES_WAIT_S = "10"
ATTEMPTS = 3


@dataclass
class FilterTable:
    """The filter table as iptables-save prints it: chain -> list of rule argument lists."""

    chains: dict[str, list[list[str]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "FilterTable":
        table = cls()
        in_filter = False
        for line in text.splitlines():
            if line.startswith("*"):
                in_filter = line == "*filter"
            elif not in_filter:
                continue
            elif line.startswith(":"):
                table.chains.setdefault(line[1:].split(" ", 1)[0], [])
            elif line.startswith("-A "):
                args = shlex.split(line)
                table.chains.setdefault(args[1], []).append(args[2:])
        return table


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


def wanted(intent: BridgeIntent) -> dict[str, list[list[str]]]:
    """The matches-and-targets each stage chain must hold for `intent` (comments left out)."""
    br = intent.bridge
    if not valid_name(br):  # defence in depth: the protocol layer validated it already
        raise ValueError(f"refusing to render rules for interface name {br!r}")
    stage1, stage2 = [], []
    if intent.isolate:
        stage1.append(["-i", br, "!", "-o", br, "-j", STAGE2])
        stage2.append(["-o", br, "-j", "DROP"])
    if intent.drop_intra:
        stage1.append(["-i", br, "-o", br, "-j", "DROP"])
    return {STAGE1: stage1, STAGE2: stage2}


def _tagged(spec: list[str]) -> list[str]:
    """Our rule text: the match, our comment, then the target (iptables-save's order)."""
    return spec[:-2] + COMMENT + spec[-2:]


def _first(rules: list[list[str]], pred) -> int:
    return next((i for i, r in enumerate(rules) if pred(strip_comment(r))), len(rules))


def _is_jump(spec: list[str]) -> bool:
    return spec == ["-j", STAGE1]


def guard_missing(table: FilterTable) -> bool:
    """True unless CNI-FORWARD sends packets to STAGE-1 before any of its ACCEPT rules."""
    rules = table.chains.get(FIREWALL_CHAIN)
    if rules is None:
        return True
    return _first(rules, _is_jump) > _first(rules, lambda s: s[-2:] == ["-j", "ACCEPT"])


def forward_problem(table: FilterTable) -> str | None:
    """Why some packet could leave FORWARD accepted before STAGE-1 sees it, or None."""
    for n, rule in enumerate(table.chains.get("FORWARD", []), start=1):
        spec = strip_comment(rule)
        if _is_jump(spec):
            return None
        if spec == ["-j", FIREWALL_CHAIN] and not guard_missing(table):
            return None
        return f"FORWARD rule {n} ({' '.join(rule)}) comes before the jump to {STAGE1}"
    return f"FORWARD has no jump to {STAGE1}"


def _move_to_top(table: FilterTable, chain: str, lines: list[str]) -> None:
    jump = " ".join(_tagged(["-j", STAGE1]))
    ours = [r for r in table.chains.get(chain, []) if is_ours(r) and _is_jump(strip_comment(r))]
    lines += [f"-D {chain} {jump}"] * len(ours)  # keep exactly one, on top
    lines.append(f"-I {chain} 1 {jump}")


def plan(table: FilterTable, intent: BridgeIntent) -> list[str]:
    """The iptables-restore lines (between *filter and COMMIT) that make `table` enforce `intent`.

    Besides the FORWARD jump, a jump sits atop the firewall plugin's CNI-FORWARD
    (created if absent): when `firewall` runs after `isolation` it inserts its
    jump above ours, and its per-container ACCEPTs would otherwise win.
    """
    if not intent.enforces_anything:
        return []
    chains = wanted(intent)
    guard = guard_missing(table)
    needed = [*chains, FIREWALL_CHAIN] if guard else list(chains)
    lines = [f"-N {chain}" for chain in needed if chain not in table.chains]  # before any jump to them
    for chain, specs in chains.items():
        have = [strip_comment(r) for r in table.chains.get(chain, [])]
        for spec in specs:
            if spec not in have:
                lines.append(f"-I {chain} 1 " + " ".join(_tagged(spec)))
        if ["-j", "RETURN"] not in have:
            lines.append(f"-A {chain} " + " ".join(_tagged(["-j", "RETURN"])))
    if guard:
        _move_to_top(table, FIREWALL_CHAIN, lines)
    if forward_problem(table):
        _move_to_top(table, "FORWARD", lines)
    return lines


def problems(table: FilterTable, intent: BridgeIntent) -> list[str]:
    """What `table` lacks to enforce `intent`."""
    if not intent.enforces_anything:
        return []
    found = []
    for chain, specs in wanted(intent).items():
        if chain not in table.chains:
            found.append(f"chain {chain} is missing")
            continue
        have = [strip_comment(r) for r in table.chains[chain]]
        found += [f"{chain} lacks '{' '.join(s)}'" for s in specs if s not in have]
    reason = forward_problem(table)
    if reason:
        found.append(reason)
    return found


def families() -> list[str]:
    """IPv4 always; IPv6 whenever this network namespace has an IPv6 stack."""
    return ["ipv4", "ipv6"] if os.path.isdir("/proc/sys/net/ipv6") else ["ipv4"]


class IptablesBackend:
    name = "iptables"

    def __init__(self) -> None:
        self.families = families()
        self.tools = {fam: tuple(find(t) for t in TOOLS[fam]) for fam in self.families}

    def unavailable_reason(self) -> str | None:
        missing = [TOOLS[fam][i] for fam, paths in self.tools.items() for i, p in enumerate(paths) if p is None]
        return f"not found: {', '.join(missing)}" if missing else None

    def read(self) -> dict[str, FilterTable]:
        results = run_all([([self.tools[fam][0], "-t", "filter"], None) for fam in self.families])
        tables = {}
        for fam, (rc, out, err) in zip(self.families, results):
            if rc != 0:
                raise CniError(ENFORCEMENT_FAILED, f"{TOOLS[fam][0]} failed", err.strip())
            tables[fam] = FilterTable.parse(out)
        return tables

    def ensure(self, intent: BridgeIntent) -> None:
        if not intent.enforces_anything:
            return
        if intent.drop_intra:
            bridgenf.ensure_on(self.families)
        for attempt in range(ATTEMPTS):
            tables = self.read()
            jobs = []
            for fam, table in tables.items():
                lines = plan(table, intent)
                if lines:
                    text = "*filter\n" + "\n".join(lines) + "\nCOMMIT\n"
                    jobs.append((fam, [self.tools[fam][1], "--noflush", "-w", XTABLES_WAIT_S], text))
            if not jobs:
                return
            results = run_all([(argv, text) for _, argv, text in jobs])
            failed = [(fam, err) for (fam, _, _), (rc, _, err) in zip(jobs, results) if rc != 0]
            if not failed:
                return
        fam, err = failed[0]
        code = TRY_AGAIN_LATER if "lock" in err else ENFORCEMENT_FAILED
        raise CniError(code, f"{TOOLS[fam][1]} could not apply isolation rules for {intent.bridge}", err.strip())

    def verify(self, intent: BridgeIntent) -> list[str]:
        found = []
        for fam, table in self.read().items():
            found += [f"{fam}: {p}" for p in problems(table, intent)]
            if intent.drop_intra and bridgenf.read(fam) != "1":
                found.append(f"{fam}: net.bridge.{bridgenf.KEYS[fam]} is not 1, intra-bridge drops are ineffective")
        return found

