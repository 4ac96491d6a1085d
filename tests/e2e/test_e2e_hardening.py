"""Fail closed in the control plane (issue 15, items 2, 4 and 7), with the frozen binary and
real packets: a state directory that is not root's alone is refused rather than trusted
(a planted cached verdict never opens an `isolated` network), the agent is used only when
it is a root agent and never applies a request its client gave up on, and a table or
chain that exists but enforces nothing counts as missing and is repaired.

Hostile files are planted only in a state root private to the lab (Lab.private_state_root:
bind-mounted over /run/isolation in the binary's own mount namespace).
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from netlab import Container, PluginError, sh

pytestmark = pytest.mark.e2e
OTHER = 65534  # nobody


def isolated_pair(lab, backend, policy="same-bridge"):
    a = lab.network(["bridge", "isolation"], isolation={"backend": backend, "ingressPolicy": policy})
    b = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    return a, b


def blocked(lab, src, dst) -> bool:
    """No ICMP or TCP from src to dst, over IPv4 or IPv6."""
    return not any(lab.reach([(src.name, dst.ipv4), (src.name, dst.ipv6)]).values())


def open_to(lab, src, dst) -> bool:
    return all(lab.reach([(src.name, dst.ipv4), (src.name, dst.ipv6)]).values())


def iso_conf(lab, c) -> tuple[dict, dict]:
    """The isolation plugin's configuration and environment for container c, as libcni gives them."""
    plugin = next(p for p in c.network.plugins if p["type"] == "isolation")
    return lab._conf(c.network, plugin, lab.cache[(c.network.name, c.id)]), lab._env(c)


def run(lab, command, c, env=None):
    conf, base = iso_conf(lab, c)
    return lab.exec_plugin("isolation", command, conf, base | (env or {}))


def failed_add(lab, net) -> PluginError:
    """lab.add(net), which must fail: its error. The would-be container keeps its place (the
    lab names the next one, and host-local allocates, after it)."""
    with pytest.raises(PluginError) as err:
        lab.add(net)
    net.containers.append(Container(lab.namespaces[-1], "failed", net))
    return err.value


# --- item 2: the state directory ---------------------------------------------------------------
def cache_key(lab, net) -> tuple[str, dict]:
    """The cache file name our binary uses for `net`'s isolation entry, and the verdict it stores
    (computed as plugin.config does, for the frozen binary's fingerprint)."""
    from plugin import __version__
    from plugin import config
    from plugin.model import parse

    code = os.path.join(os.path.dirname(lab.isolation_bin), "_internal", "plugin")
    digest = config.sha256(__version__.encode())
    for name in ("model.pyc", "config.pyc"):  # the code that validates, as the bundle loads it
        with open(os.path.join(code, name), "rb") as f:
            digest.update(f.read())
    fingerprint = digest.hexdigest()
    raw = {"cniVersion": net.cni_version, "name": net.name,
           **next(p for p in net.plugins if p["type"] == "isolation")}
    text = json.dumps([fingerprint, {k: v for k, v in raw.items() if k != "name"}], sort_keys=True, separators=(",", ":"))
    digest = config.sha256(text.encode()).hexdigest()
    return f"{config.network_tag(net.name)}-{digest}", parse(raw).model_dump(mode="json")


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_planted_open_verdict_never_opens_an_isolated_network(make_lab, backend):
    """A local user who owns the namespace's state directory (e.g. made through a 0777
    /run/isolation) plants a cached `ingressPolicy: open` for an `isolated` network."""
    lab = make_lab()
    lab.private_state_root()
    net_a, net_b = isolated_pair(lab, backend, "isolated")
    b1 = lab.add(net_b)
    state = lab.state_dir()
    key, verdict = cache_key(lab, net_a)
    assert verdict["ingressPolicy"] == "isolated"
    folder = os.path.join(state, "config")
    for path in (os.path.join(folder, f"{key}.json"), os.path.join(folder, f"{key.split('-', 1)[1]}.json")):
        with open(path, "w") as f:  # both the current and the former file name
            json.dump(verdict | {"ingressPolicy": "open"}, f)
    for dirpath, dirs, files in os.walk(state):
        for name in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
            os.chown(name, OTHER, OTHER)
    err = failed_add(lab, net_a)
    out = err.out
    seen = os.path.join("/run/isolation", os.path.basename(state))  # as the binary sees it
    assert err.rc != 0 and out["code"] == 5 and seen in out["msg"] and f"owned by uid {OTHER}" in out["msg"], out
    # positive control: once the directory is root's again and the plant removed, the same ADD isolates
    for dirpath, dirs, files in os.walk(state):
        for name in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
            os.chown(name, 0, 0)
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    a1 = lab.add(net_a)
    assert blocked(lab, b1, a1) and blocked(lab, a1, b1)
    assert lab.tcp(a1.name, net_a.gateway4)


