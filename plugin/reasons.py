"""Why a packet was dropped: the vocabulary shared by the rules, their counters, the drop
log, `isolation explain`, `status` and the metrics.

Every drop rule of either backend belongs to exactly one reason, and every reason names the
configuration key that decides it, so an operator who sees a drop knows which key to look
at. The drop log's prefix carries the reason and the bridge (a packet's input interface on
the inet side is the bridge, not the container's port), in a form short enough for
iptables' NFLOG prefix (64 bytes) and nftables' log prefix (127).
"""

CROSS_NETWORK = "cross-network"  # to another isolating bridge, not in the same isolationGroup
INTRA_BRIDGE = "intra-bridge"  # between two containers of one `isolated` bridge
EGRESS_DENY = "egress-deny"  # to a denyEgress range, no allowEgress entry matching
HOST_ACCESS = "host-access"  # to the host itself under hostAccess deny, not an allowHostPorts service
ANTI_SPOOFING = "anti-spoofing"  # from an address or MAC the container was not given
CROSS_TENANT = "cross-tenant"  # between containers of different per-container isolationGroups (tenants)
INTERNAL = "internal"  # into or out of an `internal` network (forwarded, not within its bridge)
DIRECT_ACCESS = "direct-access"  # into a directAccess deny network from an untrusted interface, unsolicited

REASONS = (CROSS_NETWORK, INTRA_BRIDGE, EGRESS_DENY, HOST_ACCESS, ANTI_SPOOFING, CROSS_TENANT, INTERNAL, DIRECT_ACCESS)

KEY = {  # the configuration key behind each reason
    CROSS_NETWORK: "ingressPolicy",
    INTRA_BRIDGE: "ingressPolicy",
    EGRESS_DENY: "denyEgress",
    HOST_ACCESS: "hostAccess",
    ANTI_SPOOFING: "antiSpoofing",
    CROSS_TENANT: "isolationGroup",
    INTERNAL: "internal",
    DIRECT_ACCESS: "directAccess",
}

# The NFLOG group the drop log goes to (networks with `logDrops: true`); one per host
# network namespace, read by `isolation drops` or by ulogd2/journald instead.
NFLOG_GROUP = 1907
_PREFIX = "isolation"


def log_prefix(reason: str, bridge: str) -> str:
    """The drop log's prefix for a drop of `reason` on `bridge` (at most 41 characters)."""
    if reason not in KEY:
        raise ValueError(f"unknown drop reason {reason!r}")
    return f"{_PREFIX} {reason} {bridge}"


def parse_prefix(prefix: str) -> tuple[str, str] | None:
    """(reason, bridge) from a drop log prefix, or None when the prefix is not ours."""
    parts = prefix.rstrip("\0 ").split(" ")
    if len(parts) != 3 or parts[0] != _PREFIX or parts[1] not in KEY or not parts[2]:
        return None
    return parts[1], parts[2]
