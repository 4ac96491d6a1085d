"""Listening to an NFLOG group of this network namespace (nfnetlink_log), and decoding its messages.

A `log group N` rule (nftables) or `-j NFLOG --nflog-group N` (iptables) hands each packet it
matches to the one netlink socket bound to group N in the namespace, as an NFULNL_MSG_PACKET:
an nfgenmsg (family, version, group) followed by attributes (include/uapi/linux/netfilter/
nfnetlink_log.h). pyroute2 has no decoder for them; the few structs are read here with
`struct`, every length checked, so a message that does not add up is skipped with a note
rather than read past its end.

Binding: only one socket may hold a group in a namespace (a second gets EPERM from today's
kernels, EBUSY or EEXIST from older ones): `Listener` says who might hold it instead of a
bare errno. The per-family PF_UNBIND/PF_BIND commands of libnetfilter_log's examples are not
sent: packets logged to a *group* reach its listener without them (the rule names the ULOG
logger, `nf_log_packet`), while PF_BIND would make nfnetlink_log the namespace's default
logger for the family (every plain `log` rule of the host's own firewall would then go to
group 0 instead of the kernel log) and PF_UNBIND would unbind whatever default logger the host
had chosen: a reader of our drop log has no business changing either.
"""

import errno
import os
import socket
import struct
import time

from plugin.packets import Headers, decode as decode_headers, mac_text
from plugin.record import value_class

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
# enum nfulnl_attr_type
(NFULA_PACKET_HDR, NFULA_MARK, NFULA_TIMESTAMP, NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV, NFULA_IFINDEX_PHYSINDEV,
 NFULA_IFINDEX_PHYSOUTDEV, NFULA_HWADDR, NFULA_PAYLOAD, NFULA_PREFIX) = range(1, 11)
NFULA_HWTYPE, NFULA_HWHEADER, NFULA_HWLEN = 15, 16, 17
NFULA_L2HDR = 21
# enum nfulnl_attr_config and nfulnl_msg_config_cmds
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_NLBUFSIZ, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 3, 4, 5
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
COPY_RANGE = 128  # bytes of each packet: Ethernet-less L3 + L4 headers, with IPv6 extension headers
NFPROTO_BRIDGE = 7
ARPHRD_ETHER = 1
RCVBUF = 1 << 20
NLMSG = struct.Struct("=IHHII")  # struct nlmsghdr, host byte order
NFGENMSG = struct.Struct(">BBH")  # struct nfgenmsg: family, version, res_id (big-endian group)
NLATTR = struct.Struct("=HH")  # struct nlattr, host byte order


class GroupBusy(OSError):
    """Another socket holds the group in this namespace."""


@value_class(frozen=True)
class Logged:
    """One packet a rule logged to the group."""

    time: float  # seconds since the epoch: the kernel's timestamp, else when it was read
    family: int  # the logging rule's family (NFPROTO_*: 2 ipv4, 10 ipv6, 7 bridge)
    prefix: str
    indev: int | None  # ifindex; for a bridge (or br_netfilter) log, the bridge
    outdev: int | None
    physindev: int | None  # the bridge port the packet came in by, when known
    mac: str | None  # source hardware address
    headers: Headers


@value_class(frozen=True)
class Skipped:
    """A message that could not be decoded (never a reason to stop reading)."""

    note: str


def _align(n: int) -> int:
    return (n + 3) & ~3


def attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """type -> payload of the netlink attributes in data[start:end]; ValueError when one
    overruns the message (the last of a repeated type wins)."""
    found, at = {}, start
    while at + NLATTR.size <= end:
        length, kind = NLATTR.unpack_from(data, at)
        if length < NLATTR.size or at + length > end:
            raise ValueError(f"attribute {kind & NLA_TYPE_MASK} of length {length} overruns the message")
        found[kind & NLA_TYPE_MASK] = bytes(data[at + NLATTR.size:at + length])
        at += _align(length)
    return found


def _u32(value: bytes | None) -> int | None:
    return struct.unpack(">I", value)[0] if value is not None and len(value) == 4 else None


def packet(family: int, attrs: dict[int, bytes], received: float) -> Logged:
    """A Logged from an NFULNL_MSG_PACKET's attributes; ValueError when a fixed-size one has
    the wrong size."""
    hdr = attrs.get(NFULA_PACKET_HDR)
    if hdr is None or len(hdr) < 4:
        raise ValueError("no packet header attribute")
    ethertype = struct.unpack_from(">H", hdr)[0]
    stamp = attrs.get(NFULA_TIMESTAMP)
    when = received
    if stamp is not None:
        if len(stamp) != 16:
            raise ValueError(f"timestamp of {len(stamp)} bytes, not 16")
        sec, usec = struct.unpack(">QQ", stamp)
        if sec:
            when = sec + usec / 1e6
    prefix = attrs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode("utf-8", "replace")
    return Logged(time=when, family=family, prefix=prefix, indev=_u32(attrs.get(NFULA_IFINDEX_INDEV)),
                  outdev=_u32(attrs.get(NFULA_IFINDEX_OUTDEV)), physindev=_u32(attrs.get(NFULA_IFINDEX_PHYSINDEV)),
                  mac=_source_mac(attrs), headers=decode_headers(attrs.get(NFULA_PAYLOAD, b""), ethertype))


