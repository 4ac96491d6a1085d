"""Review of issue 19: a bridge forwarding database swollen by spoofed MACs must not make the
drop log's sender lookup expensive.

Without anti-spoofing (the default of same-bridge and open networks) a container can send
frames from as many source MACs as it likes; the bridge learns each one. The drop log asks
the database where a logged packet's MAC was last seen (Senders.fdb_port) for every new MAC.
It used to dump and parse the whole database each time: with 20,000 entries, 5.5 s of the
agent's CPU per logged packet (measured on this branch before the fix). Now one entry is
asked for by MAC: milliseconds, whatever the database holds.

Setup: a lab network with container C; 20,000 static entries (stand-ins for learnt spoofed
MACs) on C's port. Hand-derived expectations: C's own MAC, learnt once C has sent a packet
(positive control: it reaches the gateway), is on C's port; a MAC of the 20,000 is on C's port;
a MAC nobody used is nowhere (None); 20 lookups of distinct MACs take well under a second.
"""

import time

import pytest

from frames import mac_of
from netlab import IP, in_netns, sh

pytestmark = pytest.mark.e2e
ENTRIES = 20000


def test_sender_lookup_stays_cheap_when_spoofed_macs_fill_the_bridge(lab, tmp_path):
    from plugin.droplog import Senders

    net = lab.network(["bridge", "isolation"], isolation={"ingressPolicy": "same-bridge", "antiSpoofing": False})
    c = lab.add(net)
    port = lab.host_port(c)
    batch = tmp_path / "fdb.batch"
    batch.write_text("".join(f"fdb add 02:5e:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:01 dev {port} "
                             "master static\n" for i in range(ENTRIES)))
    sh("bridge", "-batch", str(batch), netns=lab.host)
    assert lab.ping(c.name, net.gateway4), "positive control: C reaches its gateway (the bridge learns its MAC)"
    index = int(sh("cat", f"/sys/class/net/{port}/ifindex", netns=lab.host).stdout)

    def lookups():
        senders = Senders(str(tmp_path))
        own = senders.fdb_port(net.bridge, mac_of(c.name, "eth0"))
        forged = senders.fdb_port(net.bridge, "02:5e:00:01:02:01")
        nobody = senders.fdb_port(net.bridge, "02:5f:00:00:00:01")
        started = time.monotonic()
        for i in range(20):
            senders.fdb_port(net.bridge, f"02:5e:00:00:{i:02x}:01")
        return own, forged, nobody, time.monotonic() - started

    own, forged, nobody, took = in_netns(lab.host, lookups)
    assert (own, forged, nobody) == (index, index, None)
    assert took < 1.0, f"20 lookups took {took:.1f} s with {ENTRIES} entries in the database"
