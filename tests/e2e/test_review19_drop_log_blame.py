"""Review of issue 19: the drop log never blames a container for what an interface nobody
registered sent in its name.

A stranger S is plugged into network N's bridge by hand (no CNI ADD). It takes container V's
MAC and V's IPv4 address and sends to a blocked port outside. The kernel knows the port the
packet came in by (br_netfilter: NFLOG's physindev; without it the bridge's forwarding
database, which learnt V's MAC on S's port from that very frame), and that port is no
registered container's. Before the fix `isolation drops` named V, with no note, because
V's recorded MAC matched. Now it says "unknown" and "spoofed", naming V as the one claimed.

The drop is logged by a rule of our own written by hand, exactly in the drop log's form (as in
test_e2e_drop_log_reader.py). Positive controls: V's own blocked attempt, just before, is
attributed to V; V reaches the open port; S reaches it from its own address.
"""

import time

import pytest

from frames import mac_of
from netlab import IP, sh, tcp_connect

pytestmark = pytest.mark.e2e
OUTSIDE4, BLOCKED_TCP, OPEN_TCP = "10.99.0.2", 8081, 8080
ONE_SYN_S = 0.5


@pytest.mark.parametrize("backend,bridge_nf", [("nftables", 1), ("iptables", 0)])
def test_a_stranger_with_a_containers_mac_and_address_is_not_that_container(make_lab, backend, bridge_nf):
    lab = make_lab(bridge_nf=bridge_nf)
    net = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    v = lab.add(net)
    s = lab.stranger(net)
    lab.listen(lab.outside, BLOCKED_TCP)
    rule = f'log group 1907 prefix "isolation egress-deny {net.bridge}" drop'
    sh("nft", "-f", "-", input="\n".join([
        "table inet droplogtest {", " chain forward {", "  type filter hook forward priority -10; policy accept;",
        f"  ip saddr {v.ipv4} ip daddr {OUTSIDE4} tcp dport {BLOCKED_TCP} {rule}", " }", "}"]), netns=lab.host)
    assert lab.tcp(s, OUTSIDE4, OPEN_TCP), "positive control: the stranger gets out from its own address"
    reader = lab.follow_drops("--count", "2", "--timeout", "60")

    assert lab.tcp(v.name, OUTSIDE4, OPEN_TCP), "positive control: V gets out"
    assert not tcp_connect(v.name, OUTSIDE4, BLOCKED_TCP, timeout=ONE_SYN_S)  # logged: V's own
    time.sleep(1.5)  # past the reader's one-second memory of where the bridge saw V's MAC
    sh(IP, "link", "set", "dev", "eth0", "address", mac_of(v.name, "eth0"), netns=s)
    sh(IP, "addr", "add", f"{v.ipv4}/32", "dev", "eth0", netns=s)
    assert not tcp_connect(s, OUTSIDE4, BLOCKED_TCP, timeout=ONE_SYN_S, source=v.ipv4)  # logged: S as V

    rc, got, said = reader.finish()
    assert rc == 0 and len(got) == 2, said
    own, forged = got
    assert (own["container"], own["note"]) == (v.id, None), own
    assert forged["source"] == v.ipv4 and forged["sourceMac"] == mac_of(v.name, "eth0"), forged
    assert forged["container"] == "unknown", f"blamed {forged['container']} for the stranger's packet: {forged}"
    assert "spoofed" in forged["note"] and v.id in forged["note"], forged
