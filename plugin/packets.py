"""What a logged packet was: its L3/L4 headers (or ARP), read from the first bytes the kernel copied.

The bytes come from a container, and a hostile container writes any bytes it likes: every
read here is bounds-checked, nothing is trusted to be consistent (an IHL past the capture,
a length field that lies, a chain of IPv6 extension headers that never ends), and a header
that cannot be read is reported as such (`Headers.note`), never raised. The drop log shows
the note next to what could be read.

Only what an operator needs to recognise a blocked attempt is read: addresses, the L4
protocol, ports or the ICMP type, and whether the packet is a fragment (a non-first
fragment has no L4 header: its ports are unknown, not zero).
"""

import ipaddress
import struct

from plugin.record import value_class

ETH_P_IP, ETH_P_ARP, ETH_P_IPV6 = 0x0800, 0x0806, 0x86DD
TCP, UDP, ICMP, ICMPV6, SCTP, UDPLITE, DCCP = 6, 17, 1, 58, 132, 136, 33
PROTOCOLS = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMPV6: "icmpv6", SCTP: "sctp", UDPLITE: "udplite", DCCP: "dccp"}
WITH_PORTS = (TCP, UDP, SCTP, UDPLITE, DCCP)  # source and destination port: the first 4 bytes
# IPv6 extension headers walked to find the L4 header; ESP (50) hides it, 59 means there is none
HOP_BY_HOP, ROUTING, FRAGMENT, ESP, AH, NO_NEXT, DEST_OPTS, MOBILITY = 0, 43, 44, 50, 51, 59, 60, 135
MAX_EXTENSIONS = 8  # more than any honest packet carries; a longer chain is reported, not walked
ICMP_TYPES = {0: "echo-reply", 3: "destination-unreachable", 5: "redirect", 8: "echo-request",
              11: "time-exceeded", 13: "timestamp-request", 14: "timestamp-reply"}
ICMPV6_TYPES = {1: "destination-unreachable", 2: "packet-too-big", 3: "time-exceeded", 128: "echo-request",
                129: "echo-reply", 133: "router-solicitation", 134: "router-advertisement",
                135: "neighbour-solicitation", 136: "neighbour-advertisement", 137: "redirect"}
ARP_OPS = {1: "request", 2: "reply"}


@value_class(frozen=True)
class Headers:
    """A packet as far as it could be read; None where a field is unknown or does not apply."""

    family: str  # "ipv4", "ipv6", "arp", or "ethertype 0x...." for anything else
    source: str | None = None  # IP address (ARP: the sender protocol address)
    destination: str | None = None  # IP address (ARP: the target protocol address)
    protocol: str | None = None  # "tcp", "udp", "icmp", "icmpv6", ..., "proto N", "arp"
    source_port: int | None = None
    destination_port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    fragment: bool = False  # a fragment (first or later) of a larger packet
    arp_op: str | None = None  # "request", "reply", "op N"
    arp_mac: str | None = None  # ARP's sender hardware address
    note: str | None = None  # why something could not be read

    def service(self) -> str:
        """How the destination service reads in a log line: tcp/8080, icmp echo-request, arp request."""
        proto = self.protocol or self.family
        if self.destination_port is not None:
            return f"{proto}/{self.destination_port}"
        if self.icmp_type is not None:
            names = ICMPV6_TYPES if proto == "icmpv6" else ICMP_TYPES
            return f"{proto} {names.get(self.icmp_type, f'type {self.icmp_type}')}"
        if self.arp_op is not None:
            return f"arp {self.arp_op}"
        return proto


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def decode(payload: bytes, ethertype: int | None) -> Headers:
    """The headers of `payload` (starting at the network header), of `ethertype` when the
    kernel said (the logged skb's protocol); else guessed from the IP version nibble."""
    if ethertype is None or ethertype == 0:
        version = payload[0] >> 4 if payload else 0
        ethertype = {4: ETH_P_IP, 6: ETH_P_IPV6}.get(version)
    if ethertype == ETH_P_IP:
        return _ipv4(payload)
    if ethertype == ETH_P_IPV6:
        return _ipv6(payload)
    if ethertype == ETH_P_ARP:
        return _arp(payload)
    if ethertype is None:
        return Headers(family="unknown", note="neither IPv4 nor IPv6, and no ethertype given")
    return Headers(family=f"ethertype 0x{ethertype:04x}")


