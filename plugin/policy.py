"""The pure policy layer: what isolation one bridge needs, independent of any backend.

A backend renders a BridgeIntent into its own rules; nothing here touches the host,
so every decision can be unit-tested and pinned in golden files.
"""

from dataclasses import dataclass


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
    published: traffic DNAT'd into this bridge from another one (a published port, e.g. by
             portmap) passes the inter-bridge drop: another network reaches HOST_IP:PORT
             while the containers' own addresses stay unreachable (allowPublishedPorts).
             Within an `isolated` bridge nothing passes, published or not.
    """

    bridge: str
    isolate: bool
    drop_intra: bool
    port: str | None = None
    published: bool = False
    group: str | None = None  # isolationGroup: isolated bridges of one group reach each other

    @property
    def enforces_anything(self) -> bool:
        return self.isolate or self.drop_intra


def intent_for(bridge: str, ingress_policy: str, port: str | None = None, published: bool = True,
               group: str | None = None) -> BridgeIntent:
    """Translate a network's ingressPolicy, allowPublishedPorts and isolationGroup into the
    intent for one attachment to its bridge."""
    if ingress_policy not in ("open", "same-bridge", "isolated"):
        raise ValueError(f"unknown ingressPolicy {ingress_policy!r}")
    isolate = ingress_policy != "open"
    return BridgeIntent(bridge, isolate, ingress_policy == "isolated", port, published and isolate,
                        group if isolate else None)


def intent_of(att) -> BridgeIntent:
    """The intent a registered Attachment stands for."""
    return intent_for(att.bridge, att.policy, att.port, att.published, att.group)


def peers(intents) -> dict[str, set[str]]:
    """For each isolating bridge, the other bridges of its isolationGroup (it may reach them)."""
    members: dict[str, set[str]] = {}
    for i in intents:
        if i.isolate and i.group:
            members.setdefault(i.group, set()).add(i.bridge)
    found: dict[str, set[str]] = {}
    for bridges in members.values():
        for b in bridges:
            if len(bridges) > 1:
                found.setdefault(b, set()).update(bridges - {b})
    return found


@dataclass(frozen=True)
class Release:
    """What one departing attachment takes with it, on the backend that enforced it.

    isolate / drop_intra / published: no remaining attachment of the bridge needs them.
    port: this attachment's port leaves the per-port intra-bridge drop (nftables).
    last_intra: no remaining attachment on the backend needs intra-bridge drops at all.
    last: no remaining attachment on the backend enforces anything: every trace goes.
    """

    bridge: str
    isolate: bool
    drop_intra: bool
    port: str | None
    last_intra: bool
    last: bool
    published: bool = False


def release(departing, remaining: list) -> Release:
    """The Release for `departing` (an Attachment) given the attachments still on its backend."""
    gone = intent_of(departing)
    left = [intent_of(a) for a in remaining]
    same_bridge = [i for i in left if i.bridge == gone.bridge]
    return Release(
        bridge=gone.bridge,
        isolate=gone.isolate and not any(i.isolate for i in same_bridge),
        drop_intra=gone.drop_intra and not any(i.drop_intra for i in same_bridge),
        port=gone.port if gone.drop_intra and gone.port not in {i.port for i in left if i.drop_intra} else None,
        last_intra=not any(i.drop_intra for i in left),
        last=not any(i.enforces_anything for i in left),
        published=gone.published and not any(i.published for i in same_bridge),
    )
