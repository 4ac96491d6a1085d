"""Shared fixtures for tests/unit and tests/e2e. End-to-end tests need root and network
namespaces: without them they fail loudly (never skip), because CI runs as root and must
prove every claim. The lab (tests/lab/: netlab, podman, containerd, debroot) is put on
sys.path here, so test modules import it by its plain module names."""

import os
import shutil
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LAB = os.path.join(HERE, "lab")
sys.path.insert(0, LAB)
pytest.register_assert_rewrite("golden")  # its comparisons show the difference, as a test's do

from netlab import Lab  # noqa: E402

DEFAULT_BIN = os.path.join(REPO, "dist", "isolation", "isolation")


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="write what the planners render into tests/golden/ instead of comparing; "
                          "review the change with `git diff tests/golden`")


@pytest.fixture(scope="session")
def golden(request):
    """Compares a rendering with its golden file, or rewrites the file (--update-golden)."""
    from golden import Golden

    return Golden(request.config.getoption("update_golden"))


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


class ModuleProgress:
    """One line per finished test module: counts, its time and the time so far, so a person
    watching the ~20-minute suite sees where it is (pytest itself prints only dots)."""

    def __init__(self, config):
        self.config = config
        self.start = time.monotonic()
        self.module = None
        self.module_start = self.start
        self.counts: dict[str, int] = {}
        self.done = 0
        self.total = 0
        self.last_of_module = False

    def pytest_collection_finish(self, session):
        self.total = len(session.items)

    def pytest_runtest_teardown(self, item, nextitem):
        self.last_of_module = nextitem is None or nextitem.path != item.path

    def pytest_runtest_logreport(self, report):
        module = report.nodeid.split("::", 1)[0]
        if module != self.module:
            self.module, self.module_start, self.counts = module, time.monotonic(), {}
        if report.when == "call" or report.outcome != "passed":
            self.counts[report.outcome] = self.counts.get(report.outcome, 0) + 1
        if report.when == "teardown":
            self.done += 1
            if self.last_of_module:
                self.flush()

    def flush(self):
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if self.module is None or reporter is None:
            return
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(self.counts.items())) or "nothing run"
        now = time.monotonic()
        reporter.write_line(f"  {self.module}: {counts} in {now - self.module_start:.0f} s "
                            f"[{self.done}/{self.total} tests, {(now - self.start) / 60:.1f} min so far]")
        self.module = None


def pytest_collection_modifyitems(items):
    """Every test under tests/e2e carries the marker `e2e`, so the marker and the directory
    always agree (a new module that forgets its pytestmark included)."""
    e2e = os.path.join(HERE, "e2e") + os.sep
    for item in items:
        if str(item.path).startswith(e2e):
            item.add_marker(pytest.mark.e2e)


def pytest_configure(config):
    if config.option.verbose >= 0 and not config.option.collectonly:
        config.pluginmanager.register(ModuleProgress(config), "module-progress")


@pytest.fixture(scope="session")
def pristine_roots(can_netns):
    """Pristine Debian 12 roots (tests/lab/debroot.py): debootstrapped once per session."""
    from debroot import PristineRoots

    roots = PristineRoots()
    yield roots
    roots.close()


@pytest.fixture
def pristine_root(pristine_roots):
    """A factory of fresh copies of the pristine root; each is removed after the test."""
    from debroot import remove

    made = []

    def make() -> str:
        made.append(pristine_roots.new())
        return made[-1]

    yield make
    for root in made:
        remove(root)


def _own_firewall() -> str:
    """Our tables and rules in the namespace the test process itself runs in (the root one
    in CI): tests must only ever touch namespaces they made."""
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    rules = "".join(subprocess.run([tool], capture_output=True, text=True).stdout
                    for tool in ("iptables-save", "ip6tables-save") if shutil.which(tool))
    return "\n".join([*(t for t in tables.splitlines() if "isolation" in t),
                      *(r for r in rules.splitlines() if "isolation" in r.lower() or "CNI-" in r)])


ROOT_NAMESPACE = {}


@pytest.fixture(scope="session", autouse=True)
def root_namespace_untouched():
    """Records our tables and rules in the test process's own namespace before and after
    the run; pytest_terminal_summary reports any change loudly. (Not yet a failure: one run
    found a `table inet isolation` for br0 there whose test is still unidentified, and the
    check also sees other processes on the machine.)"""
    ROOT_NAMESPACE["before"] = _own_firewall()
    yield
    ROOT_NAMESPACE["after"] = _own_firewall()


def pytest_terminal_summary(terminalreporter):
    before, after = ROOT_NAMESPACE.get("before"), ROOT_NAMESPACE.get("after")
    if before is not None and after is not None and before != after:
        terminalreporter.write_line("WARNING: our tables or rules changed in the test process's own network "
                                    f"namespace during this run:\n{after}", red=True, bold=True)
