"""Unit tests of the pure pieces: configuration, names, results, policy."""

import pytest

from plugin.model import parse
from plugin.errors import CniError
from plugin.links import valid_name
from plugin.policy import intent_for
from plugin.result import convert


def test_config_defaults():
    conf = parse({"cniVersion": "1.0.0", "type": "isolation", "name": "n", "runtimeConfig": {}})
    assert (conf.ingressPolicy, conf.backend) == ("same-bridge", "auto")


@pytest.mark.parametrize(
    "raw,field",
    [
        ({"type": "isolation", "ingressPolicy": "Same-Bridge"}, "ingressPolicy"),
        ({"type": "isolation", "backend": "nft"}, "backend"),
        ({"ingressPolicy": "open"}, "type"),
    ],
)
def test_config_errors_name_the_field(raw, field):
    with pytest.raises(CniError) as err:
        parse(raw)
    assert err.value.code == 7 and err.value.msg.startswith(f"invalid configuration: {field}:")


@pytest.mark.parametrize("name", ["br0", "cni-podman1", "nerdctl0", "buildkit0", "a", "x_y.z", "a" * 15])
def test_valid_names(name):
    assert valid_name(name)


@pytest.mark.parametrize("name", ["", "a" * 16, "-x", ".x", "br+", "br!", "b r", "b\tr", 'b"', "b'", "b/r", "b:r", None, 3])
def test_invalid_names(name):
    assert not valid_name(name)


def test_policies():
    assert (intent_for("b", "open").isolate, intent_for("b", "open").drop_intra) == (False, False)
    assert (intent_for("b", "same-bridge").isolate, intent_for("b", "same-bridge").drop_intra) == (True, False)
    assert (intent_for("b", "isolated").isolate, intent_for("b", "isolated").drop_intra) == (True, True)


def test_convert_between_result_shapes():
    v1 = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}, {"address": "fd00::2/64"}], "dns": {}}
    legacy = convert(v1, "0.3.1")
    assert legacy == {
        "cniVersion": "0.3.1",
        "ips": [{"address": "10.0.0.2/24", "version": "4"}, {"address": "fd00::2/64", "version": "6"}],
        "dns": {},
    }
    assert convert(legacy, "1.1.0") == {**v1, "cniVersion": "1.1.0"}
    assert v1["cniVersion"] == "1.0.0"  # the input is not modified


class _Fake:
    def __init__(self, name, reason):
        self.name, self._reason = name, reason

    def unavailable_reason(self):
        return self._reason


@pytest.mark.parametrize(
    "configured,nft_reason,ipt_reason,chosen,code",
    [
        ("auto", None, None, "nftables", None),
        ("auto", "no libnftables", None, "iptables", None),
        ("auto", "no libnftables", "no iptables-restore", None, 103),
        ("nftables", "kernel refuses", None, None, 103),
        ("iptables", None, None, "iptables", None),
    ],
)
def test_backend_selection(monkeypatch, configured, nft_reason, ipt_reason, chosen, code):
    import plugin.backends as backends

    reasons = {"nftables": nft_reason, "iptables": ipt_reason}
    monkeypatch.setattr(backends, "make", lambda name: _Fake(name, reasons[name]))
    if code is None:
        assert backends.select(configured).name == chosen
    else:
        with pytest.raises(CniError) as err:
            backends.select(configured)
        assert err.value.code == code
        assert all(r in err.value.details for r in (nft_reason, ipt_reason) if r and configured != "iptables")


def _att(bridge, policy, port, container="c"):
    from plugin.registry import Attachment

    return Attachment("net", container, "eth0", bridge, port, policy, "nftables")


def test_release_keeps_what_others_still_need():
    from plugin.policy import NO_GUARD, Release, release

    gone = _att("br0", "isolated", "veth0", "c0")
    # another container stays on br0: nothing of the bridge goes
    assert release(gone, [_att("br0", "isolated", "veth1", "c1")]) == Release(
        bridge="br0", peers=frozenset(), guard=NO_GUARD, last_guard=True, last_spoof=True)
    # br0 empties, br1 (same-bridge) stays: br0's rules, its published-port exception and the
    # intra-bridge table go, not everything
    assert release(gone, [_att("br1", "same-bridge", "veth1", "c1")]) == Release(
        bridge="br0", isolate=True, drop_intra=True, within=True, published=True, peers=frozenset(), guard=NO_GUARD,
        last_guard=True, last_spoof=True)
    # only an `open` attachment remains: nothing enforces anything any more
    assert release(gone, [_att("br1", "open", "veth1", "c1")]) == Release(
        bridge="br0", isolate=True, drop_intra=True, within=True, published=True, peers=frozenset(), guard=NO_GUARD,
        last=True, last_guard=True, last_spoof=True)
    assert release(_att("br0", "open", None), []).last


