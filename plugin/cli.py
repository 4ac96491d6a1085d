"""The admin command line: `isolation status|explain|cleanup|prune`, in the same binary as the plugin."""

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
    "drops": """Each blocked attempt of a network with `logDrops: true` (first packet per flow, rate-limited
per bridge, sent to NFLOG group 1907): time, reason, the sending container (network, container
ID, interface; "unknown" when no registered container sent it: a spoofed source, or an
interface the plugin did not attach), source, destination, protocol and port, and the
configuration key behind the drop. The agent, when it runs, records the last 1000 drops.
  isolation drops                      the drops the agent recorded, then exit
  isolation drops --follow             new drops as they come (from the agent's record, or from
                                       the NFLOG group itself when no agent runs here), until Ctrl-C
  isolation drops --follow --json      one JSON object per line
  isolation drops --follow --count 5 --timeout 30   stop after 5 drops or 30 s
Only one listener per NFLOG group and network namespace: with ulogd2 on group 1907, run the
agent with ISOLATION_AGENT_DROP_LOG=off and read ulogd2's output instead.""",
    "explain": """Answers from the registered attachments' configuration (README, "How the keys
combine"), for one new flow from the container's own address. SRC: a container ID (a
unique prefix will do), its host-side interface, or its address. DST: an address: another
container, the host itself (any of its addresses), a port published there by portmap
(the DNAT it leads to is read from the nat table), or anything else.
--check also reads the kernel's rules and elements for every fact the answer depends on
and names each one the kernel holds otherwise, with the verdict the kernel's rules give.
--batch FILE ('-' for stdin): one JSON object per line, {"from", "to", "proto", "port"};
one JSON answer per line, in order.
examples:
  isolation explain --from 3f2a --to 10.88.1.5 --proto tcp --port 80
  isolation explain --from veth1a2b3c --to 10.0.0.1 --proto icmp --check
  isolation explain --batch probes.jsonl --check
exit status: 0 answered (with --check: and the kernel agrees everywhere); 1 with --check,
when the kernel disagrees for some probe; 2 when a probe cannot be explained""",
    "agent": """The agent serves the plugin's invocations over a root-only unix socket in
/run/isolation/ns-*/ (the plugin falls back to doing the work itself when no agent
answers) and restores isolation within a second after a firewall reload, `nft flush
ruleset` or `iptables -F`, and forgets bridges that were deleted. Run one per host
network namespace, e.g. from conf-examples/isolation-agent.service.
examples:
  isolation agent                          log to stderr (journald under systemd)
  isolation agent --log-file /var/log/isolation-agent.log""",
    "metrics": """Prometheus text format (for node exporter's textfile collector). The drop counters
and attachments are read now from the kernel and the registry; the agent's own series
(requests served, their latency, repairs, backend errors) are copied from the file the
agent keeps, /run/isolation/ns-*/metrics.prom (mode 0600), while it was written within
the last minute, and otherwise omitted with a comment saying why.
examples:
  isolation metrics                 print them
  isolation metrics --path          where the agent writes its file (to link it into
                                    node exporter's --collector.textfile.directory)
exit status: 0, or 1 when some backend's drop counters could not be read""",
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
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{status,explain,drops,metrics,cleanup,prune,reconcile,agent,install}")
    fmt = argparse.RawDescriptionHelpFormatter
    s = sub.add_parser("status", help="show backends, isolated bridges and inconsistencies",
                       epilog=EPILOG["status"], formatter_class=fmt)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    d = sub.add_parser("drops", help="show blocked attempts: who, to what, why (networks with logDrops)",
                       epilog=EPILOG["drops"], formatter_class=fmt)
    d.add_argument("--follow", action="store_true", help="print new drops as they come, until interrupted")
    d.add_argument("--json", action="store_true", help="one JSON object per line")
    d.add_argument("--count", type=_positive_int, metavar="N", help="stop after N lines (without --follow: the "
                   "last N recorded)")
    d.add_argument("--timeout", type=_seconds, metavar="S", help="with --follow: stop after S seconds")
    m = sub.add_parser("metrics", help="print Prometheus metrics: drops per bridge and reason, attachments, "
                       "and the agent's counters", epilog=EPILOG["metrics"], formatter_class=fmt)
    m.add_argument("--path", action="store_true", help="print the path of the agent's metrics file instead")
    c = sub.add_parser("cleanup", help="remove everything the plugin created", epilog=EPILOG["cleanup"],
                       formatter_class=fmt)
    c.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    c.add_argument("--bridge", metavar="BR", help="only this bridge's rules and attachments")
    sub.add_parser("prune", help="forget attachments whose bridge or host-side interface no longer exists", epilog=EPILOG["prune"],
                   formatter_class=fmt)
    sub.add_parser("reconcile", help="restore every registered network's isolation where the kernel lacks it, "
                   "and remove rules no registered attachment needs",
                   epilog=EPILOG["reconcile"], formatter_class=fmt)
    e = sub.add_parser("explain", help="would a packet from a container pass, and why", epilog=EPILOG["explain"],
                       formatter_class=fmt)
    e.add_argument("--from", dest="source", metavar="SRC", help="container ID (prefix), host-side interface or address")
    e.add_argument("--to", dest="dest", metavar="DST", help="destination address")
    e.add_argument("--proto", choices=("tcp", "udp", "icmp"), default="tcp")
    e.add_argument("--port", type=int, metavar="N", help="destination port (tcp, udp)")
    e.add_argument("--check", action="store_true", help="also compare with the kernel's actual rules")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.add_argument("--batch", metavar="FILE", help="JSON lines of probes ('-': stdin); JSON lines out")
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    """A finite, non-negative number of seconds (nan or inf would reach a socket's timeout)."""
    value = float(text)
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError("must be a number of seconds, at least 0")
    return value


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
        if args.command == "drops":
            from plugin import droplog

            return droplog.run(args.follow, args.json, args.count, args.timeout)
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
        if args.command == "explain":
            return explain(args)
        if args.command == "metrics":
            from plugin import metrics

            if args.path:
                print(metrics.agent_file())
                return 0
            text, complete = metrics.command_output()
            sys.stdout.write(text)
            return 0 if complete else 1
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


