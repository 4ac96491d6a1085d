"""`isolated` between the ports of a bridge: the kernel's bridge-port isolation flag.

A bridge never forwards a frame from one isolated port to another (IFLA_BRPORT_ISOLATED,
`bridge link set dev VETH isolated on`), whatever the frame is: any ethertype, 802.1Q
tagged with any VID, broadcast, multicast, flooded unicast. It is decided in the bridge's
own forwarding path, so it needs neither br_netfilter nor a firewall table, costs nothing
per packet, and survives `nft flush ruleset` or `iptables -F`. Both backends set it the
same way; their forward rules still drop what the host routes back into the bridge.

A bridge is isolated as a whole: while any attachment on it is `isolated`, the ports of
all its attachments carry the flag (two conflists naming one bridge get the stricter
policy, as the forward rule applies to the whole bridge). The flag goes with the port; a
port whose bridge no longer needs it (the last `isolated` attachment left a mixed bridge)
gets it cleared.
"""

from plugin.errors import ENFORCEMENT_FAILED, CniError
from plugin.links import port_isolated, set_port_isolated


def _isolated_bridges(intents) -> set[str]:
    """The isolated bridges among `intents` (a routed segment has no bridge ports: its forward rule drops)."""
    return {i.bridge for i in intents if i.drop_intra and not i.routed}


def ensure_flags(intent, related) -> None:
    """Flag the ports `intent` (an ADD) needs flagged: its own when its bridge is isolated
    (failing closed if that cannot be done), and, when it is the first `isolated` attachment
    of a mixed bridge, those of the bridge's other attachments (among `related`, the other
    attachments on its bridge or in its isolationGroup)."""
    if intent.routed:
        return
    same = [r for r in related if r.bridge == intent.bridge]
    if not (intent.drop_intra or any(r.drop_intra for r in same)):
        return
    if intent.port is None:
        raise CniError(ENFORCEMENT_FAILED, f"{intent.bridge} drops traffic between its ports (ingressPolicy 'isolated'), "
                       f"which needs the host-side port of every attachment to it, and prevResult names none")
    _set(intent.port, True)
    if intent.drop_intra and not all(r.drop_intra for r in same):
        for r in same:
            if r.port and r.port != intent.port and port_isolated(r.port) is False:
                _set(r.port, False)


def ensure_all_flags(intents, required=None) -> None:
    """Flag every port of every isolated bridge among `intents` that lacks the flag (a full
    re-application); failing closed only for the port of `required` (an ADD's own intent)."""
    intents = list(intents)
    bridges = _isolated_bridges(intents)
    for i in intents:
        if i.port and i.bridge in bridges and port_isolated(i.port) is False:
            _set(i.port, i is required)


def _set(port: str, required: bool) -> None:
    try:
        set_port_isolated(port, True)
    except OSError as exc:
        if required:
            raise CniError(ENFORCEMENT_FAILED, f"cannot set the bridge-port isolation flag on {port}",
                           f"{exc.strerror or exc}") from None


def flag_problems(intents) -> list[str]:
    """The ports of isolated bridges among `intents` that lack the flag (absent ports are no
    problem: nothing is plugged in there)."""
    bridges = _isolated_bridges(intents)
    found = []
    for port, bridge in sorted({(i.port, i.bridge) for i in intents if i.port and i.bridge in bridges}):
        if port_isolated(port) is False:
            found.append(f"port {port} of {bridge} lacks the bridge-port isolation flag")
    return found


def release_flags(r) -> None:
    """Clear the flag on the ports `r` (policy.Release) names; best effort (a port may be gone)."""
    for port in r.unflag:
        try:
            set_port_isolated(port, False)
        except OSError:
            pass
