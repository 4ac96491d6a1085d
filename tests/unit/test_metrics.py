"""The metrics (plugin/metrics.py, plugin/promtext.py): what is rendered parses with the
reference parser (prometheus-client, a test dependency only), hostile label values stay
inside their label, histogram buckets are cumulative, the kernel's series follow
Backend.drops() and the registry, and the agent's file is written as the state directory's
files are (0600, atomically, never through a symlink) and read back only while fresh.
Backends here are fakes: nothing touches a firewall."""

import os
import re
import stat
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakes import FakeBackend
from plugin import metrics, promtext
from plugin.errors import CniError
from plugin.registry import Attachment

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def att(network, container, bridge, backend="nftables"):
    return Attachment(network, container, "eth0", bridge, f"v{container}", "same-bridge", backend)


def parse(text: str) -> dict:
    """family name -> (type, {(sample name, sorted labels): value}), by the reference parser."""
    found = {}
    for fam in text_string_to_metric_families(text):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
        assert fam.name not in found, f"family {fam.name} twice"
        found[fam.name] = (fam.type, samples)
    return found


def test_the_kernels_series_follow_the_registry_and_the_counters():
    atts = [att("red", "c1", "br-red"), att("red", "c2", "br-red"), att("blue", "c3", "br-blue"),
            att("green", "c4", "br-shared"), att("teal", "c5", "br-shared"), att("old", "c6", "br-ipt", "iptables")]
    counts = {"br-red": {"cross-network": 7, "egress-deny": 0, "host-access": 2},
              "br-shared": {"intra-bridge": 3},
              "br-unregistered": {"cross-network": 99}}  # the kernel's, registered by nobody: not shown
    snap = metrics.snapshot(atts, {"nftables": FakeBackend("nftables", counts=counts),
                                   "iptables": "not found: iptables-save"}, taken=1700000000.5)
    got = parse(promtext.render(snap.families()))
    assert got["isolation_metrics_timestamp_seconds"] == ("gauge", {("isolation_metrics_timestamp_seconds", ()): 1700000000.5})
    kind, drops = got["isolation_dropped_packets"]
    assert kind == "counter"
    name = "isolation_dropped_packets_total"
    reasons = ("cross-network", "intra-bridge", "egress-deny", "host-access", "anti-spoofing", "cross-tenant",
               "internal", "direct-access")
    by_hand = {"br-red": {"cross-network": 7, "host-access": 2}, "br-shared": {"intra-bridge": 3}, "br-blue": {}}
    networks = {"br-red": "red", "br-shared": "green,teal", "br-blue": "blue"}
    assert drops == {
        (name, (("backend", "nftables"), ("bridge", br), ("network", networks[br]), ("reason", r))): float(n.get(r, 0))
        for br, n in by_hand.items() for r in reasons
    }  # every reason of every registered bridge, 0 where none was counted; iptables unusable: none
    kind, attached = got["isolation_attachments"]
    assert kind == "gauge"
    assert attached == {
        ("isolation_attachments", (("backend", "iptables"), ("bridge", "br-ipt"), ("network", "old"))): 1.0,
        ("isolation_attachments", (("backend", "nftables"), ("bridge", "br-blue"), ("network", "blue"))): 1.0,
        ("isolation_attachments", (("backend", "nftables"), ("bridge", "br-red"), ("network", "red"))): 2.0,
        ("isolation_attachments", (("backend", "nftables"), ("bridge", "br-shared"), ("network", "green"))): 1.0,
        ("isolation_attachments", (("backend", "nftables"), ("bridge", "br-shared"), ("network", "teal"))): 1.0,
    }
    assert snap.errors == [("iptables", "the backend is not usable here: not found: iptables-save")]


@pytest.mark.parametrize("answer,why", [
    (CniError(100, "nft failed", "Operation not permitted"), "nft failed (Operation not permitted)"),
    ((12, {"br-red": 12}), "its drop counters are not per bridge and reason"),  # the contract before issue 19
    ({"br-red": {"cross-network": "7"}}, "its drop counters are not per bridge and reason"),
])
def test_counters_that_cannot_be_read_leave_no_series_and_are_named(answer, why):
    snap = metrics.snapshot([att("red", "c1", "br-red")], {"nftables": FakeBackend("nftables", counts=answer)})
    assert snap.errors == [("nftables", why)]
    got = parse(promtext.render(snap.families()))
    assert got["isolation_dropped_packets"][1] == {}, "no series rather than zeros that are not known"
    assert len(got["isolation_attachments"][1]) == 1, "attachments come from the registry: still there"


