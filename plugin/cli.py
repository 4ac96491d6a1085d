"""The admin command line: `isolation status|cleanup|prune`, in the same binary as the plugin."""

import argparse
import json
import shlex
import sys

EPILOG = {
    "status": """examples:
  isolation status                 what is isolated here, and anything inconsistent
  isolation status --json          the same, for scripts
  ip netns exec HOST isolation status   in another network namespace
exit status: 0 when consistent, 1 when problems were found""",
    "cleanup": """examples:
  isolation cleanup --dry-run            print the commands that remove everything (paste into sh)
  isolation cleanup                      remove every rule, chain, table and the registry
  isolation cleanup --bridge cni-podman1 remove that bridge's rules and attachments only""",
    "prune": """examples:
  isolation prune     forget containers whose bridge was deleted, or whose host-side interface vanished
                      (the runtime never sent DEL: `ctr run -d`, a killed runtime), and the rules
                      only they needed""",
    "reconcile": """examples:
  isolation reconcile   after a firewall reload: put back every registered network's isolation
                        after a crash or a half-failed teardown: remove rules nothing registered needs
                        after `status` reports a damaged registry: rebuild it from what can be proven""",
    "agent": """The agent serves the plugin's invocations over a root-only unix socket in
/run/isolation/ns-*/ (the plugin falls back to doing the work itself when no agent
answers) and restores isolation within a second after a firewall reload, `nft flush
ruleset` or `iptables -F`, and forgets bridges that were deleted. Run one per host
network namespace, e.g. from conf-examples/isolation-agent.service.
examples:
  isolation agent                          log to stderr (journald under systemd)
  isolation agent --log-file /var/log/isolation-agent.log""",
    "install": """Copies this bundle into each bin dir of a host root (BIN_DIR/.isolation-bundle/<version>/,
BIN_DIR/isolation a link swapped by rename; a file there that is not ours is never replaced)
and appends {"type": "isolation", ...} to the primary network configuration of CONF_DIR (the
first file in lexical order, as libcni picks it; a .conf becomes a .conflist). Made for a
Kubernetes DaemonSet (deploy/kubernetes/).
examples:
  isolation install --host-root /host
  isolation install --host-root /host --bin-dir /opt/cni/bin --bin-dir /usr/lib/cni \\
      --option ingressPolicy=isolated --option 'denyEgress=["169.254.169.254/32"]'
  isolation install --host-root /host --watch     keep the entry in when the main CNI rewrites it
  isolation install --host-root /host --uninstall""",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="isolation",
        description="Admin commands of the isolation CNI plugin (run by a runtime with CNI_COMMAND set, "
        "it is the plugin itself). They act on the network namespace they run in.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{status,cleanup,prune,reconcile,agent,install}")
    fmt = argparse.RawDescriptionHelpFormatter
    s = sub.add_parser("status", help="show backends, isolated bridges and inconsistencies",
                       epilog=EPILOG["status"], formatter_class=fmt)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    c = sub.add_parser("cleanup", help="remove everything the plugin created", epilog=EPILOG["cleanup"],
                       formatter_class=fmt)
    c.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    c.add_argument("--bridge", metavar="BR", help="only this bridge's rules and attachments")
    sub.add_parser("prune", help="forget attachments whose bridge or host-side interface no longer exists", epilog=EPILOG["prune"],
                   formatter_class=fmt)
    sub.add_parser("reconcile", help="restore every registered network's isolation where the kernel lacks it, "
                   "and remove rules no registered attachment needs",
                   epilog=EPILOG["reconcile"], formatter_class=fmt)
    a = sub.add_parser("agent", help="run the resident agent (warm engine, self-healing)", epilog=EPILOG["agent"],
                       formatter_class=fmt)
    a.add_argument("--log-file", metavar="PATH", help="also append the agent's log lines to PATH")
    i = sub.add_parser("install", help="install this bundle on a node and chain the plugin into its CNI config",
                       epilog=EPILOG["install"], formatter_class=fmt)
    i.add_argument("--host-root", default="/", metavar="DIR", help="where the node's / is mounted (default /)")
    i.add_argument("--bin-dir", action="append", metavar="DIR",
                   help="CNI bin dir on the node, repeatable (default /opt/cni/bin)")
    i.add_argument("--conf-dir", default="/etc/cni/net.d", metavar="DIR", help="CNI config dir on the node")
    i.add_argument("--options-file", metavar="PATH", help="JSON object: the options of the isolation entry")
    i.add_argument("--option", action="append", metavar="KEY=VALUE", help="one option (VALUE as JSON if it is)")
    i.add_argument("--skip-conf", action="store_true", help="only install the binary")
    i.add_argument("--watch", action="store_true", help="then re-insert the entry whenever it goes, until stopped")
    i.add_argument("--interval", type=float, default=2.0, metavar="S", help="--watch polling interval")
    i.add_argument("--uninstall", action="store_true", help="remove the entry, the links and the bundles")
    i.add_argument("--bundle", metavar="DIR", help=argparse.SUPPRESS)  # tests: install another bundle
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.command == "install":  # touches no firewall: none of the engine is imported
        from plugin import installer

        return installer.run(args)
    from plugin import admin
    from plugin.errors import CniError
    from plugin.links import require_name

    try:
        if args.command == "agent":
            from plugin.agent import serve

            return serve(args.log_file)
        if args.command == "reconcile":
            from plugin.hoststate import HostLock
            from plugin.lifecycle import reconcile

            with HostLock():
                done = reconcile()
            print("\n".join(done) if done else "nothing to do: the kernel holds what the registry says")
            return 0
        if args.command == "status":
            report = admin.status()
            sys.stdout.write(json.dumps(report, indent=1) + "\n" if args.json else render(report))
            return 1 if report["problems"] else 0
        if args.command == "prune":
            count, errors = admin.prune()
            print(f"pruned {count} attachment(s) whose bridge or host-side interface is gone")
            for e in errors:
                print(f"error: {e}", file=sys.stderr)
            return 1 if errors else 0
        bridge = require_name(args.bridge, "--bridge") if args.bridge is not None else None
        cmds, errors = admin.cleanup(bridge, args.dry_run)
        if args.dry_run:
            print("# commands that remove what the isolation plugin created here; review, then pipe into sh")
        for cmd in cmds:
            print(shlex.join(cmd) if args.dry_run else f"ran: {shlex.join(cmd)}")
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        return 1 if errors else 0
    except CniError as err:
        print(f"isolation: {err.msg}" + (f" ({err.details})" if err.details else ""), file=sys.stderr)
        return 1


