"""Pristine Debian roots, for tests that must not see what this machine has installed.

`debootstrap --variant=minbase` gives the smallest Debian a person starts from. It is made
once per test session (about a minute) and copied for each use, so every test gets an
untouched root. The host's apt and pip configuration and CA certificates are copied in so
that a root reaches the same registries, behind whatever proxy the host uses.

`run_inside` runs a script in a private mount and PID namespace where the root's /proc,
/sys, /dev, /run and /tmp are mounted: they exist only there and end with it, and so does
every process started inside. Network namespaces made inside live under that private /run.
"""

import glob
import os
import re
import shutil
import subprocess
import tempfile

SUITE = "bookworm"
BASE_PACKAGES = "git,make,ca-certificates"  # what a person needs to clone and type `make`
COPIED = ["/etc/apt/sources.list", "/etc/apt/sources.list.d", "/etc/apt/apt.conf.d", "/etc/apt/preferences.d",
          "/etc/apt/trusted.gpg.d", "/etc/pip.conf", "/etc/xdg/pip", "/root/.config/pip", "/root/.pip",
          "/usr/local/share/ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "/etc/resolv.conf", "/etc/hosts"]
PASSED_ENV = re.compile(r"(?i)^(https?_proxy|no_proxy|all_proxy|PIP_\w+|SSL_CERT_\w+|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE)$")

# $1 = root, $2 = file of VAR=value lines passed into the root, $3 = the script to run there.
# `in_root CMD` runs CMD as root in the chroot with a clean environment.
ENTER = r"""
set -eu
root=$1 envfile=$2 script=$3
mount --make-rprivate /
mount --bind "$root" "$root"  # `ip netns exec` remounts / and needs it to be a mount point
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mapfile -t passed < "$envfile"
in_root() { chroot "$root" /usr/bin/env -i "${passed[@]}" HOME=/root LANG=C.UTF-8 \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/bash -c "$1"; }
eval "$script"
"""


def mirror() -> str:
    """The Debian archive the host's apt uses (debootstrap needs one URL)."""
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        try:
            text = open(path).read()
        except OSError:
            continue
        for url in re.findall(r"(?m)^(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)(\S+/debian)/?\s", text):
            return url
    return "http://deb.debian.org/debian"


def mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path.rstrip("/") + "/")]


def remove(path: str) -> None:
    """rm -rf, refusing to descend through a mount (a leaked /dev bind would be emptied)."""
    left = mounts_under(path)
    if left:
        raise AssertionError(f"mounts leaked out of the private namespace, {path} kept: {left}")
    shutil.rmtree(path, ignore_errors=True)


class PristineRoots:
    """A debootstrapped template made on first use, copied for each root handed out."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="isolation-debroot-", dir="/var/tmp")  # disk, not tmpfs
        self.template = os.path.join(self.base, "template")
        self.count = 0

    def _bootstrap(self) -> None:
        if not shutil.which("debootstrap"):
            raise AssertionError("debootstrap is missing (hack/install-deps.sh installs it)")
        boot = subprocess.run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE,
                               self.template, mirror()], capture_output=True, text=True, timeout=900)
        if boot.returncode != 0:
            raise AssertionError("debootstrap failed: " + boot.stdout[-3000:] + boot.stderr[-3000:])
        for path in COPIED:
            if os.path.isdir(path):
                shutil.copytree(path, self.template + path, symlinks=True, dirs_exist_ok=True)
            elif os.path.exists(path):
                os.makedirs(os.path.dirname(self.template + path), exist_ok=True)
                shutil.copy2(path, self.template + path)

    def new(self) -> str:
        if not os.path.isdir(self.template):
            self._bootstrap()
        self.count += 1
        root = os.path.join(self.base, f"root{self.count}")
        subprocess.run(["cp", "-a", self.template, root], check=True)
        return root

    def close(self) -> None:
        remove(self.base)


def run_inside(root: str, script: str, timeout: float) -> subprocess.CompletedProcess:
    """`script` (bash, with `in_root CMD` available) in the private namespaces around `root`."""
    fd, envfile = tempfile.mkstemp(prefix="isolation-debroot-env-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in os.environ.items() if PASSED_ENV.match(k) and "\n" not in v))
        return subprocess.run(["unshare", "--mount", "--pid", "--fork", "bash", "-c", ENTER, "enter", root, envfile,
                               script], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(envfile)