HOSTILE = ['quote"d', "back\\slash", "line\nfeed", 'x"} 1\nisolation_attachments{network="forged"} 99\n#',
           "trailing\\", "ünïcödé ✓", "\\n literally", "tab\there", ""]


def test_hostile_network_names_stay_inside_their_label():
    atts = [att(name, f"c{i}", "br0") for i, name in enumerate(HOSTILE)]
    text = promtext.render(metrics.snapshot(atts, {"nftables": FakeBackend("nftables")}).families())
    samples = parse(text)["isolation_attachments"][1]
    assert sorted(dict(labels)["network"] for _, labels in samples) == sorted(HOSTILE)
    assert all(v == 1.0 for v in samples.values()), "nothing forged: every sample is one of ours"
    assert "forged" not in {dict(labels)["network"] for _, labels in samples}
    # timestamp: HELP, TYPE, sample; drops: HELP, TYPE, eight reasons of br0; attachments: HELP, TYPE, one each
    assert len(text.split("\n")) - 1 == 3 + 10 + 2 + len(HOSTILE), "no label value ended a line"
    # a lone surrogate (JSON may carry one) cannot be written as UTF-8: it becomes "?"
    lone = promtext.render(metrics.snapshot([att("bad\ud800name", "c", "br0")], {}).families())
    assert 'network="bad?name"' in lone and parse(lone)


def test_help_text_is_escaped_and_comments_cannot_add_lines():
    fam = promtext.Family("x_total", "counter", "a \\ backslash and a\nline feed").add(1)
    text = promtext.render([fam], ["a comment\nforged_metric 1"])
    assert text.splitlines() == ["# HELP x_total a \\\\ backslash and a\\nline feed", "# TYPE x_total counter",
                                 "x_total 1", "# a comment\\nforged_metric 1"]
    assert set(parse(text)) == {"x"}
    with pytest.raises(ValueError):
        promtext.Family("bad-name", "counter", "")
    with pytest.raises(ValueError):
        promtext.Family("x", "counter", "").add(1, **{"le-x": "1"})
    with pytest.raises(ValueError):
        promtext.render([promtext.Family("x", "gauge", ""), promtext.Family("x", "gauge", "")])


def test_histogram_buckets_are_cumulative_and_bounds_inclusive():
    m = metrics.AgentMetrics()
    # by hand: bounds are 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000 ms
    for seconds in (0.0004, 0.001, 0.0011, 0.003, 0.003, 0.2, 0.999, 1.0, 1.5, 30.0):
        m.served("ADD", {}, 0, seconds, "{}")
    m.served("DEL", None, 0, 0.02, "{}")
    got = parse(promtext.render(m.families()))
    kind, samples = got["isolation_agent_request_duration_seconds"]
    assert kind == "histogram"
    buckets = {dict(labels)["le"]: v for (name, labels), v in samples.items()
               if name.endswith("_bucket") and dict(labels)["verb"] == "ADD"}
    expected = {"0.001": 2, "0.0025": 3, "0.005": 5, "0.01": 5, "0.025": 5, "0.05": 5, "0.1": 5, "0.25": 6,
                "0.5": 6, "1.0": 8, "+Inf": 10}
    assert buckets == expected
    values = [buckets[le] for le in expected]
    assert values == sorted(values), "cumulative: never decreasing"
    add = (("verb", "ADD"),)
    assert samples[("isolation_agent_request_duration_seconds_count", add)] == 10
    assert samples[("isolation_agent_request_duration_seconds_sum", add)] == pytest.approx(
        0.0004 + 0.001 + 0.0011 + 0.003 + 0.003 + 0.2 + 0.999 + 1.0 + 1.5 + 30.0)
    assert samples[("isolation_agent_request_duration_seconds_count", (("verb", "DEL"),))] == 1


