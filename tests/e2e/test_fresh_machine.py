"""The README's quick start on a pristine Debian 12, as a new user meets it (issue 13).

A `debootstrap --variant=minbase` root with only git, make and ca-certificates added
(tests/lab/debroot.py) gets this checkout cloned into /root, where root's 0700 home keeps
other users out. There, as root, the README's first command installs everything and
shows the demo's table; then a short subset of the suite runs the same way, with the test
that runs the plugin as uid 65534. Anything the machine the suite runs on happens to have
installed (a shared library, a tool) is absent there, so a missing install step fails
here rather than on a user's machine.
"""

import re
import subprocess

import pytest

from conftest import REPO
from debroot import run_inside
from test_demo import assert_demo_table

pytestmark = [pytest.mark.e2e, pytest.mark.chroot]

CLONE = "/root/isolation"  # where root clones things: its home is 0700
# Run inside: the uid-65534 test (it cannot enter /root), the install layout and the admin
# command on PATH, the protocol's decoding errors, and the demo through pytest.
SUBSET = ("tests/e2e/test_e2e_reliability.py::test_state_is_root_only_and_nobody_else_can_change_rules "
          "tests/e2e/test_install.py tests/e2e/test_demo.py tests/e2e/test_protocol.py::test_undecodable_input")
QUICK_START = f"""
echo "=== make demo"
in_root "cd {CLONE} && make demo"
echo "=== isolation on root's PATH"
in_root "command -v isolation && isolation --help >/dev/null"
echo "=== make test (subset)"
in_root "cd {CLONE} && make test TESTS='{SUBSET}'"
"""


def working_tree_patch() -> bytes:
    """Uncommitted changes to tracked files, so a developer tests what they see; CI's clone
    has none."""
    return subprocess.run(["git", "-C", REPO, "diff", "--binary", "HEAD"], capture_output=True, check=True).stdout


def test_quick_start_on_a_pristine_debian_12(pristine_root):
    root = pristine_root()
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", REPO, root + CLONE], check=True)
    patch = working_tree_patch()
    if patch:
        subprocess.run(["git", "-C", root + CLONE, "apply", "--binary", "-"], input=patch, check=True)
    run = run_inside(root, QUICK_START, timeout=1500)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert_demo_table(out.split("=== make demo", 1)[1].split("=== isolation on", 1)[0])
    subset = out.split("=== make test (subset)", 1)[1]
    summary = [line for line in subset.splitlines() if re.match(r"^=+ .* in [\d.]+s", line)]
    assert summary and re.search(r"\b\d+ passed\b", summary[-1]), subset[-3000:]
    assert not re.search(r"failed|error", summary[-1]), subset[-3000:]
