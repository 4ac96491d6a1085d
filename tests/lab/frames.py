"""Hand-made Ethernet frames sent from inside a lab namespace, and the drop counters read back.

A frame sent on an AF_PACKET socket leaves the container exactly as written: one frame per
send, no ARP or neighbour discovery first, no checksum the bridge family would look at. That
makes "N frames sent" mean "N frames seen" at the bridge's prerouting hook.
"""

import ipaddress
import json
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
