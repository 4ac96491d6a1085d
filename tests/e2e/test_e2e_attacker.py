"""A hostile container: crafted frames, not polite sockets (issue 14).

The attacker is root in its container with CAP_NET_RAW (what Docker, containerd and Podman
grant by default): it writes whole Ethernet frames on its eth0 with an AF_PACKET socket,
built here with `struct` (standard library only). A sniffer (AF_PACKET, or raw IP sockets
for what reaches the host's own stack) is started in every target namespace before anything
is sent, and looks for each probe's unique payload marker: a probe is "delivered" when its
marker shows up there. Every check that expects a drop has a positive control in the same
lab that expects delivery (the same packet kind to an allowed destination, or on an `open`
network, or on a network without anti-spoofing), so no check passes because a path was down.

One lab per backend and bridge-nf-call setting (0 and 1) serves every test:
  net1  same-bridge, denyEgress 10.98.0.0/16 + fd98::/32, hostAccess deny   g1 (attacker), g2
  net2  isolated (anti-spoofing on by default)                              a1 (attacker), a2
  net3  isolated                                                            b1
  net4  isolated, antiSpoofing false                                        n1 (attacker), n2
  net5  open                                                                p1, p2
  management 10.98.0.2 / fd98::2 (denied to net1), outside 10.99.0.2 / fd99::2 (allowed)
"""

import copy
import json
import re
import secrets
import socket
import struct
import threading
import time

import pytest

from netlab import IP, Lab, in_netns, sh

pytestmark = pytest.mark.e2e

MGMT = ("10.98.0.2", "fd98::2")
OUTSIDE = ("10.99.0.2", "fd99::2")
ETH_P_ALL, ETH_P_IP, ETH_P_ARP, ETH_P_IPV6, ETH_P_8021Q = 0x0003, 0x0800, 0x0806, 0x86DD, 0x8100
PACKET_OUTGOING = 4
BROADCAST = b"\xff" * 6
SETTLE_S = 1.0  # after the last frame: forwarding and reassembly take microseconds


# --- frames, built by hand ----------------------------------------------------------------------
def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes, vlan: int | None = None) -> bytes:
    tag = struct.pack("!HH", ETH_P_8021Q, vlan) if vlan is not None else b""
    return dst + src + tag + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 1, offset: int = 0, more: bool = False,
         ttl: int = 64) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, (more << 13) | (offset >> 3), ttl, proto,
                       0, socket.inet_aton(src), socket.inet_aton(dst))
    return head[:10] + struct.pack("!H", checksum(head)) + head[12:] + payload


def ipv6(src: str, dst: str, nexthdr: int, payload: bytes, hlim: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nexthdr, hlim, socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + payload


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    if ":" in src:
        return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                + struct.pack("!IxxxB", length, proto))
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!xBH", proto, length)


def tcp(src: str, dst: str, flags: int, payload: bytes, sport: int = 40000, dport: int = 8080) -> bytes:
    head = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0 if not flags & 0x10 else 5000, 5 << 4, flags, 1024, 0, 0)
    seg = head + payload
    csum = checksum(_pseudo(src, dst, 6, len(seg)) + seg)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def udp(src: str, dst: str, payload: bytes, sport: int = 40000, dport: int = 9999) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return seg[:6] + struct.pack("!H", checksum(_pseudo(src, dst, 17, len(seg)) + seg) or 0xFFFF) + seg[8:]


def icmp4(kind: int, body: bytes) -> bytes:
    msg = struct.pack("!BBH", kind, 0, 0) + body
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def icmp6(src: str, dst: str, kind: int, body: bytes) -> bytes:
    msg = struct.pack("!BBH", kind, 0, 0) + body
    return msg[:2] + struct.pack("!H", checksum(_pseudo(src, dst, 58, len(msg)) + msg)) + msg[4:]


def arp(op: int, sha: bytes, spa: str, tha: bytes, tpa: str) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, op, sha, socket.inet_aton(spa), tha, socket.inet_aton(tpa))


def multicast_mac(group: str) -> bytes:
    if ":" in group:
        return b"\x33\x33" + socket.inet_pton(socket.AF_INET6, group)[-4:]
    return b"\x01\x00\x5e" + bytes([socket.inet_aton(group)[1] & 0x7F]) + socket.inet_aton(group)[2:]


TCP_FLAGS = {"fin": 0x01, "null": 0x00, "xmas": 0x29, "ack": 0x10}


