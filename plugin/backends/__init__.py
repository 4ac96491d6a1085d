"""Firewall backends: each renders BridgeIntents into its own rules and applies them atomically.

Every backend offers the same small surface:
  name                      shown to users ("iptables" or "nftables")
  unavailable_reason()      None when usable here, else why not
  ensure(intent)            make the host enforce `intent`; idempotent; raises CniError;
                            returns facts to keep in the registry for this backend
  release(release, facts)   remove what a departing attachment frees (policy.Release)
  verify(intent, same_bridge)
                            what is missing for `intent` to be enforced, given the other
                            attachments on its bridge (their Guards merge); empty: all good
  audit(intent, same_bridge, related)
                            CHECK's reading: (verify's findings, the grants the kernel holds
                            for the bridge beyond what `related` need: group peers, published
                            ports, guard exceptions); one read of the rules
  surplus(bridges, intents) per bridge, the grants beyond what `intents` need (status)
  revoke(intents)           remove every grant touching a bridge of `intents` (all registered
                            attachments on the backend) that none needs (reconcile, agent)
"""

from plugin.errors import BACKEND_UNAVAILABLE, CniError


def select(backend: str):
    """The backend for a configured `backend` value, checked to be usable here.

    `auto` prefers nftables (its drops are final whatever other tables accept, and its
    cost does not grow with the number of networks) and falls back to iptables.
    """
    reasons = []
    for name in (("nftables", "iptables") if backend == "auto" else (backend,)):
        chosen = make(name)
        reason = chosen.unavailable_reason()
        if reason is None:
            return chosen
        reasons.append(f"{name}: {reason}")
    raise CniError(BACKEND_UNAVAILABLE, f"backend {backend!r} is not usable here", "; ".join(reasons))


def make(name: str):
    """The backend called `name`, usable or not (teardown uses the one that applied the rules)."""
    if name == "nftables":
        from plugin.backends.nftables import NftablesBackend

        return NftablesBackend()
    from plugin.backends.iptables import IptablesBackend

    return IptablesBackend()
