"""The plugin's own files are trusted only when they are root's alone (issue 15, items 2
and 3), tested in-process against a private state root (never the host's /run/isolation):
creation modes under umask 0, refusal of what someone else owns or can write, symlinks
refused, and `logFile` written without following links, without blocking, only to a
regular file of ours, made 0600, for failed invocations too.
"""

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from conftest import REPO
from plugin import cni, config, hoststate
from plugin.errors import CniError
from plugin.registry import Registry, defer_delete, deferred_deletes

OTHER = 65534  # nobody


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A private STATE_ROOT (not yet created) and this process's state directory in it."""
    path = str(tmp_path / "state-root")
    monkeypatch.setattr(hoststate, "STATE_ROOT", path)
    hoststate.state_dir.cache_clear()
    yield path
    hoststate.state_dir.cache_clear()


@pytest.fixture
def umask0():
    old = os.umask(0)
    yield
    os.umask(old)


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def refused(fn, path: str, *words: str) -> None:
    with pytest.raises(CniError) as err:
        fn()
    assert err.value.code == 5, err.value.msg
    assert path in err.value.msg, err.value.msg
    for w in words:
        assert w in err.value.msg, err.value.msg


def test_everything_is_created_private_under_umask_0(root, umask0):
    state = hoststate.state_dir()
    with hoststate.HostLock(timeout=1):
        Registry.load(state).save()
    config.load({"cniVersion": "1.0.0", "name": "net", "type": "isolation"})  # caches its verdict
    defer_delete(state, ("n", "c", "eth0"))
    assert mode(root) == 0o700 and mode(state) == 0o700  # the root was 0777 under umask 0 before the fix
    assert mode(os.path.join(state, "lock")) == 0o600
    assert mode(os.path.join(state, "registry.json")) == 0o600
    cached = os.listdir(os.path.join(state, "config"))
    assert len(cached) == 1 and mode(os.path.join(state, "config")) == 0o700
    assert mode(os.path.join(state, "config", cached[0])) == 0o600
    assert mode(os.path.join(state, "deferred-del")) == 0o700
    for dirpath, dirs, files in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
            assert os.lstat(name).st_uid == os.geteuid()
    assert [k for _, k in deferred_deletes(state)] == [("n", "c", "eth0")]  # and they are used


@pytest.mark.parametrize("which", ["root", "state"])
@pytest.mark.parametrize("damage,words", [
    ("chmod 0777", ("writable by group and others", "0777")),
    ("chmod 0720", ("writable by group",)),
    ("chown", (f"owned by uid {OTHER}",)),
    ("symlink", ("symbolic link",)),
])
def test_directories_refused(root, which, damage, words):
    state = hoststate.state_dir()  # the positive control: made and accepted
    hoststate.state_dir.cache_clear()
    path = root if which == "root" else state
    spoil(path, damage, int(damage.split()[1], 8) if damage.startswith("chmod ") else 0)
    refused(hoststate.state_dir, path, *words)


def spoil(path: str, damage: str, mode: int) -> None:
    """What a local attacker would do to a state path: swap in a symlink, give it away, or
    open its mode (to `mode`)."""
    if damage == "symlink":
        os.rename(path, path + ".real")
        os.symlink(path + ".real", path)
    elif damage == "chown":
        os.chown(path, OTHER, OTHER)
    else:
        os.chmod(path, mode)


@pytest.mark.parametrize("name", ["registry.json", "lock", "config-file", "deferred-del"])
@pytest.mark.parametrize("damage", ["chown", "chmod", "symlink"])
def test_files_refused(root, name, damage):
    state = hoststate.state_dir()
    raw = {"cniVersion": "1.0.0", "name": "net", "type": "isolation"}
    config.load(raw)  # caches its verdict
    cached = os.path.join(state, "config", config._key(raw) + ".json")
    with hoststate.HostLock(timeout=1):
        Registry.load(state).save()
    defer_delete(state, ("n", "c", "eth0"))
    uses = {
        "registry.json": (os.path.join(state, "registry.json"), lambda: Registry.load(state)),
        "lock": (os.path.join(state, "lock"), lambda: hoststate.HostLock(timeout=1).__enter__().__exit__()),
        "config-file": (cached, lambda: config.load(raw)),
        "deferred-del": (os.path.join(state, "deferred-del"), lambda: deferred_deletes(state)),
    }
    path, use = uses[name]
    use()  # positive control: as made, it is used
    spoil(path, damage, 0o722 if os.path.isdir(path) else 0o622)
    refused(use, path, {"symlink": "symbolic link", "chown": f"owned by uid {OTHER}", "chmod": "writable by"}[damage])


def test_planted_verdict_is_refused_not_used(root):
    """The attack of item 2: a cached verdict saying `open` for an `isolated` network."""
    state = hoststate.state_dir()
    raw = {"cniVersion": "1.0.0", "name": "net", "type": "isolation", "ingressPolicy": "isolated"}
    assert config.load(raw).ingressPolicy == "isolated"  # made by us: used
    cached = os.path.join(state, "config", config._key(raw) + ".json")
    with open(cached) as f:
        values = json.load(f)
    os.unlink(cached)
    with open(cached, "w") as f:
        json.dump(values | {"ingressPolicy": "open"}, f)
    os.chown(cached, OTHER, OTHER)
    refused(lambda: config.load(raw), cached, f"owned by uid {OTHER}")


