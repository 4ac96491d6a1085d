"""Firewall backends: each renders BridgeIntents into its own rules and applies them atomically.

Every backend offers the same small surface:
  name                      shown to users ("iptables", later "nftables")
  unavailable_reason()      None when usable here, else why not
  ensure(intent)            make the host enforce `intent`; idempotent; raises CniError
  verify(intent)            what is missing for `intent` to be enforced (empty list: all good)
"""

from plugin.errors import BACKEND_UNAVAILABLE, CniError


def select(backend: str):
    """The backend object for a configured `backend` value, checked to be usable here."""
    # Until the nftables backend lands, `auto` means iptables.
    from plugin.backends.iptables import IptablesBackend

    chosen = IptablesBackend()
    reason = chosen.unavailable_reason()
    if reason:
        raise CniError(BACKEND_UNAVAILABLE, f"backend {chosen.name!r} is not usable: {reason}")
    return chosen
