"""The CNI protocol, driven through the frozen binary exactly as a runtime would.

Every rejected input must give the exact CNI error code and leave the ruleset as
it was. Expected results are written out by hand from the CNI specification.
"""

import copy
import json
import subprocess

import pytest

from netlab import IP, sh

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
pytestmark = pytest.mark.e2e


@pytest.fixture
def bridged(lab):
    """A lab with one bridge network and one container, wired by the real bridge plugin only."""
    net = lab.network(["bridge"])
    c = lab.add(net)
    return lab, net, c, lab.cache[(net.name, c.id)]


def ruleset(lab) -> str:
    return lab.ruleset()


def call(lab, command, conf, c=None, env=None, raw_stdin=None):
    """Run our binary once; returns (rc, parsed stdout or None, raw stdout)."""
    full = {"CNI_COMMAND": command, "CNI_PATH": "/usr/lib/cni"}
    if c is not None:
        full |= {"CNI_CONTAINERID": c.id, "CNI_NETNS": f"/run/netns/{c.name}", "CNI_IFNAME": "eth0"}
    full |= env or {}
    full = {k: v for k, v in full.items() if v is not None}
    stdin = raw_stdin if raw_stdin is not None else json.dumps(conf)
    proc = subprocess.run(lab.isolation_argv(), input=stdin, capture_output=True, text=True, env=full)
    assert "Traceback" not in proc.stdout + proc.stderr
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, out, proc.stdout


def conf(version="1.0.0", prev=None, **extra):
    c = {"cniVersion": version, "name": "testnet", "type": "isolation", **extra}
    if prev is not None:
        c["prevResult"] = prev
    return c


