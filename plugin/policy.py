"""The pure policy layer: what isolation one bridge needs, independent of any backend.

A backend renders a BridgeIntent into its own rules; nothing here touches the host,
so every decision can be unit-tested and pinned in golden files.
"""

from dataclasses import dataclass

FAMILIES = ("ipv4", "ipv6")


@dataclass(frozen=True)
class BridgeIntent:
    """The isolation wanted for one bridge.

    isolate: traffic forwarded from this bridge into another isolated bridge is dropped
             (Docker's inter-network isolation; `same-bridge` and `isolated`).
    drop_intra: traffic between two ports of this bridge is dropped too (`isolated`);
             in iptables this needs bridge-nf-call-iptables/ip6tables = 1.
    port: the attachment's host-side port on the bridge (its veth), when prevResult names
             one; nftables drops intra-bridge traffic by port, as this kernel's bridge
             family may lack the bridge-name match.
    """

    bridge: str
    isolate: bool
    drop_intra: bool
    port: str | None = None

    @property
    def enforces_anything(self) -> bool:
        return self.isolate or self.drop_intra


def intent_for(bridge: str, ingress_policy: str, port: str | None = None) -> BridgeIntent:
    """Translate a network's ingressPolicy into the intent for one attachment to its bridge."""
    if ingress_policy == "open":
        return BridgeIntent(bridge, isolate=False, drop_intra=False, port=port)
    if ingress_policy == "same-bridge":
        return BridgeIntent(bridge, isolate=True, drop_intra=False, port=port)
    if ingress_policy == "isolated":
        return BridgeIntent(bridge, isolate=True, drop_intra=True, port=port)
    raise ValueError(f"unknown ingressPolicy {ingress_policy!r}")

