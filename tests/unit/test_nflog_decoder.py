"""The NFLOG decoder (plugin.nflog, plugin.packets) against messages written out byte by byte
from the kernel's layouts (include/uapi/linux/netlink.h, netfilter/nfnetlink.h,
netfilter/nfnetlink_log.h; net/netfilter/nfnetlink_log.c's __build_packet_message), never
produced by our own encoder: struct nlmsghdr and struct nlattr in host order (these tests
run little-endian: x86_64, aarch64), everything nfnetlink_log puts inside in network order,
attributes padded to 4 bytes. Then the same messages malformed in every way a length can lie,
and random damage: a hostile packet's bytes may be skipped with a note, never crash the reader.
"""

import random
import sys

import pytest

from plugin import nflog
from plugin.nflog import Logged, Skipped, messages

if sys.byteorder != "little":
    pytest.fail("the hand-written messages below are little-endian (nlmsghdr and nlattr are in host order)",
                pytrace=False)


def h(text: str) -> bytes:
    """Bytes from hex, ignoring spaces, newlines and `#` comments to the end of a line."""
    return bytes.fromhex("".join(part.split("#", 1)[0] for part in text.splitlines()).replace(" ", ""))


# An IPv4 TCP SYN 10.77.1.2:40000 -> 10.99.0.2:8081 logged in the inet forward hook, 164 bytes.
TCP4 = h("""
a4000000 0004 0000 00000000 00000000   # nlmsghdr: len 164, type ULOG<<8|PACKET, flags, seq, pid
02 00 0773                               # nfgenmsg: AF_INET, NFNETLINK_V0, group 1907 (big-endian)
0800 0100  0800 02 00                    # NFULA_PACKET_HDR: hw_protocol 0x0800, hook 2 (forward), pad
1e00 0a00                                # NFULA_PREFIX, 26 bytes + 2 of padding:
69736f6c6174696f6e20656772657373 2d64656e7920746231 00 0000  # "isolation egress-deny tb1\\0"
1400 0300  00000000 6935bf40  00000000 0003d090   # NFULA_TIMESTAMP: sec 1765130048, usec 250000
0800 0400  00000005                      # NFULA_IFINDEX_INDEV 5
0800 0500  00000003                      # NFULA_IFINDEX_OUTDEV 3
0800 0600  00000007                      # NFULA_IFINDEX_PHYSINDEV 7
1000 0800  0006 0000 02420a4d0102 0000   # NFULA_HWADDR: hw_addrlen 6, pad, 8 address bytes
2c00 0900                                # NFULA_PAYLOAD, 40 bytes:
45000028 00014000 40060000 0a4d0102 0a630002   # IPv4: IHL 5, DF, TTL 64, TCP, 10.77.1.2 -> 10.99.0.2
9c40 1f91 00000001 00000000 5002 faf0 0000 0000 # TCP: 40000 -> 8081, SYN
""")


def test_an_ipv4_tcp_packet_of_the_inet_forward_hook():
    assert len(TCP4) == 164
    [got] = messages(TCP4, received=1.0)
    assert isinstance(got, Logged), got
    assert got.family == 2 and got.prefix == "isolation egress-deny tb1"
    assert got.time == 1765130048.25  # the kernel's stamp, not the time it was read
    assert (got.indev, got.outdev, got.physindev, got.mac) == (5, 3, 7, "02:42:0a:4d:01:02")
    hd = got.headers
    assert (hd.family, hd.source, hd.destination, hd.protocol) == ("ipv4", "10.77.1.2", "10.99.0.2", "tcp")
    assert (hd.source_port, hd.destination_port, hd.fragment, hd.note) == (40000, 8081, False, None)
    assert hd.service() == "tcp/8081"


