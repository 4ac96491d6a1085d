"""What the admin CLI does: report the host's isolation, prune dead attachments, clean up.

Everything works on the network namespace the command runs in, under the HostLock,
from the registry and the kernel's actual rules.
"""

import os
import shutil
import subprocess

from plugin import bridgenf, reasons, topology
from plugin.backends import make
from plugin.backends.ports import flag_problems
from plugin.hoststate import HostLock, state_dir
from plugin.lifecycle import departed, detach
from plugin.policy import desired, intent_of
from plugin.registry import Registry
from plugin.tools import find

BACKENDS = ("nftables", "iptables")


def status() -> dict:
    """Backends, bridge-nf-call state, each registered bridge, and every inconsistency."""
    with HostLock():
        reg = Registry.load(state_dir())
        report = {
            "state": os.path.dirname(reg.path),
            "backends": {},
            "bridgeNfCall": {fam: bridgenf.read(fam) for fam in ("ipv4", "ipv6")},
            "bridges": [],
            "problems": [],
        }
        usable = {}
        for name in BACKENDS:
            backend = make(name)
            reason = backend.unavailable_reason()
            report["backends"][name] = {"usable": reason is None, "reason": reason}
            if reason is None:
                usable[name] = backend
        atts = reg.attachments  # decoded whole before asking: damage may hide in any line
        if reg.damaged:
            report["problems"].append(f"the attachment registry is damaged: {reg.damaged}; until `isolation "
                                      "reconcile` rebuilds it, teardown removes only what provably belongs to "
                                      "the departing attachment")
        report["damaged"] = reg.damaged
        try:
            links = topology.read()  # one rtnetlink dump (pyroute2) answers every question about links below
        except OSError as err:
            links = None
            report["problems"].append(f"the host's links cannot be read ({err}): bridges and ports are not checked")
        _, vanished = departed(atts.values(), links) if links is not None else ([], [])
        for att in vanished:
            report["problems"].append(f"{att.bridge}: attachment {att.network}/{att.container}/{att.ifname}: its "
                                      f"host-side interface {att.port} has vanished (`isolation prune` forgets it)")
        groups: dict[tuple[str, str], list] = {}
        for att in reg.attachments.values():
            groups.setdefault((att.bridge, att.backend), []).append(att)
        enforced = {name: b.enforced() for name, b in usable.items()}
        drops = {}  # backend -> bridge -> reason -> packets its isolation dropped
        surplus = {}  # backend -> bridge -> grants no registered attachment needs
        for name, backend in usable.items():
            drops[name] = backend.drops()
            report["backends"][name]["drops"] = sum(n for per in drops[name].values() for n in per.values())
            intents = [intent_of(a) for a in reg.on_backend(name)]
            surplus[name] = backend.surplus(desired(intents)) if intents else {}
        for (bridge, backend_name), atts in sorted(groups.items()):
            entry = {
                "bridge": bridge,
                "backend": backend_name,
                "policies": sorted({a.policy for a in atts}),
                "attachments": len(atts),
                "networks": sorted({a.network for a in atts}),
                "exists": _segment_exists(bridge, atts, links),  # None: unknown
                "drops": drops_by_reason(drops.get(backend_name), bridge, {a.port for a in atts if a.routed}),
                "problems": [],
            }
            if any(a.routed for a in atts):  # a routed segment: its members are its interfaces
                entry["routed"] = True
                entry["members"] = sorted({a.port for a in atts})
            if entry["exists"] is False:
                entry["problems"].append("the bridge no longer exists (`isolation prune` forgets it)")
            backend = usable.get(backend_name)
            if backend is None:
                entry["problems"].append(f"backend {backend_name} is not usable here")
            else:
                intents = [intent_of(a) for a in atts]  # one check covers the bridge's attachments
                entry["problems"] += backend.verify(desired(intents)) + flag_problems(intents)
                entry["problems"] += surplus.get(backend_name, {}).get(bridge, [])
            entry["problems"] = sorted(set(entry["problems"]))
            report["bridges"].append(entry)
            report["problems"] += [f"{bridge}: {p}" for p in entry["problems"]]
        in_use = sorted({n for (_, n) in groups})
        if len(in_use) > 1:
            report["problems"].append(
                f"networks use different backends ({', '.join(in_use)}): each isolates only its own bridges, "
                "so networks on different backends can reach each other; use one backend per host"
            )
        for name, bridges in enforced.items():
            registered = {b for (b, n) in groups if n == name}
            registered |= {a.port for a in reg.on_backend(name) if a.routed}  # in the sets as themselves
            for orphan in sorted(set(bridges) - registered):
                report["problems"].append(f"{orphan}: {name} rules with no registered attachment")
        return report


def _segment_exists(bridge: str, atts: list, links) -> bool | None:
    """Whether a bridge, or a routed segment (any of its members' interfaces), is there."""
    if links is None:
        return None
    if any(a.routed for a in atts):
        return any(a.port in links.interfaces for a in atts)
    return bridge in links.bridges


def drops_by_reason(counted: dict | None, bridge: str, members=()) -> dict[str, int | None]:
    """Every reason -> packets dropped for `bridge` (0: none counted; None: its backend is not
    usable here, so nothing can be counted). `members`: a routed segment's interfaces, whose
    counts are the segment's (iptables counts its per-member rules by member)."""
    per = dict((counted or {}).get(bridge, {}))
    for m in sorted(members):
        for r, n in (counted or {}).get(m, {}).items():
            per[r] = per.get(r, 0) + n
    return {r: (per.get(r, 0) if counted is not None else None) for r in reasons.REASONS}


