"""Hostile and broken input (issue 8): a few hundred property-based cases per run of the
suite (tests/lab/fuzz_cni.py; `bench/stress.py fuzz` runs 10,000 and more), in a network
namespace of their own."""

import glob
import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

from conftest import LAB
from netlab import IP, STATE_ROOT, in_netns, netns_key, sh

pytestmark = pytest.mark.e2e


def test_fuzzed_invocations_never_crash_and_change_nothing(can_netns):
    ns = "f" + secrets.token_hex(3)
    fuzz_dirs = set(glob.glob("/tmp/isolation-fuzz-*"))
    sh(IP, "netns", "add", ns)
    state = None
    try:
        sh(IP, "link", "set", "lo", "up", netns=ns)
        state = os.path.join(STATE_ROOT, in_netns(ns, netns_key))
        proc = subprocess.run([IP, "netns", "exec", ns, sys.executable, os.path.join(LAB, "fuzz_cni.py"),
                               "--cases", "400"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["cases"] >= 400
        assert {"1", "4", "6", "7"} <= set(summary["outcomes"]), summary  # the generators reach each rule
        assert set(glob.glob("/tmp/isolation-fuzz-*")) <= fuzz_dirs, "the fuzz run left its log directory behind"
    finally:
        sh(IP, "netns", "del", ns, check=False)
        if state:
            shutil.rmtree(state, ignore_errors=True)
