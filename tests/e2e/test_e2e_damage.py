"""Issue 15, items 1, 5 and 6: a damaged registry, orphan removal with nothing registered,
attachments whose host-side port vanished, and `auto` decided once, on both backends,
with real packets wherever isolation is the question."""

import json
import os
import subprocess

import pytest

from netlab import IP, SYSTEM_LIBNFTABLES, sh

pytestmark = pytest.mark.e2e
BACKENDS = ["iptables", "nftables"]


def _status(lab) -> tuple[int, dict]:
    """`isolation status --json`: its exit code (1: problems found) and its report."""
    proc = lab.cli("status", "--json")
    return proc.returncode, json.loads(proc.stdout)


def _reaches_outside(lab, c) -> bool:
    """Positive control: the container reaches the lab's outside peer through the host."""
    return all(lab.reach([(c.name, "10.99.0.2")]).values())


def _tear_line(lab, c) -> None:
    """Truncate the registry line of container `c` in the middle (outside damage)."""
    path = os.path.join(lab.state_dir(), "registry.json")
    lines = open(path).read().split("\n")
    at = next(i for i, line in enumerate(lines) if f'"container":"{c.id}"' in line)
    lines[at] = lines[at][:len(lines[at]) // 2]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _plugin(lab, command, c, **extra) -> tuple[int, dict | None]:
    rc, out, _ = lab.exec_plugin("isolation", command, lab.isolation_conf(c, **extra), lab._env(c))
    return rc, out


def _isolates(lab, backend, bridge) -> bool:
    """Whether our rules still isolate `bridge` (read from the kernel)."""
    if backend == "nftables":
        return f'"{bridge}"' in sh("nft", "list", "set", "inet", "isolation", "isolated", netns=lab.host,
                                   check=False).stdout
    return f"-o {bridge} -m comment --comment isolation-plugin -j DROP" in lab.save("ipv4")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_torn_registry_line_never_opens_isolation(lab, backend):
    """Item 1. Before the fix (main at dc77ef8): with A and B running, one torn line, then
    DEL / ADD / DEL of an unrelated container all answered success, the last DEL deleted
    our tables (iptables: the chains) and A reached B. Now every call still succeeds, A and
    B stay isolated, `status` fails naming the damage, and `reconcile` rebuilds the
    registry without opening anything."""
    iso = {"backend": backend}
    nets = [lab.network(["bridge", "isolation"], isolation=iso) for _ in range(3)]
    a, b, other = lab.add(nets[0]), lab.add(nets[1]), lab.add(nets[2])
    assert lab.blocked(a, b) and _reaches_outside(lab, a) and _reaches_outside(lab, b)
    _tear_line(lab, a)
    assert [rc for _, rc in lab.delete(other)] == [0, 0]
    again = lab.add(nets[2])
    assert lab.blocked(again, a), "ADD still enforces its own network"
    assert [rc for _, rc in lab.delete(again)] == [0, 0]
    assert lab.blocked(a, b), "a damaged registry opened isolation"
    assert _reaches_outside(lab, a) and _reaches_outside(lab, b)
    assert not _isolates(lab, backend, nets[2].bridge), "the departing network's own rules did go"
    rc, report = _status(lab)
    assert rc == 1 and report["damaged"] and any("registry is damaged" in p for p in report["problems"]), report
    assert os.path.exists(os.path.join(lab.state_dir(), "registry.json.damaged")), "kept for inspection"

    out = lab.cli("reconcile")
    assert out.returncode == 0 and "rebuilt the damaged registry" in out.stdout, out
    assert lab.blocked(a, b) and _reaches_outside(lab, a)
    rc, report = _status(lab)
    assert report["damaged"] is None and not any("damaged" in p for p in report["problems"]), report
    # a's line was lost: its rules stay, named, while its port is plugged in
    assert report["problems"] == [f"{nets[0].bridge}: {backend} rules with no registered attachment"], report
    assert [rc for _, rc in lab.delete(b)] == [0, 0]
    assert _isolates(lab, backend, nets[0].bridge), "b's DEL (the last registered) kept a's rules"
    c = lab.add(nets[1])
    assert lab.blocked(a, c) and _reaches_outside(lab, c)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_torn_line_on_the_same_bridge_keeps_the_bridge_isolated(lab, backend):
    """Item 1: the departing container's neighbour on its bridge was lost from the registry;
    the DEL takes only its own port, and the neighbour stays isolated."""
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(2)]
    a1, a2, b = lab.add(nets[0]), lab.add(nets[0]), lab.add(nets[1])
    _tear_line(lab, a2)
    assert [rc for _, rc in lab.delete(a1)] == [0, 0]
    assert lab.blocked(a2, b) and _reaches_outside(lab, a2) and _reaches_outside(lab, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reconcile_keeps_the_damage_while_a_lost_container_is_plugged_in(lab, backend):
    """Found in review: reconcile rebuilt the registry from its readable lines and cleared
    the damage while a2 (line lost) was still plugged into its bridge; the next DEL of a1,
    trusting the registry again, took the bridge's isolation and b reached a2. The damage
    now stays (status fails, DELs take only their port) until no such port is left."""
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(2)]
    a1, a2, b = lab.add(nets[0]), lab.add(nets[0]), lab.add(nets[1])
    _tear_line(lab, a2)
    out = lab.cli("reconcile")
    assert out.returncode == 0 and f"{lab.host_port(a2)} on {nets[0].bridge}" in out.stdout, out
    rc, report = _status(lab)
    assert rc == 1 and report["damaged"], report
    assert [rc for _, rc in lab.delete(a1)] == [0, 0]
    assert lab.blocked(a2, b) and _reaches_outside(lab, a2) and _reaches_outside(lab, b)
    assert [rc for _, rc in lab.delete(a2)] == [0, 0]  # the runtime unplugs it: nothing unknown is left
    out = lab.cli("reconcile")
    assert out.returncode == 0 and "rebuilt the damaged registry" in out.stdout, out
    rc, report = _status(lab)
    assert rc == 0 and report["damaged"] is None, report
    c = lab.add(nets[0])
    assert lab.blocked(c, b) and _reaches_outside(lab, c)