def _ipv4(p: bytes) -> Headers:
    if len(p) < 20:
        return Headers(family="ipv4", note=f"IPv4 header truncated ({len(p)} of 20 bytes captured)")
    if p[0] >> 4 != 4:
        return Headers(family="ipv4", note=f"not an IPv4 header (version {p[0] >> 4})")
    src, dst = str(ipaddress.IPv4Address(p[12:16])), str(ipaddress.IPv4Address(p[16:20]))
    ihl = (p[0] & 0x0F) * 4
    flags_offset = struct.unpack_from(">H", p, 6)[0]
    offset, more = flags_offset & 0x1FFF, bool(flags_offset & 0x2000)
    proto = p[9]
    base = dict(family="ipv4", source=src, destination=dst, protocol=PROTOCOLS.get(proto, f"proto {proto}"),
                fragment=offset != 0 or more)
    if ihl < 20:
        return Headers(**base, note=f"bad IPv4 header length {ihl}")
    if offset != 0:
        return Headers(**base, note="a later fragment: no transport header")
    return _transport(proto, p[ihl:], base, ihl > len(p))


def _ipv6(p: bytes) -> Headers:
    if len(p) < 40:
        return Headers(family="ipv6", note=f"IPv6 header truncated ({len(p)} of 40 bytes captured)")
    if p[0] >> 4 != 6:
        return Headers(family="ipv6", note=f"not an IPv6 header (version {p[0] >> 4})")
    src, dst = str(ipaddress.IPv6Address(p[8:24])), str(ipaddress.IPv6Address(p[24:40]))
    nxt, at, fragment = p[6], 40, False
    for _ in range(MAX_EXTENSIONS + 1):
        if nxt in (HOP_BY_HOP, ROUTING, DEST_OPTS, MOBILITY, AH, FRAGMENT):
            if at + 8 > len(p):
                return Headers(family="ipv6", source=src, destination=dst, fragment=fragment,
                               note="extension headers continue beyond the captured bytes")
            if nxt == FRAGMENT:
                offset_flags = struct.unpack_from(">H", p, at + 2)[0]
                fragment = True
                if offset_flags >> 3:
                    return Headers(family="ipv6", source=src, destination=dst, protocol=_name(p[at]), fragment=True,
                                   note="a later fragment: no transport header")
                size = 8
            elif nxt == AH:
                size = (p[at + 1] + 2) * 4
            else:
                size = (p[at + 1] + 1) * 8
            nxt, at = p[at], at + size
            continue
        base = dict(family="ipv6", source=src, destination=dst, protocol=_name(nxt), fragment=fragment)
        if nxt == NO_NEXT:
            return Headers(**{**base, "protocol": "none"})
        if nxt == ESP:
            return Headers(**base, note="encrypted (ESP): no transport header")
        return _transport(nxt, p[at:], base, at > len(p))
    return Headers(family="ipv6", source=src, destination=dst, fragment=fragment,
                   note=f"more than {MAX_EXTENSIONS} extension headers: not walked further")


def _name(proto: int) -> str:
    return PROTOCOLS.get(proto, f"proto {proto}")


def _transport(proto: int, t: bytes, base: dict, past_end: bool) -> Headers:
    """The L4 fields of `t` (what follows the network headers) for protocol `proto`."""
    if proto in WITH_PORTS:
        if past_end or len(t) < 4:
            return Headers(**base, note=f"{_name(proto)} header beyond the captured bytes")
        sport, dport = struct.unpack_from(">HH", t)
        return Headers(**base, source_port=sport, destination_port=dport)
    if proto in (ICMP, ICMPV6):
        if past_end or len(t) < 2:
            return Headers(**base, note=f"{_name(proto)} header beyond the captured bytes")
        return Headers(**base, icmp_type=t[0], icmp_code=t[1])
    return Headers(**base)


def _arp(p: bytes) -> Headers:
    if len(p) < 8:
        return Headers(family="arp", protocol="arp", note=f"ARP header truncated ({len(p)} of 8 bytes captured)")
    htype, ptype, hlen, plen, op = struct.unpack_from(">HHBBH", p)
    op_name = ARP_OPS.get(op, f"op {op}")
    if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
        return Headers(family="arp", protocol="arp", arp_op=op_name,
                       note=f"not Ethernet/IPv4 ARP (htype {htype}, ptype 0x{ptype:04x}, hlen {hlen}, plen {plen})")
    if len(p) < 28:
        return Headers(family="arp", protocol="arp", arp_op=op_name,
                       note=f"ARP addresses truncated ({len(p)} of 28 bytes captured)")
    return Headers(family="arp", protocol="arp", arp_op=op_name, arp_mac=mac_text(p[8:14]),
                   source=str(ipaddress.IPv4Address(p[14:18])), destination=str(ipaddress.IPv4Address(p[24:28])))
