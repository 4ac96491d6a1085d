"""Shared fixtures. End-to-end tests need root and network namespaces: without them
they fail loudly (never skip), because CI runs as root and must prove every claim."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from netlab import Lab  # noqa: E402

DEFAULT_BIN = os.path.join(REPO, "dist", "isolation", "isolation")


@pytest.fixture(scope="session")
def isolation_bin() -> str:
    """The frozen binary under test (ISOLATION_BIN, else the build output)."""
    path = os.environ.get("ISOLATION_BIN", DEFAULT_BIN)
    if not os.access(path, os.X_OK):
        pytest.fail(f"frozen plugin binary {path} is missing: run `make build` first", pytrace=False)
    return path


@pytest.fixture(scope="session")
def can_netns() -> None:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces, iptables)", pytrace=False)
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"network namespaces unavailable: {probe.stderr}", pytrace=False)
    missing = [p for p in ("bridge", "host-local", "firewall", "portmap") if not os.path.exists(f"/usr/lib/cni/{p}")]
    if missing:
        pytest.fail(f"upstream CNI plugins missing from /usr/lib/cni: {missing} (apt-get install containernetworking-plugins)")


@pytest.fixture
def make_lab(isolation_bin, can_netns):
    """Factory for labs; every lab made is closed after the test, pass or fail."""
    labs = []

    def make(bridge_nf: int = 1) -> Lab:
        lab = Lab(isolation_bin, bridge_nf=bridge_nf)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()


@pytest.fixture
def lab(make_lab) -> Lab:
    return make_lab()
