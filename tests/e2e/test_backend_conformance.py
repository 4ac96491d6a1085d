"""The same scenarios against both backends (plugin/backends/base.py is their contract):
the frozen binary in a lab host namespace, real containers, real traffic wherever a
verdict is the question, and each "blocked" next to a positive control that gets
through in the same setup.

Every method of the contract is driven through what calls it: ADD (ensure, and apply
when adding is not enough), DEL (release), CHECK (audit), `isolation status` (verify,
surplus, enforced, drops), `isolation reconcile` (verify and apply, revoke, orphan
removal through enforced and release) and `isolation cleanup` (cleanup_commands)."""

import json
import os
import subprocess

import pytest

from netlab import IP, sh

pytestmark = pytest.mark.e2e
BACKENDS = ["iptables", "nftables"]
OUTSIDE = "10.99.0.2"


def cli(lab, *args) -> subprocess.CompletedProcess:
    proc = subprocess.run(lab.isolation_argv(*args), capture_output=True, text=True)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def status(lab) -> tuple[int, dict]:
    proc = cli(lab, "status", "--json")
    return proc.returncode, json.loads(proc.stdout)


def check(lab, c) -> tuple[int, dict | None]:
    """CHECK's answer of our plugin for container `c`: (0, None) or (the CNI error code, the error)."""
    rc, out = next((rc, out) for kind, rc, out in lab.check(c) if kind == "isolation")
    return (out["code"] if rc else 0), out


def verdicts(lab, *pairs) -> list[bool]:
    """For each (source container, destination address): whether ICMP and TCP both got through
    (neither: False; a mix fails the test, as it would mean a half-enforced rule)."""
    got = lab.reach([(c.name, addr) for c, addr in pairs])
    found = []
    for c, addr in pairs:
        both = {got[("icmp", c.name, addr)], got[("tcp", c.name, addr)]}
        assert len(both) == 1, f"{c.name} -> {addr}: ICMP and TCP disagree: {got}"
        found.append(both.pop())
    return found


def networks(lab, backend: str, *policies: str):
    return [lab.network(["bridge", "isolation"], isolation={"backend": backend, "ingressPolicy": p}) for p in policies]


def wipe(lab, backend: str) -> None:
    """What a firewall reload does to our rules."""
    if backend == "nftables":
        sh("nft", "delete", "table", "inet", "isolation", netns=lab.host)
        return
    for tool in ("iptables", "ip6tables"):
        sh(tool, "-F", "CNI-ISOLATION-STAGE-2", netns=lab.host)


def grant(lab, backend: str, a: str, b: str) -> None:
    """A grant nobody asked for (a rule added by hand, or left by a crash): a and b reach each other."""
    if backend == "nftables":
        sh("nft", "add", "element", "inet", "isolation", "peers", f'{{ "{a}" . "{b}", "{b}" . "{a}" }}', netns=lab.host)
        return
    for tool in ("iptables", "ip6tables"):
        for src, dst in ((a, b), (b, a)):
            sh(tool, "-I", "CNI-ISOLATION-STAGE-2", "1", "-i", src, "-o", dst, "-m", "comment", "--comment",
               "isolation-plugin", "-j", "RETURN", netns=lab.host)


