"""The attachment registry: round trips, lazy reads that decode only what they ask for, and
damage (torn or wrong lines) kept apart, never applied, and seen by status and reconcile."""

import pytest

from fakes import FakeBackend, attachment


def test_registry_round_trip_and_damage(tmp_path):
    import json
    import os

    from plugin.registry import Registry

    reg = Registry.load(str(tmp_path))
    assert reg.attachments == {}
    att = attachment("br0", "isolated", "veth0")
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
    from plugin import topology

    import plugin.config as config

    monkeypatch.setattr(lifecycle, "state_dir", lambda: str(tmp_path))
    monkeypatch.setattr(config, "state_dir", lambda: str(tmp_path))  # reconcile prunes the cached verdicts
    monkeypatch.setattr(lifecycle, "departed", lambda atts, links=None: ([], []))
    monkeypatch.setattr(lifecycle, "_remove_orphans", lambda reg: [])
    # never the real firewall: this process runs in the root network namespace
    monkeypatch.setattr(backends, "make", lambda name: FakeBackend(name, "not here"))
    monkeypatch.setattr(topology, "read", lambda: topology.Links())
    done = lifecycle.reconcile()
    assert any("rebuilt the damaged registry" in line for line in done), done
    assert Registry.load(str(tmp_path)).damaged is None
    with open(reg.path, "w") as f:
        f.write(text.replace('"container":"c1"', '"container":c1'))
    monkeypatch.setattr(admin, "state_dir", lambda: str(tmp_path))
    monkeypatch.setattr(hoststate, "state_dir", lambda: str(tmp_path))
    monkeypatch.setattr(admin, "make", lambda name: FakeBackend(name, "not here"))
    monkeypatch.setattr(admin, "departed", lambda atts, links=None: ([], []))
    monkeypatch.setattr(admin.bridgenf, "read", lambda fam: "1")
    monkeypatch.setattr(topology, "read", lambda: topology.Links(bridges=frozenset({"br0"})))
    report = admin.status()
    assert report["damaged"] and any("registry is damaged" in p for p in report["problems"]), report


def test_status_reports_links_it_cannot_read_instead_of_failing(tmp_path, monkeypatch):
    """A failed rtnetlink dump is a problem status names; no bridge is called gone on its account."""
    import plugin.admin as admin
    import plugin.hoststate as hoststate
    from plugin import topology
    from plugin.registry import Attachment, Registry

    reg = Registry.load(str(tmp_path))
    reg.put(Attachment("net", "c0", "eth0", "br0", "veth0", "same-bridge", "nftables"))
    reg.save()
    monkeypatch.setattr(admin, "state_dir", lambda: str(tmp_path))
    monkeypatch.setattr(hoststate, "state_dir", lambda: str(tmp_path))
    monkeypatch.setattr(admin, "make", lambda name: FakeBackend(name, "not here"))  # never the real firewall
    monkeypatch.setattr(admin.bridgenf, "read", lambda fam: "1")

    def unreadable():
        raise OSError(105, "No buffer space available")

    monkeypatch.setattr(topology, "read", unreadable)
    report = admin.status()
    assert any("links cannot be read" in p for p in report["problems"]), report
    assert [b["exists"] for b in report["bridges"]] == [None]
    assert not any("no longer exists" in p for p in report["problems"]), report
    monkeypatch.setattr(topology, "read", lambda: topology.Links())  # positive control: a dump without br0
    assert any("no longer exists" in p for p in admin.status()["problems"])
