"""`make deb` as a Debian 12 user meets it (issue 20): lintian passes; then in a pristine
Debian 12 root (tests/lab/debroot.py) apt installs the package, the plugin answers VERSION
through both links and isolates a container (ADD/CHECK/DEL, with Debian's bridge plugin),
an upgrade to a higher version keeps the container's rules, removal while a container is
attached keeps its rules (fail closed), purge cleans up, and the root's file list is then
the one it had before the install. Everything after the dependencies are fetched runs in a
private network namespace: the maintainer scripts' `isolation cleanup` never sees the
host's."""

import os
import subprocess
import time

import pytest

from conftest import REPO
from debroot import run_inside

pytestmark = [pytest.mark.e2e, pytest.mark.chroot]

# Not compared: what apt and dpkg log, the mounts of the private namespace, our own files.
VOLATILE = ("proc", "sys", "dev", "run", "tmp", "root", "var/log", "var/cache", "var/lib/apt")
DEPENDENCIES = "containernetworking-plugins iproute2 nftables"

SCENARIO = r"""
set -eu
v1=$1 v2=$2
ip link set lo up
say() { echo "=== $*"; }
say install
apt-get install -y -qq --no-install-recommends "/root/isolation_${v1}_amd64.deb" >/dev/null
[ "$(readlink /usr/lib/cni/isolation)" = "../isolation/$v1/isolation" ]
[ "$(readlink /opt/cni/bin/isolation)" = /usr/lib/cni/isolation ]
[ ! -e /etc/systemd/system/multi-user.target.wants/isolation-agent.service ]  # not enabled
[ -f /lib/systemd/system/isolation-agent.service ]
[ -f /usr/share/doc/isolation/examples/isolation.schema.json ]
for bin in /opt/cni/bin/isolation /usr/lib/cni/isolation; do
  CNI_COMMAND=VERSION $bin </dev/null | grep -q '"supportedVersions"'
done
isolation --help >/dev/null  # the admin command on PATH

say add
ip netns add ctr1
export CNI_PATH=/usr/lib/cni CNI_CONTAINERID=debctr1 CNI_NETNS=/run/netns/ctr1 CNI_IFNAME=eth0
bridge='{"cniVersion": "1.0.0", "name": "debnet", "type": "bridge", "bridge": "debbr0", "isGateway": true,
         "ipam": {"type": "host-local", "subnet": "10.88.0.0/24", "dataDir": "/run/ipam"}}'
prev=$(echo "$bridge" | CNI_COMMAND=ADD /usr/lib/cni/bridge)
iso() {
  printf '{"cniVersion": "1.0.0", "name": "debnet", "type": "isolation", "prevResult": %s}' "$prev" |
    CNI_COMMAND=$1 /opt/cni/bin/isolation
}
iso ADD >/dev/null
iso CHECK
nft list set inet isolation isolated | grep -q debbr0

say upgrade
apt-get install -y -qq "/root/isolation_${v2}_amd64.deb" >/dev/null
[ "$(readlink /usr/lib/cni/isolation)" = "../isolation/$v2/isolation" ]
[ "$(ls /usr/lib/isolation)" = "$v2" ]
CNI_COMMAND=VERSION /opt/cni/bin/isolation </dev/null | grep -q '"supportedVersions"'
iso CHECK  # the attachment and its rules went through the upgrade

say remove while attached
apt-get remove -y -qq isolation 2>&1 | grep "containers are still attached"
nft list set inet isolation isolated | grep -q debbr0  # fail closed: the rules stay
[ ! -e /usr/lib/isolation ] && [ ! -e /opt/cni ]

say reinstall, delete, purge
apt-get install -y -qq "/root/isolation_${v2}_amd64.deb" >/dev/null
iso DEL
echo "$bridge" | CNI_COMMAND=DEL /usr/lib/cni/bridge
! nft list table inet isolation 2>/dev/null  # the last DEL took the table
nft add table inet isolation                 # a leftover, which prerm's cleanup removes
apt-get purge -y -qq isolation >/dev/null
! nft list table inet isolation 2>/dev/null
[ ! -e /run/isolation ]
say done
"""


def file_list(root: str) -> set[str]:
    found = set()
    for top, dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        if rel.startswith(VOLATILE):
            dirs[:] = []
            continue
        found.update(os.path.join(rel, name) for name in dirs + files)
    return {p for p in found if not p.startswith(VOLATILE)}


def build_deb(version: str, out: str) -> str:
    # gzip rather than the default xz: 4 times faster here, and the same package otherwise
    proc = subprocess.run(["make", "-s", "deb", f"DEB_VERSION={version}", f"DEB_DIR={out}"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "DEB_COMPRESS": "gzip"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_deb_installs_upgrades_and_purges_cleanly(tmp_path, pristine_root, isolation_bin):
    from plugin import __version__

    v1, v2 = __version__, __version__ + "+upgrade1"
    started = time.monotonic()
    debs = [build_deb(v, str(tmp_path)) for v in (v1, v2)]
    lint = subprocess.run(["lintian", "--fail-on", "error,warning", debs[0]], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    print(f"built and linted in {time.monotonic() - started:.0f} s")

    started = time.monotonic()
    root = pristine_root()  # the session's debootstrap, made by the first test that needs it
    for deb in debs:
        subprocess.run(["cp", deb, root + "/root/"], check=True)
    with open(root + "/root/scenario.sh", "w") as f:
        f.write(SCENARIO)
    print(f"root ready in {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    deps = run_inside(root, f'in_root "apt-get update -qq && apt-get install -y -qq --no-install-recommends '
                            f'{DEPENDENCIES} >/dev/null"', timeout=600)
    assert deps.returncode == 0, deps.stdout[-3000:] + deps.stderr[-3000:]
    print(f"dependencies fetched in {time.monotonic() - started:.0f} s")
    before = file_list(root)
    started = time.monotonic()
    run = run_inside(root, f'in_root "unshare --net bash /root/scenario.sh {v1} {v2}"', timeout=600)
    print(f"install, upgrade, remove, purge in {time.monotonic() - started:.0f} s")
    out = run.stdout + run.stderr
    assert run.returncode == 0 and "=== done" in out, out[-4000:]
    after = file_list(root)
    assert after == before, {"left behind": sorted(after - before)[:20], "removed": sorted(before - after)[:20]}
