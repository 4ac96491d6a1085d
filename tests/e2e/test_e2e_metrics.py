"""Metrics (issue 19) with real traffic on both backends: the agent's file (mode 0600, read
by prometheus-client's parser) counts exactly the invocations the agent served, is written
again as soon as the agent repairs something, and says what `isolation status --json`
says about attachments and drops per network and reason; `isolation metrics` says the
same without the agent. Expected counts are derived by hand from what each test does."""

import math
import os
import re
import stat
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netlab import eventually, read_text, send_datagrams, sh

pytestmark = pytest.mark.e2e
BACKENDS = ("nftables", "iptables")
REASONS = ("cross-network", "intra-bridge", "egress-deny", "host-access", "anti-spoofing", "cross-tenant", "internal",
           "direct-access")
AGENT_SAMPLES = ("isolation_agent_requests_total", "isolation_agent_request_duration_seconds_bucket",
                 "isolation_agent_request_duration_seconds_sum", "isolation_agent_request_duration_seconds_count",
                 "isolation_agent_repairs_total", "isolation_agent_reconcile_failures_total",
                 "isolation_agent_start_time_seconds")


def parsed(text: str) -> dict[str, dict[tuple, float]]:
    """sample name -> {its labels, sorted: value}, as the reference parser reads `text`."""
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = tuple(sorted(s.labels.items()))
            assert labels not in out.get(s.name, {}), f"{s.name}{labels} twice"
            out.setdefault(s.name, {})[labels] = s.value
    return out


def agent_file(lab) -> str:
    return os.path.join(lab.state_dir(), "metrics.prom")


def read_agent_file(lab) -> dict:
    """The agent's file, parsed ({} while there is none)."""
    try:
        return parsed(read_text(agent_file(lab)))
    except FileNotFoundError:
        return {}


def by(samples: dict, name: str, *keys: str) -> dict:
    """{label values of `keys`: value} of the samples called `name`."""
    return {tuple(dict(labels)[k] for k in keys): int(v) for labels, v in samples.get(name, {}).items()}


def served_in_log(log: str) -> dict[tuple[str, str], int]:
    """(verb, result) -> invocations the agent's log says it served."""
    counts: dict[tuple[str, str], int] = {}
    for verb, rc in re.findall(r"served (\w+) for \S+: rc=(\d+)", log):
        key = (verb, "ok" if rc == "0" else "error")
        counts[key] = counts.get(key, 0) + 1
    return counts


def status_drops(report: dict) -> dict[tuple[str, str, str, str], int]:
    """What `status --json` says was dropped, keyed as the metric's labels are: (backend,
    bridge, the bridge's networks comma-separated, reason); a reason it cannot count (null)
    has no series."""
    found = {}
    for b in report["bridges"]:
        assert set(b["drops"]) == set(REASONS), b
        for reason, n in b["drops"].items():
            if n is not None:
                found[(b["backend"], b["bridge"], ",".join(b["networks"]), reason)] = n
    return found


def two_networks(lab, backend, reds: int):
    """Networks red (`reds` containers) and blue (one), both `same-bridge` on `backend`."""
    red, blue = (lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(2))
    return red, blue, [lab.add(red) for _ in range(reds)], lab.add(blue)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_agents_file_counts_what_it_served(lab, backend, monkeypatch):
    monkeypatch.setenv("ISOLATION_AGENT_METRICS_EVERY_S", "1")  # inherited by the agent: a file a second
    log = lab.start_agent()
    red, blue, (r1, r2, leaving), b1 = two_networks(lab, backend, reds=3)
    assert [rc for kind, rc, _ in lab.check(r1) if kind == "isolation"] == [0]
    assert dict(lab.delete(leaving))["isolation"] == 0
    expected = {("ADD", "ok"): 4, ("CHECK", "ok"): 1, ("DEL", "ok"): 1}  # by hand: what the lines above ran
    assert all(lab.reach([(r1.name, r2.ipv4), (r1.name, r2.ipv6)]).values()), "positive control: red reaches red"
    assert lab.blocked(r1, b1), "some traffic blocked: red cannot reach blue"

    assert eventually(lambda: by(read_agent_file(lab), "isolation_agent_requests_total", "verb", "result")
                      == expected, deadline=30), read_text(log)
    assert served_in_log(read_text(log)) == expected, "each request counted is one the agent logged"
    st = os.lstat(agent_file(lab))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    got = read_agent_file(lab)

    # the latency histogram: one observation per request, buckets cumulative up to +Inf
    for verb in ("ADD", "CHECK", "DEL"):
        count = sum(n for (v, _), n in expected.items() if v == verb)
        buckets = sorted((float(dict(labels)["le"]), v) for labels, v in
                         got["isolation_agent_request_duration_seconds_bucket"].items() if dict(labels)["verb"] == verb)
        assert [le for le, _ in buckets] == [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, math.inf]
        assert [v for _, v in buckets] == sorted(v for _, v in buckets) and buckets[-1][1] == count
        assert got["isolation_agent_request_duration_seconds_count"][(("verb", verb),)] == count
        assert got["isolation_agent_request_duration_seconds_sum"][(("verb", verb),)] > 0

    # attachments per network: by hand (red kept two of its three, blue one), and as status counts them
    hand = {(backend, red.bridge, red.name): 2, (backend, blue.bridge, blue.name): 1}
    assert by(got, "isolation_attachments", "backend", "bridge", "network") == hand
    report = lab.status()
    assert {(b["backend"], b["bridge"]): b["attachments"] for b in report["bridges"]} == {
        (be, br): n for (be, br, _), n in hand.items()}
    assert got["isolation_agent_repairs_total"][()] == read_text(log).count("repaired:")
    assert got["isolation_agent_reconcile_failures_total"][()] == 0
    assert by(got, "isolation_agent_backend_errors_total", "backend", "operation")[(backend, "request")] == 0
    now = time.time()
    assert now - 30 < got["isolation_metrics_timestamp_seconds"][()] <= now + 1
    assert got["isolation_agent_start_time_seconds"][()] < got["isolation_metrics_timestamp_seconds"][()]

    # `isolation metrics` while the agent runs: the kernel's series read now, the agent's from its file
    cli = parsed(lab.cli("metrics").stdout)
    again = read_agent_file(lab)
    assert {name: cli[name] for name in AGENT_SAMPLES} == {name: again[name] for name in AGENT_SAMPLES}
    assert by(cli, "isolation_attachments", "backend", "bridge", "network") == hand

    # and without it: the agent took its file away, the command says it omits the agent's series
    lab.stop_agent()
    assert not os.path.exists(agent_file(lab))
    out = lab.cli("metrics")
    cli = parsed(out.stdout)
    assert by(cli, "isolation_attachments", "backend", "bridge", "network") == hand
    assert not [name for name in cli if name.startswith("isolation_agent_")]
    assert re.search(r"^# the agent's series \(isolation_agent_requests_total, .*\) are omitted: no agent metrics "
                     r"file at ", out.stdout, re.M), out.stdout