def render(report: dict) -> str:
    lines = [f"state: {report['state']}"]
    for name, b in report["backends"].items():
        extra = f", {b['drops']} packets dropped" if "drops" in b else ""
        lines.append(f"backend {name}: " + ("usable" if b["usable"] else f"not usable ({b['reason']})") + extra)
    nf = report["bridgeNfCall"]
    lines.append(f"net.bridge.bridge-nf-call-iptables={nf['ipv4']} bridge-nf-call-ip6tables={nf['ipv6']}")
    lines.append("")
    lines.append(f"{'BRIDGE':<16}{'BACKEND':<10}{'POLICY':<22}{'ATTACHED':>8}{'DROPS':>10}  STATE")
    for b in report["bridges"]:
        counts = [n for n in b["drops"].values() if n is not None]
        drops = str(sum(counts)) if counts else "-"
        state = "ok" if not b["problems"] else "; ".join(b["problems"])
        lines.append(f"{b['bridge']:<16}{b['backend']:<10}{','.join(b['policies']):<22}{b['attachments']:>8}"
                     f"{drops:>10}  {state}")
        lines.append(f"  networks: {', '.join(b['networks'])}")
        lines.append("  drops: " + "  ".join(f"{r} {'-' if n is None else n}" for r, n in b["drops"].items()))
    if not report["bridges"]:
        lines.append("(no attachments registered)")
    lines.append("")
    lines += [f"problem: {p}" for p in report["problems"]] or ["no problems found"]
    return "\n".join(lines) + "\n"
