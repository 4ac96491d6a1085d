"""plugin.lifecycle with a recording fake backend: what it asks the backend to do, and when.

Nothing here touches the kernel or the real /run/isolation: the state directory is a
temporary one, link reading and the bridge-port isolation flag are stand-ins, and the
backend only records its calls (it subclasses the real contract, plugin.backends.base)."""

import pytest

import plugin.backends as backends
import plugin.backends.ports as port_flags
import plugin.config as config
import plugin.hoststate as hoststate
import plugin.links as links
from plugin import topology
from plugin import lifecycle, policy
from plugin.backends.base import Backend
from plugin.errors import CniError
from plugin.registry import Attachment, Registry, defer_delete


class Recording(Backend):
    """Records every call; `ensures`: what ensure() answers; `fail`: what apply() raises;
    `missing`: what verify() finds; `held`: the bridges enforced() reports."""

    name = "nftables"

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.ensures, self.fail, self.missing, self.held = True, None, [], set()

    def unavailable_reason(self):
        return None

    def ensure(self, addition):
        self.calls.append(("ensure", addition))
        return self.ensures

    def apply(self, desired):
        self.calls.append(("apply", desired))
        if self.fail:
            raise self.fail
        return {}

    def release(self, change, facts):
        self.calls.append(("release", change))

    def verify(self, desired):
        self.calls.append(("verify", desired))
        return list(self.missing)

    def audit(self, desired, granted):
        return [], []

    def surplus(self, desired):
        return {}

    def revoke(self, desired):
        self.calls.append(("revoke", desired))
        return []

    def enforced(self):
        return set(self.held)

    def drops(self):
        return 0, {}

    def cleanup_commands(self, bridge, facts, ports):
        return []

    def did(self, kind: str) -> list:
        return [arg for k, arg in self.calls if k == kind]


class Unusable(Recording):
    name = "iptables"

    def unavailable_reason(self):
        return "not in this test"


@pytest.fixture
def fake(tmp_path, monkeypatch) -> Recording:
    backend = Recording()
    monkeypatch.setattr(backends, "make", lambda name: backend if name == "nftables" else Unusable())
    for module in (lifecycle, config, hoststate):
        monkeypatch.setattr(module, "state_dir", lambda: str(tmp_path))
    monkeypatch.setattr(lifecycle, "departed", lambda atts, links=None: ([], []))  # every bridge and port still there
    monkeypatch.setattr(topology, "read", lambda: topology.Links())
    monkeypatch.setattr(links, "ifindex", lambda port: None)
    flagged = backend.flagged = []
    monkeypatch.setattr(port_flags, "port_isolated", lambda port: port in flagged)
    monkeypatch.setattr(port_flags, "set_port_isolated", lambda port, on: flagged.append(port) if on else None)
    return backend


def att(container: str, bridge: str, policy_name: str = "same-bridge", port: str | None = None, **extra) -> Attachment:
    return Attachment("net", container, "eth0", bridge, port or f"v{container}", policy_name, "nftables", **extra)


def registry(tmp_path, *attachments) -> Registry:
    reg = Registry.load(str(tmp_path))
    for a in attachments:
        reg.put(a)
    reg.save()
    return Registry.load(str(tmp_path))


def add(a: Attachment) -> None:
    lifecycle.attach(backends.make("nftables"), policy.intent_of(a), a)


def test_attach_adds_only_when_the_backend_can(tmp_path, fake):
    first, neighbour, elsewhere = att("c1", "br0"), att("c2", "br0"), att("c3", "br1")
    registry(tmp_path, first, elsewhere)
    add(neighbour)
    # what the ADD asks: its own needs and those of its bridge's other attachment, nothing of br1
    assert fake.calls == [("ensure", policy.addition(policy.intent_of(neighbour), [policy.intent_of(first)]))]
    assert list(Registry.load(str(tmp_path)).attachments) == [first.key, elsewhere.key, neighbour.key]


def test_attach_reapplies_every_registered_attachment_when_adding_is_not_enough(tmp_path, fake):
    a, b, c = att("c1", "br0"), att("c2", "br1", "isolated"), att("c3", "br2", group="g")
    registry(tmp_path, b, c)
    fake.ensures = False  # the ruleset is gone (a firewall reload)
    add(a)
    assert [kind for kind, _ in fake.calls] == ["ensure", "apply"]
    assert fake.did("apply") == [policy.desired([policy.intent_of(x) for x in (a, b, c)])], "the new one first"
    assert a.key in Registry.load(str(tmp_path)).attachments