@pytest.mark.parametrize("mode,word", [(0o777, "writable by group and others"), (0o770, "writable by group")])
def test_a_state_root_others_can_write_is_refused(make_lab, mode, word):
    lab = make_lab()
    root = lab.private_state_root(mode)
    net = lab.network(["bridge", "isolation"], isolation={"backend": "nftables"})
    out = failed_add(lab, net).out
    assert out["code"] == 5 and f"refusing to use /run/isolation: {word}" in out["msg"].replace("it is ", ""), out
    assert lab.nft("list", "ruleset").strip() == ""  # nothing applied
    os.chmod(root, 0o700)  # positive control
    c = lab.add(net)
    assert [rc for kind, rc, _ in lab.check(c) if kind == "isolation"] == [0]


def test_a_symlinked_namespace_directory_is_refused(make_lab):
    lab = make_lab()
    lab.private_state_root()
    net = lab.network(["bridge", "isolation"], isolation={"backend": "nftables"})
    c = lab.add(net)  # positive control
    state = lab.state_dir()
    os.rename(state, state + ".elsewhere")
    os.symlink(state + ".elsewhere", state)
    rc, out, _ = run(lab, "CHECK", c)
    assert rc != 0 and out["code"] == 5 and "symbolic link" in out["msg"], out


def test_cached_verdicts_go_with_their_network(lab):
    from plugin.config import network_tag

    net_a, net_b = isolated_pair(lab, "nftables")
    a1, a2, b1 = lab.add(net_a), lab.add(net_a), lab.add(net_b)
    folder = os.path.join(lab.state_dir(), "config")

    def tags():
        return sorted(n.split("-", 1)[0] for n in os.listdir(folder))

    assert tags() == sorted([network_tag(net_a.name), network_tag(net_b.name)])
    lab.delete(a1)
    assert tags() == sorted([network_tag(net_a.name), network_tag(net_b.name)])  # a2 still uses it
    lab.delete(a2)
    assert tags() == [network_tag(net_b.name)]
    assert [rc for kind, rc, _ in lab.check(b1) if kind == "isolation"] == [0]


# --- item 4: the agent ---------------------------------------------------------------------------
FAKE_AGENT = """
import os, socket, sys
path, how = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
if how == "socket-owned-by-nobody":
    os.chown(path, 65534, 65534)
else:  # bound by root, served by nobody: only SO_PEERCRED tells
    os.setgid(65534)
    os.setuid(65534)
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(3)
    try:
        data = c.recv(65536)
    except OSError:
        data = b""
    print("got", len(data), flush=True)
    c.close()
"""


