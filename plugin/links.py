"""Interface names and the question "is this a Linux bridge, here?".

Names reach firewall rule text, so they are checked against a strict alphabet
first: no option-like leading dash, no iptables wildcard `+`, no negation `!`,
no quoting or whitespace.

The bridge check asks the kernel through the socket's own network namespace
(SIOCGIFINDEX, then the ethtool driver-info ioctl, which reports driver
"bridge" for Linux bridges). Unlike /sys/class/net it cannot be fooled by a
sysfs mounted for another namespace, and it costs a few microseconds instead
of the ~100 ms that importing a netlink library costs on every container start.
"""

import array
import fcntl
import re
import _socket  # the C module: `socket` would import selectors and enum (~1.5 ms) per start
import struct

from plugin.errors import INVALID_CONFIG, CniError

IFNAMSIZ = 16
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
_DRVINFO_SIZE = 196  # struct ethtool_drvinfo


def valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and name not in (".", "..")


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
    info = array.array("B", bytes(_DRVINFO_SIZE))
    struct.pack_into("I", info, 0, ETHTOOL_GDRVINFO)
    ifreq = struct.pack(f"{IFNAMSIZ}sP", name.encode(), info.buffer_info()[0])
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError:
        return None
    finally:
        sock.close()
    return info[4:36].tobytes().split(b"\0", 1)[0].decode(errors="replace")


def is_bridge(name: str) -> bool:
    return driver(name) == "bridge"


NETLINK_ROUTE, RTM_NEWLINK, RTM_GETLINK, NLMSG_DONE, NLMSG_ERROR = 0, 16, 18, 3, 2
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_IFNAME, IFLA_MASTER = 3, 10


def ports_of_masters() -> dict[str, list[str]]:
    """Every interface of this network namespace that has ports (a bridge) -> its ports'
    names, from one RTM_GETLINK dump on a netlink socket of this namespace (unlike
    /sys/class/net, whatever /sys this process sees)."""
    names, masters = _links()
    found: dict[str, list[str]] = {}
    for port, master in masters.items():
        found.setdefault(names.get(master, str(master)), []).append(names[port])
    return found


def interfaces() -> dict[str, int]:
    """Every interface of this network namespace: name -> ifindex (one RTM_GETLINK dump)."""
    return {name: index for index, name in _links()[0].items()}


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


def _links() -> tuple[dict[int, str], dict[int, int]]:
    """(ifindex -> name, port ifindex -> its master's ifindex) from one RTM_GETLINK dump."""
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, NETLINK_ROUTE)
    names, masters = {}, {}
    try:
        sock.bind((0, 0))
        # nlmsghdr (len, type, flags, seq, pid) + ifinfomsg (family, type, index, flags, change)
        sock.send(struct.pack("=IHHII", 32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + bytes(16))
        done = False
        while not done:
            data = sock.recv(1 << 16)
            at = 0
            while at + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, at)
                if kind == NLMSG_DONE:
                    done = True
                    break
                if kind == NLMSG_ERROR:
                    raise OSError("netlink: the RTM_GETLINK dump failed")
                if kind == RTM_NEWLINK:
                    index = struct.unpack_from("=i", data, at + 20)[0]
                    attrs = _attributes(data, at + 32, at + length)
                    names[index] = attrs.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
                    if IFLA_MASTER in attrs:
                        masters[index] = struct.unpack("=I", attrs[IFLA_MASTER][:4])[0]
                at += (length + 3) & ~3
    finally:
        sock.close()
    return names, masters


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