# An IPv6 UDP datagram's first fragment behind a hop-by-hop header, from the output hook (no
# timestamp, no input device): fd77:1::2 port 5000 -> fd99::2 port 53.
UDP6_FRAGMENT = h("""
8800 0000 0004 0000 00000000 00000000    # nlmsghdr: len 136
0a 00 0773                               # nfgenmsg: AF_INET6, group 1907
0800 0100  86dd 03 00                    # NFULA_PACKET_HDR: 0x86dd, hook 3 (output)
1e00 0a00                                # NFULA_PREFIX, 26 bytes + 2 of padding:
69736f6c6174696f6e20686f73742d 61636365737320746231 00 0000  # "isolation host-access tb1\\0"
0800 0500  00000002                      # NFULA_IFINDEX_OUTDEV 2
4400 0900                                # NFULA_PAYLOAD, 64 bytes:
60000000 0018 00 40                      # IPv6: payload length 24, next header 0 (hop-by-hop), hop limit 64
fd770001000000000000000000000002         # fd77:1::2
fd990000000000000000000000000002         # fd99::2
2c 00 0104 00000000                      # hop-by-hop: next 44 (fragment), length 0 (8 bytes), PadN
11 00 0001 12345678                      # fragment: next 17 (UDP), offset 0, M=1, id
1388 0035 0010 0000                      # UDP: 5000 -> 53
""")


def test_an_ipv6_first_fragment_behind_a_hop_by_hop_header():
    assert len(UDP6_FRAGMENT) == 136
    [got] = messages(UDP6_FRAGMENT, received=42.5)
    assert isinstance(got, Logged), got
    assert got.time == 42.5, "no NFULA_TIMESTAMP after the output hook: the time it was read"
    assert (got.family, got.prefix, got.indev, got.outdev, got.physindev, got.mac) == (
        10, "isolation host-access tb1", None, 2, None, None)
    hd = got.headers
    assert (hd.source, hd.destination, hd.protocol, hd.source_port, hd.destination_port) == (
        "fd77:1::2", "fd99::2", "udp", 5000, 53)
    assert hd.fragment and hd.note is None


def ipv6_payload(next_header: int, extensions: bytes, rest: bytes) -> bytes:
    """An IPv6 header fd77:1::2 -> fd99::2 (written out as above) followed by `extensions` and `rest`."""
    size = len(extensions) + len(rest)
    return (h("60000000") + size.to_bytes(2, "big") + bytes([next_header, 64])
            + h("fd770001000000000000000000000002 fd990000000000000000000000000002") + extensions + rest)


def test_later_fragments_ext_header_chains_esp_and_icmpv6():
    from plugin.packets import decode

    later = decode(ipv6_payload(44, h("11 00 0050 12345678"), h("1388 0035")), 0x86DD)  # offset 10 (x8)
    assert later.fragment and later.destination_port is None and "later fragment" in later.note
    assert later.protocol == "udp"
    echo = decode(ipv6_payload(60, h("3a 00 0104 00000000"), h("80 00 0000 0001 0001")), 0x86DD)  # dest opts
    assert (echo.protocol, echo.icmp_type, echo.icmp_code, echo.service()) == ("icmpv6", 128, 0, "icmpv6 echo-request")
    endless = decode(ipv6_payload(0, h("00 00 0104 00000000") * 12, b""), 0x86DD)  # hop-by-hop after hop-by-hop...
    assert endless.protocol is None and "extension headers" in endless.note
    beyond = decode(ipv6_payload(43, h("06 07 0000"), b""), 0x86DD)  # routing header cut by the capture
    assert beyond.source == "fd77:1::2" and "beyond the captured bytes" in beyond.note
    esp = decode(ipv6_payload(50, b"", h("00000001 00000001")), 0x86DD)
    assert esp.destination_port is None and "ESP" in esp.note
    ah = decode(ipv6_payload(51, h("06 01 0000 00000001 00000001"), h("c350 0016 00000000")), 0x86DD)  # AH: (1+2)*4
    assert (ah.protocol, ah.destination_port) == ("tcp", 22)
    assert decode(ipv6_payload(59, b"", b""), 0x86DD).protocol == "none"


