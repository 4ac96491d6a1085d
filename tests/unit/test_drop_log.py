"""The drop log's logic without the kernel: who sent a logged packet (plugin.droplog.identify),
the record and line `isolation drops` prints, and the agent's ring file (bounded, numbered so
that a follower never prints a record twice, across cuts and agent restarts)."""

import json
import os

from plugin.droplog import RING_FILE, Ring, came_from, describe, identify, line, read
from plugin.nflog import Logged
from plugin.packets import Headers
from plugin.registry import Attachment

A = Attachment("net1", "ctr-a", "eth0", "tb1", "vetha", "same-bridge", "nftables", ("10.77.1.2/24", "fd77:1::2/64"),
               portindex=11)
B = Attachment("net1", "ctr-b", "eth0", "tb1", "vethb", "isolated", "nftables", ("10.77.1.3/24",),
               portindex=12, mac="02:00:00:00:00:0b", spoof=("10.77.1.3",))
ON_BRIDGE = [A, B]


def test_the_port_a_packet_came_in_by_decides_first():
    assert identify(ON_BRIDGE, "10.77.1.2", "aa:aa:aa:aa:aa:aa", 11, None) == (A, None)
    sender, note = identify(ON_BRIDGE, "10.77.1.3", None, 11, None)  # A's port, B's address
    assert sender is A and note == "spoofed source: 10.77.1.3 is not one of its addresses"
    sender, note = identify(ON_BRIDGE, "10.77.1.3", "02:00:00:00:00:0b", None, 11)  # the bridge saw that MAC on A's
    assert sender is A and "spoofed source" in note


def test_then_the_recorded_mac_then_the_address():
    assert identify(ON_BRIDGE, "10.77.1.3", "02:00:00:00:00:0B", None, None) == (B, None)
    assert identify(ON_BRIDGE, "fd77:1:0::2", "02:11:22:33:44:55", None, None) == (A, None), "A's MAC was not recorded"
    sender, note = identify(ON_BRIDGE, "10.77.1.3", "02:11:22:33:44:55", None, None)
    assert sender is None
    assert note == "spoofed: 10.77.1.3 is net1/ctr-b/eth0's address, but MAC 02:11:22:33:44:55 is not its MAC"


def test_a_packet_nobody_registered_sent_is_from_unknown():
    sender, note = identify(ON_BRIDGE, "10.77.1.250", "02:99:99:99:99:99", 99, None)
    assert sender is None
    assert note == ("no container registered on this bridge has MAC 02:99:99:99:99:99 or address 10.77.1.250: "
                    "spoofed, or an interface the plugin did not attach")
    assert identify([], None, None, None, None) == (None, "the packet names no source")


class FakeSenders:
    def __init__(self, atts):
        self.atts = atts

    def on(self, bridge):
        return [a for a in self.atts if a.bridge == bridge]

    @staticmethod
    def fdb_port(bridge, mac):
        return None

    def entered_by(self, bridge, ifname):
        by_bridge = {}
        for a in self.atts:
            by_bridge.setdefault(a.bridge, []).append(a)
        return came_from(by_bridge, bridge, ifname)


def logged(prefix: str, headers: Headers, physindev=None, mac=None, indev=None) -> Logged:
    return Logged(time=1765130048.25, family=2, prefix=prefix, indev=indev, outdev=None, physindev=physindev,
                  mac=mac, headers=headers)


def test_the_record_and_the_line_of_a_drop():
    tcp = Headers(family="ipv4", source="10.77.1.2", destination="10.99.0.2", protocol="tcp", source_port=40000,
                  destination_port=8081)
    rec = describe(logged("isolation egress-deny tb1", tcp, mac="02:42:0a:4d:01:02"), FakeSenders(ON_BRIDGE))
    assert {k: rec[k] for k in ("time", "reason", "key", "bridge", "network", "container", "ifname", "port", "source",
                                "destination", "protocol", "destinationPort", "sourcePort", "note")} == {
        "time": "2025-12-07T17:54:08.250Z", "reason": "egress-deny", "key": "denyEgress", "bridge": "tb1",
        "network": "net1", "container": "ctr-a", "ifname": "eth0", "port": "vetha", "source": "10.77.1.2",
        "destination": "10.99.0.2", "protocol": "tcp", "destinationPort": 8081, "sourcePort": 40000, "note": None}
    assert line(rec) == ("2025-12-07T17:54:08.250Z egress-deny   net=net1 container=ctr-a if=eth0 src=10.77.1.2 "
                         "dst=10.99.0.2 tcp/8081 key=denyEgress")
    rogue = describe(logged("isolation cross-network tb1", Headers(family="ipv4", source="10.77.1.250",
                                                                   destination="10.77.2.2", protocol="icmp",
                                                                   icmp_type=8, icmp_code=0),
                            mac="02:99:99:99:99:99"), FakeSenders(ON_BRIDGE))
    assert (rogue["container"], rogue["network"], rogue["key"]) == ("unknown", "net1", "ingressPolicy")
    assert line(rogue).startswith("2025-12-07T17:54:08.250Z cross-network net=net1 container=unknown if=- "
                                  "mac=02:99:99:99:99:99 src=10.77.1.250 dst=10.77.2.2 icmp echo-request "
                                  "key=ingressPolicy note=\"no container registered")
    json.dumps(rogue)  # --json prints it as it is