def nested(depth: int) -> list:
    """A list nested `depth` levels deep."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def legacy_shape(prev: dict, version: str) -> dict:
    """A 1.0.0 result rewritten by hand into the 0.3.x/0.4.0 shape (ips carry "version")."""
    out = copy.deepcopy(prev)
    out["cniVersion"] = version
    for ip in out["ips"]:
        ip["version"] = "6" if ":" in ip["address"] else "4"
    return out


def assert_error(rc, out, code, *words):
    assert rc != 0
    assert out is not None and set(out) == {"cniVersion", "code", "msg", "details"}, out
    assert out["code"] == code, out
    for w in words:
        assert w in out["msg"] + out["details"], out


def test_version_every_cni_version(lab):
    for v in VERSIONS:
        rc, out, _ = call(lab, "VERSION", conf(v))
        assert rc == 0
        assert out == {"cniVersion": "1.1.0", "supportedVersions": VERSIONS}


def test_version_with_empty_stdin(lab):
    rc, out, _ = call(lab, "VERSION", None, raw_stdin="")
    assert rc == 0 and out["supportedVersions"] == VERSIONS


def test_no_command_prints_about_line(isolation_bin):
    proc = subprocess.run([isolation_bin], capture_output=True, text=True, env={})
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0] == "CNI isolation plugin v0.1.0"


@pytest.mark.parametrize("version", VERSIONS)
def test_add_passes_prev_result_through(bridged, version):
    lab, net, c, prev = bridged
    given = prev if version.startswith("1.") else legacy_shape(prev, version)
    given = {**given, "cniVersion": version}
    rc, out, _ = call(lab, "ADD", conf(version, given), c)
    assert rc == 0, out
    assert out == given


def test_add_converts_result_to_conf_version(bridged):
    lab, net, c, prev = bridged
    rc, out, _ = call(lab, "ADD", conf("0.4.0", prev), c)
    assert rc == 0
    assert out["cniVersion"] == "0.4.0"
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]  # 10.77.1.x then fd77:1::x
    rc, out, _ = call(lab, "ADD", conf("1.0.0", legacy_shape(prev, "0.4.0")), c)
    assert rc == 0 and all("version" not in ip for ip in out["ips"]) and out["cniVersion"] == "1.0.0"


def test_check_needs_040(bridged):
    lab, net, c, prev = bridged
    assert call(lab, "ADD", conf("0.3.1", legacy_shape(prev, "0.3.1")), c)[0] == 0
    rc, out, _ = call(lab, "CHECK", conf("0.3.1", legacy_shape(prev, "0.3.1")), c)
    assert_error(rc, out, 1, "CHECK")


def test_check_fails_when_iptables_rules_are_removed_by_hand(bridged):
    lab, net, c, prev = bridged
    ipt = {"backend": "iptables"}
    assert call(lab, "ADD", conf(prev=prev, **ipt), c)[0] == 0
    assert call(lab, "CHECK", conf(prev=prev, **ipt), c)[0] == 0
    sh("iptables", "-F", "CNI-ISOLATION-STAGE-2", netns=lab.host)
    rc, out, _ = call(lab, "CHECK", conf(prev=prev, **ipt), c)
    assert_error(rc, out, 102, "ipv4", f"-o {net.bridge} -j DROP")
    assert call(lab, "ADD", conf(prev=prev, **ipt), c)[0] == 0  # ADD repairs
    assert call(lab, "CHECK", conf(prev=prev, **ipt), c)[0] == 0
    sh("ip6tables", "-D", "CNI-ISOLATION-STAGE-1", "-i", net.bridge, "!", "-o", net.bridge,
       "-m", "comment", "--comment", "isolation-plugin", "-j", "CNI-ISOLATION-STAGE-2", netns=lab.host)
    rc, out, _ = call(lab, "CHECK", conf(prev=prev, **ipt), c)
    assert_error(rc, out, 102, "ipv6")


@pytest.mark.parametrize(
    "damage,word",
    [
        (("flush", "chain", "inet", "isolation", "forward"), "altered"),
        (("delete", "table", "inet", "isolation"), "missing"),
        (("flush", "ruleset"), "missing"),
        (("flush", "set", "inet", "isolation", "isolated"), "is not in set inet isolation isolated"),
        (("insert", "rule", "inet", "isolation", "forward", "accept"), "altered"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else v,
)
def test_check_fails_when_nftables_table_is_damaged(bridged, damage, word):
    lab, net, c, prev = bridged
    nft = {"backend": "nftables"}
    assert call(lab, "ADD", conf(prev=prev, **nft), c)[0] == 0
    assert call(lab, "CHECK", conf(prev=prev, **nft), c)[0] == 0
    before = lab.nft("list", "table", "inet", "isolation")
    sh("nft", *damage, netns=lab.host)
    rc, out, _ = call(lab, "CHECK", conf(prev=prev, **nft), c)
    assert_error(rc, out, 102, "nftables", word)
    assert call(lab, "ADD", conf(prev=prev, **nft), c)[0] == 0  # ADD repairs
    assert call(lab, "CHECK", conf(prev=prev, **nft), c)[0] == 0
    assert lab.nft("list", "table", "inet", "isolation").split() == before.split()


def test_check_fails_when_an_accept_jump_sits_above_ours(bridged):
    lab, net, c, prev = bridged
    ipt = {"backend": "iptables"}
    assert call(lab, "ADD", conf(prev=prev, **ipt), c)[0] == 0
    sh("iptables", "-N", "SOMEONE-ELSE", netns=lab.host)
    sh("iptables", "-I", "FORWARD", "1", "-j", "SOMEONE-ELSE", netns=lab.host)
    rc, out, _ = call(lab, "CHECK", conf(prev=prev, **ipt), c)
    assert_error(rc, out, 102, "SOMEONE-ELSE")
    assert call(lab, "ADD", conf(prev=prev, **ipt), c)[0] == 0  # ADD moves our jump back on top
    first = [r for r in lab.save().splitlines() if r.startswith("-A FORWARD")][0]
    assert first == "-A FORWARD -m comment --comment isolation-plugin -j CNI-ISOLATION-STAGE-1"
    assert call(lab, "CHECK", conf(prev=prev, **ipt), c)[0] == 0


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_repeated_add_changes_nothing(bridged, backend):
    lab, net, c, prev = bridged
    assert call(lab, "ADD", conf(prev=prev, backend=backend), c)[0] == 0
    before = ruleset(lab)
    assert call(lab, "ADD", conf(prev=prev, backend=backend), c)[0] == 0
    assert ruleset(lab) == before


@pytest.mark.parametrize("backend", ["auto", "iptables", "nftables"])
def test_open_policy_adds_no_rules(bridged, backend):
    lab, net, c, prev = bridged
    before = ruleset(lab)
    assert call(lab, "ADD", conf(prev=prev, ingressPolicy="open", backend=backend), c)[0] == 0
    assert call(lab, "CHECK", conf(prev=prev, ingressPolicy="open", backend=backend), c)[0] == 0
    assert ruleset(lab) == before


def test_auto_means_nftables_where_it_works(bridged):
    lab, net, c, prev = bridged
    assert call(lab, "ADD", conf(prev=prev), c)[0] == 0
    assert f'"{net.bridge}"' in lab.nft("list", "set", "inet", "isolation", "isolated")
    assert "CNI-ISOLATION" not in lab.save("ipv4") + lab.save("ipv6")


@pytest.mark.parametrize("version", VERSIONS)
def test_del_is_best_effort(bridged, version):
    lab, net, c, prev = bridged
    for env in ({}, {"CNI_NETNS": None}, {"CNI_NETNS": None}):  # plain, no netns, and repeated
        rc, out, raw = call(lab, "DEL", conf(version), c, env=env)  # no prevResult at all
        assert rc == 0 and raw == ""


@pytest.mark.parametrize(
    "command,version,code",
    [("GC", "1.1.0", 0), ("STATUS", "1.1.0", 0), ("GC", "1.0.0", 1), ("STATUS", "1.0.0", 1)],
)
def test_gc_and_status(lab, command, version, code):
    rc, out, raw = call(lab, command, conf(version, **{"cni.dev/valid-attachments": []}))
    if code == 0:
        assert rc == 0 and raw == ""
    else:
        assert_error(rc, out, code, command)


# --- rejected input: exact code, and nothing on the host changes ---------------------------
def _bad_name_prev(prev, name):
    bad = copy.deepcopy(prev)
    bad["interfaces"][0]["name"] = name
    return bad


HOSTILE_NAMES = ["br0 -j ACCEPT", "-j", "br+", "a" * 16, "br\nx", 'br"x', "", "..", "br/0", "br!", 7, None]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_hostile_interface_names(bridged, name):
    lab, net, c, prev = bridged
    before = ruleset(lab)
    rc, out, _ = call(lab, "ADD", conf(prev=_bad_name_prev(prev, name)), c)
    assert_error(rc, out, 7, "prevResult.interfaces[0].name")
    assert ruleset(lab) == before


def test_real_bridge_with_a_wildcard_name_is_refused(bridged):
    lab, net, c, prev = bridged
    odd = f"{lab.prefix}+"
    sh(IP, "link", "add", odd, "type", "bridge", netns=lab.host)
    before = ruleset(lab)
    rc, out, _ = call(lab, "ADD", conf(prev=_bad_name_prev(prev, odd)), c)
    assert_error(rc, out, 7, odd)
    assert ruleset(lab) == before


@pytest.mark.parametrize(
    "case,stdin,code,word",
    [
        ("malformed json", "{not json", 6, "decode"),
        ("not an object", "[1, 2]", 6, "object"),
        ("unsupported version", json.dumps({"cniVersion": "0.2.0", "type": "isolation"}), 1, "0.2.0"),
        ("future version", json.dumps({"cniVersion": "2.0.0", "type": "isolation"}), 1, "2.0.0"),
        ("no version", json.dumps({"type": "isolation"}), 1, "has no cniVersion"),
        ("empty object", "{}", 1, "has no cniVersion"),
        # nested far beyond the decoder's recursion limit (was 104, an internal error)
        ("nested 100000 deep", '{"cniVersion": "1.0.0", "type": "isolation", "args": ' + "[" * 100000
         + "]" * 100000 + "}", 6, "deeper than 64"),
        # within the decoder's limit, beyond ours: later code must never meet it
        ("nested 65 deep", json.dumps({"cniVersion": "1.0.0", "type": "isolation", "args": nested(64)}), 6,
         "deeper than 64"),
        ("larger than 1 MiB", json.dumps({"cniVersion": "1.0.0", "type": "isolation", "args": "x" * (1 << 20)}), 6,
         "larger than 1048576 bytes"),
    ],
)
def test_undecodable_input(bridged, case, stdin, code, word):
    lab, net, c, prev = bridged
    before = ruleset(lab)
    for command in ("ADD", "CHECK", "DEL"):
        rc, out, _ = call(lab, command, None, c, raw_stdin=stdin)
        assert_error(rc, out, code, word)
    assert ruleset(lab) == before


def test_deep_and_large_input_within_the_bounds_is_served(bridged):
    """The positive control of the bounds above: 64 levels (the conf object, then `args`
    63 deep) and a configuration of almost 1 MiB are accepted and enforced."""
    lab, net, c, prev = bridged
    padding = "x" * ((1 << 20) - 20000)
    for extra in ({"args": nested(63)}, {"args": {"pad": padding}}):
        stdin = json.dumps(conf(prev=prev, backend="nftables", **extra))
        assert len(stdin) <= 1 << 20
        rc, out, raw = call(lab, "ADD", None, c, raw_stdin=stdin)
        assert rc == 0 and out["interfaces"] == prev["interfaces"], raw[:300]
    assert "isolated" in lab.nft("list", "table", "inet", "isolation")


@pytest.mark.parametrize(
    "extra,field",
    [
        ({"ingressPolicy": "strict"}, "ingressPolicy"),
        ({"ingressPolicy": 1}, "ingressPolicy"),
        ({"ingressPolicy": None}, "ingressPolicy"),
        ({"backend": "ebtables"}, "backend"),
        ({"backend": "NFTABLES"}, "backend"),
        ({"type": 3}, "type"),
    ],
)
def test_invalid_config(bridged, extra, field):
    lab, net, c, prev = bridged
    before = ruleset(lab)
    for command in ("ADD", "CHECK"):
        rc, out, _ = call(lab, command, conf(prev=prev, **extra), c)
        assert_error(rc, out, 7, field)
    assert ruleset(lab) == before


def test_runtime_keys_are_accepted(bridged):
    lab, net, c, prev = bridged
    extra = {"runtimeConfig": {"portMappings": []}, "args": {"cni": {}}, "capabilities": {"portMappings": True}}
    rc, out, _ = call(lab, "ADD", conf(prev=prev, **extra), c)
    assert rc == 0 and out == prev


def test_missing_prev_result(bridged):
    lab, net, c, prev = bridged
    before = ruleset(lab)
    rc, out, _ = call(lab, "ADD", conf(), c)
    assert_error(rc, out, 7, "prevResult")
    assert ruleset(lab) == before


@pytest.mark.parametrize("which", ["no host-side bridge", "absent interface"])
def test_missing_bridge(bridged, which):
    lab, net, c, prev = bridged
    bad = copy.deepcopy(prev)
    if which == "no host-side bridge":
        bad["interfaces"] = bad["interfaces"][1:]  # host veth and eth0 only
    else:
        bad["interfaces"][0]["name"] = f"{lab.prefix}zz"
    before = ruleset(lab)
    rc, out, _ = call(lab, "ADD", conf(prev=bad), c)
    assert_error(rc, out, 101, "bridge")
    assert ruleset(lab) == before


def test_bridge_found_wherever_it_is_listed(bridged):
    lab, net, c, prev = bridged
    moved = copy.deepcopy(prev)
    moved["interfaces"] = [moved["interfaces"][2], moved["interfaces"][1], moved["interfaces"][0]]
    for ip in moved["ips"]:
        ip["interface"] = 0
    rc, out, _ = call(lab, "ADD", conf(prev=moved, backend="iptables"), c)
    assert rc == 0
    assert f"-A CNI-ISOLATION-STAGE-2 -o {net.bridge} -m comment --comment isolation-plugin -j DROP" in lab.save()


@pytest.mark.parametrize(
    "env,word",
    [
        ({"CNI_CONTAINERID": None}, "CNI_CONTAINERID"),
        ({"CNI_NETNS": None}, "CNI_NETNS"),
        ({"CNI_IFNAME": None}, "CNI_IFNAME"),
        ({"CNI_COMMAND": "FROB"}, "FROB"),
    ],
)
def test_bad_environment(bridged, env, word):
    lab, net, c, prev = bridged
    before = ruleset(lab)
    rc, out, _ = call(lab, "ADD", conf(prev=prev), c, env=env)
    assert_error(rc, out, 4, word)
    assert ruleset(lab) == before


def test_log_file_names_the_chosen_backend(bridged, tmp_path):
    lab, net, c, prev = bridged
    log = tmp_path / "isolation.log"
    assert call(lab, "ADD", conf(prev=prev, logFile=str(log)), c)[0] == 0
    assert call(lab, "CHECK", conf(prev=prev, logFile=str(log), backend="iptables"), c)[0] != 0  # nothing on iptables
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert " ADD " in lines[0] and f"bridge={net.bridge}" in lines[0] and "backend=nftables" in lines[0]
    assert f"container={c.id}" in lines[0] and "result=ok" in lines[0]
    assert " CHECK " in lines[1] and "backend=iptables" in lines[1] and "result=error code=102" in lines[1]
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_log_level_and_environment(bridged, tmp_path):
    """logLevel error keeps only failures; ISOLATION_LOG_FILE/_LEVEL give every network a
    default and also record invocations whose configuration never validated."""
    lab, net, c, prev = bridged
    log = tmp_path / "errors.log"
    assert call(lab, "ADD", conf(prev=prev, logFile=str(log), logLevel="error"), c)[0] == 0
    assert not log.exists(), "a successful ADD is not an error"
    assert call(lab, "CHECK", conf(prev=prev, logFile=str(log), logLevel="error", backend="iptables"), c)[0] != 0
    assert len(log.read_text().splitlines()) == 1 and "result=error code=102" in log.read_text()

    env_log = tmp_path / "env.log"
    env = {"ISOLATION_LOG_FILE": str(env_log)}
    assert call(lab, "ADD", conf(prev=prev, ingressPolicy="bogus"), c, env=env)[0] != 0
    assert call(lab, "CHECK", conf(prev=prev), c, env=env)[0] == 0
    lines = env_log.read_text().splitlines()
    assert len(lines) == 2 and "result=error code=7" in lines[0] and " CHECK " in lines[1] and "result=ok" in lines[1]
    assert call(lab, "CHECK", conf(prev=prev), c, env={**env, "ISOLATION_LOG_LEVEL": "off"})[0] == 0
    assert len(env_log.read_text().splitlines()) == 2
    other = tmp_path / "conf-wins.log"
    assert call(lab, "CHECK", conf(prev=prev, logFile=str(other)), c, env=env)[0] == 0
    assert other.exists() and len(env_log.read_text().splitlines()) == 2, "the conflist's logFile wins"


def test_relative_log_file_is_rejected(bridged):
    lab, net, c, prev = bridged
    rc, out, _ = call(lab, "ADD", conf(prev=prev, logFile="isolation.log"), c)
    assert_error(rc, out, 7, "logFile")


def test_del_tolerates_a_config_that_add_would_reject(bridged, tmp_path):
    lab, net, c, prev = bridged
    rc, out, raw = call(lab, "DEL", conf(ingressPolicy="bogus"), c)
    assert rc == 0 and raw == ""
    log = tmp_path / "del.log"
    assert call(lab, "DEL", conf(logFile=str(log)), c)[0] == 0
    assert " DEL " in log.read_text() and "result=ok" in log.read_text()
