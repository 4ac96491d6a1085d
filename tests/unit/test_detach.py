"""Detaching attachments (plugin.lifecycle): which ports have departed, one registry write for
many, and a damaged registry never taking a bridge's rules while unknown ports remain."""

from fakes import FakeBackend


def test_detaching_many_attachments_writes_the_registry_once(tmp_path, monkeypatch):
    """Issue 15 item 8: a vanished bridge with N attachments cost N rewrites (and fsyncs)
    of the registry under the host lock; now one, whatever N."""
    import plugin.backends as backends
    from plugin import topology
    from plugin.lifecycle import detach
    from plugin.registry import Attachment, Registry

    log = []
    monkeypatch.setattr(backends, "make", lambda name: FakeBackend(name, log=log))
    monkeypatch.setattr(topology, "read", lambda: topology.Links())  # the bridge is gone
    reg = Registry.load(str(tmp_path))
    doomed = [Attachment("net", f"c{i}", "eth0", "br0", f"veth{i}", "isolated", "nftables") for i in range(50)]
    kept = Attachment("other", "k", "eth0", "br1", "vethk", "same-bridge", "nftables")
    for att in [*doomed, kept]:
        reg.put(att)
    reg.save()
    reg = Registry.load(str(tmp_path))
    assert detach(reg, doomed) == []
    assert reg.writes == 1, f"{reg.writes} registry writes for 50 attachments"
    assert list(Registry.load(str(tmp_path)).attachments) == [kept.key]
    assert len(log) == 50 and all(r.bridge == "br0" for r in log)
    # the bridge's rules go once, with the last of them; never everything (br1 remains)
    assert [r.isolate for r in log] == [False] * 49 + [True] and not any(r.last for r in log)


def test_damaged_registry_detach_keeps_the_bridge_while_unknown_ports_remain(tmp_path, monkeypatch):
    """With the registry damaged, the departing attachment takes only its port while its
    bridge still has ports nothing registered accounts for; its bridge's rules go when
    only its own port is left."""
    import plugin.backends as backends
    from plugin import topology
    from plugin.lifecycle import detach
    from plugin.policy import port_only
    from plugin.registry import Attachment, Registry

    log = []
    monkeypatch.setattr(backends, "make", lambda name: FakeBackend(name, log=log))
    reg = Registry.load(str(tmp_path))
    a = Attachment("net", "c0", "eth0", "br0", "veth0", "same-bridge", "iptables")
    b = Attachment("net", "c1", "eth0", "br0", "veth1", "same-bridge", "iptables")
    reg.put(a), reg.put(b), reg.save()
    lines = open(reg.path).read().splitlines()
    with open(reg.path, "w") as f:  # c1's line torn
        f.write("\n".join(lines[:2] + [lines[2][:30]] + lines[3:]) + "\n")
    reg = Registry.load(str(tmp_path))
    assert list(reg.attachments) == [a.key] and reg.damaged
    monkeypatch.setattr(topology, "read", lambda: topology.Links(ports={"br0": ["veth0", "veth1"]}))
    assert detach(reg, [a]) == []
    assert log[-1] == port_only(log[-1]) and not log[-1].isolate and log[-1].guard is None, log[-1]
    reg.put(a)
    monkeypatch.setattr(topology, "read", lambda: topology.Links(ports={"br0": ["veth0"]}))  # c1 has gone since
    assert detach(reg, [a]) == []
    assert log[-1].isolate and log[-1].within


def test_departed_is_fail_closed(monkeypatch):
    """Item 6: only a known port that is gone, or re-created under its name (another
    ifindex), has vanished; an unknown port, or an index never recorded, never counts."""
    from plugin import topology
    from plugin.lifecycle import departed
    from plugin.registry import Attachment

    def att(port, index, bridge="br0"):
        return Attachment("n", f"c-{port}-{index}", "eth0", bridge, port, "same-bridge", "nftables", portindex=index)

    monkeypatch.setattr(topology, "read", lambda: topology.Links(interfaces={"br0": 2, "veth1": 11, "veth2": 12},
                                                                 bridges=frozenset({"br0"})))
    same, reborn, gone, unknown, unrecorded = (att("veth1", 11), att("veth2", 99), att("veth3", 13), att(None, None),
                                               att("veth1", None))
    on_gone_bridge = att("veth1", 11, "br9")
    assert departed([same, reborn, gone, unknown, unrecorded, on_gone_bridge]) == ([on_gone_bridge], [reborn, gone])
