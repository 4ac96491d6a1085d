"""The admin CLI (status, prune, cleanup) and the STATUS verb, against real rules."""

import json
import os
import subprocess

import pytest

from netlab import IP, sh

pytestmark = pytest.mark.e2e
BACKENDS = ["iptables", "nftables"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_status_reports_bridges_and_what_is_wrong(lab, backend):
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend, "ingressPolicy": p})
            for p in ("same-bridge", "isolated")]
    a, b, _ = lab.add(nets[0]), lab.add(nets[1]), lab.add(nets[1])
    assert lab.reach([(a.name, b.ipv4)]) == {("icmp", a.name, b.ipv4): False, ("tcp", a.name, b.ipv4): False}
    proc = lab.cli("status")
    assert proc.returncode == 0, proc.stdout
    report = lab.status()
    assert report["problems"] == []
    assert report["backends"][backend]["usable"]
    rows = {r["bridge"]: r for r in report["bridges"]}
    assert {(r["policies"][0], r["attachments"], r["backend"]) for r in rows.values()} == {
        ("same-bridge", 1, backend), ("isolated", 2, backend)}
    # the blocked probes above were dropped going into the isolated network: counted for its bridge
    assert rows[nets[1].bridge]["drops"]["cross-network"] >= 1
    assert rows[nets[1].bridge]["networks"] == [nets[1].name]
    assert report["backends"][backend]["drops"] >= 1

    if backend == "iptables":
        sh("iptables", "-F", "CNI-ISOLATION-STAGE-2", netns=lab.host)
    else:
        sh("nft", "flush", "chain", "inet", "isolation", "forward", netns=lab.host)
    sh(IP, "link", "del", nets[1].bridge, netns=lab.host)
    proc = lab.cli("status")
    assert proc.returncode == 1
    problems = lab.status()["problems"]
    assert any(nets[1].bridge in p and "no longer exists" in p for p in problems), problems
    assert any(nets[0].bridge in p and ("lacks" in p or "altered" in p) for p in problems), problems


def test_status_warns_about_mixed_backends(lab):
    lab.add(lab.network(["bridge", "isolation"], isolation={"backend": "iptables"}))
    lab.add(lab.network(["bridge", "isolation"], isolation={"backend": "nftables"}))
    assert any("different backends" in p for p in lab.status()["problems"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_prune_forgets_attachments_of_deleted_bridges(lab, backend):
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(2)]
    lab.add(nets[0])
    c2 = lab.add(nets[1])
    sh(IP, "link", "del", nets[0].bridge, netns=lab.host)
    proc = lab.cli("prune")
    assert proc.returncode == 0 and "pruned 1 attachment" in proc.stdout
    report = lab.status()
    assert [r["bridge"] for r in report["bridges"]] == [nets[1].bridge] and report["problems"] == []
    assert all(rc == 0 for _, rc, _ in lab.check(c2))


@pytest.mark.parametrize("mode", ["dry-run piped into sh -e", "cleanup"])
def test_cleanup_leaves_the_baseline(lab, mode):
    baseline = lab.ruleset()
    lab.add(lab.network(["bridge", "isolation"], isolation={"backend": "iptables"}))
    lab.add(lab.network(["bridge", "isolation"], isolation={"backend": "nftables", "ingressPolicy": "isolated"}))
    assert lab.ruleset() != baseline
    if mode == "cleanup":
        proc = lab.cli("cleanup")
        assert proc.returncode == 0, proc.stderr
    else:
        script = lab.cli("cleanup", "--dry-run").stdout
        assert "nft delete table inet isolation" in script and "iptables -w -t filter -X" in script
        proc = subprocess.run([IP, "netns", "exec", lab.host, "sh", "-e"], input=script, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert lab.ruleset() == baseline
    report = lab.status()
    assert report["bridges"] == [] and report["problems"] == []


def test_cleanup_of_one_bridge(lab):
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": "nftables"}) for _ in range(2)]
    lab.add(nets[0]), lab.add(nets[1])
    proc = lab.cli("cleanup", "--bridge", nets[0].bridge)
    assert proc.returncode == 0, proc.stderr
    assert [r["bridge"] for r in lab.status()["bridges"]] == [nets[1].bridge]
    assert f'"{nets[0].bridge}"' not in lab.nft("list", "set", "inet", "isolation", "isolated")
    assert lab.cli("cleanup", "--bridge", "bad name").returncode == 1


def test_help_has_examples(isolation_bin):
    for sub in ("status", "cleanup", "prune"):
        proc = subprocess.run([isolation_bin, sub, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "examples:" in proc.stdout and f"isolation {sub}" in proc.stdout


@pytest.fixture
def hidden_iptables(lab):
    """A private mount namespace wrapper in which the iptables tools are empty, unusable files."""
    empty = os.path.join(lab.tmp, "not-executable")
    open(empty, "w").close()
    tools = [os.path.realpath(f"/usr/sbin/{t}") for t in
             ("iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore")]
    binds = " && ".join(f"mount --bind {empty} {t}" for t in sorted(set(tools)))
    return lambda argv: ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{binds} && exec "$@"',
                         "sh", *argv]


@pytest.mark.parametrize("backend,code", [("iptables", 50), ("auto", 0), ("nftables", 0)])
def test_status_verb_reports_an_unusable_backend(lab, hidden_iptables, backend, code):
    conf = {"cniVersion": "1.1.0", "name": "n", "type": "isolation", "backend": backend}
    argv = hidden_iptables([IP, "netns", "exec", lab.host, lab.isolation_bin])
    env = {"CNI_COMMAND": "STATUS", "CNI_PATH": "/usr/lib/cni"}
    proc = subprocess.run(argv, input=json.dumps(conf), capture_output=True, text=True, env=env)
    if code:
        assert proc.returncode != 0 and json.loads(proc.stdout)["code"] == code, proc.stdout
    else:
        assert proc.returncode == 0 and proc.stdout == "", proc.stdout
    plain = subprocess.run([IP, "netns", "exec", lab.host, lab.isolation_bin], input=json.dumps(conf),
                           capture_output=True, text=True, env=env)
    assert plain.returncode == 0, "without hiding, every backend is usable"