@pytest.mark.parametrize("backend,wipe", [
    ("nftables", [["nft", "flush", "ruleset"]]),
    ("iptables", [["iptables", "-F"], ["ip6tables", "-F"]]),
], ids=["nft-flush-ruleset", "iptables-F"])
def test_a_repair_is_published_at_once(lab, backend, wipe, monkeypatch):
    monkeypatch.setenv("ISOLATION_AGENT_METRICS_EVERY_S", "3600")  # no periodic write during the test
    _, _, (r,), b = two_networks(lab, backend, reds=1)
    log = lab.start_agent()
    assert eventually(lambda: read_agent_file(lab).get("isolation_agent_repairs_total", {}).get(())
                      == read_text(log).count("repaired:")), read_text(log)
    for argv in wipe:
        sh(*argv, netns=lab.host)
    assert eventually(lambda: "repaired:" in read_text(log)), read_text(log)
    # only a repair can have written the file since: the next periodic write is an hour away
    assert eventually(lambda: read_agent_file(lab)["isolation_agent_repairs_total"][()]
                      == read_text(log).count("repaired:") >= 1), read_text(log)
    assert all(lab.reach([(r.name, "10.99.0.2")]).values()), "positive control: the outside is reached"
    assert lab.blocked(r, b), "and the repair counted is real: isolation is back"


@pytest.mark.parametrize("backend", BACKENDS)
def test_drops_per_network_and_reason_match_status(lab, backend, monkeypatch):
    """Needs Backend.drops() per bridge and reason and `status --json`'s `networks` and
    per-reason `drops` (the counters branch of issue 19)."""
    monkeypatch.setenv("ISOLATION_AGENT_METRICS_EVERY_S", "1")
    log = lab.start_agent()
    red, blue, (r1, r2), b1 = two_networks(lab, backend, reds=2)
    probes = [(r1.name, r2.ipv4), (r1.name, r2.ipv6), (r1.name, red.gateway4), (r1.name, red.gateway6)]
    assert all(lab.reach(probes).values()), "positive control (and r1's neighbour entries for its gateway)"
    assert lab.blocked(r1, b1)

    before = status_drops(lab.status())
    n = 5
    send_datagrams(r1.name, b1.ipv4, n)
    send_datagrams(r1.name, b1.ipv6, n)

    def cross(report) -> int:
        return sum(v for (_, _, _, reason), v in status_drops(report).items() if reason == "cross-network")

    # by hand: each datagram is forwarded from red's bridge toward blue's and dropped there, once
    assert eventually(lambda: cross(lab.status()) - sum(
        v for (_, _, _, reason), v in before.items() if reason == "cross-network") == 2 * n)
    after = status_drops(lab.status())
    assert {k: v for k, v in after.items() if k[3] != "cross-network"} == {
        k: v for k, v in before.items() if k[3] != "cross-network"}, "no other reason moved"
    assert {(k[1], k[2]) for k in after} <= {(red.bridge, red.name), (blue.bridge, blue.name)}

    # no traffic moves the counters any more: the agent's next file says what status says
    assert eventually(lambda: by(read_agent_file(lab), "isolation_dropped_packets_total", "backend", "bridge",
                                 "network", "reason") == status_drops(lab.status()), deadline=30), read_text(log)
    got = read_agent_file(lab)
    assert set(by(got, "isolation_agent_backend_errors_total", "backend", "operation").values()) == {0}

    lab.stop_agent()
    out = lab.cli("metrics")
    assert out.returncode == 0, out.stdout + out.stderr
    cli = parsed(out.stdout)
    assert by(cli, "isolation_dropped_packets_total", "backend", "bridge", "network", "reason") == after
    assert by(cli, "isolation_attachments", "backend", "bridge", "network") == {
        (backend, red.bridge, red.name): 2, (backend, blue.bridge, blue.name): 1}
