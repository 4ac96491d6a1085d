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


def find_routed_port(prev: dict) -> str | None:
    """The host-side interface of a routed attachment (the `ptp` plugin's veth, a tap device):
    when prevResult names no bridge, exactly one host-side interface that exists on the host.
    None when there is not exactly one (then isolation cannot tell what to enforce)."""
    interfaces = prev.get("interfaces") if isinstance(prev.get("interfaces"), list) else []
    host_side = {require_name(iface.get("name"), "prevResult.interfaces") for iface in interfaces
                 if isinstance(iface, dict) and not iface.get("sandbox")}
    if len(host_side) != 1:  # none, or several (a bridge that vanished beside its veth): not a routed attachment
        return None
    port = host_side.pop()
    if driver(port) is None or is_bridge(port) or _bridge_port(port):
        return None  # absent, a bridge, or a bridge's port (its bridge missing from prevResult): no routed attachment
    return port


def _bridge_port(name: str) -> bool:
    """Whether `name` is plugged into a bridge (sysfs shows its brport directory): then the
    bridge, not a routed segment, is what isolates it, and a prevResult without that bridge
    is an error, never a routed network."""
    import os

    return os.path.isdir(f"/sys/class/net/{name}/brport")


_MAC_DIGITS = frozenset("0123456789abcdef")


def _mac(value: object) -> str | None:
    """A MAC address in canonical form (lower case, colons), or None if `value` is not one."""
    if not isinstance(value, str):
        return None
    parts = value.lower().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and set(p) <= _MAC_DIGITS for p in parts):
        return None
    return ":".join(parts)


def canonical_ip(value: str) -> str | None:
    """An address (prefix dropped) in canonical form, or None if it is not one."""
    import _socket

    addr = value.split("/", 1)[0]
    family = _socket.AF_INET6 if ":" in addr else _socket.AF_INET
    try:
        return _socket.inet_ntop(family, _socket.inet_pton(family, addr))
    except (OSError, ValueError):
        return None


def container_mac(prev: dict, ifname: str) -> str | None:
    """The MAC prevResult gave the container interface `ifname`, or None."""
    interfaces = prev.get("interfaces") if isinstance(prev.get("interfaces"), list) else []
    index = _sandbox_index(interfaces, ifname)
    return _mac(interfaces[index].get("mac")) if index is not None else None


def _sandbox_index(interfaces: list, ifname: str) -> int | None:
    """Which of prevResult's interfaces is the container's `ifname` (the one with a sandbox)."""
    index = None
    for i, iface in enumerate(interfaces):
        if isinstance(iface, dict) and iface.get("sandbox") and (index is None or iface.get("name") == ifname):
            index = i
    return index


def container_addresses(prev: dict, ifname: str) -> tuple[str | None, tuple[str, ...]]:
    """(MAC, addresses) prevResult gave the container interface `ifname` (the one with a
    `sandbox`): what anti-spoofing lets it send from. Addresses are canonical, without
    prefix; those of ips[] that name another interface are left out."""
    interfaces = prev.get("interfaces") if isinstance(prev.get("interfaces"), list) else []
    index = _sandbox_index(interfaces, ifname)
    mac = _mac(interfaces[index].get("mac")) if index is not None else None
    ips = []
    for n, ip in enumerate(prev.get("ips") if isinstance(prev.get("ips"), list) else []):
        if not isinstance(ip, dict) or not isinstance(ip.get("address"), str):
            continue
        if isinstance(ip.get("interface"), int) and index is not None and ip["interface"] != index:
            continue
        addr = canonical_ip(ip["address"])
        if addr is None:
            raise CniError(INVALID_CONFIG, f"prevResult.ips[{n}].address: {ip['address']!r} is not an IP address")
        if addr not in ips:
            ips.append(addr)
    return mac, tuple(ips)


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
