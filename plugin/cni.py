"""The CNI protocol layer: environment, stdin, verbs, results and error JSON.

Heavy modules (the pydantic model, the backends) are imported inside the verbs
that need them, so VERSION and a plain DEL stay cheap.
"""

import time

from plugin import MAX_STDIN, SUPPORTED_VERSIONS, trace, version_result
from plugin import jsonio as json  # json's C accelerator alone: no re, enum (plugin.jsonio)
from plugin.errors import (
    CHECK_FAILED,
    DECODE_FAILURE,
    ENFORCEMENT_FAILED,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    NOT_AVAILABLE,
    TRY_AGAIN_LATER,
    CniError,
)
from plugin.result import (container_addresses, container_mac, convert, find_attachment, require_prev_result,
                           version_tuple)

LATEST = SUPPORTED_VERSIONS[-1]

# Which CNI_* variables each verb needs (as libcni's skel requires them).
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
}
MIN_VERSION = {"CHECK": (0, 4, 0), "GC": (1, 1, 0), "STATUS": (1, 1, 0)}
MAX_DEPTH = 64  # runtimes nest 5 levels deep; deeper input would only reach recursion limits later


def depth_exceeds(value, limit: int = MAX_DEPTH) -> bool:
    """Whether decoded JSON nests deeper than `limit` (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            if level > limit:
                return True
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


class Invocation:
    """One plugin run: the verb, its environment and its decoded configuration."""

    def __init__(self, env: dict, stdin: bytes, deadline: float | None = None):
        self.command = env.get("CNI_COMMAND", "")
        self.deadline = deadline  # set by the agent: when its client stops waiting (hoststate.HostLock)
        self.env = env
        self.stdin = stdin
        self.cni_version = LATEST  # until the configuration tells otherwise
        self.raw: dict = {}
        self.log_file: str | None = None  # logFile and logLevel, once the configuration is validated
        self.log_level: str | None = None
        self.notes: dict = {}  # what the log line reports: bridge, backend, ...

    def decode(self) -> None:
        if len(self.stdin) > MAX_STDIN:
            raise CniError(DECODE_FAILURE, f"the network configuration is larger than {MAX_STDIN} bytes")
        try:
            raw = json.loads(self.stdin)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CniError(DECODE_FAILURE, f"cannot decode the network configuration: {exc}") from None
        except RecursionError:
            raw = depth_exceeds  # a marker: too deep for the decoder itself
        if raw is depth_exceeds or depth_exceeds(raw):
            raise CniError(DECODE_FAILURE, f"the network configuration nests deeper than {MAX_DEPTH} levels")
        if not isinstance(raw, dict):
            raise CniError(DECODE_FAILURE, "the network configuration must be a JSON object")
        version = raw.get("cniVersion")
        if version is None:
            raise CniError(INCOMPATIBLE_VERSION, "the network configuration has no cniVersion",
                           f"set cniVersion to one of: {', '.join(SUPPORTED_VERSIONS)}")
        if version not in SUPPORTED_VERSIONS:
            raise CniError(
                INCOMPATIBLE_VERSION,
                f"cniVersion {version!r} is not supported",
                f"supported: {', '.join(SUPPORTED_VERSIONS)}",
            )
        self.cni_version = version
        self.raw = raw

    @property
    def network(self) -> str:
        name = self.raw.get("name", "")
        return name if isinstance(name, str) else ""

    @property
    def key(self) -> tuple[str, str, str]:
        from plugin.registry import attachment_key

        return attachment_key(self.network, self.env.get("CNI_CONTAINERID", ""), self.env.get("CNI_IFNAME", ""))

    def check_env(self) -> None:
        missing = [k for k in REQUIRED_ENV[self.command] if not self.env.get(k)]
        if missing:
            raise CniError(INVALID_ENVIRONMENT, f"{self.command} needs {', '.join(missing)} in the environment")
        needed = MIN_VERSION.get(self.command)
        if needed and version_tuple(self.cni_version) < needed:
            raise CniError(
                INCOMPATIBLE_VERSION,
                f"{self.command} is not defined for cniVersion {self.cni_version}",
                f"needs cniVersion >= {'.'.join(map(str, needed))}",
            )


def run(env: dict, stdin: bytes, deadline: float | None = None) -> tuple[dict | None, int]:
    """Execute one CNI invocation; returns (JSON to print or None, exit code). `deadline`: see
    hoststate.HostLock (the agent passes its client's)."""
    inv = Invocation(env, stdin, deadline)
    if inv.command == "VERSION":
        return version_result(), 0
    started = time.monotonic()
    outcome = {"result": "ok"}
    try:
        if inv.command not in VERBS:
            raise CniError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND {inv.command!r}")
        inv.decode()
        inv.check_env()
        trace.stamp("decoded")
        return VERBS[inv.command](inv), 0
    except CniError as err:
        outcome = {"result": "error", "code": err.code, "msg": err.msg}
        return err.as_dict(inv.cni_version), 1
    finally:
        from plugin import log

        if inv.log_file is None and inv.log_level is None:  # the configuration never validated
            inv.log_file, inv.log_level = log.from_raw(inv.raw)
        fields = {"container": env.get("CNI_CONTAINERID"), "network": inv.raw.get("name"), **inv.notes, **outcome}
        log.record(*log.destination(env, inv.log_file, inv.log_level), inv.command, fields, started)


def _engine(inv: Invocation):
    """The validated configuration, the usable backend and the intent for this attachment."""
    from plugin import config
    from plugin.backends import select
    from plugin.policy import Spoof, anti_spoofing, guard_for, intent_for, plain_addresses

    conf = config.load(inv.raw)
    trace.stamp("config")
    inv.log_file, inv.log_level = conf.logFile, conf.logLevel
    prev = require_prev_result(inv.raw)
    bridge, port, routed = _segment(prev, inv.network)
    inv.notes["bridge"] = bridge
    from plugin.tenant import container_group

    tenant = container_group(inv.raw, inv.env)
    if tenant is not None and getattr(conf, "antiSpoofing", None) is False:
        raise CniError(INVALID_CONFIG, "a per-container isolationGroup needs antiSpoofing (tenants are told apart "
                       "by port, their addresses must be theirs): remove antiSpoofing: false")
    spoof = None
    if routed and (getattr(conf, "antiSpoofing", None) or tenant is not None):
        # a routed member is no bridge port: the bridge-family rules (anti-spoofing, tenants) never see it
        raise CniError(INVALID_CONFIG, "antiSpoofing, and a per-container isolationGroup (which needs it), are not "
                       "available on routed networks (no bridge): set antiSpoofing to false, pass no ISOLATION_GROUP")
    if not routed and (tenant is not None or anti_spoofing(getattr(conf, "antiSpoofing", None), conf.ingressPolicy)):
        mac, ips = container_addresses(prev, inv.env.get("CNI_IFNAME", ""))
        if port is None or mac is None:
            raise CniError(INVALID_CONFIG, "antiSpoofing needs prevResult to name the host-side veth and the "
                           "container interface's mac (set antiSpoofing to false to run without it)")
        spoof = Spoof(port, mac, ips)
    from plugin.hoststate import state_dir

    backend = select(conf.backend, state_dir())
    trace.stamp("backend")
    inv.notes["backend"] = backend.name
    intent = intent_for(bridge, conf.ingressPolicy, port, conf.allowPublishedPorts, conf.isolationGroup,
                        guard_for(conf), spoof, getattr(conf, "logDrops", False),
                        container_mac(prev, inv.env.get("CNI_IFNAME", "")) if port and not routed else None,
                        routed=routed, tenant=tenant, addresses=plain_addresses(_addresses(prev)))
    return prev, backend, intent, conf


def _addresses(prev: dict) -> tuple[str, ...]:
    """prevResult's ips[].address values, as the registry records them. One that is no IP
    address is error 7 (tenancy would not know the container by it: fail closed)."""
    from plugin.result import canonical_ip

    ips = prev.get("ips") if isinstance(prev.get("ips"), list) else []
    found = tuple(str(ip.get("address")) for ip in ips if isinstance(ip, dict) and ip.get("address"))
    for n, value in enumerate(found):
        if canonical_ip(value) is None:
            raise CniError(INVALID_CONFIG, f"prevResult.ips[{n}].address: {value!r} is not an IP address")
    return found


def _segment(prev: dict, network: str) -> tuple[str, str | None, bool]:
    """(bridge or routed segment, host-side port, whether routed): a bridge in prevResult, else
    the routed segment named by the CNI network, whose member is the one host-side interface."""
    from plugin.errors import NO_BRIDGE
    from plugin.result import find_routed_port

    try:
        return (*find_attachment(prev), False)
    except CniError as err:
        if err.code != NO_BRIDGE:
            raise
        port = find_routed_port(prev)
        if port is None:
            raise
    from plugin.policy import segment_of

    return segment_of(network), port, True


def cmd_add(inv: Invocation) -> dict:
    from plugin.hoststate import HostLock
    from plugin.lifecycle import attach
    from plugin.registry import Attachment

    prev, backend, intent, conf = _engine(inv)
    addresses = _addresses(prev)
    from plugin.links import ifindex

    attachment = Attachment(inv.network, inv.env["CNI_CONTAINERID"], inv.env["CNI_IFNAME"], intent.bridge,
                            intent.port, conf.ingressPolicy, backend.name, addresses, conf.allowPublishedPorts,
                            conf.isolationGroup, intent.guard.to_json(),
                            portindex=ifindex(intent.port) if intent.port else None,
                            mac=intent.mac,
                            spoof=intent.spoof.ips if intent.spoof else None, logdrops=intent.log,
                            routed=intent.routed, tenant=intent.tenant)
    with HostLock(deadline=inv.deadline):
        attach(backend, intent, attachment)
    return convert(prev, inv.cni_version)


def cmd_check(inv: Invocation) -> None:
    from plugin.backends.ports import flag_problems
    from plugin.hoststate import HostLock, state_dir
    from plugin.policy import desired, intent_of
    from plugin.registry import Registry

    _, backend, intent, _ = _engine(inv)
    with HostLock(deadline=inv.deadline):  # never look at a half-finished ADD (one transaction per family on iptables)
        reg = Registry.load(state_dir())
        if intent.tenant or reg.tenanted():  # a tenant group's elements and passes span every bridge of it
            related = {a.key: a for a in reg.on_backend(backend.name)}
            neighbours = [intent_of(a) for a in related.values() if a.key != inv.key]
        else:  # what may grant this bridge anything: its attachments and the members of their groups
            on_bridge = reg.on_bridge(intent.bridge, backend.name)
            neighbours = [intent_of(a) for a in on_bridge if a.key != inv.key]
            related = {a.key: a for a in on_bridge}
            for group in sorted({a.group for a in on_bridge if a.group}):
                related |= {a.key: a for a in reg.matching(intent.bridge, group) if a.backend == backend.name}
        found, extra = backend.audit(desired([intent, *neighbours]), desired(intent_of(a) for a in related.values()))
        found += flag_problems([intent, *neighbours])
        if reg.get(inv.key) is None:
            found.append(f"attachment {inv.network}/{inv.env['CNI_CONTAINERID']}/{inv.env['CNI_IFNAME']} "
                         "is not registered (no successful ADD)")
    if found or extra:
        what = [f"isolation of bridge {intent.bridge} is not in place"] if found else []
        what += [f"the kernel grants bridge {intent.bridge} more than its registered attachments need"] if extra else []
        raise CniError(CHECK_FAILED, ", and ".join(what), "; ".join(found + extra))
    return None


def cmd_del(inv: Invocation) -> None:
    """Best effort by specification: needs neither prevResult nor netns, and may repeat.

    The registry says what this attachment was; its bridge's rules go with the last
    attachment on it. An invalid configuration does not fail DEL (ADD rejected it, so
    it applied nothing), and neither does a teardown failure: the attachment is
    forgotten either way, and what could not be removed is logged. When the host-wide
    lock cannot be had in time, the DEL is recorded and carried out by the next run
    that holds it (any ADD, DEL, GC, `isolation reconcile`, or the agent).
    """
    from plugin import config
    from plugin.hoststate import Abandoned, HostLock, state_dir
    from plugin.lifecycle import detach, settle_deferred
    from plugin.registry import Registry, defer_delete

    # DEL needs the configuration for its log line only: without logFile or logLevel in it,
    # the model can only answer None for both, so there is nothing to validate or read
    if "logFile" in inv.raw or "logLevel" in inv.raw:
        try:
            conf = config.load(inv.raw)
            inv.log_file, inv.log_level = conf.logFile, conf.logLevel
        except CniError:
            pass
    try:
        lock = HostLock(deadline=inv.deadline).__enter__()
    except CniError as err:
        if err.code != TRY_AGAIN_LATER or isinstance(err, Abandoned):  # an abandoned DEL is its client's
            raise
        defer_delete(state_dir(), inv.key)  # never fail DEL: the next locked run does it
        inv.notes["deferred"] = err.msg
        return None
    try:
        reg = Registry.load(state_dir())
        errors = settle_deferred(reg)
        att = reg.attachments.get(inv.key)
        if att is not None:
            inv.notes |= {"bridge": att.bridge, "backend": att.backend}
            errors += detach(reg, [att])
            config.prune({a.network for a in reg.attachments.values()})
        if errors:
            inv.notes["teardown"] = "; ".join(errors)
    finally:
        lock.__exit__(None, None, None)
    return None


def cmd_gc(inv: Invocation) -> None:
    """Forget this network's attachments the runtime no longer lists, and every attachment
    whose bridge is gone (a network removed behind our back), with their rules."""
    from plugin.hoststate import HostLock, state_dir
    from plugin.lifecycle import detach, settle_deferred
    from plugin.links import is_bridge
    from plugin.registry import Registry

    field = "cni.dev/valid-attachments"
    valid = inv.raw.get(field, [])
    if not isinstance(valid, list) or not all(
        isinstance(v, dict) and isinstance(v.get("containerID"), str) and isinstance(v.get("ifname"), str)
        for v in valid
    ):
        raise CniError(INVALID_CONFIG, f"{field}: must be a list of {{containerID, ifname}} objects")
    keep = {(v["containerID"], v["ifname"]) for v in valid}
    with HostLock(deadline=inv.deadline):
        reg = Registry.load(state_dir())
        deferred_errors = settle_deferred(reg)
        atts = list(reg.attachments.values())
        stale = [a for a in atts if a.network == inv.network and (a.container, a.ifname) not in keep]
        orphaned = [a for a in atts if a not in stale and not (_port_alive(a) if a.routed else is_bridge(a.bridge))]
        errors = deferred_errors + detach(reg, stale + orphaned)
        from plugin.config import prune

        prune({a.network for a in reg.attachments.values()})
    inv.notes["collected"] = len(stale) + len(orphaned)
    if errors:
        raise CniError(ENFORCEMENT_FAILED, "GC could not remove every stale attachment's rules", "; ".join(errors))
    return None


def _port_alive(att) -> bool:
    """Whether a routed attachment's interface is still the one its ADD saw."""
    from plugin.links import ifindex

    index = ifindex(att.port)
    return index is not None and att.portindex in (None, index)


def cmd_status(inv: Invocation) -> None:
    from plugin import config
    from plugin.backends import select

    conf = config.load(inv.raw)
    inv.log_file, inv.log_level = conf.logFile, conf.logLevel
    try:
        from plugin.hoststate import state_dir

        inv.notes["backend"] = select(conf.backend, state_dir()).name
    except CniError as err:
        raise CniError(NOT_AVAILABLE, err.msg, err.details) from None
    return None


VERBS = {"ADD": cmd_add, "CHECK": cmd_check, "DEL": cmd_del, "GC": cmd_gc, "STATUS": cmd_status}
