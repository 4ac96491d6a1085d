"""`net.bridge.bridge-nf-call-ip(6)tables`: whether bridged frames traverse iptables.

Per network namespace on current kernels. Dropping traffic between two ports of
one bridge with iptables only works when it is 1, so the plugin sets it, reads it
back, and fails closed when it will not stick.
"""

import os

from plugin.errors import ENFORCEMENT_FAILED, CniError
from plugin.tools import find, run_all

KEYS = {"ipv4": "bridge-nf-call-iptables", "ipv6": "bridge-nf-call-ip6tables"}
PROC_DIR = "/proc/sys/net/bridge"


def read(family: str) -> str | None:
    """'1', '0', or None when br_netfilter is not loaded."""
    try:
        with open(os.path.join(PROC_DIR, KEYS[family])) as f:
            return f.read().strip()
    except OSError:
        return None


def ensure_on(families: list[str]) -> None:
    """Turn bridge-nf-call on for `families` and verify it, or raise error 100."""
    if read(families[0]) is None:
        modprobe = find("modprobe")
        if modprobe:
            run_all([([modprobe, "br_netfilter"], None)])
    for family in families:
        path = os.path.join(PROC_DIR, KEYS[family])
        if read(family) != "1":
            try:
                with open(path, "w") as f:
                    f.write("1\n")
            except OSError as exc:
                raise CniError(
                    ENFORCEMENT_FAILED,
                    f"ingressPolicy 'isolated' needs net.bridge.{KEYS[family]}=1 and it cannot be set",
                    f"{path}: {exc.strerror}",
                ) from None
        if read(family) != "1":
            raise CniError(
                ENFORCEMENT_FAILED, f"ingressPolicy 'isolated' needs net.bridge.{KEYS[family]}=1 and it did not stick"
            )
