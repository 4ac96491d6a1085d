"""Hand-made Ethernet frames sent from inside a lab namespace, and the drop counters read back.

A frame sent on an AF_PACKET socket leaves the container exactly as written: one frame per
send, no ARP or neighbour discovery first, no checksum the bridge family would look at. That
makes "N frames sent" mean "N frames seen" at the bridge's prerouting hook.
"""

import ipaddress
import json
import secrets
import socket
import time

from netlab import IP, in_netns, sh

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD


def mac_of(netns: str, ifname: str) -> str:
    """The MAC address of `ifname` in `netns`."""
    return json.loads(sh(IP, "-j", "link", "show", "dev", ifname, netns=netns).stdout)[0]["address"]


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def echo_request(src: str, dst: str) -> tuple[int, bytes]:
    """(ethertype, packet): an ICMP / ICMPv6 echo request from `src` to `dst` (checksums zero:
    nothing on the way to the bridge's prerouting hook verifies them)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        icmp = bytes([8, 0, 0, 0, 0, 1, 0, 1])
        header = bytes([0x45, 0]) + (20 + len(icmp)).to_bytes(2, "big") + bytes([0, 0, 0, 0, 64, 1, 0, 0])
        return ETH_P_IP, header + s.packed + d.packed + icmp
    icmp = bytes([128, 0, 0, 0, 0, 1, 0, 1])
    header = bytes([0x60, 0, 0, 0]) + len(icmp).to_bytes(2, "big") + bytes([58, 64])
    return ETH_P_IPV6, header + s.packed + d.packed + icmp


def with_header_checksum(packet: bytes) -> bytes:
    """An IPv4 packet of echo_request() with its header checksum filled in: br_netfilter (bridge-nf-call
    on) drops IPv4 with a wrong one before the bridge's forward hook. The ICMP checksum stays zero,
    so a receiver discards it silently (no reply to tell apart from the probe)."""
    total = sum(int.from_bytes(packet[i:i + 2], "big") for i in range(0, 20, 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return packet[:10] + (~total & 0xFFFF).to_bytes(2, "big") + packet[12:]


def send_frames(netns: str, ifname: str, dst_mac: str, src_mac: str, ethertype: int, payload: bytes,
                count: int) -> None:
    """Send `count` copies of one Ethernet frame out of `ifname` in `netns`."""
    frame = _mac_bytes(dst_mac) + _mac_bytes(src_mac) + ethertype.to_bytes(2, "big") + payload

    def send():
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((ifname, 0))
            for _ in range(count):
                s.send(frame)

    in_netns(netns, send)


def listener(netns: str, ifname: str = "eth0") -> socket.socket:
    """A raw socket seeing every frame `ifname` in `netns` receives from now on (read it with seen())."""
    def make():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
        s.bind((ifname, 0))
        return s

    return in_netns(netns, make)


def seen(sock: socket.socket, needle: bytes, wait: float = 1.0) -> bool:
    """Whether a frame containing `needle` reached `sock` (waiting up to `wait` seconds); closes it."""
    end = time.monotonic() + wait
    with sock:
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                frame, (_, _, kind, *_) = sock.recvfrom(65535)
            except TimeoutError:
                return False
            if kind != socket.PACKET_OUTGOING and needle in frame:
                return True
    return False


def datagram_arrives(src_netns: str, dst_netns: str, addr: str, port: int = 9, wait: float = 2.0) -> bool:
    """Whether a UDP datagram from `src_netns` to [addr]:port reaches `dst_netns`'s eth0 (a
    sniffer there, so one-way traffic counts: nothing needs to answer). Sent three times, with
    a payload unique to this call, so a first one held up by neighbour discovery is no miss."""
    token = secrets.token_hex(8).encode()
    ear = listener(dst_netns)

    def send():
        with socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(3):
                s.sendto(token, (addr, port))
                time.sleep(0.1)

    in_netns(src_netns, send)
    return seen(ear, token, wait)


def drop_counts(lab) -> dict[tuple[str, str], int | None]:
    """(bridge, reason) -> packets, from `isolation status --json`."""
    return {(b["bridge"], reason): n for b in lab.status()["bridges"] for reason, n in b["drops"].items()}


def settled_counts(lab, quiet: float = 1.0, deadline: float = 20.0) -> dict[tuple[str, str], int | None]:
    """drop_counts once they have stayed the same for `quiet` seconds: a container's own
    start-up traffic (IPv6 MLD reports to the host, dropped under hostAccess deny) ends
    within seconds, and must not be mistaken for a probe's."""
    end = time.monotonic() + deadline
    last = drop_counts(lab)
    while time.monotonic() < end:
        time.sleep(quiet)
        now = drop_counts(lab)
        if now == last:
            return now
        last = now
    raise AssertionError(f"the drop counters never settled: {last}")
