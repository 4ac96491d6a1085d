"""The README's first quick-start command ends in hack/demo.py: it must keep working, and
show what the README says it shows."""

import os
import re
import subprocess

import pytest

from conftest import REPO

pytestmark = pytest.mark.e2e


def test_demo_shows_isolation_and_cleans_up(isolation_bin, can_netns):
    proc = subprocess.run(["/usr/bin/python3", os.path.join(REPO, "hack", "demo.py")], capture_output=True,
                          text=True, env={"ISOLATION_BIN": isolation_bin, "PATH": os.environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()
            if line[:2] in ("c1", "c2", "c3", "c4", "c5", "c6") and len(line.split()) == 8}
    # columns c1..c6, outside; net1 = c1,c2 and net2 = c3,c4 (same-bridge), net3 = c5,c6 (isolated)
    assert rows["c1"] == ["-", "reach", "BLOCK", "BLOCK", "BLOCK", "BLOCK", "reach"], proc.stdout
    assert rows["c4"] == ["BLOCK", "BLOCK", "reach", "-", "BLOCK", "BLOCK", "reach"], proc.stdout
    assert rows["c5"] == ["BLOCK", "BLOCK", "BLOCK", "BLOCK", "-", "BLOCK", "reach"], proc.stdout
    assert "table inet isolation" in proc.stdout and "all demo namespaces removed" in proc.stdout
    prefix = re.search(r"\(bridge (\w+)b1,", proc.stdout).group(1)  # the demo lab's own name prefix
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert [ns for ns in left.split() if ns.startswith(prefix)] == []