class Marker:
    """Unique payload markers: a probe is delivered where its marker is seen."""

    PATTERN = re.compile(rb"ATK[0-9a-f]{10}")

    @staticmethod
    def new() -> bytes:
        return b"ATK" + secrets.token_hex(5).encode()


# --- the attacker's view of the lab -------------------------------------------------------------
class Host:
    """Addresses and MACs the attacker would learn by looking around."""

    def __init__(self, lab: Lab, containers: dict):
        self.lab = lab
        self.c = containers
        self.gw_mac = {}
        for net in lab.networks:
            link = json.loads(sh(IP, "-j", "link", "show", "dev", net.bridge, netns=lab.host).stdout)[0]
            self.gw_mac[net.name] = mac(link["address"])

    def mac_of(self, name: str) -> bytes:
        c = self.c[name]
        prev = self.lab.cache[(c.network.name, c.id)]
        return mac(next(i["mac"] for i in prev["interfaces"] if i.get("sandbox")))

    def routed(self, src: str, frame_payload: bytes, v6: bool) -> bytes:
        """An IP packet from container `src`, addressed to its gateway's MAC (routed by the host)."""
        c = self.c[src]
        return eth(self.gw_mac[c.network.name], self.mac_of(src), ETH_P_IPV6 if v6 else ETH_P_IP, frame_payload)