def test_an_open_attachment_asks_nothing_of_the_backend(tmp_path, fake):
    registry(tmp_path)
    add(att("c1", "br0", "open"))
    assert fake.calls == []


def test_a_failed_add_is_undone_exactly_as_its_del_would_undo_it(tmp_path, fake):
    spoofed = dict(mac="02:00:00:00:00:01", spoof=("10.0.0.2",))
    neighbour, other = att("c2", "br1", "isolated", **spoofed), att("c3", "br2")
    leaving = att("c1", "br1", "isolated", port="vc1", **spoofed)
    registry(tmp_path, neighbour, other)
    fake.ensures, fake.fail = False, CniError(100, "ip6tables-restore could not apply isolation rules")
    with pytest.raises(CniError) as err:
        add(leaving)
    assert "nothing was left applied" in err.value.details
    undo = fake.did("release")
    assert leaving.key not in Registry.load(str(tmp_path)).attachments
    fake.fail, fake.calls = None, []
    add(leaving)
    lifecycle.detach(Registry.load(str(tmp_path)), [leaving])
    assert undo == fake.did("release"), "the undo takes what the DEL takes, no more, no less"
    assert undo[0].spoofs == (policy.spoof_of(leaving),) and not undo[0].isolate  # its neighbour keeps br1 isolated


def test_re_adding_with_another_configuration_releases_the_earlier_one(tmp_path, fake):
    old = att("c1", "brA", group="g")
    peer = att("c2", "brB", group="g")
    registry(tmp_path, old, peer)
    new = att("c1", "brA")  # its conflist left the group: same container, same key
    add(new)
    released = fake.did("release")
    assert released == [policy.release(old, [peer, new])]
    assert released[0].peers == frozenset() and released[0].bridge == "brA", "brA's pairs with brB go"
    assert Registry.load(str(tmp_path)).attachments[new.key] == new


def test_re_adding_the_same_configuration_releases_nothing(tmp_path, fake):
    a = att("c1", "br0")
    registry(tmp_path, a)
    add(a)
    assert fake.did("release") == []


def test_detaching_several_releases_each_against_those_still_left(tmp_path, fake):
    a1, a2, a3, stays = att("c1", "br0", "isolated"), att("c2", "br0", "isolated"), att("c3", "br1"), att("c4", "br2")
    reg = registry(tmp_path, a1, a2, a3, stays)
    assert lifecycle.detach(reg, [a1, a2, a3]) == []
    assert reg.writes == 1, "all forgotten in one write, before any rule goes"
    assert fake.did("release") == [policy.release(a1, [stays, a2, a3]), policy.release(a2, [stays, a3]),
                                   policy.release(a3, [stays])]
    first, second, third = fake.did("release")
    assert not first.isolate and second.isolate and second.drop_intra and third.isolate
    assert not any(r.last for r in (first, second, third)), "br2 still needs the shared rules"
    assert list(Registry.load(str(tmp_path)).attachments) == [stays.key]


def test_a_damaged_registry_takes_only_the_departing_ports_own(tmp_path, fake, monkeypatch):
    spoofed = dict(mac="02:00:00:00:00:01", spoof=("10.0.0.2",))
    leaving = att("c1", "br0", "isolated", port="vc1", **spoofed)
    reg = registry(tmp_path, leaving)
    reg.damaged = "a torn line"  # the registry may have lost attachments of br0
    monkeypatch.setattr(topology, "read", lambda: topology.Links(ports={"br0": ["vc1", "vlost"]}))  # vlost: unaccounted for
    assert lifecycle.detach(reg, [leaving]) == []
    whole = policy.release(leaving, [])
    assert whole.isolate and whole.last
    assert fake.did("release") == [policy.port_only(whole)] == [
        policy.Release(bridge="br0", spoofs=whole.spoofs, uncount=whole.uncount)]


def test_deferred_dels_are_carried_out_by_the_next_run_that_holds_the_lock(tmp_path, fake):
    waiting, stays = att("c1", "br0"), att("c2", "br1")
    registry(tmp_path, waiting, stays)
    defer_delete(str(tmp_path), waiting.key)
    newcomer = att("c3", "br1")
    add(newcomer)
    assert [kind for kind, _ in fake.calls] == ["release", "ensure"], "the deferred DEL first"
    assert fake.did("release") == [policy.release(waiting, [stays])]
    assert list(Registry.load(str(tmp_path)).attachments) == [stays.key, newcomer.key]
    assert not (tmp_path / "deferred-del").exists() or not list((tmp_path / "deferred-del").iterdir())