def test_release_of_anti_spoofing_and_of_the_isolation_flag():
    """A departing attachment's anti-spoofing elements go with it (the table with the last
    one); when the last `isolated` attachment leaves a bridge shared with another
    conflist's attachments, their ports lose the isolation flag."""
    from plugin.policy import Spoof, intent_of, release
    from plugin.registry import Attachment

    def att(container, port, policy="isolated", ips=("10.0.0.2",)):
        return Attachment("net", container, "eth0", "br0", port, policy, "nftables", mac="02:00:00:00:00:01",
                          spoof=ips)

    gone, stays = att("c0", "veth0"), att("c1", "veth1")
    assert intent_of(gone).spoof == Spoof("veth0", "02:00:00:00:00:01", ("10.0.0.2",))
    r = release(gone, [stays])
    assert r.spoofs == (Spoof("veth0", "02:00:00:00:00:01", ("10.0.0.2",)),) and not r.last_spoof and r.unflag == ()
    assert release(gone, []).last_spoof
    mixed = release(gone, [att("c2", "veth2", "same-bridge", None)])
    assert mixed.unflag == ("veth2",) and mixed.last_spoof
    assert intent_of(att("c3", "veth3", ips=None)).spoof is None
def test_release_takes_the_grants_no_remaining_attachment_needs():
    """Issue 14: a network that left its isolationGroup, or turned allowPublishedPorts off,
    keeps the old grant only while an attachment of the old configuration remains."""
    from plugin.policy import release
    from plugin.registry import Attachment

    def att(bridge, container, group=None, published=True):
        return Attachment("net", container, "eth0", bridge, None, "same-bridge", "nftables", (), published, group)

    old_a = att("brA", "old", group="g")
    b, d = att("brB", "b", group="g"), att("brD", "d", group="g")
    # A's conflist dropped the group; its new container stays, its old one leaves
    r = release(old_a, [att("brA", "new"), b, d])
    assert (r.isolate, r.peers) == (False, frozenset())
    # while another old-configuration container remains, the pairs stay
    assert release(old_a, [att("brA", "old2", group="g"), b, d]).peers == {"brB", "brD"}
    # A moved to group h, where brE is: only the pair with brE is still needed
    assert release(old_a, [att("brA", "new", group="h"), b, att("brE", "e", group="h")]).peers == {"brE"}
    # allowPublishedPorts turned off: the departing attachment was published, no remaining one is
    assert release(att("brA", "old"), [att("brA", "new", published=False)]).published
    assert not release(att("brA", "old"), [att("brA", "new")]).published
    # the departing one did not publish but nobody remaining does either: nothing to keep
    assert release(att("brA", "old", published=False), [att("brA", "new", published=False)]).published


def test_registry_round_trip_and_damage(tmp_path):
    import json
    import os

    from plugin.registry import Registry

    reg = Registry.load(str(tmp_path))
    assert reg.attachments == {}
    att = _att("br0", "isolated", "veth0")
    reg.attachments[att.key] = att
    reg.backends["iptables"] = {"created_filter": ["ipv4"]}
    reg.save()
    assert oct(os.stat(reg.path).st_mode & 0o777) == "0o600"
    assert [f for f in os.listdir(tmp_path)] == ["registry.json"]  # no temporary file left behind
    again = Registry.load(str(tmp_path))
    assert again.attachments == {att.key: att} and again.backends == reg.backends
    assert json.loads(open(reg.path).read())["format"] == 1

    with open(reg.path, "w") as f:
        f.write('{"format": 1, "attachments": [{"network": ')  # damage from outside
    damaged = Registry.load(str(tmp_path))
    assert damaged.attachments == {} and damaged.damaged and "0 attachment(s) kept" in damaged.damaged
    assert os.path.exists(reg.path + ".damaged"), "the damaged file is kept for inspection"
    assert Registry.load(str(tmp_path)).damaged == damaged.damaged, "the damage stays known to later runs"