def test_requests_are_counted_per_verb_and_result_and_backend_errors_per_backend(tmp_path, monkeypatch):
    import plugin.hoststate as hoststate

    monkeypatch.setattr(hoststate, "state_dir", lambda: str(tmp_path))
    m = metrics.AgentMetrics()
    m.served("ADD", {"cniVersion": "1.0.0"}, 0, 0.01, '{"backend": "iptables"}')
    m.served("ADD", {"code": 100, "msg": "x"}, 1, 0.01, '{"backend": "iptables"}')
    m.served("ADD", {"code": 103, "msg": "x"}, 1, 0.01, '{"name": "n"}')  # auto, nothing decided yet
    m.served("CHECK", {"code": 102, "msg": "x"}, 1, 0.01, '{"backend": "nftables"}')  # no backend error
    m.served("BOGUS\n", {"code": 4, "msg": "x"}, 1, 0.01, "not json")
    (tmp_path / "backend").write_text("nftables\n")
    os.chmod(tmp_path / "backend", 0o600)
    m.served("DEL", {"code": 100, "msg": "x"}, 1, 0.01, '{"backend": "auto"}')  # auto decided: nftables
    m.repaired(2)
    m.reconcile_failed()
    m.unreadable("iptables")
    got = parse(promtext.render(m.families()))
    assert got["isolation_agent_requests"][1] == {
        ("isolation_agent_requests_total", (("result", r), ("verb", v))): n
        for v, r, n in [("ADD", "ok", 1), ("ADD", "error", 2), ("CHECK", "error", 1), ("other", "error", 1),
                        ("DEL", "error", 1)]}
    assert got["isolation_agent_backend_errors"][1] == {
        ("isolation_agent_backend_errors_total", (("backend", b), ("operation", op))): n
        for b, op, n in [("iptables", "request", 1), ("iptables", "read", 1), ("nftables", "request", 1),
                         ("nftables", "read", 0), ("auto", "request", 1)]}
    assert got["isolation_agent_repairs"][1] == {("isolation_agent_repairs_total", ()): 2}
    assert got["isolation_agent_reconcile_failures"][1] == {("isolation_agent_reconcile_failures_total", ()): 1}
    assert m.due.is_set(), "a repair asks for the file to be written at once"


def test_every_family_is_documented_and_named_by_the_conventions():
    for name, (kind, text) in metrics.FAMILIES.items():
        assert re.fullmatch(r"isolation_[a-z_]+", name) and len(text) > 30, name
        assert name.endswith("_total") == (kind == "counter"), name
        assert not name.endswith(("_count", "_sum", "_bucket")), name
        if "time" in name or "duration" in name:
            assert name.endswith("_seconds"), name
    assert set(metrics.FAMILIES) == set(metrics.KERNEL) | set(metrics.AGENT_ONLY)


def _publisher(tmp_path, monkeypatch, snap=None):
    import plugin.hoststate as hoststate

    monkeypatch.setattr(hoststate, "state_dir", lambda: str(tmp_path))
    monkeypatch.setattr(metrics, "read_kernel", lambda timeout=None: snap or metrics.Snapshot(time.time()))
    logged = []
    return metrics.Publisher(metrics.AgentMetrics(), logged.append, every_s=3600), logged


