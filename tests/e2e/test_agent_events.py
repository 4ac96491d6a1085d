"""The agent acts on kernel events, not on its periodic check: a container's host-side veth
or a whole bridge deleted behind the plugin's back (no DEL), and `nft flush ruleset`, are
dealt with at once. The periodic check is pushed out of reach (an hour) for every test here,
and each test ends with its positive control: the same damage with the agent stopped stays
as it is for the same time.
"""

import json
import re
import subprocess

import pytest

from netlab import IP, eventually, read_text, sh

pytestmark = pytest.mark.e2e
WAIT_S = 15.0  # how long anything may take here: a bound on waiting, not a speed claim
READY = "watching link and nftables events"


@pytest.fixture
def agent_lab(lab, monkeypatch):
    """A lab whose agent (when started) checks without an event only once an hour."""
    monkeypatch.setenv("ISOLATION_AGENT_CHECK_EVERY_S", "3600")
    return lab


def _eventually(predicate) -> bool:
    return eventually(predicate, WAIT_S, 0.2)


def _start(lab) -> str:
    """Start the agent; returns its log once it listens for events (its first check done)."""
    log = lab.start_agent()
    assert _eventually(lambda: READY in read_text(log)), read_text(log)
    assert "every 3600 s" in read_text(log), "the periodic check is out of reach"
    return log


def _registered(lab) -> dict[str, int]:
    """Bridge -> registered attachments, as `isolation status --json` reports them."""
    proc = subprocess.run(lab.isolation_argv("status", "--json"), capture_output=True, text=True)
    return {b["bridge"]: b["attachments"] for b in json.loads(proc.stdout)["bridges"]}


def _ports(lab, bridge) -> list[str]:
    """What the kernel has plugged into `bridge` in the lab's host namespace."""
    return [link["ifname"] for link in json.loads(sh(IP, "-j", "link", "show", "master", bridge, netns=lab.host).stdout)]


def _two_networks(lab):
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": "nftables"}) for _ in range(2)]
    return nets, [lab.add(n) for n in nets]


def _repaired_on(log: str, what: str, event: str) -> bool:
    """Whether the agent logged a repair mentioning `what` triggered by an `event` event."""
    return any(what in line and re.search(rf"\(after: [a-z ]*{event}[a-z ]* event\)", line)
               for line in log.splitlines() if "repaired:" in line)


def test_a_vanished_veth_is_forgotten_on_the_link_event(agent_lab):
    lab = agent_lab
    nets, _ = _two_networks(lab)
    (gone, kept) = (n.bridge for n in nets)
    log = _start(lab)
    assert _registered(lab) == {gone: 1, kept: 1} and lab.ours_mentioning(gone) and lab.ours_mentioning(kept)
    (port,) = _ports(lab, gone)
    sh(IP, "link", "del", port, netns=lab.host)  # the container died; its runtime never sent DEL
    assert _eventually(lambda: gone not in _registered(lab) and not lab.ours_mentioning(gone)), read_text(log)
    assert _repaired_on(read_text(log), f"{port} on {gone}", "link"), read_text(log)
    assert "periodic check" not in read_text(log)
    assert _registered(lab) == {kept: 1} and lab.ours_mentioning(kept), "the other network is untouched"

    # Positive control: with the agent stopped, the same loss stays unnoticed as long.
    lab.stop_agent()
    (port,) = _ports(lab, kept)
    sh(IP, "link", "del", port, netns=lab.host)
    assert not _eventually(lambda: kept not in _registered(lab))
    assert lab.ours_mentioning(kept)


def test_a_deleted_bridge_is_forgotten_on_the_link_event(agent_lab):
    lab = agent_lab
    nets, _ = _two_networks(lab)
    (gone, kept) = (n.bridge for n in nets)
    log = _start(lab)
    sh(IP, "link", "del", gone, netns=lab.host)
    assert _eventually(lambda: gone not in _registered(lab) and not lab.ours_mentioning(gone)), read_text(log)
    assert _repaired_on(read_text(log), f"vanished bridge(s) {gone}", "link"), read_text(log)
    assert "periodic check" not in read_text(log)
    assert _registered(lab) == {kept: 1} and lab.ours_mentioning(kept)

    lab.stop_agent()  # positive control
    sh(IP, "link", "del", kept, netns=lab.host)
    assert not _eventually(lambda: kept not in _registered(lab))
    assert lab.ours_mentioning(kept)


def test_a_flushed_ruleset_is_restored_on_the_nftables_event(agent_lab):
    lab = agent_lab
    _, (a, b) = _two_networks(lab)

    def isolated() -> bool:
        return not any(lab.reach([(a.name, b.ipv4), (a.name, b.ipv6), (b.name, a.ipv4)]).values())

    log = _start(lab)
    assert isolated()
    sh("nft", "flush", "ruleset", netns=lab.host)
    assert _eventually(lambda: _repaired_on(read_text(log), "restored the isolation", "nftables")), read_text(log)
    assert "periodic check" not in read_text(log)
    assert isolated(), "isolation is back, proven with packets"
    assert all(rc == 0 for c in (a, b) for _, rc, _ in lab.check(c))

    lab.stop_agent()  # positive control: the flush does open the networks, and nothing else closes them
    sh("nft", "flush", "ruleset", netns=lab.host)
    assert not _eventually(lambda: lab.ours_mentioning(a.network.bridge))
    assert not isolated()
