"""Failing closed, deferred DELs, recovery without the agent, and permissions (issue 8),
with real packets where packets are the claim."""

import contextlib
import fcntl
import json
import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from netlab import IP, sh

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_busy_lock_fails_add_closed_and_defers_del(lab, backend):
    """With the host-wide lock held elsewhere, ADD fails with 11 and isolates nothing (the
    runtime then does not start the container); DEL still succeeds, and the next run that
    holds the lock carries it out."""
    isolated = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    kept, gone = lab.add(isolated), lab.add(isolated)
    plain = lab.network(["bridge"])
    newcomer = lab.add(plain)
    before = lab.ruleset()
    env_short = {"ISOLATION_LOCK_TIMEOUT_S": "1"}
    fd = os.open(os.path.join(lab.state_dir(), "lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rc, out, _ = lab.exec_plugin("isolation", "ADD", lab.isolation_conf(newcomer, backend=backend),
                                     {**lab._env(newcomer), **env_short})
        assert rc != 0 and out["code"] == 11, out
        assert lab.ruleset() == before, "a failed ADD changes nothing"
        rc, out, _ = lab.exec_plugin("isolation", "DEL", lab.isolation_conf(gone, backend=backend),
                                     {**lab._env(gone), **env_short})
        assert rc == 0 and out is None, out
        assert os.listdir(os.path.join(lab.state_dir(), "deferred-del")), "the DEL is recorded"
    finally:
        os.close(fd)
    # The next locked run (here another container's DEL) carries the deferred DEL out.
    rc, _, _ = lab.exec_plugin("isolation", "DEL", lab.isolation_conf(newcomer, backend=backend), lab._env(newcomer))
    assert rc == 0
    assert [b["attachments"] for b in lab.status()["bridges"]] == [1], "only `kept` is registered"
    assert not os.listdir(os.path.join(lab.state_dir(), "deferred-del"))
    assert all(rc == 0 for _, rc, _ in lab.check(kept))


@pytest.mark.parametrize("backend,wipe", [
    ("nftables", [["nft", "flush", "ruleset"]]),
    ("iptables", [["iptables", "-F"], ["iptables", "-X"], ["ip6tables", "-F"], ["ip6tables", "-X"]]),
], ids=["nft-flush-ruleset", "iptables-F-X"])
def test_reconcile_restores_a_wiped_firewall(lab, backend, wipe):
    """Without the agent: CHECK reports the loss, `isolation status` names it, and
    `isolation reconcile` puts isolation back, proven with packets."""
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(2)]
    a, b = lab.add(nets[0]), lab.add(nets[1])
    assert lab.blocked(a, b)
    for argv in wipe:
        sh(*argv, netns=lab.host)
    assert not lab.blocked(a, b), "the wipe really opened the way (else this test proves nothing)"
    assert any(rc != 0 for kind, rc, _ in lab.check(a) if kind == "isolation")
    report = lab.status()
    assert report["problems"] and all(any(p.startswith(n.bridge) for p in report["problems"]) for n in nets)
    out = lab.cli("reconcile")
    assert out.returncode == 0 and "restored" in out.stdout, out
    assert lab.blocked(a, b)
    assert lab.status()["problems"] == []
    assert all(rc == 0 for c in (a, b) for _, rc, _ in lab.check(c))