def test_ipv4_icmp_fragments_and_lying_lengths():
    from plugin.packets import decode

    echo = decode(h("45000054 00000000 40010000 0a4d0102 0a630002 0800 0000 0001 0001"), 0x0800)
    assert (echo.protocol, echo.icmp_type, echo.service()) == ("icmp", 8, "icmp echo-request")
    later = decode(h("45000054 00002005 40110000 0a4d0102 0a630002 1388 0035"), 0x0800)  # MF, offset 5
    assert later.fragment and later.destination_port is None and "later fragment" in later.note
    first = decode(h("45000054 00002000 40110000 0a4d0102 0a630002 1388 0035 0010 0000"), 0x0800)  # MF, offset 0
    assert first.fragment and first.destination_port == 53
    options_past_end = decode(h("4f000054 00000000 40060000 0a4d0102 0a630002 1388 0035"), 0x0800)  # IHL 60
    assert options_past_end.source == "10.77.1.2" and options_past_end.destination_port is None
    assert "beyond the captured bytes" in options_past_end.note
    short_ihl = decode(h("42000054 00000000 40060000 0a4d0102 0a630002"), 0x0800)
    assert "bad IPv4 header length 8" in short_ihl.note
    assert "truncated" in decode(h("45000054 00000000 4006"), 0x0800).note
    assert "not an IPv4 header" in decode(h("65000054 00000000 40060000 0a4d0102 0a630002"), 0x0800).note
    other = decode(h("45000054 00000000 402f0000 0a4d0102 0a630002"), 0x0800)  # GRE
    assert other.protocol == "proto 47" and other.service() == "proto 47"
    assert decode(h("45000054 00000000 40060000 0a4d0102 0a630002"), None).family == "ipv4", "guessed from the nibble"
    assert decode(b"", 0x88CC).family == "ethertype 0x88cc"  # LLDP: named, not decoded


# An ARP request logged by a bridge-family rule: the payload starts at the ARP header, the
# Ethernet header comes apart (NFULA_L2HDR), the port is NFULA_IFINDEX_PHYSINDEV and the
# bridge NFULA_IFINDEX_INDEV; hook 0 (prerouting) carries a timestamp.
ARP = h("""
9400 0000 0004 0000 00000000 00000000    # nlmsghdr: len 148
07 00 0773                               # nfgenmsg: NFPROTO_BRIDGE, group 1907
0800 0100  0806 00 00                    # NFULA_PACKET_HDR: 0x0806, hook 0
2000 0a00                                # NFULA_PREFIX, 28 bytes (aligned):
69736f6c6174696f6e20616e74692d73706f6f66696e6720746231 00  # "isolation anti-spoofing tb1\\0"
1400 0300  00000000 6935bf40 00000000 00000000   # NFULA_TIMESTAMP, usec 0
0800 0600  00000009                      # NFULA_IFINDEX_PHYSINDEV 9 (the port)
0800 0400  00000004                      # NFULA_IFINDEX_INDEV 4 (its bridge)
1200 1500  ffffffffffff 02420a4d0109 0806 0000   # NFULA_L2HDR: dst, src, ethertype (14 bytes) + pad
2000 0900                                # NFULA_PAYLOAD, 28 bytes:
0001 0800 06 04 0001                     # ARP: Ethernet, IPv4, 6, 4, request
02420a4d0109 0a4d0102                    # sender: 02:42:0a:4d:01:09 claims 10.77.1.2
000000000000 0a4d0101                    # target: 10.77.1.1
""")


def test_a_bridge_family_arp_request():
    assert len(ARP) == 148
    [got] = messages(ARP)
    assert isinstance(got, Logged), got
    assert (got.family, got.prefix, got.indev, got.physindev, got.mac) == (
        7, "isolation anti-spoofing tb1", 4, 9, "02:42:0a:4d:01:09")
    hd = got.headers
    assert (hd.family, hd.arp_op, hd.arp_mac, hd.source, hd.destination, hd.service()) == (
        "arp", "request", "02:42:0a:4d:01:09", "10.77.1.2", "10.77.1.1", "arp request")