def test_egress_values_are_canonicalised():
    conf = parse({"type": "isolation", "denyEgress": ["10.1.2.3/8", "10.0.0.0/9", "192.168.1.7", "fd00::1/8"],
                  "allowEgress": [{"cidr": "10.0.0.53", "protocol": "udp", "ports": [53, "50-60", "8000-8100", 8101]}],
                  "hostAccess": "deny"})
    assert conf.denyEgress == ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]  # merged, host bits cleared
    assert conf.allowEgress[0].cidr == "10.0.0.53/32"
    assert conf.allowEgress[0].ports == ["50-60", "8000-8101"]  # 53 lies in 50-60; 8101 extends the range
    assert [(h.protocol, h.port) for h in conf.allowHostPorts] == [("tcp", "53"), ("udp", "53")]  # the default
    assert parse({"type": "isolation"}).allowHostPorts is not None


def _guard(deny=(), allow=(), host_deny=False, ports=()):
    from plugin.policy import Guard

    return Guard(tuple(deny), tuple(allow), host_deny, tuple(ports))


def test_guards_of_one_bridge_merge_to_the_strictest():
    from plugin.policy import NO_GUARD, Hole, merge

    dns, web = Hole("udp", ("53",), "10.0.0.53/32"), Hole("tcp", ("80",), "10.0.0.80/32")
    first = _guard(["10.0.0.0/8"], [dns, web], True, [Hole("tcp", ("53",)), Hole("udp", ("53",))])
    second = _guard(["10.0.0.0/16", "192.168.0.0/16"], [dns], True, [Hole("udp", ("53",))])
    assert merge([first, first]) == first
    assert merge([first, NO_GUARD]) == first  # an attachment without a guard adds nothing
    assert merge([first, second]) == _guard(["10.0.0.0/8", "192.168.0.0/16"], [dns], True, [Hole("udp", ("53",))])
    assert merge([NO_GUARD, NO_GUARD]) == NO_GUARD


def test_guard_round_trips_through_the_registry_form():
    from plugin.policy import Guard, Hole

    g = _guard(["10.0.0.0/8", "fd00::/8"], [Hole("tcp", ("53", "80-90"), "10.0.0.53/32")], True, [Hole("icmp")])
    assert Guard.from_json(g.to_json()) == g
    assert Guard.from_json(None) == Guard() and Guard().to_json() is None


def test_log_to_syslog_socket(tmp_path, monkeypatch):
    """logFile "syslog": one datagram in syslog format to the local socket, error severity for
    failures."""
    import socket
    import time

    from plugin import log

    path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    monkeypatch.setattr(log, "SYSLOG_SOCKET", path)
    log.record("syslog", "info", "ADD", {"container": "c1", "result": "ok"}, time.monotonic())
    log.record("syslog", "info", "DEL", {"container": "c1", "result": "error", "code": 11}, time.monotonic())
    first, second = server.recv(4096).decode(), server.recv(4096).decode()
    assert first.startswith("<30>isolation[") and ": ADD container=c1 result=ok duration_ms=" in first
    assert second.startswith("<27>isolation[") and "result=error code=11" in second
    server.close()


def test_record_behaves_like_the_dataclasses_it_replaces():
    import pytest as _pytest

    from plugin.record import Factory, as_dict, value_class

    @value_class(frozen=True, unhashed=("note",))
    class Point:
        x: int
        y: int = 0
        note: dict | None = None

    @value_class
    class Bag:
        items: dict = Factory(dict)

    p = Point(1, y=2)
    assert (p.x, p.y, p.note) == (1, 2, None) and p == Point(1, 2) and p != Point(2, 1)
    assert hash(Point(1, 2, {"a": 1})) == hash(Point(1, 2)) and repr(p) == "Point(x=1, y=2, note=None)"
    assert as_dict(p) == {"x": 1, "y": 2, "note": None}
    with _pytest.raises(AttributeError):
        p.x = 3
    with _pytest.raises(TypeError):
        Point()
    with _pytest.raises(TypeError):
        Point(1, x=1)
    a, b = Bag(), Bag()
    a.items["k"] = 1
    assert b.items == {} and a != b, "each instance gets its own default"
    with _pytest.raises(TypeError):
        hash(a)