def _source_mac(attrs: dict[int, bytes]) -> str | None:
    """The source hardware address: NFULA_HWADDR (struct nfulnl_msg_packet_hw: be16 length, pad,
    8 bytes), else the Ethernet header's source (NFULA_L2HDR of bridge logs, NFULA_HWHEADER)."""
    hw = attrs.get(NFULA_HWADDR)
    if hw is not None and len(hw) == 12:
        size = struct.unpack_from(">H", hw)[0]
        if 0 < size <= 8:
            return mac_text(hw[4:4 + size])
    hwtype = attrs.get(NFULA_HWTYPE)
    if hwtype is not None and hwtype != struct.pack(">H", ARPHRD_ETHER):
        return None
    for kind in (NFULA_L2HDR, NFULA_HWHEADER):
        header = attrs.get(kind)
        if header is not None and len(header) >= 14:
            return mac_text(header[6:12])
    return None


def messages(data: bytes, received: float | None = None) -> list[Logged | Skipped]:
    """Every NFULNL_MSG_PACKET in one datagram read from the socket, decoded; what cannot be
    decoded is a Skipped saying why. Other messages (NLMSG_DONE closing a batch) are ignored."""
    received = time.time() if received is None else received
    out: list[Logged | Skipped] = []
    at = 0
    while at + NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSG.unpack_from(data, at)
        if length < NLMSG.size or at + length > len(data):
            out.append(Skipped(f"a netlink message of length {length} at offset {at} overruns the "
                               f"{len(data)}-byte datagram: the rest of it is skipped"))
            break
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("=i", data, at + NLMSG.size)[0] if length >= NLMSG.size + 4 else 0
            if code:
                out.append(Skipped(f"netlink error {-code} ({os.strerror(-code)})"))
        elif kind == (NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET):
            out.append(_one(data, at, length, received))
        at += _align(length)
    return out


def _one(data: bytes, at: int, length: int, received: float) -> Logged | Skipped:
    body = at + NLMSG.size
    if length < NLMSG.size + NFGENMSG.size:
        return Skipped(f"an NFLOG message of {length} bytes has no room for its nfgenmsg")
    family, _version, _group = NFGENMSG.unpack_from(data, body)
    try:
        return packet(family, attributes(data, body + NFGENMSG.size, at + length), received)
    except ValueError as exc:
        return Skipped(f"a malformed NFLOG message: {exc}")


# --- the socket ------------------------------------------------------------------------------
def _attr(kind: int, value: bytes) -> bytes:
    raw = NLATTR.pack(NLATTR.size + len(value), kind) + value
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def config_message(group: int, seq: int, attrs: bytes, family: int = socket.AF_UNSPEC) -> bytes:
    """An NFULNL_MSG_CONFIG request for `group`, asking for an acknowledgement."""
    body = NFGENMSG.pack(family, 0, group) + attrs
    kind = NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_CONFIG
    return NLMSG.pack(NLMSG.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


class Listener:
    """The socket bound to one NFLOG group of this network namespace, copying the first
    COPY_RANGE bytes of each packet, each delivered at once (queue threshold 1: the rules
    already limit how many packets are logged; a person watching wants them now)."""

    def __init__(self, group: int):
        self.group = group
        self.lost = 0  # datagrams the kernel could not queue (ENOBUFS): counted, reading goes on
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root): past rmem_max
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self.sock.bind((0, 0))
            self._seq = 0
            self._pending: list[Logged] = []
            self._request(_attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])), binding=True)
            mode = struct.pack(">IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)  # struct nfulnl_msg_config_mode (packed)
            self._request(_attr(NFULA_CFG_MODE, mode) + _attr(NFULA_CFG_QTHRESH, struct.pack(">I", 1)))
        except BaseException:
            self.sock.close()
            raise

    def _request(self, attrs: bytes, binding: bool = False) -> None:
        self._seq += 1
        self.sock.settimeout(10.0)
        self.sock.send(config_message(self.group, self._seq, attrs))
        while True:
            data = self.sock.recv(1 << 17)
            self._pending += [m for m in messages(data) if isinstance(m, Logged)]  # logged before the ack came
            at = 0
            while at + NLMSG.size <= len(data):
                length, kind, _flags, seq, _pid = NLMSG.unpack_from(data, at)
                if length < NLMSG.size:
                    break
                if kind == NLMSG_ERROR and seq == self._seq:
                    code = -struct.unpack_from("=i", data, at + NLMSG.size)[0]
                    if code == 0:
                        return
                    if binding and code in (errno.EPERM, errno.EBUSY, errno.EEXIST) and os.geteuid() == 0:
                        raise GroupBusy(code, f"NFLOG group {self.group} is already bound in this network namespace "
                                              "(ulogd2? the agent? another `isolation drops --follow`?): only one "
                                              "listener per group and namespace")
                    raise OSError(code, f"NFLOG group {self.group}: {os.strerror(code)}"
                                  + (" (needs root)" if code == errno.EPERM else ""))
                at += _align(length)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, timeout: float | None = None) -> list[Logged | Skipped]:
        """The packets of the next datagram ([] when `timeout` passed without one)."""
        if self._pending:
            pending, self._pending = self._pending, []
            return pending
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 17)
        except socket.timeout:
            return []
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # the kernel dropped messages for us: say so, go on
                self.lost += 1
                return [Skipped("the socket's buffer overflowed: some logged packets were lost")]
            raise
        return messages(data)

    def close(self) -> None:
        self.sock.close()  # the kernel unbinds the group with its socket (NETLINK_URELEASE)
