"""`net.bridge.bridge-nf-call-ip(6)tables`: whether bridged frames traverse iptables.

Per network namespace on current kernels. The plugin needs it on neither backend (`isolated`
is the bridge-port isolation flag, see plugin/backends/ports.py) and never changes it;
`isolation status` reports it, as it decides whether other tools' iptables rules see
bridged traffic.
"""

import os


KEYS = {"ipv4": "bridge-nf-call-iptables", "ipv6": "bridge-nf-call-ip6tables"}
PROC_DIR = "/proc/sys/net/bridge"


def read(family: str) -> str | None:
    """'1', '0', or None when br_netfilter is not loaded."""
    try:
        with open(os.path.join(PROC_DIR, KEYS[family])) as f:
            return f.read().strip()
    except OSError:
        return None