def test_registry_lines_are_reused_only_for_unchanged_attachments(tmp_path):
    from plugin.registry import Attachment, Registry

    reg = Registry.load(str(tmp_path))
    guard = {"deny": ["10.0.0.0/8"], "allow": [], "hostDeny": True, "hostPorts": [["udp", ["53"]]]}
    for i in range(3):
        a = Attachment("net", f"c{i}", "eth0", "br0", f"veth{i}", "same-bridge", "nftables", ("10.0.0.2/24",),
                       guard=guard if i == 1 else None)
        reg.attachments[a.key] = a
    reg.save()
    again = Registry.load(str(tmp_path))
    assert again.attachments == reg.attachments
    changed = Attachment("net", "c2", "eth0", "br1", "veth9", "isolated", "iptables")  # same key, new content
    again.attachments[changed.key] = changed
    del again.attachments[("net", "c0", "eth0")]
    again.save()
    third = Registry.load(str(tmp_path))
    assert third.attachments == {("net", "c1", "eth0"): reg.attachments[("net", "c1", "eth0")], changed.key: changed}
    empty = Registry.load(str(tmp_path))
    empty.attachments.clear()
    empty.save()
    assert Registry.load(str(tmp_path)).attachments == {}


def test_registry_add_path_decodes_only_what_it_asks_for(tmp_path):
    """ADD and CHECK find one bridge's or group's attachments by their lines and write the
    others back untouched; a later full read sees everything, the replaced one once."""
    from plugin.registry import Attachment, Registry

    reg = Registry.load(str(tmp_path))
    made = [Attachment("net", f"c{i}", "eth0", f"br{i % 3}", None, "same-bridge", "nftables", ("10.0.0.2/24",),
                       group="g1" if i == 4 else None) for i in range(6)]
    for a in made:
        reg.put(a)
    reg.save()
    before = [line.rstrip(",") for line in open(reg.path).read().splitlines()]
    lazy = Registry.load(str(tmp_path))
    assert sorted(a.container for a in lazy.matching("br1")) == ["c1", "c4"]
    assert sorted(a.container for a in lazy.matching("br0", "g1")) == ["c0", "c3", "c4"]
    assert lazy.get(("net", "c5", "eth0")) == made[5] and lazy.get(("net", "c9", "eth0")) is None
    replaced = Attachment("net", "c2", "eth0", "br7", None, "isolated", "nftables")
    lazy.put(replaced)
    lazy.put(Attachment("net", "c6", "eth0", "br0", None, "same-bridge", "nftables"))
    lazy.save()
    after = [line.rstrip(",") for line in open(reg.path).read().splitlines()]
    kept = [line for line in before[:-1] if '"container":"c2"' not in line]  # header + 5 lines, "]}" left out
    assert after[:len(kept)] == kept and len(after) == len(kept) + 3, "the others written back as they were"
    full = Registry.load(str(tmp_path)).attachments
    assert len(full) == 7 and full[replaced.key] == replaced
    assert [a.container for a in Registry.load(str(tmp_path)).on_bridge("br0", "nftables")] == ["c0", "c3", "c6"]


def test_registry_damage_found_by_a_lazy_read_is_marked(tmp_path):
    import os

    from plugin.registry import Attachment, Registry

    reg = Registry.load(str(tmp_path))
    reg.put(Attachment("net", "c0", "eth0", "br0", None, "same-bridge", "nftables"))
    reg.save()
    text = open(reg.path).read().replace('"policy":"same-bridge"', '"policy":"same-bridge","extra":1')
    with open(reg.path, "w") as f:
        f.write(text)
    lazy = Registry.load(str(tmp_path))
    assert lazy.damaged is None, "not decoded yet"
    assert lazy.matching("br0") == [] and lazy.attachments == {}
    assert lazy.damaged and os.path.exists(reg.path + ".damaged")