def prune() -> tuple[int, list[str]]:
    """Forget attachments whose bridge or host-side port is gone, with the rules only they needed."""
    with HostLock():
        reg = Registry.load(state_dir())
        gone, vanished = departed(reg.attachments.values())
        errors = detach(reg, gone + vanished, strict=True)
        from plugin.config import prune as prune_configs

        prune_configs({a.network for a in reg.attachments.values()})
        return len(gone) + len(vanished), errors


def cleanup_commands(bridge: str | None) -> list[list[str]]:
    """The shell commands that remove what the plugin made: a bridge's rules and registry
    entries, or (bridge None) everything, state directory included."""
    reg = Registry.load(state_dir())
    cmds = []
    for name in BACKENDS:
        backend = make(name)
        if backend.unavailable_reason() is not None:
            continue
        ports = [a.port for a in reg.attachments.values() if a.bridge == bridge and a.port and a.backend == name]
        cmds += backend.cleanup_commands(bridge, reg.backends.get(name, {}), ports)
    # the bridge-port isolation flag: on every port of a bridge an `isolated` attachment is on
    isolating = {a.bridge for a in reg.attachments.values() if a.policy == "isolated"}
    flagged = {a.port for a in reg.attachments.values() if a.port and (bridge is None or a.bridge == bridge)
               and a.bridge in isolating and not a.routed}  # a routed member is no bridge port: no flag
    isolated = topology.read().isolated if flagged else frozenset()
    cmds += [["bridge", "link", "set", "dev", port, "isolated", "off"] for port in sorted(flagged & isolated)]
    if bridge is None:
        cmds.append(["rm", "-rf", "--", os.path.dirname(reg.path)])
    return cmds


def cleanup(bridge: str | None, dry_run: bool) -> tuple[list[list[str]], list[str]]:
    """Plan, and unless `dry_run` execute, the cleanup; returns (commands, errors)."""
    with HostLock():
        cmds = cleanup_commands(bridge)
        if dry_run:
            return cmds, []
        errors = [e for e in (_execute(c) for c in cmds) if e]
        if bridge is not None:
            reg = Registry.load(state_dir())
            for att in [a for a in reg.attachments.values() if a.bridge == bridge]:
                del reg.attachments[att.key]
            reg.save()
        return cmds, errors


def _execute(argv: list[str]) -> str | None:
    if argv[0] == "nft":  # through libnftables: the host may have no nft binary
        from plugin.backends.libnft import run_command

        return run_command(argv)
    if argv[:3] == ["bridge", "link", "set"]:  # over rtnetlink: the host may have no `bridge` tool
        try:
            topology.set_isolated(argv[4], argv[6] == "on")
            return None
        except OSError as exc:
            return f"{' '.join(argv)}: {exc}"
    if argv[0] == "rm":
        shutil.rmtree(argv[-1], ignore_errors=True)
        return None
    tool = find(argv[0])
    proc = subprocess.run([tool or argv[0], *argv[1:]], capture_output=True, text=True)
    return None if proc.returncode == 0 else f"{' '.join(argv)}: {proc.stderr.strip()}"


def _kernel_view(name: str, config, flags: frozenset, family: int, to_host: bool):
    """plugin.kernelview's View of backend `name`, or why the kernel cannot be read."""
    from plugin import kernelview
    from plugin.errors import CniError

    backend = make(name)
    reason = backend.unavailable_reason()
    if reason is not None:
        return f"backend {name} is not usable here: {reason}"
    try:
        if name == "nftables":
            return kernelview.NftablesView(backend, config, flags)
        return kernelview.IptablesView(backend, config, flags, family, to_host)
    except CniError as err:
        return f"the {name} rules cannot be read: {err.msg}" + (f" ({err.details})" if err.details else "")


def explain(requests: list[dict], check: bool) -> list[dict]:
    """`isolation explain`: one answer per request ({"from", "to", "proto", "port"}), from the
    registry and the pure policy layer (plugin.explain); `check` also reads the kernel's
    rules for the facts each answer depends on (plugin.kernelview) and reports where they
    differ. A request that cannot be explained gets {"error": why}."""
    from plugin import explain as ex, kernelview

    with HostLock():
        reg = Registry.load(state_dir())
        atts = list(reg.attachments.values())
        damaged = reg.damaged
    hosts, dnats = kernelview.host_addresses(), kernelview.published_ports()
    flags = topology.read().isolated if check else frozenset()
    views: dict[tuple, object] = {}
    answers = []
    for req in requests:
        try:
            source = ex.find_source(str(req.get("from", "")), atts)
            port = req.get("port")
            probe = ex.Probe(str(req.get("to", "")), str(req.get("proto") or "tcp"),
                             int(port) if port is not None else None)
            out, target, rec = ex.answer(source, probe, atts, hosts, dnats)
        except (ValueError, TypeError) as err:
            answers.append({"from": req.get("from"), "to": req.get("to"), "error": str(err)})
            continue
        if damaged:
            out["warning"] = f"the attachment registry is damaged ({damaged}): attachments may be missing"
        if check:
            key = (source.backend, probe.family, target.kind == ex.HOST)
            if key not in views:
                views[key] = _kernel_view(source.backend, rec.view, flags, probe.family, target.kind == ex.HOST)
            view = views[key]
            if isinstance(view, str):  # the kernel cannot be read: no agreement can be claimed
                out["check"] = {"agrees": False, "verdict": None, "reason": None, "differences": [view]}
                answers.append(out)
                continue
            view.config = rec.view  # the same attachments; its Guards tell which guard rules to look for
            dec, differ = ex.compare(rec, view, source, target, probe)
            trouble = (list(view.trouble) if rec.view.needs.enforces_anything else []) + differ
            out["check"] = {"agrees": not trouble and dec.verdict == out["verdict"], "verdict": dec.verdict,
                            "reason": dec.reason, "differences": trouble}
        answers.append(out)
    return answers