def test_cached_verdicts_are_pruned_per_network(root):
    state = hoststate.state_dir()
    for name in ("a", "b"):
        for policy in ("isolated", "same-bridge"):
            config.load({"cniVersion": "1.0.0", "name": name, "type": "isolation", "ingressPolicy": policy})
    folder = os.path.join(state, "config")
    tags = sorted(n.split("-", 1)[0] for n in os.listdir(folder))
    assert tags == sorted([config.network_tag("a")] * 2 + [config.network_tag("b")] * 2)
    assert config.prune({"b"}) == 2
    assert sorted(n.split("-", 1)[0] for n in os.listdir(folder)) == [config.network_tag("b")] * 2
    assert config.prune(set()) == 2 and os.listdir(folder) == []


# --- logFile ----------------------------------------------------------------------------------
def run_del(log_file: str, conf_extra: dict | None = None, env_extra: dict | None = None):
    """A DEL of an unregistered attachment (touches nothing) logging to `log_file`."""
    env = {"CNI_COMMAND": "DEL", "CNI_PATH": "/x", "CNI_CONTAINERID": "ctr", "CNI_IFNAME": "eth0", **(env_extra or {})}
    conf = {"cniVersion": "1.0.0", "name": "net", "type": "isolation", "logFile": log_file, **(conf_extra or {})}
    return cni.run(env, json.dumps(conf).encode())


def test_log_file_is_created_0600_under_umask_0(root, tmp_path, umask0):
    log = str(tmp_path / "plugin.log")
    assert run_del(log)[1] == 0
    assert mode(log) == 0o600 and "DEL" in open(log).read()


def test_log_file_mode_is_enforced(root, tmp_path):
    log = str(tmp_path / "plugin.log")
    with open(log, "w") as f:
        f.write("old\n")
    os.chmod(log, 0o644)
    assert run_del(log)[1] == 0
    text = open(log).read()
    assert mode(log) == 0o600 and text.startswith("old\n") and "DEL" in text  # appended, and 0600


def test_log_symlink_is_not_followed(root, tmp_path):
    target, link = str(tmp_path / "elsewhere"), str(tmp_path / "plugin.log")
    with open(target, "w") as f:
        f.write("precious\n")
    os.chmod(target, 0o644)
    os.symlink(target, link)
    good = str(tmp_path / "good.log")
    assert run_del(link)[1] == 0 and run_del(good)[1] == 0
    assert open(target).read() == "precious\n" and mode(target) == 0o644
    assert "DEL" in open(good).read()  # positive control: a plain path is written


def test_log_of_someone_else_or_hard_linked_is_left_alone(root, tmp_path):
    theirs, linked, mine = (str(tmp_path / n) for n in ("theirs.log", "linked.log", "mine.log"))
    for path in (theirs, mine):
        open(path, "w").close()
        os.chmod(path, 0o644)
    os.chown(theirs, OTHER, OTHER)
    os.link(mine, linked)
    assert run_del(theirs)[1] == 0 and run_del(linked)[1] == 0
    assert os.path.getsize(theirs) == 0 and mode(theirs) == 0o644 and os.path.getsize(mine) == 0
    os.unlink(linked)
    assert run_del(mine)[1] == 0 and "DEL" in open(mine).read()  # positive control


@pytest.mark.parametrize("reader", [False, True])
def test_log_fifo_never_blocks(root, tmp_path, reader):
    """A FIFO as logFile: the run neither hangs (no reader) nor writes into it (a reader)."""
    fifo = str(tmp_path / "plugin.log")
    os.mkfifo(fifo, 0o600)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK) if reader else None
    script = ("import sys, json; sys.path.insert(0, sys.argv[1]); from plugin import cni, hoststate; "
              "hoststate.STATE_ROOT = sys.argv[3]; "
              "env = {'CNI_COMMAND': 'DEL', 'CNI_PATH': '/x', 'CNI_CONTAINERID': 'c', 'CNI_IFNAME': 'eth0'}; "
              "conf = {'cniVersion': '1.0.0', 'name': 'n', 'type': 'isolation', 'logFile': sys.argv[2]}; "
              "print(cni.run(env, json.dumps(conf).encode())[1])")
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", script, REPO, fifo, root], capture_output=True, text=True,
                              timeout=10)
        took = time.monotonic() - started
        assert proc.stdout.strip() == "0", proc.stderr
        assert took < 5, took
        if reader:
            try:
                data = os.read(rfd, 4096)
            except BlockingIOError:
                data = b""
            assert data == b""  # nothing was written into it
    finally:
        if rfd is not None:
            os.close(rfd)


def test_failed_invocation_with_invalid_configuration_is_logged(root, tmp_path):
    log = str(tmp_path / "plugin.log")
    env = {"CNI_COMMAND": "ADD", "CNI_PATH": "/x", "CNI_CONTAINERID": "ctr", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0"}
    conf = {"cniVersion": "1.0.0", "name": "net", "type": "isolation", "logFile": log, "ingressPolicy": "strict"}
    out, rc = cni.run(env, json.dumps(conf).encode())
    assert rc == 1 and out["code"] == 7
    line = open(log).read()
    assert "ADD" in line and "result=error" in line and "code=7" in line and "container=ctr" in line
    # an invalid logFile is not used (nothing is written to a relative path), the rest still is
    out, rc = cni.run(env, json.dumps(conf | {"logFile": "relative.log", "logLevel": "loud"}).encode())
    assert out["code"] == 7 and not os.path.exists("relative.log")
    out, rc = cni.run(env, json.dumps(conf | {"logLevel": "error"}).encode())
    assert open(log).read().count("result=error") == 2
