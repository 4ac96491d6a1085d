"""`make install DESTDIR=D` gives a self-contained D/opt/cni/bin/isolation that runs
from any directory, with an empty environment and with read-only /tmp and /var/tmp, and
upgrades it atomically: versioned bundle directories, a `current` link swapped by rename."""

import glob
import json
import os
import re
import subprocess
import threading
import time

import pytest

from conftest import REPO

pytestmark = pytest.mark.e2e
# Inside a private mount namespace: /tmp and /var/tmp become read-only, contents kept.
READ_ONLY_TMP = " && ".join(
    f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && ! touch {d}/.w 2>/dev/null" for d in ("/tmp", "/var/tmp")
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory, isolation_bin):
    dest = tmp_path_factory.mktemp("destdir")
    proc = subprocess.run(["make", "-s", "install", f"DESTDIR={dest}"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return dest


LIBDIR = "usr/local/lib/isolation"


def make_install(dest, *args: str) -> None:
    proc = subprocess.run(["make", "-s", "install", f"DESTDIR={dest}", *args], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def versions(dest) -> list[str]:
    """The bundle directories installed (not the links, not a temporary copy)."""
    lib = dest / LIBDIR
    return sorted(n for n in os.listdir(lib) if not (lib / n).is_symlink())


def test_layout_is_a_relative_symlink_into_the_current_bundle(installed):
    link = installed / "opt/cni/bin/isolation"
    target = os.readlink(link)
    assert target == "../../../usr/local/lib/isolation/current/isolation"
    [version] = versions(installed)
    assert re.fullmatch(r"\d+\.\d+\.\d+-[0-9a-f]{12}", version), version
    assert os.readlink(installed / LIBDIR / "current") == version
    assert (installed / LIBDIR / version / "_internal").is_dir()
    bundled = os.listdir(installed / LIBDIR / version / "_internal")
    assert any(name.startswith("libpython3") for name in bundled), "the interpreter must be in the bundle"


def test_admin_command_is_on_roots_path(installed):
    """`isolation status` as the README writes it: /usr/local/sbin is on root's PATH."""
    link = installed / "usr/local/sbin/isolation"
    assert os.readlink(link) == "../lib/isolation/current/isolation"
    proc = subprocess.run([link, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "status" in proc.stdout, proc.stdout + proc.stderr


def test_install_never_replaces_a_foreign_admin_command(tmp_path, isolation_bin):
    (tmp_path / "usr/local/sbin").mkdir(parents=True)
    foreign = tmp_path / "usr/local/sbin/isolation"
    foreign.write_text("#!/bin/sh\necho someone else's\n")
    proc = subprocess.run(["make", "-s", "install", f"DESTDIR={tmp_path}"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and "not our link" in proc.stderr, proc.stderr
    assert foreign.read_text() == "#!/bin/sh\necho someone else's\n"


def test_runs_anywhere_with_nothing(installed, can_netns):
    """Empty environment, cwd /, read-only /tmp and /var/tmp (a private mount namespace)."""
    binary = installed / "opt/cni/bin/isolation"
    script = (
        f"{READ_ONLY_TMP} && cd / && exec env -i CNI_COMMAND=VERSION {binary} </dev/null"
    )
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_add_with_read_only_tmp(installed, lab):
    """A full ADD through the installed binary while /tmp and /var/tmp are read-only."""
    net = lab.network(["bridge"])
    c = lab.add(net)
    conf = {"cniVersion": "1.0.0", "name": net.name, "type": "isolation", "prevResult": lab.cache[(net.name, c.id)],
            "backend": "iptables"}
    binary = installed / "opt/cni/bin/isolation"
    env = (f"CNI_COMMAND=ADD CNI_CONTAINERID={c.id} CNI_NETNS=/run/netns/{c.name} "
           "CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni")
    script = (
        f"{READ_ONLY_TMP} && cd / && exec ip netns exec {lab.host} env -i {env} {binary}"
    )
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          input=json.dumps(conf), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == conf["prevResult"]
    assert f"-o {net.bridge} -m comment --comment isolation-plugin -j DROP" in lab.save()


def test_the_lab_really_hides_the_system_libnftables(lab):
    """Every end-to-end run of our plugin happens with the system libnftables hidden;
    here is proof that the hiding works, so those runs prove the bundle is enough."""
    probe = "import nftables; nftables.Nftables(); print('loaded')"
    for argv in (["/usr/bin/python3", "-c", probe], ["nft", "list", "tables"]):
        proc = subprocess.run(lab.without_system_libnftables(argv), capture_output=True, text=True)
        assert proc.returncode != 0 and "loaded" not in proc.stdout, (argv, proc.stdout, proc.stderr)
    plain = subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True, text=True)
    assert plain.stdout.strip() == "loaded", "without the wrapper the system library loads"


def test_needs_no_python_on_the_host(installed, lab):
    """Every Python the host has is hidden (its libraries and binaries), then a full ADD runs."""
    net = lab.network(["bridge"])
    c = lab.add(net)
    conf = {"cniVersion": "1.0.0", "name": net.name, "type": "isolation", "prevResult": lab.cache[(net.name, c.id)]}
    empty_dir, empty_file = os.path.join(lab.tmp, "nopy"), os.path.join(lab.tmp, "nopy-file")
    os.mkdir(empty_dir)
    open(empty_file, "w").close()
    hide = [f"mount --bind {empty_dir} {d}" for d in sorted(glob.glob("/usr/lib/python3*") + glob.glob("/usr/local/lib/python3*"))]
    hide += [f"mount --bind {empty_file} {f}" for f in sorted(set(map(os.path.realpath, glob.glob("/usr/bin/python3*"))))]
    binary = installed / "opt/cni/bin/isolation"
    env = (f"CNI_COMMAND=ADD CNI_CONTAINERID={c.id} CNI_NETNS=/run/netns/{c.name} "
           "CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni")
    script = " && ".join(hide + ["! /usr/bin/python3 -c pass 2>/dev/null",
                                 f"exec ip netns exec {lab.host} env -i {env} {binary}"])
    argv = lab.without_system_libnftables(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    proc = subprocess.run(argv, input=json.dumps(conf), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == conf["prevResult"]
    assert f'"{net.bridge}"' in lab.nft("list", "set", "inet", "isolation", "isolated")


def test_reinstall_is_idempotent_and_an_upgrade_keeps_only_the_previous(tmp_path, isolation_bin):
    make_install(tmp_path)
    [first] = versions(tmp_path)
    make_install(tmp_path)
    assert versions(tmp_path) == [first], "the same build goes into the same directory"
    make_install(tmp_path, "BUILD_ID=second")
    make_install(tmp_path, "BUILD_ID=third")
    lib = tmp_path / LIBDIR
    assert os.readlink(lib / "current").endswith("-third") and os.readlink(lib / "previous").endswith("-second")
    assert [v.rsplit("-", 1)[1] for v in versions(tmp_path)] == ["second", "third"], "older ones are removed"


def test_upgrade_from_the_unversioned_layout(tmp_path, isolation_bin):
    """Before versioned directories the bundle was $(LIBDIR) itself: it is replaced cleanly."""
    (tmp_path / "usr/local/lib").mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", os.path.dirname(isolation_bin), tmp_path / LIBDIR], check=True)
    (tmp_path / "opt/cni/bin").mkdir(parents=True)
    os.symlink("../../../usr/local/lib/isolation/isolation", tmp_path / "opt/cni/bin/isolation")
    make_install(tmp_path)
    assert sorted(os.listdir(tmp_path / LIBDIR)) == sorted(["current", *versions(tmp_path)])
    proc = subprocess.run([tmp_path / "opt/cni/bin/isolation", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "isolation plugin" in proc.stdout, proc.stdout + proc.stderr


def test_twenty_upgrades_under_load_fail_no_invocation(tmp_path, lab):
    """ADD/DEL and VERSION through DESTDIR/opt/cni/bin/isolation, in a loop, in the lab's
    host namespace, while `make install` upgrades the bundle 20 times: none may fail.
    (Removing a bundle that a running ADD still loads modules from made ADDs fail here.)"""
    make_install(tmp_path, "BUILD_ID=up0")
    binary = tmp_path / "opt/cni/bin/isolation"
    lab.isolation_bin = str(binary)
    net = lab.network(["bridge"])
    c = lab.add(net)
    conf = {"cniVersion": "1.0.0", "name": net.name, "type": "isolation", "prevResult": lab.cache[(net.name, c.id)]}
    done = threading.Event()
    failures, counts = [], {"ADD": 0, "DEL": 0, "VERSION": 0}

    def loop(verbs):
        while not done.is_set():
            for verb in verbs:
                rc, out, err = lab.exec_plugin("isolation", verb, conf, lab._env(c))
                counts[verb] += 1
                if rc != 0:
                    failures.append((verb, rc, out, err))

    workers = [threading.Thread(target=loop, args=(v,)) for v in (("ADD", "DEL"), ("VERSION",))]
    for w in workers:
        w.start()
    try:
        for i in range(1, 21):
            make_install(tmp_path, f"BUILD_ID=up{i}")
            adds = counts["ADD"]  # the next upgrade only once an ADD ran on this one
            deadline = time.monotonic() + 30
            while counts["ADD"] == adds and time.monotonic() < deadline and not failures:
                time.sleep(0.02)
    finally:
        done.set()
        for w in workers:
            w.join()
    assert not failures, failures[:3]
    assert counts["ADD"] >= 20 and counts["VERSION"] >= 20, counts
    # A bundle a slow invocation still ran from was kept; once nothing runs, it goes.
    make_install(tmp_path, "BUILD_ID=up20")
    assert [v.rsplit("-", 1)[1] for v in versions(tmp_path)] == ["up19", "up20"]