@contextlib.contextmanager
def world_readable_copy(binary: str):
    """The frozen bundle copied where any user can run it: the checkout may live under a
    directory other users cannot enter (root's home is 0700), and this test is about what
    the plugin refuses to a user, not about whether that user can reach the file."""
    public = tempfile.mkdtemp(prefix="isolation-public-")
    try:
        os.chmod(public, 0o755)
        bundle = os.path.join(public, "bundle")
        shutil.copytree(os.path.dirname(binary), bundle, symlinks=True)
        yield os.path.join(bundle, os.path.basename(binary))
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_state_is_root_only_and_nobody_else_can_change_rules(lab):
    net = lab.network(["bridge", "isolation"])
    c = lab.add(net)
    other = lab.add(lab.network(["bridge"]))
    for name, mode in (("", 0o700), ("lock", 0o600), ("registry.json", 0o600)):
        st = os.stat(os.path.join(lab.state_dir(), name))
        assert stat.S_IMODE(st.st_mode) == mode and st.st_uid == 0, name
    before = lab.ruleset()
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = {"CNI_COMMAND": "ADD", "CNI_PATH": "/usr/lib/cni", **lab._env(other)}
    conf = json.dumps({**lab.isolation_conf(other), "name": other.network.name})
    with world_readable_copy(lab.isolation_bin) as binary:
        argv = lab.isolation_argv()
        at = argv.index(lab.isolation_bin)
        argv[at] = binary
        add = subprocess.run(argv[:at] + nobody + argv[at:], input=conf, capture_output=True, text=True, env=env)
        assert add.stdout, f"the plugin must answer uid 65534 with a CNI error: {add.stderr}"
        assert add.returncode != 0 and json.loads(add.stdout)["code"] in (5, 100, 103), add.stdout
        for args in (["cleanup"], ["prune"], ["reconcile"]):
            run = subprocess.run(argv[:at] + nobody + argv[at:] + args, capture_output=True, text=True)
            assert run.returncode != 0 and run.stderr.startswith("isolation: "), (args, run)  # it ran, and refused
    assert lab.ruleset() == before, "nothing a non-root user runs changes a rule"
    assert all(rc == 0 for _, rc, _ in lab.check(c))


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_isolated_fails_closed_when_the_port_cannot_be_isolated(make_lab, backend):
    """`isolated` is the kernel's bridge-port isolation flag on the container's port: when it
    cannot be set (here the veth was taken off its bridge behind the runtime's back), ADD
    fails with 100 and changes nothing, and DEL still succeeds. bridge-nf-call is neither
    needed nor touched."""
    lab = make_lab(bridge_nf=0)
    net = lab.network(["bridge"])
    c = lab.add(net)
    port = lab.host_port(c)
    sh(IP, "link", "set", port, "nomaster", netns=lab.host)
    before = lab.ruleset()
    rc, out, _ = lab.exec_plugin("isolation", "ADD", lab.isolation_conf(c, ingressPolicy="isolated", backend=backend),
                                 lab._env(c))
    assert rc != 0 and out["code"] == 100 and "isolation flag" in out["msg"], out
    assert lab.ruleset() == before and lab.bridge_nf() == "0"
    rc, _, _ = lab.exec_plugin("isolation", "DEL", lab.isolation_conf(c, ingressPolicy="isolated", backend=backend),
                               lab._env(c))
    assert rc == 0


def _broken_ip6tables_restore(lab) -> dict:
    """An environment whose PATH finds an `ip6tables-restore` that refuses every change, as a
    broken or incompatible IPv6 backend would, while IPv4 keeps working."""
    bindir = os.path.join(lab.tmp, "broken-bin")
    os.makedirs(bindir, exist_ok=True)
    tool = os.path.join(bindir, "ip6tables-restore")
    with open(tool, "w") as f:
        f.write("#!/bin/sh\ncat >/dev/null\necho 'ip6tables-restore: line 2 failed' >&2\nexit 1\n")
    os.chmod(tool, 0o755)
    return {"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin"}


