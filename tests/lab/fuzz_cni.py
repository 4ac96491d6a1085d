"""Property-based fuzzing of the plugin's CNI entry point, in-process (hypothesis).

    ip netns exec NS python tests/lab/fuzz_cni.py --cases N [--seed S]

Run by tests/e2e/test_fuzz.py (a few hundred cases, in the default suite) and by
bench/stress.py (10,000 and more), always inside a network namespace made for it,
never in the root namespace: generated configurations may be valid. Generated inputs:
stdin (well-formed configurations with hostile values, and arbitrary bytes), prevResult
shapes, the CNI_* environment, interface names and CIDRs. For every case:
  - plugin.cni.run returns, never raises (no traceback can reach a runtime);
  - a failure is CNI error JSON (cniVersion, code, msg, details) with a code the plugin
    documents, and the code is the one the input deserves where that is decidable
    (not JSON: 6; a cniVersion not spoken: 1; an unknown CNI_COMMAND: 4);
  - nothing in nf_tables changed (its generation number is the same): the namespace
    has no bridge, so no input can be enforced, and a rejected input must change
    nothing (iptables-nft changes are nf_tables changes too).
Prints one line with the number of cases and the codes seen; exits non-zero on the
first falsified property, with hypothesis' minimal example.
"""

import argparse
import collections
import json
import os
import shutil
import socket
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from plugin import SUPPORTED_VERSIONS, cni  # noqa: E402

DOCUMENTED = {1, 2, 3, 4, 5, 6, 7, 11, 50, 100, 101, 102, 103, 104}
LOG_DIR = tempfile.mkdtemp(prefix="isolation-fuzz-")  # the only logFile a case may name
SEEN: collections.Counter = collections.Counter()