@pytest.mark.parametrize("how", ["served-by-nobody", "socket-owned-by-nobody"])
def test_the_plugin_sends_nothing_to_an_agent_that_is_not_root(lab, how):
    net_a, net_b = isolated_pair(lab, "nftables")
    b1 = lab.add(net_b)  # makes the state directory
    path = os.path.join(lab.state_dir(), "agent.sock")
    fake = subprocess.Popen([sys.executable, "-c", FAKE_AGENT, path, how], stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout.readline().strip() == "ready"
        started = time.monotonic()
        a1 = lab.add(net_a)  # done by the plugin itself
        took = time.monotonic() - started
    finally:
        fake.terminate()
        heard = fake.communicate(timeout=10)[0]
        os.unlink(path)
    assert not [n for n in heard.split() if n.isdigit() and int(n) > 0], heard  # it was sent nothing
    assert took < 10
    assert blocked(lab, b1, a1) and lab.tcp(a1.name, net_a.gateway4)
    # positive control: a real (root) agent is used
    log = lab.start_agent()
    a2 = lab.add(net_a)
    assert f"served ADD for {a2.id}: rc=0" in open(log).read()


def test_a_del_the_plugin_gave_up_on_is_never_applied_later(lab):
    """The agent is slowed down (the lock is busy, then it is stopped) until its client gives
    up and DELs itself; the runtime then ADDs the same container again. The agent's stale DEL
    must not run, or the container would be left without isolation."""
    log = lab.start_agent()
    net_a, net_b = isolated_pair(lab, "nftables")
    a1, b1 = lab.add(net_a), lab.add(net_b)
    assert blocked(lab, b1, a1) and lab.tcp(a1.name, net_a.gateway4)
    lock = os.open(os.path.join(lab.state_dir(), "lock"), os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        conf, env = iso_conf(lab, a1)
        full = {"CNI_COMMAND": "DEL", "CNI_PATH": "/usr/lib/cni", **env, "ISOLATION_AGENT_TIMEOUT_S": "1.5"}
        proc = subprocess.Popen(lab.isolation_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=full)
        proc.stdin.write(json.dumps(conf))
        proc.stdin.close()
        time.sleep(0.8)  # the request reached the agent, whose thread now waits for the lock
        os.kill(lab.agent.pid, signal.SIGSTOP)  # its thread waits for the lock, and now cannot run at all
        time.sleep(2.0)  # the client gave up (1.5 s) and now waits for the lock itself
    finally:
        os.close(lock)
    try:
        assert proc.wait(timeout=30) == 0, proc.stdout.read()
        assert not blocked(lab, b1, a1)  # the client's own DEL was done: a1 is unprotected, as asked
        rc, out, _ = run(lab, "ADD", a1, {"ISOLATION_AGENT": "off"})  # the runtime starts it again
        assert rc == 0, out
        assert blocked(lab, b1, a1)
    finally:
        os.kill(lab.agent.pid, signal.SIGCONT)
    time.sleep(2.0)  # the agent's thread resumes, finds its client gone and drops the request
    assert blocked(lab, b1, a1) and lab.tcp(a1.name, net_a.gateway4)
    rc, out, _ = run(lab, "CHECK", a1, {"ISOLATION_AGENT": "off"})
    assert rc == 0, out
    assert "stopped waiting" in open(log).read()


# --- item 7: tables and chains that enforce nothing ---------------------------------------------
DAMAGE = {
    "nftables-dormant": ("nftables", [["nft", "add", "table", "inet", "isolation", "{ flags dormant; }"]]),
    "nftables-emptied": ("nftables", [["nft", "flush", "chain", "inet", "isolation", "forward"]]),
    "iptables-jump": ("iptables", [[tool, "-w", "-D", "FORWARD", "-m", "comment", "--comment", "isolation-plugin",
                                    "-j", "CNI-ISOLATION-STAGE-1"] for tool in ("iptables", "ip6tables")]),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_rules_that_enforce_nothing_count_as_missing(lab, damage):
    backend, commands = DAMAGE[damage]
    net_a, net_b = isolated_pair(lab, backend)
    a1, b1 = lab.add(net_a), lab.add(net_b)
    assert blocked(lab, b1, a1) and blocked(lab, a1, b1) and lab.tcp(a1.name, net_a.gateway4)

    def break_it():
        for argv in commands:
            sh(*argv, netns=lab.host)
        assert open_to(lab, b1, a1)  # the damage is real: nothing is enforced

    break_it()
    check = [(kind, rc) for kind, rc, _ in lab.check(a1) if kind == "isolation"]
    assert check == [("isolation", 1)]
    rc, out, _ = run(lab, "CHECK", a1)
    assert out["code"] == 102, out
    status = lab.cli("status", "--json")
    assert status.returncode == 1, status.stdout + status.stderr  # problems found (it was 104 when dormant)
    problems = json.loads(status.stdout)["problems"]
    assert problems and all(net_a.bridge in p or net_b.bridge in p for p in problems), problems
    fixed = lab.cli("reconcile")
    assert fixed.returncode == 0 and "restored" in fixed.stdout, fixed.stdout + fixed.stderr
    assert blocked(lab, b1, a1) and blocked(lab, a1, b1) and lab.tcp(a1.name, net_a.gateway4)
    assert [rc for kind, rc, _ in lab.check(a1) if kind == "isolation"] == [0]
    assert lab.cli("status").returncode == 0
    break_it()  # and the next ADD, on any network, re-creates it
    b2 = lab.add(net_b)
    assert blocked(lab, b2, a1) and blocked(lab, b1, a1) and blocked(lab, a1, b1)
    assert [rc for kind, rc, _ in lab.check(a1) if kind == "isolation"] == [0]


# --- item 8: after the last DEL, the ruleset the first ADD found -----------------------------
HOST_FILTER = """table ip filter {
  chain OUTPUT { type filter hook output priority filter; policy accept; }
}
table ip6 filter {
  chain OUTPUT { type filter hook output priority filter; policy accept; }
}
"""


@pytest.mark.parametrize("host,end", [("no filter table", "DEL"), ("filter tables holding OUTPUT only", "DEL"),
                                      ("filter tables holding OUTPUT only", "cleanup")])
def test_the_last_iptables_del_leaves_the_ruleset_it_found(lab, host, end):
    """iptables-nft creates the built-in chains (FORWARD, and INPUT for a guard) and the tables
    on first use, and iptables-save shows them whether they exist or not: only `nft list
    ruleset` tells. What the plugin's use created goes with the last DEL; what was there stays."""
    if host != "no filter table":
        sh("nft", "-f", "-", netns=lab.host, input=HOST_FILTER)
    baseline = lab.ruleset()
    guarded = {"backend": "iptables", "denyEgress": ["192.0.2.0/24", "2001:db8::/32"]}  # the INPUT jump too
    net_a = lab.network(["bridge", "isolation"], isolation=guarded)
    net_b = lab.network(["bridge", "isolation"], isolation={"backend": "iptables"})
    a1, b1 = lab.add(net_a), lab.add(net_b)
    assert blocked(lab, b1, a1) and lab.tcp(a1.name, net_a.gateway4)
    assert "chain FORWARD" in lab.nft("list", "table", "ip6", "filter")
    if end == "DEL":
        lab.delete(a1)
        lab.delete(b1)
    else:
        out = lab.cli("cleanup")
        assert out.returncode == 0, out.stdout + out.stderr
    assert lab.ruleset() == baseline


def test_a_first_add_that_failed_leaves_no_table_behind(lab):
    """The first ADD (it creates iptables-nft's filter tables) fails in IPv6 and is undone; the
    retried ADD succeeds; after its DEL the tables the failed one created are gone too."""
    bindir = os.path.join(lab.tmp, "broken-bin")
    os.makedirs(bindir)
    with open(os.path.join(bindir, "ip6tables-restore"), "w") as f:
        f.write("#!/bin/sh\ncat >/dev/null\necho 'ip6tables-restore: line 2 failed' >&2\nexit 1\n")
    os.chmod(os.path.join(bindir, "ip6tables-restore"), 0o755)
    broken = {"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin"}
    baseline = lab.ruleset()
    net_a = lab.network(["bridge", "isolation"], isolation={"backend": "iptables"})
    net_b = lab.network(["bridge", "isolation"], isolation={"backend": "iptables"})
    b1 = lab.add(net_b)
    rc, out, _ = run(lab, "DEL", b1)  # unregistered again: the next ADD is the host's first
    assert rc == 0 and lab.ruleset() == baseline
    rc, out, _ = run(lab, "ADD", b1, broken)
    assert rc != 0 and out["code"] == 100 and "nothing was left applied" in out["details"], out
    a1 = lab.add(net_a)
    rc, out, _ = run(lab, "ADD", b1)
    assert rc == 0, out
    assert blocked(lab, b1, a1) and lab.tcp(a1.name, net_a.gateway4)
    lab.delete(a1)
    lab.delete(b1)
    assert lab.ruleset() == baseline
