"""Interface names, and single links as a container's start reads them: by ioctl.

Names reach firewall rule text, so they are checked against a strict alphabet
first: no option-like leading dash, no iptables wildcard `+`, no negation `!`,
no quoting or whitespace.

The bridge check asks the kernel through the socket's own network namespace
(SIOCGIFINDEX, then the ethtool driver-info ioctl, which reports driver
"bridge" for Linux bridges). Unlike /sys/class/net it cannot be fooled by a
sysfs mounted for another namespace, and it costs a few microseconds, where
importing pyroute2 costs ~250 ms (README, Performance): ADD, CHECK, DEL and GC
ask here, about one link at a time. Whole-namespace questions (every interface,
a bridge's ports) are the slow paths' and go through plugin.topology.
"""

import fcntl
import _socket  # the C module: `socket` would import selectors and enum (~1.5 ms) per start
import struct

from plugin.errors import INVALID_CONFIG, CniError

IFNAMSIZ = 16
# [A-Za-z0-9_][A-Za-z0-9_.-]{0,14}, checked without `re` (re and enum cost a run ~8 ms to import)
_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_REST = _FIRST | frozenset(".-")

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
_DRVINFO_SIZE = 196  # struct ethtool_drvinfo


def valid_name(name: object) -> bool:
    return (isinstance(name, str) and 1 <= len(name) < IFNAMSIZ and name[0] in _FIRST and _REST.issuperset(name)
            and name not in (".", ".."))


def require_name(name: object, field: str) -> str:
    """Return `name` if it is a safe interface name, else raise error 7 naming `field`."""
    if not valid_name(name):
        raise CniError(
            INVALID_CONFIG,
            f"{field}: {name!r} is not a valid interface name "
            "(1-15 characters from A-Z a-z 0-9 _ . -, not starting with '.' or '-')",
        )
    return name  # type: ignore[return-value]


def driver(name: str) -> str | None:
    """The kernel driver behind interface `name` in this network namespace, or None if absent."""
    from plugin import native  # loaded by the nftables backend anyway; `array` would import collections (~3 ms)

    info = native.buffer(_DRVINFO_SIZE)
    struct.pack_into("I", info, 0, ETHTOOL_GDRVINFO)
    ifreq = struct.pack(f"{IFNAMSIZ}sP", name.encode(), native.addressof(info))
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError:
        return None
    finally:
        sock.close()
    return info.raw[4:36].split(b"\0", 1)[0].decode(errors="replace")


def is_bridge(name: str) -> bool:
    return driver(name) == "bridge"


SIOCGIFINDEX = 0x8933


def ifindex(name: str) -> int | None:
    """The ifindex of interface `name` here, or None (one ioctl: cheap enough for ADD). A
    port deleted and re-created under the same name gets another index."""
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        reply = fcntl.ioctl(sock.fileno(), SIOCGIFINDEX, struct.pack(f"{IFNAMSIZ}s16x", name.encode()))
    except OSError:
        return None
    finally:
        sock.close()
    return struct.unpack_from("i", reply, IFNAMSIZ)[0]


# --- the kernel's bridge-port isolation flag (IFLA_BRPORT_ISOLATED) ---------------------------
# A bridge never forwards a frame from one isolated port to another, whatever its ethertype,
# VLAN tag or whether br_netfilter is loaded. Set and read over rtnetlink in this process's
# network namespace (the ADD path cannot afford a netlink library's import).
NETLINK_ROUTE, RTM_GETLINK, RTM_SETLINK, NLMSG_DONE, NLMSG_ERROR = 0, 18, 19, 3, 2
NLM_F_REQUEST, NLM_F_ACK, AF_BRIDGE = 0x1, 0x4, 7
IFLA_PROTINFO, IFLA_LINKINFO, NLA_F_NESTED = 12, 18, 0x8000
IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 4, 5
IFLA_BRPORT_ISOLATED = 33


def _index(name: str) -> int | None:
    try:
        return _socket.if_nametoindex(name)
    except OSError:
        return None


def _attributes(data: bytes, at: int, end: int) -> dict[int, bytes]:
    """The rtattrs between `at` and `end`: type -> payload."""
    found = {}
    while at + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, at)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[at + 4:at + length]
        at += (length + 3) & ~3
    return found


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + bytes(-len(data) % 4)


def _request(kind: int, flags: int, family: int, index: int, attrs: bytes = b"") -> list[bytes]:
    """One rtnetlink request; the messages answering it (an error raises OSError)."""
    body = struct.pack("=BxHiII", family, 0, index, 0, 0) + attrs
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        sock.send(struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | flags, 1, 0) + body)
        replies = []
        while True:
            data = sock.recv(1 << 16)
            at = 0
            while at + 16 <= len(data):
                length, msg = struct.unpack_from("=IH", data, at)
                if msg == NLMSG_ERROR:
                    code = struct.unpack_from("=i", data, at + 16)[0]
                    if code:
                        raise OSError(-code, _errno_text(-code))
                    return replies
                if msg == NLMSG_DONE:
                    return replies
                replies.append(data[at:at + length])
                at += (length + 3) & ~3
            if not (flags & NLM_F_ACK) and replies:
                return replies
    finally:
        sock.close()


def _errno_text(code: int) -> str:
    import os

    return os.strerror(code)


def port_isolated(name: str) -> bool | None:
    """Whether bridge port `name` carries the isolation flag; None when `name` is not a bridge
    port here (absent, or not enslaved to a bridge)."""
    index = _index(name)
    if index is None:
        return None
    try:
        replies = _request(RTM_GETLINK, 0, 0, index)
    except OSError:
        return None
    for reply in replies:
        info = _attributes(reply, 32, len(reply)).get(IFLA_LINKINFO)
        if info is None:
            continue
        nested = _attributes(info, 0, len(info))
        if nested.get(IFLA_INFO_SLAVE_KIND, b"").split(b"\0", 1)[0] != b"bridge":
            return None
        data = nested.get(IFLA_INFO_SLAVE_DATA, b"")
        flag = _attributes(data, 0, len(data)).get(IFLA_BRPORT_ISOLATED)
        return bool(flag and flag[0])
    return None


def set_port_isolated(name: str, on: bool) -> None:
    """Set or clear bridge port `name`'s isolation flag; OSError when it is no bridge port."""
    index = _index(name)
    if index is None:
        raise OSError(19, f"no interface {name}")
    flag = _attr(IFLA_BRPORT_ISOLATED, bytes([1 if on else 0]))
    _request(RTM_SETLINK, NLM_F_ACK, AF_BRIDGE, index, _attr(IFLA_PROTINFO | NLA_F_NESTED, flag))
