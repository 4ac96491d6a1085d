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
    """

    bridge: str
    isolate: bool
    drop_intra: bool

    @property
    def enforces_anything(self) -> bool:
        return self.isolate or self.drop_intra


def intent_for(bridge: str, ingress_policy: str) -> BridgeIntent:
    """Translate a network's ingressPolicy into the intent for its bridge."""
    if ingress_policy == "open":
        return BridgeIntent(bridge, isolate=False, drop_intra=False)
    if ingress_policy == "same-bridge":
        return BridgeIntent(bridge, isolate=True, drop_intra=False)
    if ingress_policy == "isolated":
        return BridgeIntent(bridge, isolate=True, drop_intra=True)
    raise ValueError(f"unknown ingressPolicy {ingress_policy!r}")
