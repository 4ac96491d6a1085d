"""prevResult handling: finding the bridge in it, and re-emitting it in the conf's cniVersion."""

from plugin.errors import INVALID_CONFIG, NO_BRIDGE, CniError
from plugin.links import driver, is_bridge, require_name


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def require_prev_result(raw: dict) -> dict:
    prev = raw.get("prevResult")
    if prev is None:
        raise CniError(INVALID_CONFIG, "prevResult is missing: isolation must be chained after the bridge plugin")
    if not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult: must be a JSON object")
    return prev


def find_attachment(prev: dict) -> tuple[str, str | None]:
    """(bridge, host port) from prevResult: the host-side interface that is a Linux bridge in
    this network namespace, and the first other host-side interface that exists (the veth).

    Runtimes differ in what comes first (Podman passes bridge, host veth, eth0), so
    every host-side entry (one without `sandbox`) is checked, in order.
    """
    interfaces = prev.get("interfaces")
    if not isinstance(interfaces, list):
        raise CniError(INVALID_CONFIG, "prevResult.interfaces: must be a list (is the bridge plugin chained first?)")
    host_side = []
    for i, iface in enumerate(interfaces):
        if not isinstance(iface, dict):
            raise CniError(INVALID_CONFIG, f"prevResult.interfaces[{i}]: must be an object")
        if iface.get("sandbox"):
            continue
        host_side.append(require_name(iface.get("name"), f"prevResult.interfaces[{i}].name"))
    bridge = next((name for name in host_side if is_bridge(name)), None)
    if bridge is not None:
        port = next((name for name in host_side if name != bridge and driver(name) is not None), None)
        return bridge, port
    raise CniError(
        NO_BRIDGE,
        "prevResult names no Linux bridge on the host side",
        f"host-side interfaces: {', '.join(host_side) or 'none'}",
    )


def convert(prev: dict, cni_version: str) -> dict:
    """prevResult in the shape of `cni_version`: 0.3.x/0.4.0 carry ips[].version, 1.x do not."""
    out = dict(prev)
    out["cniVersion"] = cni_version
    ips = prev.get("ips")
    if isinstance(ips, list):
        legacy = version_tuple(cni_version) < (1, 0, 0)
        converted = []
        for ip in ips:
            if isinstance(ip, dict):
                ip = dict(ip)
                if legacy:
                    ip.setdefault("version", "6" if ":" in str(ip.get("address", "")) else "4")
                else:
                    ip.pop("version", None)
            converted.append(ip)
        out["ips"] = converted
    return out