def test_a_batch_of_two_packets_closed_by_nlmsg_done():
    done = h("1400 0000 0300 0200 00000000 00000000  00 00 0000")  # NLMSG_DONE, NLM_F_MULTI, nfgenmsg
    got = messages(TCP4 + ARP + done)
    assert [type(g) for g in got] == [Logged, Logged]
    assert [g.prefix for g in got] == ["isolation egress-deny tb1", "isolation anti-spoofing tb1"]


def test_malformed_messages_are_skipped_with_a_note_and_the_rest_is_read():
    # an attribute whose length runs past its message: that message skipped, the next one read
    overrun = bytearray(TCP4)
    overrun[120:122] = h("ff00")  # NFULA_PAYLOAD claims 255 bytes
    first, second = messages(bytes(overrun) + ARP)
    assert isinstance(first, Skipped) and "overruns" in first.note
    assert isinstance(second, Logged) and second.headers.family == "arp"
    # a message claiming more than the datagram holds: skipped, what came before kept
    got = messages(ARP + TCP4[:100])
    assert isinstance(got[0], Logged) and isinstance(got[1], Skipped) and "overruns" in got[1].note
    # an attribute shorter than its own header: it cannot be stepped over
    tiny = bytearray(TCP4)
    tiny[20:22] = h("0200")
    assert isinstance(messages(bytes(tiny))[0], Skipped)
    # a timestamp of the wrong size, and no packet header at all
    odd_stamp = bytearray(TCP4)
    odd_stamp[60:62] = h("1000")  # 12 bytes of timestamp, and the message walks on misaligned
    assert isinstance(messages(bytes(odd_stamp))[0], Skipped)
    no_header = bytearray(TCP4)
    no_header[22:24] = h("1f00")  # NFULA_PACKET_HDR becomes an unknown attribute 31
    assert "no packet header" in messages(bytes(no_header))[0].note
    # a message too short for its nfgenmsg, a netlink error, a header cut short
    assert isinstance(messages(h("1200 0000 0004 0000 00000000 00000000 0200"))[0], Skipped)
    assert "error 1" in messages(h("2400 0000 0200 0000 00000000 00000000 ffffffff") + bytes(16))[0].note
    assert messages(TCP4[:10]) == []
    # a payload cut short by the copy range: what can be read is, the rest is noted
    cut = bytearray(TCP4[:120 + 4 + 22])
    cut[0:4] = (len(cut)).to_bytes(4, "little")
    cut[120:122] = (4 + 22).to_bytes(2, "little")
    [short] = messages(bytes(cut))
    assert short.headers.source == "10.77.1.2" and short.headers.destination_port is None
    assert "beyond the captured bytes" in short.headers.note


def test_random_damage_never_raises():
    rng = random.Random(1907)
    samples = (TCP4, UDP6_FRAGMENT, ARP)
    for _ in range(20000):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)):]
        for item in messages(bytes(data)):
            assert isinstance(item, (Logged, Skipped))
            if isinstance(item, Logged):
                item.headers.service()  # every decoded packet can be printed


def test_config_request_layout():
    """The bind request as the kernel parses it (nfulnl_recv_config): group from res_id."""
    cmd = nflog._attr(nflog.NFULA_CFG_CMD, bytes([nflog.NFULNL_CFG_CMD_BIND]))
    assert cmd == h("0500 0100 01 000000")  # length 5 (4 + struct nfulnl_msg_config_cmd), padded to 8
    assert nflog.config_message(1907, 7, cmd) == h("""
        1c000000 0104 0500 07000000 00000000   # len 28, ULOG<<8|CONFIG, REQUEST|ACK, seq 7
        00 00 0773                             # AF_UNSPEC, V0, group 1907
        0500 0100 01 000000""")