# internal and direct-access drops may name the bridge the packet was going into (tb2 here)
C = Attachment("net2", "ctr-c", "eth0", "tb2", "vethc", "same-bridge", "nftables", ("10.77.2.2/24",), portindex=21)
R = Attachment("net3", "ctr-r", "eth0", "rt.net3", "vethr", "same-bridge", "nftables", ("10.77.3.2/24",),
               portindex=31, routed=True)
BRIDGES = {"tb1": ON_BRIDGE, "tb2": [C], "rt.net3": [R]}


def test_an_inbound_drop_is_traced_to_the_bridge_it_came_from_or_to_no_container():
    assert came_from(BRIDGES, "tb2", "tb2") == ("tb2", [C])  # out of the internal bridge: its own
    assert came_from(BRIDGES, "tb2", None) == ("tb2", [C])  # not told: the prefix's, as before
    assert came_from(BRIDGES, "tb2", "tb1") == ("tb1", ON_BRIDGE)  # from another registered bridge
    assert came_from(BRIDGES, "tb2", "vethr") == ("rt.net3", [R])  # from a routed segment's member
    assert came_from(BRIDGES, "rt.net3", "vethr") == ("rt.net3", [R])
    assert came_from(BRIDGES, "tb2", "eth1") is None  # a LAN: nobody of ours
    assert came_from(BRIDGES, "tb2", "vetha") is None  # a bridge port is never an IP-layer input


def test_a_direct_access_drop_from_the_lan_is_no_containers_and_an_internal_one_is_its_senders():
    ping = Headers(family="ipv4", source="10.77.1.2", destination="10.77.2.2", protocol="icmp", icmp_type=8,
                   icmp_code=0)  # the LAN host uses A's address: still nobody's on tb2, never A's
    lan = describe(logged("isolation direct-access tb2", ping, mac="02:99:99:99:99:99", indev=1),
                   FakeSenders([A, B, C]))  # ifindex 1: lo, an interface no network of ours is on
    assert (lan["container"], lan["network"], lan["ifname"], lan["port"], lan["in"], lan["key"]) == (
        None, None, None, None, "lo", "directAccess")
    assert lan["note"] == "from outside: came in by lo, which no network of the plugin is on (a host, not a container)"
    assert line(lan).startswith("2025-12-07T17:54:08.250Z direct-access net=- container=- if=- mac=02:99:99:99:99:99 "
                                "src=10.77.1.2 dst=10.77.2.2 icmp echo-request key=directAccess note=")
    out = describe(logged("isolation internal tb2", Headers(family="ipv4", source="10.77.2.2",
                                                            destination="10.99.0.2", protocol="icmp")),
                   FakeSenders([A, B, C]))
    assert (out["container"], out["network"], out["key"], out["note"]) == ("ctr-c", "net2", "internal", None)
    json.dumps(lan)


def test_prefixes_that_are_not_ours_are_not_drops():
    tcp = Headers(family="ipv4", source="10.77.1.2", destination="10.99.0.2", protocol="tcp")
    for prefix in ("", "isolation", "isolation egress-deny", "isolation nonsense tb1", "ulogd egress-deny tb1",
                   "isolation egress-deny tb1 extra"):
        assert describe(logged(prefix, tcp), FakeSenders(ON_BRIDGE)) is None, prefix


def test_the_ring_keeps_the_last_records_and_numbers_them_across_cuts_and_restarts(tmp_path):
    os.chmod(tmp_path, 0o700)
    path = str(tmp_path / RING_FILE)
    ring = Ring(path, keep=3)
    for i in range(5):
        ring.append({"n": i})
    assert [r["n"] for r in read(path)] == [0, 1, 2, 3, 4] and ring.count == 5
    ring.append({"n": 5})  # the sixth record: 2 * keep, cut back to the last 3
    assert [(r["seq"], r["n"]) for r in read(path)] == [(4, 3), (5, 4), (6, 5)]
    ring.append({"n": 6})
    assert [r["seq"] for r in read(path)] == [4, 5, 6, 7]
    again = Ring(path, keep=3)  # an agent restarted: numbering goes on
    again.append({"n": 7})
    assert [r["seq"] for r in read(path)] == [4, 5, 6, 7, 8]
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    with open(path, "a") as f:
        f.write('{"seq": 9, "n"')  # a line cut short by a crash
    assert [r["seq"] for r in read(path)] == [4, 5, 6, 7, 8]
