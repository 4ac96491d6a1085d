"""Fast variants of bench/stress.py (issue 8): parallel starts, SIGKILL at random moments,
and churn back to a byte-identical baseline, on both backends. The full sizes (64
invocations, 200 kills, 1000 cycles, 10,000 fuzz cases) are `bench/stress.py`'s."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.beside]  # long and mostly waiting: make test runs it beside the rest
STRESS = os.path.join(REPO, "bench", "stress.py")


def stress(isolation_bin, *args: str) -> dict:
    proc = subprocess.run([sys.executable, STRESS, *args, "--plugin", isolation_bin], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend,host_filter", [("iptables", False), ("iptables", True), ("nftables", False)])
def test_parallel_adds_and_dels(isolation_bin, can_netns, backend, host_filter):
    """Two rounds of 64 at once, then every container left DELeted at once: the whole ruleset
    (iptables-nft's tables and built-in chains included) must be the one before the first ADD,
    whether the host had filter tables of its own (only OUTPUT) or none."""
    r = stress(isolation_bin, "parallel", "--backend", backend, "--invocations", "64", "--bridges", "16",
               "--rounds", "2", *(["--host-filter"] if host_filter else []))
    got = r["parallel"][backend]
    assert got["errors"] == 0 and got["invocations"] == 128 and got["last_dels"] == 80
    assert got["baseline_identical_after_last_del"] is True


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_sigkill_at_random_moments(isolation_bin, can_netns, backend):
    r = stress(isolation_bin, "crash", "--backend", backend, "--calls", "24")
    assert r["crash"][backend]["torn_registries"] == 0


@pytest.mark.parametrize("backend,agent", [("iptables", False), ("nftables", False), ("nftables", True)])
def test_churn_returns_to_the_baseline(isolation_bin, can_netns, backend, agent):
    r = stress(isolation_bin, "churn", "--backend", backend, "--cycles", "40", "--bridges", "4",
               *(["--agent"] if agent else []))
    assert r["churn"][backend]["baseline_identical"] is True