def test_shared_needs_collapse_a_bridges_attachments():
    """Ports and anti-spoofing are each attachment's own (the isolation flag, the anti-spoofing
    elements): the bridge-wide needs of hundreds of attachments are one per configuration."""
    from plugin.policy import BridgeIntent, Guard, shared_needs

    deny = Guard(deny=("10.0.0.0/8",))
    same = [BridgeIntent("br0", True, False, f"veth{i}", True) for i in range(300)]
    assert shared_needs(same) == [BridgeIntent("br0", True, False, None, True)]
    mixed = same + [BridgeIntent("br0", True, False, "veth9", True, guard=deny),
                    BridgeIntent("br0", True, True, "vethA", True), BridgeIntent("br0", True, True, "vethB", True)]
    assert shared_needs(mixed) == [BridgeIntent("br0", True, False, None, True),
                                   BridgeIntent("br0", True, False, None, True, guard=deny),
                                   BridgeIntent("br0", True, True, None, True)]


class _FakeBackend:
    """Records releases; usable."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def unavailable_reason(self):
        return None

    def release(self, r, facts):
        self.log.append(r)


def test_detaching_many_attachments_writes_the_registry_once(tmp_path, monkeypatch):
    """Issue 15 item 8: a vanished bridge with N attachments cost N rewrites (and fsyncs)
    of the registry under the host lock; now one, whatever N."""
    import plugin.backends as backends
    import plugin.links as links
    from plugin.lifecycle import detach
    from plugin.registry import Attachment, Registry

    log = []
    monkeypatch.setattr(backends, "make", lambda name: _FakeBackend(name, log))
    monkeypatch.setattr(links, "ports_of_masters", lambda: {})  # the bridge is gone
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
    import plugin.links as links
    from plugin.lifecycle import detach
    from plugin.policy import port_only
    from plugin.registry import Attachment, Registry

    log = []
    monkeypatch.setattr(backends, "make", lambda name: _FakeBackend(name, log))
    reg = Registry.load(str(tmp_path))
    a = Attachment("net", "c0", "eth0", "br0", "veth0", "same-bridge", "iptables")
    b = Attachment("net", "c1", "eth0", "br0", "veth1", "same-bridge", "iptables")
    reg.put(a), reg.put(b), reg.save()
    lines = open(reg.path).read().splitlines()
    with open(reg.path, "w") as f:  # c1's line torn
        f.write("\n".join(lines[:2] + [lines[2][:30]] + lines[3:]) + "\n")
    reg = Registry.load(str(tmp_path))
    assert list(reg.attachments) == [a.key] and reg.damaged
    monkeypatch.setattr(links, "ports_of_masters", lambda: {"br0": ["veth0", "veth1"]})
    assert detach(reg, [a]) == []
    assert log[-1] == port_only(log[-1]) and not log[-1].isolate and log[-1].guard is None, log[-1]
    reg.put(a)
    monkeypatch.setattr(links, "ports_of_masters", lambda: {"br0": ["veth0"]})  # c1 has gone since
    assert detach(reg, [a]) == []
    assert log[-1].isolate and log[-1].within


@pytest.mark.parametrize("field,value", [("policy", "opne"), ("bridge", "b r"), ("backend", "pf"),
                                         ("published", 1), ("portindex", "7"), ("guard", {"deny": 1})])
def test_registry_lines_with_wrong_values_are_damage(tmp_path, field, value):
    """A damaged line that is still JSON must not reach the rules (nor answer 104 later)."""
    import json

    from plugin.registry import Attachment, Registry, as_dict

    reg = Registry.load(str(tmp_path))
    good = Attachment("net", "c0", "eth0", "br0", "veth0", "same-bridge", "nftables")
    reg.put(good), reg.put(Attachment("net", "c1", "eth0", "br0", "veth1", "same-bridge", "nftables")), reg.save()
    text = open(reg.path).read()
    bad = as_dict(Attachment("net", "c1", "eth0", "br0", "veth1", "same-bridge", "nftables")) | {field: value}
    line = text.splitlines()[2]
    with open(reg.path, "w") as f:
        f.write(text.replace(line, json.dumps(bad, separators=(",", ":"))))
    again = Registry.load(str(tmp_path))
    assert list(again.attachments) == [good.key] and again.damaged


def test_departed_is_fail_closed(monkeypatch):
    """Item 6: only a known port that is gone, or re-created under its name (another
    ifindex), has vanished; an unknown port, or an index never recorded, never counts."""
    import plugin.links as links
    from plugin.lifecycle import departed
    from plugin.registry import Attachment

    def att(port, index, bridge="br0"):
        return Attachment("n", f"c-{port}-{index}", "eth0", bridge, port, "same-bridge", "nftables", portindex=index)

    monkeypatch.setattr(links, "interfaces", lambda: {"br0": 2, "veth1": 11, "veth2": 12})
    monkeypatch.setattr(links, "is_bridge", lambda name: name == "br0")
    same, reborn, gone, unknown, unrecorded = (att("veth1", 11), att("veth2", 99), att("veth3", 13), att(None, None),
                                               att("veth1", None))
    on_gone_bridge = att("veth1", 11, "br9")
    assert departed([same, reborn, gone, unknown, unrecorded, on_gone_bridge]) == ([on_gone_bridge], [reborn, gone])


def test_auto_is_decided_once_per_namespace(tmp_path, monkeypatch):
    """Item 5: `auto` keeps the first backend it chose; when that one fails later, 103."""
    import plugin.backends as backends

    reasons = {"nftables": None, "iptables": None}
    monkeypatch.setattr(backends, "make", lambda name: _Fake(name, reasons[name]))
    assert backends.select("auto", str(tmp_path)).name == "nftables"
    assert open(tmp_path / "backend").read() == "nftables\n"
    reasons["nftables"] = "libnftables cannot be loaded"
    with pytest.raises(CniError) as err:
        backends.select("auto", str(tmp_path))
    assert err.value.code == 103 and "libnftables cannot be loaded" in err.value.details
    assert backends.select("iptables", str(tmp_path)).name == "iptables", "an explicit backend is not affected"
    other = tmp_path / "other"
    other.mkdir()
    assert backends.select("auto", str(other)).name == "iptables", "a namespace deciding now picks what works"
    reasons["nftables"] = None
    assert backends.select("auto", str(other)).name == "iptables", "and keeps it"


def test_damage_in_a_line_not_yet_decoded_is_seen_by_status_and_reconcile(tmp_path, monkeypatch):
    """The header is fine and one body line is not: status and reconcile must decode every
    line before asking whether the registry is damaged."""
    import plugin.admin as admin
    import plugin.hoststate as hoststate
    import plugin.lifecycle as lifecycle
    from plugin.registry import Attachment, Registry

    reg = Registry.load(str(tmp_path))
    reg.put(Attachment("net", "c0", "eth0", "br0", "veth0", "same-bridge", "nftables"))
    reg.put(Attachment("net", "c1", "eth0", "br0", "veth1", "same-bridge", "nftables"))
    reg.save()
    text = open(reg.path).read()
    with open(reg.path, "w") as f:
        f.write(text.replace('"container":"c1"', '"container":c1'))
    import plugin.backends as backends
    import plugin.links as links

    monkeypatch.setattr(lifecycle, "state_dir", lambda: str(tmp_path))
    monkeypatch.setattr(lifecycle, "departed", lambda atts: ([], []))
    monkeypatch.setattr(lifecycle, "_remove_orphans", lambda reg: [])
    # never the real firewall: this process runs in the root network namespace
    monkeypatch.setattr(backends, "make", lambda name: _Fake(name, "not here"))
    monkeypatch.setattr(links, "ports_of_masters", lambda: {})
    done = lifecycle.reconcile()
    assert any("rebuilt the damaged registry" in line for line in done), done
    assert Registry.load(str(tmp_path)).damaged is None
    with open(reg.path, "w") as f:
        f.write(text.replace('"container":"c1"', '"container":c1'))
    monkeypatch.setattr(admin, "state_dir", lambda: str(tmp_path))
    monkeypatch.setattr(hoststate, "state_dir", lambda: str(tmp_path))
    monkeypatch.setattr(admin, "make", lambda name: _Fake(name, "not here"))
    monkeypatch.setattr(admin, "departed", lambda atts: ([], []))
    monkeypatch.setattr(admin.bridgenf, "read", lambda fam: "1")
    monkeypatch.setattr(admin, "is_bridge", lambda name: True)
    report = admin.status()
    assert report["damaged"] and any("registry is damaged" in p for p in report["problems"]), report