def test_reconcile_removes_orphan_rules_once_their_bridge_has_no_port(tmp_path, fake, monkeypatch):
    registered = att("c1", "br0")
    registry(tmp_path, registered)
    fake.held = {"br0", "gone0", "busy0"}  # rules of two bridges nothing registered is on
    monkeypatch.setattr(topology, "read", lambda: topology.Links(ports={"busy0": ["vunknown"], "br0": ["vc1"]}))
    done = lifecycle.reconcile()
    assert fake.did("release") == [policy.orphan_release("gone0", policy.desired([policy.intent_of(registered)]))]
    orphan = fake.did("release")[0]
    assert orphan.isolate and orphan.drop_intra and orphan.within and orphan.published and orphan.guard == policy.NO_GUARD
    assert not orphan.last, "br0 still needs what all bridges share"
    assert any("removed the rules of gone0" in line for line in done), done
    assert not any("busy0" in line for line in done), "a bridge with ports keeps its rules (its containers may live)"


def test_reconcile_reapplies_everything_when_verify_finds_something_missing(tmp_path, fake):
    a, b = att("c1", "br0"), att("c2", "br1", "isolated")
    registry(tmp_path, a, b)
    fake.flagged.append("vc2")  # b's port still carries its isolation flag
    assert lifecycle.reconcile() == []
    assert fake.did("apply") == [], "all in place: nothing re-applied"
    fake.missing = ["table inet isolation is missing"]
    done = lifecycle.reconcile()
    whole = policy.desired([policy.intent_of(a), policy.intent_of(b)])
    assert fake.did("verify")[-1] == whole and fake.did("apply") == [whole]
    assert done == ["nftables: restored the isolation of 2 attachment(s): table inet isolation is missing"]


def test_reconcile_sets_a_lost_isolation_flag_again(tmp_path, fake):
    registry(tmp_path, att("c1", "br0", "isolated"))
    done = lifecycle.reconcile()  # the port lacks its flag: that alone is something missing
    assert fake.flagged == ["vc1"] and len(fake.did("apply")) == 1
    assert "port vc1 of br0 lacks the bridge-port isolation flag" in done[0]


def test_an_open_attachment_on_an_isolated_bridge_gets_the_isolation_flag(tmp_path, fake):
    # README: while any attachment of a bridge is `isolated`, the ports of all its attachments
    # carry the flag. An `open` ADD enforces nothing of its own, yet its port must be flagged,
    # else its container reaches the isolated ones at layer 2 (the flag only parts two flagged ports).
    isolated = att("c1", "br0", "isolated")
    fake.flagged.append("vc1")
    registry(tmp_path, isolated)
    add(att("c2", "br0", "open"))
    assert "vc2" in fake.flagged, "the open attachment's port on an isolated bridge is left unflagged"


def test_cleanup_clears_the_flag_of_every_port_of_an_isolated_bridge(tmp_path, fake, monkeypatch):
    # the flag goes on every port of a bridge any attachment isolates (ensure_flags): the
    # cleanup that promises to clear it must clear it there too, not only on `isolated` ones
    import plugin.admin as admin

    monkeypatch.setattr(admin, "make", backends.make)
    monkeypatch.setattr(admin, "state_dir", lambda: str(tmp_path))
    monkeypatch.setattr(topology, "read", lambda: topology.Links(isolated=frozenset({"vc1", "vc2"})))
    registry(tmp_path, att("c1", "br0", "isolated"), att("c2", "br0", "same-bridge"))
    unflag = [c for c in admin.cleanup_commands(None) if c[:3] == ["bridge", "link", "set"]]
    assert unflag == [["bridge", "link", "set", "dev", p, "isolated", "off"] for p in ("vc1", "vc2")]


def test_reconcile_goes_on_when_the_links_cannot_be_read_for_orphans(tmp_path, fake, monkeypatch):
    # a link dump that fails (a NetlinkError, an OSError from topology) must not abort
    # reconcile before it revokes grants nobody needs: orphans keep their rules (fail
    # closed) until the links can be read
    registry(tmp_path, att("c1", "br0"))
    fake.held = {"br0", "gone0"}

    def unreadable():
        raise OSError(4, "netlink: the link dump failed: dump interrupted")

    monkeypatch.setattr(topology, "read", unreadable)
    lifecycle.reconcile()
    assert fake.did("release") == [] and len(fake.did("revoke")) == 1