def nft_generation() -> int:
    """nf_tables' ruleset generation in this namespace (NFT_MSG_GETGEN over netlink)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
    try:
        msg_type = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN
        body = struct.pack("BBH", 0, 0, 0)  # nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id
        s.send(struct.pack("=IHHII", 16 + len(body), msg_type, 1, 1, 0) + body)  # NLM_F_REQUEST
        data = s.recv(4096)
    finally:
        s.close()
    offset = 16 + 4
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if kind & 0x7FFF == 1:  # NFTA_GEN_ID
            return struct.unpack_from(">I", data, offset + 4)[0]
        offset += (length + 3) & ~3
    raise RuntimeError("no NFTA_GEN_ID in the reply")


text = st.text(max_size=24)
names = st.one_of(st.sampled_from(["br0", "cni-podman0", "lo", "eth0", "-x", ".", "..", "a" * 15, "a" * 16,
                                   "br+", "b r", 'b"r', "br0\n", "é"]), text)
cidrs = st.one_of(st.sampled_from(["10.0.0.0/8", "10.1.2.3/8", "fd00::/8", "10.0.0.0/33", "::ffff:10.0.0.0/104",
                                   "10.0.0.0/120", "0.0.0.0/0", "::/0", "1.2.3.4", "nope", ""]),
                  st.ip_addresses().map(str), text)
ports = st.one_of(st.integers(-2, 70000), st.sampled_from(["53", "8000-8100", "9-2", "0", "65536", "x"]), st.none())
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8)
prev_results = st.one_of(json_values, st.fixed_dictionaries(
    {"cniVersion": st.sampled_from([*SUPPORTED_VERSIONS, "9.9.9"])},
    optional={
        "interfaces": st.one_of(json_values, st.lists(st.fixed_dictionaries(
            {"name": names}, optional={"sandbox": text, "mac": text}), max_size=4)),
        "ips": st.one_of(json_values, st.lists(st.fixed_dictionaries(
            {"address": cidrs}, optional={"interface": st.integers(-1, 5), "version": text}), max_size=3)),
    }))
configs = st.fixed_dictionaries(
    {},
    optional={
        "cniVersion": st.one_of(st.sampled_from([*SUPPORTED_VERSIONS, "0.2.0", "2.0.0"]), json_values),
        "name": st.one_of(text, json_values),
        "type": st.one_of(st.just("isolation"), json_values),
        "ingressPolicy": st.one_of(st.sampled_from(["same-bridge", "isolated", "open", "Same-Bridge"]), json_values),
        "backend": st.one_of(st.sampled_from(["auto", "iptables", "nftables", "nft"]), json_values),
        "allowPublishedPorts": json_values,
        "isolationGroup": st.one_of(text, json_values),
        "denyEgress": st.one_of(st.lists(cidrs, max_size=4), json_values),
        "allowEgress": st.one_of(json_values, st.lists(st.fixed_dictionaries(
            {"cidr": cidrs}, optional={"protocol": st.sampled_from(["tcp", "udp", "icmp", "any", "sctp"]),
                                       "ports": st.lists(ports, max_size=3)}), max_size=3)),
        "hostAccess": st.one_of(st.sampled_from(["allow", "deny", "closed"]), json_values),
        "allowHostPorts": st.one_of(json_values, st.lists(st.fixed_dictionaries(
            {"protocol": st.sampled_from(["tcp", "udp", "icmp", "gre"])}, optional={"port": ports}), max_size=3)),
        "logFile": st.sampled_from([None, "relative.log", os.path.join(LOG_DIR, "x.log"), "syslog"]),
        "logLevel": st.sampled_from(["info", "error", "off", "debug"]),
        "prevResult": prev_results,
        "cni.dev/valid-attachments": st.one_of(json_values, st.lists(st.fixed_dictionaries(
            {"containerID": text, "ifname": names}), max_size=2)),
    })
# Past the protocol checks (a spoken cniVersion, every variable the verb needs), so the
# hostile values reach the configuration model and prevResult handling.
near_valid = st.builds(lambda base, extra: {**extra, **base},
                       st.fixed_dictionaries({"cniVersion": st.sampled_from(SUPPORTED_VERSIONS[-2:]),
                                              "name": st.just("fuzz"), "type": st.just("isolation")}),
                       configs)
full_env = st.fixed_dictionaries({
    "CNI_COMMAND": st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS"]), "CNI_CONTAINERID": st.just("fuzz-ctr"),
    "CNI_NETNS": st.just("/proc/self/ns/net"), "CNI_IFNAME": st.just("eth0"), "CNI_PATH": st.just("/usr/lib/cni")})
environments = st.fixed_dictionaries(
    {"CNI_COMMAND": st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "FROB", ""])},
    optional={"CNI_CONTAINERID": text, "CNI_NETNS": st.sampled_from(["/proc/self/ns/net", "/nonexistent", ""]),
              "CNI_IFNAME": names, "CNI_PATH": st.sampled_from(["/usr/lib/cni", ""]), "CNI_ARGS": text})
stdins = st.one_of(near_valid.map(lambda c: json.dumps(c).encode()), configs.map(lambda c: json.dumps(c).encode()),
                   st.binary(max_size=120), json_values.map(lambda v: json.dumps(v).encode()))


def expected_code(env: dict, stdin: bytes) -> int | None:
    """The code an input must get where the CNI rules decide it before anything else."""
    command = env["CNI_COMMAND"]
    if command == "VERSION":
        return None
    if command not in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
        return 4
    try:
        decoded = json.loads(stdin)
    except (ValueError, UnicodeDecodeError):
        return 6
    if not isinstance(decoded, dict):
        return 6
    if decoded.get("cniVersion") not in SUPPORTED_VERSIONS:
        return 1
    return None


def check_case(env: dict, stdin: bytes) -> None:
    before = nft_generation()
    out, rc = cni.run(env, stdin)
    text_out = json.dumps(out)  # what the plugin prints must be JSON
    if rc != 0:
        assert set(out) == {"cniVersion", "code", "msg", "details"}, out
        assert out["code"] in DOCUMENTED, out
        assert isinstance(out["msg"], str) and out["msg"], out
        SEEN[out["code"]] += 1
    else:
        SEEN["ok"] += 1
    want = expected_code(env, stdin)
    if want is not None:
        assert rc != 0 and out["code"] == want, (want, text_out)
    if env["CNI_COMMAND"] == "VERSION":
        assert rc == 0 and out["supportedVersions"] == list(SUPPORTED_VERSIONS)
    assert nft_generation() == before, f"nf_tables changed for {env} {stdin!r}: {text_out}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    os.environ.pop("ISOLATION_LOG_FILE", None)
    os.environ["ISOLATION_LOCK_TIMEOUT_S"] = "5"

    @settings(max_examples=args.cases, deadline=None, database=None, derandomize=args.seed is None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(full_env, environments), stdins)
    def prop(env, stdin):
        check_case(env, stdin)

    if args.seed is not None:
        from hypothesis import seed

        prop = seed(args.seed)(prop)
    try:
        prop()
    finally:
        shutil.rmtree(LOG_DIR, ignore_errors=True)
    print(json.dumps({"cases": sum(SEEN.values()), "outcomes": {str(k): v for k, v in sorted(SEEN.items(), key=str)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
