"""`isolation install` against a temporary host root, as the DaemonSet's init container
runs it (deploy/kubernetes/): the bundle copied in and linked atomically and idempotently,
never over a file of another's, the plugin chained into the node's primary conflist (a
.conf converted), an invalid config rejected untouched, a read-only bin dir failing cleanly,
the entry re-inserted after the main CNI rewrites the file, and everything taken out again."""

import json
import os
import shutil
import subprocess
import time

import pytest

pytestmark = pytest.mark.e2e

CALICO = {"cniVersion": "0.3.1", "name": "k8s-pod-network", "plugins": [
    {"type": "calico", "datastore_type": "kubernetes", "ipam": {"type": "calico-ipam"}},
    {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}}]}


@pytest.fixture
def host(tmp_path):
    for d in ("opt/cni/bin", "usr/lib/cni", "etc/cni/net.d"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "etc/cni/net.d/10-calico.conflist").write_text(json.dumps(CALICO))
    (tmp_path / "etc/cni/net.d/99-loopback.conf").write_text('{"cniVersion": "0.3.1", "name": "lo", "type": "loopback"}')
    return tmp_path


def install(isolation_bin, host, *args, check=True):
    proc = subprocess.run([isolation_bin, "install", "--host-root", str(host), *args], capture_output=True, text=True,
                          timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def conflist(host, name="10-calico.conflist") -> dict:
    return json.loads((host / "etc/cni/net.d" / name).read_text())


def bundles(bin_dir) -> list[str]:
    store = bin_dir / ".isolation-bundle"
    return sorted(n for n in os.listdir(store) if not (store / n).is_symlink())


def test_fresh_install_then_idempotent_rerun(isolation_bin, host):
    install(isolation_bin, host, "--bin-dir", "/opt/cni/bin", "--bin-dir", "/usr/lib/cni",
            "--option", "ingressPolicy=isolated", "--option", 'denyEgress=["169.254.169.254/32"]')
    for d in ("opt/cni/bin", "usr/lib/cni"):
        link = host / d / "isolation"
        [version] = bundles(host / d)
        assert os.readlink(link) == f".isolation-bundle/{version}/isolation"
        proc = subprocess.run([link], env={"CNI_COMMAND": "VERSION"}, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True)
        assert proc.returncode == 0 and "supportedVersions" in proc.stdout, proc.stdout + proc.stderr
    got = conflist(host)
    assert got["plugins"][:2] == CALICO["plugins"], "the main CNI's plugins are kept, in order"
    assert got["plugins"][2] == {"type": "isolation", "ingressPolicy": "isolated", "denyEgress": ["169.254.169.254/32"]}
    assert json.loads((host / "etc/cni/net.d/99-loopback.conf").read_text())["type"] == "loopback", "not primary"

    before = {p: os.stat(host / p).st_ino for p in ("etc/cni/net.d/10-calico.conflist", "opt/cni/bin/isolation")}
    again = install(isolation_bin, host, "--bin-dir", "/opt/cni/bin", "--bin-dir", "/usr/lib/cni",
                    "--option", "ingressPolicy=isolated", "--option", 'denyEgress=["169.254.169.254/32"]')
    assert "already installed" in again.stdout and "up to date" in again.stdout, again.stdout
    assert {p: os.stat(host / p).st_ino for p in before} == before, "a re-run rewrites nothing"
    assert [p for p in os.listdir(host / "etc/cni/net.d") if p.startswith(".")] == []


def test_upgrade_switches_the_link_and_keeps_the_previous(isolation_bin, host, tmp_path_factory):
    install(isolation_bin, host)
    [first] = bundles(host / "opt/cni/bin")
    later = []
    for n in (1, 2):
        other = tmp_path_factory.mktemp(f"bundle{n}") / "isolation"
        shutil.copytree(os.path.dirname(isolation_bin), other, symlinks=True)
        (other / "_internal" / "build-note").write_text(f"build {n}\n")  # another build, another hash
        install(isolation_bin, host, "--bundle", str(other))
        later.append(os.readlink(host / "opt/cni/bin/isolation").split("/")[1])
    assert first not in later and later[0] != later[1]
    assert bundles(host / "opt/cni/bin") == sorted(later), "the previous one kept, older ones removed"
    assert os.readlink(host / "opt/cni/bin/.isolation-bundle/previous") == later[0]


def test_a_foreign_file_of_the_same_name_is_kept(isolation_bin, host):
    foreign = host / "opt/cni/bin/isolation"
    foreign.write_text("#!/bin/sh\n# the old Go cni-isolation\n")
    proc = install(isolation_bin, host, check=False)
    assert proc.returncode == 1 and "not installed by `isolation install`" in proc.stderr, proc.stderr
    assert foreign.read_text() == "#!/bin/sh\n# the old Go cni-isolation\n"
    assert conflist(host) == CALICO, "nothing chained to a binary we did not install"
    # positive control: the same host root without the foreign file installs
    foreign.unlink()
    install(isolation_bin, host)
    assert os.path.islink(foreign)


def test_a_read_only_bin_dir_fails_cleanly(isolation_bin, host):
    bin_dir = host / "opt/cni/bin"
    script = (f'mount --bind {bin_dir} {bin_dir} && mount -o remount,bind,ro {bin_dir} && '
              f'exec {isolation_bin} install --host-root {host}')
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Read-only file system" in proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and os.listdir(bin_dir) == []
    assert conflist(host) == CALICO


def test_an_invalid_conflist_is_rejected_untouched(isolation_bin, host):
    path = host / "etc/cni/net.d/10-calico.conflist"
    path.write_text('{"cniVersion": "0.3.1", "plugins": [')
    proc = install(isolation_bin, host, check=False)
    assert proc.returncode == 1 and "left untouched" in proc.stderr, proc.stderr
    assert path.read_text() == '{"cniVersion": "0.3.1", "plugins": ['
    bad_option = install(isolation_bin, host, "--option", "ingressPolicy=sometimes", check=False)
    assert bad_option.returncode == 1 and "ingressPolicy" in bad_option.stderr, bad_option.stderr


@pytest.mark.parametrize("suffix", [".conf", ".json"])
def test_a_conf_becomes_a_conflist(isolation_bin, host, suffix):
    os.unlink(host / "etc/cni/net.d/10-calico.conflist")
    flannel = {"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel", "delegate": {"isDefaultGateway": True}}
    (host / f"etc/cni/net.d/10-flannel{suffix}").write_text(json.dumps(flannel))
    install(isolation_bin, host)
    assert sorted(os.listdir(host / "etc/cni/net.d")) == ["10-flannel.conflist", "99-loopback.conf"]
    assert conflist(host, "10-flannel.conflist") == {"cniVersion": "0.3.1", "name": "cbr0", "plugins": [
        {"type": "flannel", "delegate": {"isDefaultGateway": True}}, {"type": "isolation"}]}


def test_watch_repatches_what_the_main_cni_rewrites_and_uninstall_removes_all(isolation_bin, host):
    watcher = subprocess.Popen([isolation_bin, "install", "--host-root", str(host), "--watch", "--interval", "0.2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        path = host / "etc/cni/net.d/10-calico.conflist"
        wait_for(lambda: [p["type"] for p in conflist(host)["plugins"]][-1] == "isolation")
        tmp = host / "etc/cni/net.d/.calico-tmp"  # the main CNI writes its file anew, without us
        tmp.write_text(json.dumps(CALICO))
        os.replace(tmp, path)
        wait_for(lambda: [p["type"] for p in conflist(host)["plugins"]] == ["calico", "portmap", "isolation"])
    finally:
        watcher.terminate()
        out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, out + err
    assert out.count("isolation entry inserted") == 2, out

    (host / "opt/cni/bin/portmap").write_text("someone else's")
    proc = install(isolation_bin, host, "--uninstall")
    assert conflist(host) == CALICO
    assert os.listdir(host / "opt/cni/bin") == ["portmap"], proc.stdout


def wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