def explain(args) -> int:
    """`isolation explain`: one probe from the options, or --batch's JSON lines."""
    from plugin import admin
    from plugin.explain import render as render_answer

    if args.batch:
        with (sys.stdin if args.batch == "-" else open(args.batch)) as f:
            try:
                requests = [json.loads(line) for line in f if line.strip()]
            except ValueError as err:
                print(f"isolation: --batch: not JSON lines: {err}", file=sys.stderr)
                return 2
        if not all(isinstance(r, dict) for r in requests):
            print("isolation: --batch: each line must be a JSON object", file=sys.stderr)
            return 2
    elif args.source is None or args.dest is None:
        print("isolation: explain needs --from and --to (or --batch)", file=sys.stderr)
        return 2
    else:
        requests = [{"from": args.source, "to": args.dest, "proto": args.proto, "port": args.port}]
    answers = admin.explain(requests, args.check)
    for out in answers:
        if args.batch:
            sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
        elif args.json:
            sys.stdout.write(json.dumps(out, indent=1, sort_keys=True) + "\n")
        elif "error" in out:
            print(f"isolation: {out['error']}", file=sys.stderr)
        else:
            sys.stdout.write(render_answer(out))
    if any("error" in out for out in answers):
        return 2
    return 1 if any(not out["check"]["agrees"] for out in answers if "check" in out) else 0


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
        if b.get("routed"):  # no bridge: the members' host-side interfaces stand for it
            lines.append(f"  routed, members: {', '.join(b['members'])}")
        lines.append("  drops: " + "  ".join(f"{r} {'-' if n is None else n}" for r, n in b["drops"].items()))
    if not report["bridges"]:
        lines.append("(no attachments registered)")
    lines.append("")
    lines += [f"problem: {p}" for p in report["problems"]] or ["no problems found"]
    return "\n".join(lines) + "\n"
