"""The README's first quick-start command ends in hack/demo.py: it must keep working, and
show what the README says it shows."""

import glob
import os
import re
import subprocess

import pytest

from conftest import REPO

pytestmark = pytest.mark.e2e


def assert_demo_table(stdout: str) -> None:
    """The demo's reachability table says what the README says it shows (checked by hand
    against the three networks' policies, not copied from a run)."""
    rows = {line.split()[0]: line.split()[1:] for line in stdout.splitlines()
            if line[:2] in ("c1", "c2", "c3", "c4", "c5", "c6") and len(line.split()) == 8}
    # columns c1..c6, outside; net1 = c1,c2 and net2 = c3,c4 (same-bridge), net3 = c5,c6 (isolated)
    assert rows.get("c1") == ["-", "reach", "BLOCK", "BLOCK", "BLOCK", "BLOCK", "reach"], stdout
    assert rows.get("c4") == ["BLOCK", "BLOCK", "reach", "-", "BLOCK", "BLOCK", "reach"], stdout
    assert rows.get("c5") == ["BLOCK", "BLOCK", "BLOCK", "BLOCK", "-", "BLOCK", "reach"], stdout
    assert "table inet isolation" in stdout and "all demo namespaces removed" in stdout


def test_demo_shows_isolation_and_cleans_up(isolation_bin, can_netns):
    proc = subprocess.run(["/usr/bin/python3", os.path.join(REPO, "hack", "demo.py")], capture_output=True,
                          text=True, env={"ISOLATION_BIN": isolation_bin, "PATH": os.environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    assert_demo_table(proc.stdout)
    prefix = re.search(r"\(bridge (\w+)b1,", proc.stdout).group(1)  # the demo lab's own name prefix
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert [ns for ns in left.split() if ns.startswith(prefix)] == []


def test_failed_demo_says_why_and_leaves_nothing(isolation_bin, can_netns, tmp_path):
    """A demo that cannot set up its lab prints the failing command's own message (no
    traceback) and removes the namespaces and the directory it had made so far."""
    fake = tmp_path / "sysctl"
    fake.write_text("#!/bin/sh\necho 'sysctl: permission denied on key (fake)' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {"ISOLATION_BIN": isolation_bin, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    proc = subprocess.run(["/usr/bin/python3", os.path.join(REPO, "hack", "demo.py")], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "sysctl: permission denied on key (fake)" in proc.stderr and "demo failed: `" in proc.stderr, proc.stderr
    prefix = re.search(r"ip netns exec (t[0-9a-f]{6})h sysctl", proc.stderr).group(1)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert [ns for ns in left.split() if ns.startswith(prefix)] == []
    assert glob.glob(f"/tmp/isolation-{prefix}-*") == []


def test_demo_without_the_plugin_says_so(can_netns, tmp_path):
    missing = str(tmp_path / "no-such-plugin")
    proc = subprocess.run(["/usr/bin/python3", os.path.join(REPO, "hack", "demo.py")], capture_output=True,
                          text=True, env={"ISOLATION_BIN": missing, "PATH": os.environ["PATH"]})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert missing in proc.stderr and "demo failed:" in proc.stderr, proc.stderr