@pytest.mark.parametrize("backend", BACKENDS)
def test_orphan_removal_with_nothing_registered_keeps_bridges_with_ports(lab, backend):
    """Item 1, orphan removal (what `reconcile` and the agent run). Before the fix: with
    nothing registered, removing the rules of one port-less orphan bridge deleted the whole
    table (nftables) or every rule (iptables), and A reached B. Now only the orphan's go."""
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(3)]
    a, b, x = lab.add(nets[0]), lab.add(nets[1]), lab.add(nets[2])
    os.remove(os.path.join(lab.state_dir(), "registry.json"))
    rc, _, _ = lab.exec_plugin("bridge", "DEL", lab._conf(nets[2], nets[2].plugins[0], None), lab._env(x))
    assert rc == 0  # x unplugged: its bridge has no port left
    out = lab.cli("reconcile")
    assert out.returncode == 0 and f"removed the rules of {nets[2].bridge}" in out.stdout, out
    assert "removed the rules of " + nets[0].bridge not in out.stdout
    assert not _isolates(lab, backend, nets[2].bridge)
    assert _isolates(lab, backend, nets[0].bridge) and _isolates(lab, backend, nets[1].bridge)
    assert lab.blocked(a, b) and _reaches_outside(lab, a) and _reaches_outside(lab, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attachments_whose_port_vanished_are_reported_and_pruned(lab, backend):
    """Item 6. Before the fix: with the host-side veths deleted behind the plugin's back (as
    after `ctr run -d` and a killed container), `status` said "no problems found", `prune`
    pruned 0 and the network's rules stayed. Now `status` names them, `prune` forgets them
    and the rules only they needed go; other networks keep theirs (by packets)."""
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(3)]
    a1, a2, b, c = lab.add(nets[0]), lab.add(nets[0]), lab.add(nets[1]), lab.add(nets[2])
    assert lab.blocked(a2, c) and lab.blocked(b, c)
    for gone in (a1, b):
        sh(IP, "link", "del", lab.host_port(gone), netns=lab.host)
    rc, report = _status(lab)
    vanished = [p for p in report["problems"] if "has vanished" in p]
    assert rc == 1 and len(vanished) == 2 and any(lab.host_port(a1) in p for p in vanished), report
    out = lab.cli("prune")
    assert out.returncode == 0 and "pruned 2 attachment" in out.stdout, out
    assert not _isolates(lab, backend, nets[1].bridge), "b was its network's last: its rules went"
    assert _isolates(lab, backend, nets[0].bridge) and _isolates(lab, backend, nets[2].bridge)
    assert lab.blocked(a2, c) and _reaches_outside(lab, a2) and _reaches_outside(lab, c)
    rc, report = _status(lab)
    assert rc == 0 and report["problems"] == [], report
    assert all(rc == 0 for _, rc, _ in lab.check(a2))
    assert lab.cli("prune").stdout.startswith("pruned 0 "), "nothing vanished twice"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_port_recreated_under_its_name_has_vanished_and_reconcile_prunes(lab, backend):
    """Item 6: a veth deleted and re-created with the same name (another ifindex) is not the
    attachment's port: `reconcile` forgets the attachment. The namesake is still plugged
    into the bridge, so the bridge keeps its rules (fail closed) until it goes too."""
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(2)]
    a, b = lab.add(nets[0]), lab.add(nets[1])
    port = lab.host_port(a)
    sh(IP, "link", "del", port, netns=lab.host)
    sh(IP, "link", "add", port, "type", "veth", "peer", "name", f"{lab.prefix}ns", netns=lab.host)
    sh(IP, "link", "set", port, "master", nets[0].bridge, netns=lab.host)
    out = lab.cli("reconcile")
    assert out.returncode == 0 and f"forgot 1 attachment(s) whose host-side interface vanished: {port}" in out.stdout
    assert _isolates(lab, backend, nets[0].bridge), "something is plugged in: the rules stay"
    assert [r["bridge"] for r in _status(lab)[1]["bridges"]] == [nets[1].bridge]
    sh(IP, "link", "del", port, netns=lab.host)
    out = lab.cli("reconcile")
    assert out.returncode == 0 and f"removed the rules of {nets[0].bridge}" in out.stdout, out
    assert not _isolates(lab, backend, nets[0].bridge) and _isolates(lab, backend, nets[1].bridge)
    assert _reaches_outside(lab, b)