def test_iptables_add_refused_by_one_family_leaves_nothing_applied(lab):
    """iptables applies each family in its own transaction. When IPv6 refuses what IPv4
    accepted, ADD fails (100) and IPv4 is taken back: iptables-save is byte-identical to
    before, whether the ADD was a bridge's first or a stricter guard on an isolated bridge,
    and `isolation status` finds nothing unregistered. DEL still succeeds; once IPv6 works,
    the retried ADD isolates, proven with packets."""
    iso = {"backend": "iptables"}
    first = lab.network(["bridge", "isolation"], isolation=iso)
    a, a2 = lab.add(first), lab.add(first)
    newcomer = lab.add(lab.network(["bridge"]))
    broken = _broken_ip6tables_restore(lab)
    saved = lambda: (lab.save("ipv4"), lab.save("ipv6"))  # noqa: E731
    before = saved()
    attempts = [(newcomer, {}), (a2, {"denyEgress": [f"{newcomer.ipv4}/32", f"{newcomer.ipv6}/128"]})]
    for c, extra in attempts:
        conf = {**lab.isolation_conf(c, backend="iptables"), **extra}
        rc, out, _ = lab.exec_plugin("isolation", "ADD", conf, {**lab._env(c), **broken})
        assert rc != 0 and out["code"] == 100 and "ip6tables-restore" in out["msg"], out
        assert "nothing was left applied" in out["details"], out
        # iptables-save, not the nft listing: iptables-nft creates a built-in chain (here INPUT,
        # for the guard's jump) on first use and keeps it, empty, like after any DEL
        assert saved() == before, f"IPv4 kept part of a failed ADD ({extra or 'first on its bridge'})"
        assert lab.status()["problems"] == []
        rc, out, _ = lab.exec_plugin("isolation", "DEL", conf, {**lab._env(c), **broken})
        assert rc == 0 and out is None, out
    assert saved() == before
    assert all(lab.reach([(a.name, newcomer.ipv4), (a.name, newcomer.ipv6)]).values()), "the failed ADD isolated nothing"
    rc, out, _ = lab.exec_plugin("isolation", "ADD", lab.isolation_conf(newcomer, backend="iptables"), lab._env(newcomer))
    assert rc == 0, out
    assert lab.blocked(a, newcomer) and lab.blocked(newcomer, a)


def test_half_failed_teardown_is_named_and_reconciled(lab):
    """A DEL whose IPv6 teardown fails still succeeds and forgets the attachment; `isolation
    status` names the IPv6 rules nobody registered, and once the runtime has unplugged the
    container (the bridge plugin's DEL), `isolation reconcile` removes them: the ruleset is
    back to what it was before the network's first container. While something is still
    plugged into the bridge, reconcile keeps them (see the lost-registry test)."""
    baseline = lab.ruleset()
    net = lab.network(["bridge", "isolation"], isolation={"backend": "iptables"})
    c = lab.add(net)
    conf = lab.isolation_conf(c, backend="iptables")
    rc, out, _ = lab.exec_plugin("isolation", "DEL", conf, {**lab._env(c), **_broken_ip6tables_restore(lab)})
    assert rc == 0 and out is None, out
    assert f"-o {net.bridge} " in lab.save("ipv6") and f"-o {net.bridge} " not in lab.save("ipv4")
    assert lab.status()["problems"] == [f"{net.bridge}: iptables rules with no registered attachment"]
    reconcile = lambda: lab.cli("reconcile")  # noqa: E731
    out = reconcile()
    assert out.returncode == 0 and "removed" not in out.stdout and f"-o {net.bridge} " in lab.save("ipv6"), out
    rc, _, _ = lab.exec_plugin("bridge", "DEL", lab._conf(net, net.plugins[0], None), lab._env(c))
    assert rc == 0
    out = reconcile()
    assert out.returncode == 0 and f"removed the rules of {net.bridge}" in out.stdout, out
    assert lab.ruleset() == baseline
    assert lab.status()["problems"] == []


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_a_lost_registry_never_opens_isolation(lab, backend):
    """With the registry gone (deleted or damaged) while containers run, their rules have no
    registered attachment: `status` names them, and neither `reconcile` nor the agent's
    repairs remove them while the containers are plugged in. Isolation holds, by packets."""
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(2)]
    a, b = lab.add(nets[0]), lab.add(nets[1])
    os.remove(os.path.join(lab.state_dir(), "registry.json"))
    before = lab.ruleset()
    out = lab.cli("reconcile")
    assert out.returncode == 0 and "removed" not in out.stdout, out
    assert lab.ruleset() == before and lab.blocked(a, b) and lab.blocked(b, a)
    assert sorted(lab.status()["problems"]) == sorted(f"{n.bridge}: {backend} rules with no registered attachment"
                                                       for n in nets)
