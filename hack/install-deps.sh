#!/usr/bin/env bash
# Installs everything needed to build, test and demo the plugin on Debian 12:
# system packages (firewall tools, iproute2, upstream CNI plugins) and a venv of
# Debian's /usr/bin/python3 (not a pyenv shim: it starts faster and freezes smaller).
# The venv sees system site-packages for python3-nftables (the tests' probe of the system
# libnftables; the plugin calls libnftables through ctypes) and python3-jsonschema (the
# schema tests). Podman, containerd, runc and
# busybox-static serve the Podman and containerd end-to-end tests (which start a
# containerd of their own and never use the packaged service); debootstrap the
# fresh-machine and package tests of the quick start and `make deb`, lintian the latter.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (apt-get install)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  iptables nftables libnftables1 python3-nftables \
  iproute2 iputils-ping procps kmod util-linux \
  containernetworking-plugins \
  podman containerd runc busybox-static python3-jsonschema \
  python3 python3-venv python3-pip python3-yaml python3-attr binutils make debootstrap git ca-certificates \
  lintian tcpdump >/dev/null
# PyInstaller bundles the interpreter's shared library, which Debian ships apart from
# python3 (nothing else in this list pulls it in on a minimal system).
pyver=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
apt-get install -y -qq --no-install-recommends "libpython$pyver" >/dev/null

if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r hack/requirements-dev.txt
echo "install-deps: system packages and $VENV ready"