def test_the_agents_file_is_private_whole_and_never_written_through_a_symlink(tmp_path, monkeypatch):
    publisher, logged = _publisher(tmp_path, monkeypatch)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, publisher.path)  # planted where the file goes
    os.symlink(victim, f"{publisher.path}.{os.getpid()}.tmp")  # and where its temporary file goes
    old = os.umask(0)
    try:
        publisher.publish()
    finally:
        os.umask(old)
    assert victim.read_text() == "precious\n"
    st = os.lstat(publisher.path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert sorted(os.listdir(tmp_path)) == ["metrics.prom", "victim"], "no temporary file left behind"
    assert set(parse(open(publisher.path).read())) == {f.removesuffix("_total") for f in metrics.FAMILIES}
    assert logged == []
    publisher.close()
    assert not os.path.exists(publisher.path), "an agent that stops takes its file with it"
    publisher.publish()
    assert not os.path.exists(publisher.path), "and never writes it again"


def test_a_publisher_that_cannot_read_the_kernel_logs_once_and_keeps_the_agent_up(tmp_path, monkeypatch):
    publisher, logged = _publisher(tmp_path, monkeypatch)

    def busy(timeout=None):
        raise CniError(11, "timed out after 5s waiting for the lock")

    monkeypatch.setattr(metrics, "read_kernel", busy)
    publisher.publish()
    publisher.publish()
    assert len(logged) == 1 and "timed out" in logged[0] and not os.path.exists(publisher.path)
    monkeypatch.setattr(metrics, "read_kernel", lambda timeout=None: metrics.Snapshot(time.time()))
    publisher.publish()
    assert os.path.exists(publisher.path) and logged[1].endswith("written again")


def test_isolation_metrics_takes_the_agents_series_only_from_a_fresh_file(tmp_path, monkeypatch):
    snap = metrics.snapshot([att("red", "c1", "br-red")],
                            {"nftables": FakeBackend("nftables", counts={"br-red": {"cross-network": 4}})})
    publisher, _ = _publisher(tmp_path, monkeypatch, snap)
    monkeypatch.setattr(metrics, "read_kernel", lambda timeout=None: snap)
    publisher.metrics.served("ADD", {}, 0, 0.004, "{}")
    publisher.publish()

    text, complete = metrics.command_output()
    got = parse(text)
    assert complete and set(got) == {f.removesuffix("_total") for f in metrics.FAMILIES}
    assert got["isolation_agent_requests"][1] == {("isolation_agent_requests_total", (("result", "ok"), ("verb", "ADD"))): 1}
    assert sorted(got["isolation_dropped_packets"][1].values()) == [0, 0, 0, 0, 0, 0, 0, 4]
    assert "omitted" not in text

    old = time.time() - metrics.FRESH_S - 5
    os.utime(publisher.path, (old, old))  # an agent that died a while ago
    text, _ = metrics.command_output()
    assert set(parse(text)) == {f.removesuffix("_total") for f in metrics.KERNEL}
    assert re.search(r"^# the agent's series \(isolation_agent_requests_total, .*\) are omitted: .* last written "
                     r"6\d s ago", text, re.M), text

    os.unlink(publisher.path)
    text, _ = metrics.command_output()
    assert set(parse(text)) == {f.removesuffix("_total") for f in metrics.KERNEL} and "no agent metrics file" in text

    os.symlink(tmp_path / "elsewhere.prom", publisher.path)  # never read through a link
    (tmp_path / "elsewhere.prom").write_text(open(os.devnull).read())
    text, _ = metrics.command_output()
    assert "is not used" in text and "symbolic link" in text


def test_isolation_metrics_says_which_backend_it_could_not_read(tmp_path, monkeypatch):
    snap = metrics.snapshot([att("red", "c1", "br-red")],
                            {"nftables": FakeBackend("nftables", counts=CniError(100, "nft failed"))})
    _publisher(tmp_path, monkeypatch, snap)
    text, complete = metrics.command_output()
    assert not complete and "# nftables: no drop counters: nft failed" in text.splitlines()
    assert parse(text)


def test_families_in_gives_back_each_family_whole():
    m = metrics.AgentMetrics()
    m.served("ADD", {}, 0, 0.002, "{}")
    text = promtext.render(metrics.Snapshot(1.0).families() + m.families(), ["trailing comment"])
    found = promtext.families_in(text)
    assert list(found) == list(metrics.FAMILIES)
    assert "\n".join(line for lines in found.values() for line in lines) + "\n# trailing comment\n" == text


def test_the_reference_parser_is_a_test_dependency_only():
    import subprocess
    import sys

    probe = ("import sys; import plugin.metrics, plugin.promtext, plugin.agent, plugin.cli; "
             "print(sorted(m for m in sys.modules if m.startswith('prometheus')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    spec = open(os.path.join(REPO, "build.spec")).read()
    assert '"prometheus_client"' in re.search(r"excludes=\[(.*?)\]", spec, re.S).group(1)
    assert "prometheus-client==" in open(os.path.join(REPO, "hack", "requirements-dev.txt")).read()