def test_an_unknown_port_is_never_pruned(lab):
    """Item 6, fail closed: an attachment whose prevResult named no host-side port cannot be
    told vanished, and is kept."""
    net = lab.network(["bridge", "isolation"], isolation={"backend": "nftables"})
    c = lab.add(net)
    conf = lab.isolation_conf(c, backend="nftables")
    conf["prevResult"] = {**conf["prevResult"],
                          "interfaces": [i for i in conf["prevResult"]["interfaces"] if i["name"] == net.bridge]}
    env = {**lab._env(c), "CNI_CONTAINERID": c.id + "-noport"}
    rc, out, _ = lab.exec_plugin("isolation", "ADD", conf, env)
    assert rc == 0, out
    out = lab.cli("prune")
    assert out.stdout.startswith("pruned 0 "), out
    assert [r["attachments"] for r in _status(lab)[1]["bridges"]] == [2]


def _without_libnftables(lab):
    """lab.isolation_argv, but with our bundled libnftables hidden too: nftables unusable."""
    bundled = os.path.join(os.path.dirname(lab.isolation_bin), "_internal", "libnftables.so.1")
    assert os.path.exists(bundled), bundled
    empty = os.path.join(lab.tmp, "empty")
    open(empty, "w").close()
    script = ('for lib in "$@"; do case "$lib" in --) shift; break;; esac; mount --bind "$0" "$lib"; shift; done; '
              'exec "$@"')
    return lambda *args: ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, empty,
                          *SYSTEM_LIBNFTABLES, bundled, "--", IP, "netns", "exec", lab.host, lab.isolation_bin, *args]


def test_auto_stays_on_nftables_and_fails_103_when_it_breaks(lab):
    """Item 5. Before the fix: with libnftables unusable for one call, `auto` put that network
    on iptables while the others were on nftables, and the two reached each other. Now
    the decision is kept per host namespace: that ADD fails with 103 and applies nothing."""
    a = lab.add(lab.network(["bridge", "isolation"]))
    b = lab.add(lab.network(["bridge"]))  # its isolation ADD is run below, as the runtime would
    normal = lab.isolation_argv
    lab.isolation_argv = _without_libnftables(lab)
    try:
        # not lab.status(): the nftables binding prints a traceback when its library cannot load
        probe = subprocess.run(lab.isolation_argv("status", "--json"), capture_output=True, text=True)
        assert not json.loads(probe.stdout)["backends"]["nftables"]["usable"], "the hiding works"
        before = lab.ruleset()
        rc, out = _plugin(lab, "ADD", b)
        assert rc != 0 and out["code"] == 103 and "nftables" in out["msg"], out
        assert lab.ruleset() == before and "CNI-ISOLATION" not in lab.save("ipv4")
    finally:
        lab.isolation_argv = normal
    assert not lab.blocked(a, b), "precondition: b is not isolated yet"
    rc, out = _plugin(lab, "ADD", b)  # positive control: with nftables usable again, the same ADD works
    assert rc == 0, out
    assert lab.blocked(a, b) and _reaches_outside(lab, b)
    assert {r["backend"] for r in _status(lab)[1]["bridges"]} == {"nftables"}
    assert open(os.path.join(lab.state_dir(), "backend")).read() == "nftables\n"