class Round:
    """Sniffers started first in every target namespace, then every frame sent (twice, 0.3 s
    apart: the first may wait for the host's neighbour resolution), then what each sniffer saw."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.frames: list[tuple[str, bytes]] = []  # (sender netns, frame)
        self.datagrams: list[tuple[str, bytes]] = []  # (address, marker): UDP the host itself sends
        self.actions: list = []  # callables run with the sends (e.g. data on a connected socket)
        self.expect: dict[tuple[str, bytes], bool] = {}  # (target, marker) -> delivered?
        self.labels: dict[tuple[str, bytes], str] = {}

    def send(self, src_netns: str, frame: bytes) -> None:
        self.frames.append((src_netns, frame))

    def host_sends(self, dst: str, marker: bytes) -> None:
        self.datagrams.append((dst, marker))

    def want(self, target: str, marker: bytes, delivered: bool, label: str) -> None:
        self.expect[(target, marker)] = delivered
        self.labels[(target, marker)] = label

    def run(self) -> list[str]:
        """Run the round; the expectations that did not hold."""
        seen = {t: set() for t, _ in self.expect}
        stop = threading.Event()
        socks = [(t, s) for t in seen for s in self._sniffers(t)]
        threads = [threading.Thread(target=self._collect, args=(s, seen[t], stop), daemon=True) for t, s in socks]
        for t in threads:
            t.start()
        senders = {ns: in_netns(ns, self._sender) for ns in {ns for ns, _ in self.frames}}
        udp4, udp6 = (in_netns(self.lab.host, socket.socket, f, socket.SOCK_DGRAM)
                      for f in (socket.AF_INET, socket.AF_INET6))
        try:
            for _ in range(2):
                for ns, frame in self.frames:
                    senders[ns].send(frame)
                for dst, m in self.datagrams:
                    (udp6 if ":" in dst else udp4).sendto(m, (dst, 9999))
                for action in self.actions:
                    action()
                time.sleep(0.3)
            time.sleep(SETTLE_S)
        finally:
            stop.set()
            for t in threads:
                t.join()
            for _, s in socks:
                s.close()
            for s in [*senders.values(), udp4, udp6]:
                s.close()
        return [f"{self.labels[k]}: expected {'delivered' if want else 'dropped'}, was "
                f"{'delivered' if k[1] in seen[k[0]] else 'not delivered'}"
                for k, want in self.expect.items() if (k[1] in seen[k[0]]) != want]

    @staticmethod
    def _sender() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind(("eth0", 0))
        return s

    def _sniffers(self, target: str) -> list[socket.socket]:
        if target == "host-input":  # what the host's own stack accepted: raw sockets see it after INPUT
            kinds = [(socket.AF_INET, socket.IPPROTO_ICMP), (socket.AF_INET, socket.IPPROTO_TCP),
                     (socket.AF_INET6, socket.IPPROTO_ICMPV6), (socket.AF_INET6, socket.IPPROTO_TCP)]
            return [in_netns(self.lab.host, socket.socket, f, socket.SOCK_RAW, p) for f, p in kinds]
        return [in_netns(target, socket.socket, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))]

    @staticmethod
    def _collect(sock: socket.socket, seen: set, stop: threading.Event) -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(65535)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            if sock.family == socket.AF_PACKET and addr[2] == PACKET_OUTGOING:
                continue
            seen.update(Marker.PATTERN.findall(data))


# --- the lab ----------------------------------------------------------------------------------
LABS = [("nftables", 0), ("nftables", 1), ("iptables", 0), ("iptables", 1)]


@pytest.fixture(scope="module", params=LABS, ids=[f"{b}-nf{n}" for b, n in LABS])
def world(request, isolation_bin, can_netns):
    backend, bridge_nf = request.param
    lab = Lab(isolation_bin, bridge_nf=bridge_nf)
    try:
        mgmt = lab.management()
        conf = {"backend": backend}
        net1 = lab.network(["bridge", "isolation"], isolation={**conf, "denyEgress": ["10.98.0.0/16", "fd98::/32"],
                                                               "hostAccess": "deny"})
        net2 = lab.network(["bridge", "isolation"], isolation={**conf, "ingressPolicy": "isolated"})
        net3 = lab.network(["bridge", "isolation"], isolation={**conf, "ingressPolicy": "isolated"})
        net4 = lab.network(["bridge", "isolation"], isolation={**conf, "ingressPolicy": "isolated",
                                                               "antiSpoofing": False})
        net5 = lab.network(["bridge", "isolation"], isolation={**conf, "ingressPolicy": "open"})
        names = {"g1": net1, "g2": net1, "a1": net2, "a2": net2, "b1": net3, "n1": net4, "n2": net4,
                 "p1": net5, "p2": net5}
        containers = {name: lab.add(net) for name, net in names.items()}
        yield lab, Host(lab, containers), mgmt
    finally:
        lab.close()


def _addr(c, v6: bool) -> str:
    return c.ipv6 if v6 else c.ipv4


def _crafted(h: Host, src: str, dst: str, v6: bool) -> dict[str, tuple[bytes, bytes]]:
    """The probes that are no new connection (label -> (marker, frame)), from container `src`
    to address `dst`: TCP FIN, NULL, XMAS and ACK without a connection, an unsolicited echo
    reply with data, and (IPv6) a neighbour-discovery-typed packet sent like ND (hop limit 255)."""
    me = _addr(h.c[src], v6)
    out = {}
    for name, flags in TCP_FLAGS.items():
        m = Marker.new()
        seg = tcp(me, dst, flags, m)
        out[f"tcp {name}"] = (m, h.routed(src, ipv6(me, dst, 6, seg) if v6 else ipv4(me, dst, 6, seg), v6))
    m = Marker.new()
    if v6:
        out["echo reply"] = (m, h.routed(src, ipv6(me, dst, 58, icmp6(me, dst, 129, struct.pack("!HH", 7, 1) + m)), v6))
        m2 = Marker.new()
        ns = icmp6(me, dst, 135, bytes(4) + socket.inet_pton(socket.AF_INET6, dst) + m2)
        out["ND-typed (NS, hop limit 255)"] = (m2, h.routed(src, ipv6(me, dst, 58, ns, hlim=255), v6))
    else:
        out["echo reply"] = (m, h.routed(src, ipv4(me, dst, 1, icmp4(0, struct.pack("!HH", 7, 1) + m)), v6))
    return out


def _fragmented(h: Host, src: str, dst: str, v6: bool) -> dict[str, tuple[bytes, bytes]]:
    """A UDP datagram in two fragments, a marker in each; and (IPv6) one behind a hop-by-hop header."""
    me = _addr(h.c[src], v6)
    first, second = Marker.new(), Marker.new()
    data = udp(me, dst, first + bytes(19) + second + bytes(3))  # 8 + 32 + 16: cut after 40 bytes
    ident = secrets.randbelow(0xFFFF)
    if v6:
        frag = [struct.pack("!BBHI", 17, 0, 0 | 1, ident) + data[:40], struct.pack("!BBHI", 17, 0, 40, ident) + data[40:]]
        frames = [h.routed(src, ipv6(me, dst, 44, f), True) for f in frag]
        m = Marker.new()
        hbh = struct.pack("!BBBB4x", 17, 0, 1, 4)  # next header UDP, PadN of 4
        out = {"hop-by-hop + udp": (m, h.routed(src, ipv6(me, dst, 0, hbh + udp(me, dst, m)), True))}
    else:
        frames = [h.routed(src, ipv4(me, dst, 17, data[:40], ident, 0, True), False),
                  h.routed(src, ipv4(me, dst, 17, data[40:], ident, 40, False), False)]
        out = {}
    out["first fragment"] = (first, frames[0])
    out["non-first fragment"] = (second, frames[1])
    return out


# --- the tests --------------------------------------------------------------------------------
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_deny_egress_drops_every_packet_kind(world, v6):
    """From net1 toward its denied management range, nothing arrives, whatever conntrack makes
    of it; the same packets to the outside (not denied) arrive."""
    lab, h, mgmt = world
    r = Round(lab)
    fam = "IPv6" if v6 else "IPv4"
    for target, dst, delivered in ((mgmt, MGMT[v6], False), (lab.outside, OUTSIDE[v6], True)):
        probes = {**_crafted(h, "g1", dst, v6), **_fragmented(h, "g1", dst, v6)}
        for label, (m, frame) in probes.items():
            for part in ([frame] if not isinstance(frame, list) else frame):
                r.send(h.c["g1"].name, part)
            r.want(target, m, delivered, f"{fam} {label} g1 -> {dst}")
    wrong = r.run()
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_isolated_bridges_drop_packets_that_open_no_connection(world, v6):
    """From an isolated bridge to a container of another isolated bridge: nothing; the same
    packets to the outside arrive."""
    lab, h, _ = world
    r = Round(lab)
    for target, dst, delivered in ((h.c["b1"].name, _addr(h.c["b1"], v6), False), (lab.outside, OUTSIDE[v6], True)):
        for label, (m, frame) in _crafted(h, "a1", dst, v6).items():
            if label.startswith("ND-typed"):  # not ND-shaped: anti-spoofing (on, net2 is isolated) drops it anywhere
                continue
            r.send(h.c["a1"].name, frame)
            r.want(target, m, delivered, f"{label} a1 -> {dst}")
    wrong = r.run()
    assert not wrong, "\n".join(wrong)


def test_host_access_deny_drops_crafted_packets(world):
    """hostAccess deny (net1): crafted packets to the gateway never reach the host's stack, and
    neighbour-discovery types pass only as neighbour discovery (hop limit 255); the same
    packets from the open net5 to its own gateway do."""
    lab, h, _ = world
    r = Round(lab)
    for src, delivered in (("g1", False), ("p1", True)):
        net = h.c[src].network
        for v6, gw in ((False, net.gateway4), (True, net.gateway6)):
            probes = _crafted(h, src, gw, v6)
            for label in ("tcp fin", "echo reply"):
                m, frame = probes[label]
                r.send(h.c[src].name, frame)
                r.want("host-input", m, delivered, f"{label} {src} -> {gw}")
        me, gw = h.c[src].ipv6, net.gateway6
        for hlim, passes in ((64, delivered), (255, True)):  # ND only as ND: hop limit 255
            m = Marker.new()
            ns = icmp6(me, gw, 135, bytes(4) + socket.inet_pton(socket.AF_INET6, gw) + m)
            r.send(h.c[src].name, h.routed(src, ipv6(me, gw, 58, ns, hlim=hlim), True))
            r.want("host-input", m, passes, f"NS-typed hop limit {hlim} {src} -> {gw}")
    wrong = r.run()
    assert not wrong, "\n".join(wrong)


def test_isolated_drops_every_frame_between_ports(world):
    """Between two ports of an isolated bridge (with and without anti-spoofing) no frame
    passes: untagged, 802.1Q VID 0 and VID 1, a non-IP ethertype, broadcast, ARP. The same
    frames between two containers of the open net5 arrive."""
    lab, h, _ = world
    r = Round(lab)
    for src, dst, delivered in (("n1", "n2", False), ("a1", "a2", False), ("p1", "p2", True)):
        s, d = h.c[src], h.c[dst]
        smac, dmac = h.mac_of(src), h.mac_of(dst)
        for label, vlan in (("untagged udp", None), ("VID 0 udp", 0), ("VID 1 udp", 1)):
            m = Marker.new()
            r.send(s.name, eth(dmac, smac, ETH_P_IP, ipv4(s.ipv4, d.ipv4, 17, udp(s.ipv4, d.ipv4, m)), vlan))
            r.want(d.name, m, delivered, f"{label} {src} -> {dst}")
            m = Marker.new()
            r.send(s.name, eth(dmac, smac, ETH_P_IPV6, ipv6(s.ipv6, d.ipv6, 17, udp(s.ipv6, d.ipv6, m)), vlan))
            r.want(d.name, m, delivered, f"{label} (IPv6) {src} -> {dst}")
        for label, dst_mac in (("ethertype 0x88b5", dmac), ("broadcast ethertype 0x88b5", BROADCAST)):
            m = Marker.new()
            r.send(s.name, eth(dst_mac, smac, 0x88B5, m + bytes(40)))
            r.want(d.name, m, delivered, f"{label} {src} -> {dst}")
        m = Marker.new()  # an ARP request carries no marker: pad it with one (Linux ignores the trailer)
        r.send(s.name, eth(BROADCAST, smac, ETH_P_ARP, arp(1, smac, s.ipv4, bytes(6), d.ipv4) + m))
        r.want(d.name, m, delivered, f"ARP request {src} -> {dst}")
    wrong = r.run()
    assert not wrong, "\n".join(wrong)


def _neighbour(lab: Lab, bridge: str, addr: str) -> str | None:
    out = json.loads(sh(IP, "-j", "neigh", "show", "dev", bridge, "to", addr, netns=lab.host).stdout or "[]")
    return out[0].get("lladdr") if out else None


def test_spoofing_is_dropped_at_the_bridge(world):
    """On isolated net2 (anti-spoofing by default) a1 claims a2's addresses: gratuitous ARP,
    an unsolicited neighbour advertisement (its own source, a2's target), an advertisement of
    its own address carrying a2's MAC (each also priority-tagged, VID 0), IP packets from
    a2's address, frames from a2's MAC.
    The host's neighbour entries for a2 keep a2's MAC, the host's traffic for a2 reaches a2
    only, and no forged packet leaves. The same attack from n1 on net4 (isolated,
    antiSpoofing false) succeeds: the control that the attack is real."""
    lab, h, _ = world
    pairs = (("a1", "a2", True), ("n1", "n2", False))
    for attacker, victim, _ in pairs:  # the host knows them, as after any exchange
        for addr in (h.c[victim].ipv4, h.c[victim].ipv6, h.c[attacker].ipv6):
            assert lab.ping(lab.host, addr), addr
    time.sleep(1.1)  # past the neighbour table's locktime (1 s): an ARP may override the entry
    r = Round(lab)
    for attacker, victim, protected in pairs:
        a, v = h.c[attacker], h.c[victim]
        amac, vmac, gw = h.mac_of(attacker), h.mac_of(victim), h.gw_mac[a.network.name]
        for vlan in (None, 0):  # VID 0 (priority-tagged): the host's stack takes it as untagged
            r.send(a.name, eth(BROADCAST, amac, ETH_P_ARP, arp(2, amac, v.ipv4, BROADCAST, v.ipv4), vlan))
            for target, lladdr in ((v.ipv6, amac), (a.ipv6, vmac)):  # a2's address; its own with a2's MAC
                na = icmp6(a.ipv6, "ff02::1", 136, struct.pack("!I", 0x20000000)
                           + socket.inet_pton(socket.AF_INET6, target) + bytes([2, 1]) + lladdr)
                r.send(a.name, eth(multicast_mac("ff02::1"), amac, ETH_P_IPV6,
                                   ipv6(a.ipv6, "ff02::1", 58, na, hlim=255), vlan))
        for v6 in (False, True):
            fam, etype, dst = ("IPv6", ETH_P_IPV6, OUTSIDE[1]) if v6 else ("IPv4", ETH_P_IP, OUTSIDE[0])
            forged, honest, mac_forged = Marker.new(), Marker.new(), Marker.new()
            for src, src_mac, m in ((_addr(v, v6), amac, forged), (_addr(a, v6), amac, honest),
                                    (_addr(a, v6), vmac, mac_forged)):
                pkt = ipv6(src, dst, 17, udp(src, dst, m)) if v6 else ipv4(src, dst, 17, udp(src, dst, m))
                r.send(a.name, eth(gw, src_mac, etype, pkt))
            r.want(lab.outside, forged, not protected, f"{fam} from {victim}'s address, sent by {attacker}")
            r.want(lab.outside, honest, True, f"{fam} from its own address, sent by {attacker}")
            r.want(lab.outside, mac_forged, not protected, f"{fam} from {victim}'s MAC, sent by {attacker}")
    wrong = r.run()

    for attacker, victim, protected in pairs:
        a, v = h.c[attacker], h.c[victim]
        vmac, amac = h.mac_of(victim).hex(":"), h.mac_of(attacker).hex(":")
        for addr, owner in ((v.ipv4, vmac), (v.ipv6, vmac), (a.ipv6, amac)):
            got = _neighbour(lab, v.network.bridge, addr)
            if (got == owner) != protected:
                wrong.append(f"host neighbour {addr} on {v.network.bridge} is {got} after {attacker}'s spoofing "
                             f"(owner {owner}, anti-spoofing {'on' if protected else 'off'})")
    r = Round(lab)  # where the host's own traffic for the victim goes now
    for attacker, victim, protected in pairs:
        a, v = h.c[attacker], h.c[victim]
        for dst in (v.ipv4, v.ipv6):
            m = Marker.new()
            r.host_sends(dst, m)
            r.want(v.name, m, protected, f"host -> {dst} reaches the victim {victim}")
            r.want(a.name, m, not protected, f"host -> {dst} is redirected to {attacker}")
    wrong += r.run()
    assert not wrong, "\n".join(wrong)


def test_broadcast_and_multicast_stay_on_their_bridge(world):
    """g1 (net1) broadcasts and multicasts: its bridge neighbour g2 receives each (the
    control), no container of another bridge nor the outside does; a directed broadcast to
    another bridge's subnet is not forwarded either."""
    lab, h, mgmt = world
    r = Round(lab)
    g1, smac = h.c["g1"], h.mac_of("g1")
    others = [h.c[n].name for n in ("a1", "b1", "n1", "p1")] + [lab.outside, mgmt]
    sends = [("255.255.255.255", BROADCAST, True), ("10.77.1.255", BROADCAST, True),
             ("224.0.0.1", multicast_mac("224.0.0.1"), True), ("239.1.2.3", multicast_mac("239.1.2.3"), True),
             ("ff02::1", multicast_mac("ff02::1"), True), ("ff05::1:3", multicast_mac("ff05::1:3"), True),
             ("10.77.3.255", h.gw_mac[g1.network.name], False)]  # net3's directed broadcast, via the host
    for dst, dmac, local in sends:
        m = Marker.new()
        v6 = ":" in dst
        me = g1.ipv6 if v6 else g1.ipv4
        pkt = ipv6(me, dst, 17, udp(me, dst, m)) if v6 else ipv4(me, dst, 17, udp(me, dst, m))
        r.send(g1.name, eth(dmac, smac, ETH_P_IPV6 if v6 else ETH_P_IP, pkt))
        r.want(h.c["g2"].name, m, local, f"{dst} from g1 on its own bridge")
        for target in others:
            r.want(target, m, False, f"{dst} from g1 at {target}")
    wrong = r.run()
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_only_connections_opened_toward_the_container_pass_a_deny(make_lab, backend):
    """Replies pass a deny only for connections opened toward the container (conntrack reply
    direction), not every established packet: a connection the container opened to the
    management range before its bridge was denied that range (a second conflist on the same
    bridge: the strictest combination applies) carries nothing more there, while its
    connection to the outside, opened alike, keeps carrying data."""
    lab = make_lab()
    mgmt = lab.management()
    first = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    c = lab.add(first)
    held = []

    def hold(sock):
        sock.listen(8)
        while True:
            held.append(sock.accept()[0])  # kept open: the connection stays established

    for ns in (mgmt, lab.outside):
        lab._serve(ns, socket.SOCK_STREAM, 8081, hold)

    def connect(addr):
        s = socket.create_connection((addr, 8081), timeout=5)
        return s

    conns = {addr: in_netns(c.name, connect, addr) for addr in (MGMT[0], OUTSIDE[0], MGMT[1], OUTSIDE[1])}
    shared = copy.deepcopy(first.plugins[0])  # the same bridge, addresses from another part of it
    v4, v6 = shared["ipam"]["ranges"]
    v4[0] |= {"rangeStart": "10.77.1.100", "rangeEnd": "10.77.1.150"}
    v6[0] |= {"rangeStart": "fd77:1::100", "rangeEnd": "fd77:1::150"}
    lab.add(lab.network([shared, {"type": "isolation", "backend": backend,
                                  "denyEgress": ["10.98.0.0/16", "fd98::/32"]}]))
    r = Round(lab)
    try:
        for addr, sock in conns.items():
            m = Marker.new()
            r.actions.append(lambda sock=sock, m=m: sock.send(m))
            denied = addr in MGMT
            r.want(mgmt if denied else lab.outside, m, not denied, f"data on {c.name}'s connection to {addr}")
        wrong = r.run()
    finally:
        for sock in [*conns.values(), *held]:
            sock.close()
    assert not wrong, "\n".join(wrong)