def host_port(lab, c) -> str:
    prev = lab.cache[(c.network.name, c.id)]
    return next(i["name"] for i in prev["interfaces"] if "sandbox" not in i and i["name"] != c.network.bridge)


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_isolates_check_agrees_status_counts_and_del_leaves_the_baseline(lab, backend):
    baseline = lab.ruleset()
    a_net, b_net = networks(lab, backend, "same-bridge", "isolated")
    a1, a2 = lab.add(a_net), lab.add(a_net)
    b1, b2 = lab.add(b_net), lab.add(b_net)
    assert verdicts(lab, (a1, a2.ipv4), (a1, OUTSIDE), (b1, OUTSIDE)) == [True, True, True]  # positive controls
    assert verdicts(lab, (a1, b1.ipv4), (b1, a1.ipv6), (b1, b2.ipv4), (b2, b1.ipv6)) == [False] * 4
    assert all(check(lab, c)[0] == 0 for c in (a1, a2, b1, b2))
    rc, report = status(lab)
    assert rc == 0 and report["problems"] == [], report["problems"]
    assert report["backends"][backend]["drops"] >= 1, "the probes above were dropped: counted the same way on both"
    assert {(r["bridge"], r["attachments"]) for r in report["bridges"]} == {(a_net.bridge, 2), (b_net.bridge, 2)}

    assert all(rc == 0 for _, rc in lab.delete(a1))
    assert verdicts(lab, (a2, OUTSIDE), (a2, b1.ipv4), (b1, a2.ipv4)) == [True, False, False]
    for c in (a2, b1, b2):
        assert all(rc == 0 for _, rc in lab.delete(c))
    assert lab.ruleset() == baseline


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_next_add_rebuilds_a_lost_ruleset_for_every_network(lab, backend):
    a_net, b_net, c_net = networks(lab, backend, "same-bridge", "same-bridge", "isolated")
    a1, b1 = lab.add(a_net), lab.add(b_net)
    assert verdicts(lab, (a1, b1.ipv4)) == [False]
    wipe(lab, backend)
    assert verdicts(lab, (a1, b1.ipv4), (b1, a1.ipv6)) == [True, True], "the wipe opened A and B to each other"
    assert check(lab, a1)[0] == 102
    c1 = lab.add(c_net)  # adding alone is not enough here: every registered network is put back
    assert verdicts(lab, (a1, b1.ipv4), (b1, a1.ipv6), (c1, a1.ipv4)) == [False, False, False]
    assert verdicts(lab, (a1, OUTSIDE), (c1, OUTSIDE)) == [True, True]
    assert all(check(lab, c)[0] == 0 for c in (a1, b1, c1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_reconcile_restores_what_is_missing_and_revokes_what_nobody_granted(lab, backend):
    a_net, b_net = networks(lab, backend, "same-bridge", "same-bridge")
    a1, b1 = lab.add(a_net), lab.add(b_net)
    grant(lab, backend, a_net.bridge, b_net.bridge)
    assert verdicts(lab, (a1, b1.ipv4), (b1, a1.ipv6)) == [True, True], "the grant opens A and B"
    rc, out = check(lab, a1)
    assert rc == 102 and "grants bridge" in out["msg"], out
    rc, report = status(lab)
    assert rc == 1 and any(a_net.bridge in p and "registered attachment" in p for p in report["problems"]), report

    proc = cli(lab, "reconcile")
    assert proc.returncode == 0 and "removed grants no registered attachment needs" in proc.stdout, proc.stdout
    assert verdicts(lab, (a1, b1.ipv4), (b1, a1.ipv6), (a1, OUTSIDE)) == [False, False, True]
    assert check(lab, a1)[0] == 0 and status(lab)[0] == 0

    wipe(lab, backend)
    assert status(lab)[0] == 1
    proc = cli(lab, "reconcile")
    assert proc.returncode == 0 and f"{backend}: restored the isolation of 2 attachment(s)" in proc.stdout, proc.stdout
    assert verdicts(lab, (a1, b1.ipv4), (b1, OUTSIDE)) == [False, True]
    assert cli(lab, "reconcile").stdout.startswith("nothing to do")


@pytest.mark.parametrize("backend", BACKENDS)
def test_orphan_rules_go_once_their_bridge_is_empty_and_cleanup_takes_the_rest(lab, backend):
    baseline = lab.ruleset()
    a_net, b_net, c_net = networks(lab, backend, "same-bridge", "isolated", "same-bridge")
    a1, b1, c1 = lab.add(a_net), lab.add(b_net), lab.add(c_net)
    # B's attachment lost from the registry (as a crash between applying and recording leaves it)
    path = os.path.join(lab.state_dir(), "registry.json")
    with open(path) as f:
        data = json.load(f)
    data["attachments"] = [a for a in data["attachments"] if a["bridge"] != b_net.bridge]
    with open(path, "w") as f:
        json.dump(data, f)
    rc, report = status(lab)
    assert rc == 1 and f"{b_net.bridge}: {backend} rules with no registered attachment" in report["problems"]
    assert "removed the rules of" not in cli(lab, "reconcile").stdout, "b1 is still plugged in: its rules stay"
    assert verdicts(lab, (a1, b1.ipv4), (b1, OUTSIDE)) == [False, True]
    sh(IP, "link", "del", host_port(lab, b1), netns=lab.host)
    proc = cli(lab, "reconcile")
    assert f"{backend}: removed the rules of {b_net.bridge}, which no registered attachment needs" in proc.stdout
    assert lab.ours_mentioning(b_net.bridge) == [] and lab.ours_mentioning(a_net.bridge) != []
    assert verdicts(lab, (a1, c1.ipv4), (a1, OUTSIDE)) == [False, True]

    proc = cli(lab, "cleanup", "--bridge", a_net.bridge)
    assert proc.returncode == 0, proc.stderr
    assert lab.ours_mentioning(a_net.bridge) == [] and lab.ours_mentioning(c_net.bridge) != []
    assert [r["bridge"] for r in status(lab)[1]["bridges"]] == [c_net.bridge]
    assert verdicts(lab, (a1, c1.ipv4)) == [True], "A is no longer isolated: nothing drops between A and C"
    assert cli(lab, "cleanup").returncode == 0
    assert lab.ruleset() == baseline


def trust(lab, backend: str, bridge: str, interface: str) -> None:
    """A trusted interface nobody configured (added by hand, or left by an older configuration)."""
    if backend == "nftables":
        sh("nft", "add", "element", "inet", "isolation", "trusted", f'{{ "{bridge}" . "{interface}" }}', netns=lab.host)
        return
    for tool in ("iptables", "ip6tables"):
        sh(tool, "-I", "CNI-ISOLATION-DIRECT", "1", "-i", interface, "-o", bridge, "-m", "comment", "--comment",
           "isolation-plugin", "-j", "RETURN", netns=lab.host)


@pytest.mark.parametrize("backend", BACKENDS)
def test_direct_access_deny_the_same_on_both_and_an_unasked_trust_is_revoked(lab, backend):
    """D (open, directAccess deny) drops what comes from O (open, unguarded: a bridge the plugin
    leaves alone); a trust of O's bridge nobody configured opens it, CHECK and status name it,
    reconcile removes it; the last DELs leave the baseline."""
    baseline = lab.ruleset()
    d_net = lab.network(["bridge", "isolation"], isolation={"backend": backend, "ingressPolicy": "open",
                                                            "directAccess": "deny"})
    o_net, = networks(lab, backend, "open")
    d1, o1 = lab.add(d_net), lab.add(o_net)
    assert verdicts(lab, (d1, OUTSIDE), (o1, OUTSIDE), (d1, o1.ipv4)) == [True, True, True]  # controls
    assert verdicts(lab, (o1, d1.ipv4), (o1, d1.ipv6)) == [False, False]
    assert all(check(lab, c)[0] == 0 for c in (d1, o1))
    rc, report = status(lab)
    assert rc == 0 and report["problems"] == [], report["problems"]
    assert next(r for r in report["bridges"] if r["bridge"] == d_net.bridge)["drops"]["direct-access"] >= 1, report

    trust(lab, backend, d_net.bridge, o_net.bridge)
    assert verdicts(lab, (o1, d1.ipv4), (o1, d1.ipv6)) == [True, True], "the unasked trust opens D to O"
    rc, out = check(lab, d1)
    assert rc == 102 and "grants bridge" in out["msg"], out
    proc = cli(lab, "reconcile")
    assert proc.returncode == 0 and "removed grants no registered attachment needs" in proc.stdout, proc.stdout
    assert verdicts(lab, (o1, d1.ipv4), (o1, d1.ipv6), (d1, OUTSIDE)) == [False, False, True]
    assert check(lab, d1)[0] == 0 and status(lab)[0] == 0

    for c in (d1, o1):
        assert all(rc == 0 for _, rc in lab.delete(c))
    assert lab.ruleset() == baseline