def test_auto_decided_as_iptables_stays_iptables(lab):
    """Item 5, the other way: decided while nftables was unusable, `auto` stays on iptables
    once nftables works again, so every network is on one backend (and isolated)."""
    nets = [lab.network(["bridge", "isolation"]) for _ in range(2)]
    normal = lab.isolation_argv
    lab.isolation_argv = _without_libnftables(lab)
    try:
        a = lab.add(nets[0])
    finally:
        lab.isolation_argv = normal
    b = lab.add(nets[1])
    assert {r["backend"] for r in _status(lab)[1]["bridges"]} == {"iptables"}
    assert "table inet isolation" not in lab.nft("list", "ruleset")
    assert lab.blocked(a, b) and _reaches_outside(lab, a) and _reaches_outside(lab, b)
    assert open(os.path.join(lab.state_dir(), "backend")).read() == "iptables\n"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_damaged_registry_keeps_what_lost_attachments_need(lab, backend):
    """Found in review after the merge of issues 14 and 15: with c2's line torn, (1) re-ADDing
    c1 with its conflist relaxed to `open` released its earlier configuration as if the
    registry were whole, and c3 reached c2; (2) the next ADD elsewhere rewrote the
    anti-spoofing table to the registered ports only, dropping c2's. Both now keep what a
    lost attachment may need."""
    iso = {"backend": backend, "ingressPolicy": "isolated"}
    n1, n3 = (lab.network(["bridge", "isolation"], isolation=iso) for _ in range(2))
    c1, c2, c3 = lab.add(n1), lab.add(n1), lab.add(n3)
    table = "isolation-iptables" if backend == "iptables" else "isolation"

    def guarded() -> str:
        return lab.nft("list", "set", "bridge", table, "guarded")

    assert lab.blocked(c3, c2) and lab.host_port(c2) in guarded()
    _tear_line(lab, c2)
    rc, out = _plugin(lab, "ADD", c1, backend=backend, ingressPolicy="open")
    assert rc == 0, out
    assert lab.blocked(c3, c2) and _isolates(lab, backend, n1.bridge)
    assert lab.host_port(c2) in guarded(), "c2's anti-spoofing stays while its line is lost"
    c4 = lab.add(lab.network(["bridge", "isolation"], isolation=iso))  # an ADD elsewhere
    assert lab.host_port(c2) in guarded() and lab.host_port(c4) in guarded()
    assert lab.blocked(c3, c2) and _reaches_outside(lab, c2)  # positive control: c2 is alive


@pytest.mark.parametrize("backend", BACKENDS)
def test_orphan_removal_takes_a_guard_only_bridges_rules(lab, backend):
    """Orphan removal found only bridges that isolate: an `open` network's denyEgress (guard
    chains, map entries; on iptables its EGRESS rules and jumps) with no registered
    attachment stayed forever once its bridge had no port, and kept `last` from ever taking
    the shared tables and chains. Another network's rules stay (by packets)."""
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(2)]
    guarded = lab.network(["bridge", "isolation"], isolation={"backend": backend, "ingressPolicy": "open",
                                                              "denyEgress": ["10.98.0.0/16"]})
    a, b, x = lab.add(nets[0]), lab.add(nets[1]), lab.add(guarded)
    assert lab.ours_mentioning(guarded.bridge), "the guard is there to begin with"
    os.remove(os.path.join(lab.state_dir(), "registry.json"))
    rc, _, _ = lab.exec_plugin("bridge", "DEL", lab._conf(guarded, guarded.plugins[0], None), lab._env(x))
    assert rc == 0  # x unplugged: its bridge has no port left
    out = lab.cli("reconcile")
    assert out.returncode == 0 and f"removed the rules of {guarded.bridge}" in out.stdout, out
    assert lab.ours_mentioning(guarded.bridge) == []
    assert lab.blocked(a, b) and _reaches_outside(lab, a) and _reaches_outside(lab, b)
