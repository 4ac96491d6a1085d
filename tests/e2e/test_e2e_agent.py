"""The resident agent: a root-only socket, hostile requests, death mid-request, and
self-healing after firewall reloads and deleted bridges, proven with real packets.

(The whole isolation matrix also runs with the agent serving: tests/e2e/test_e2e_matrix.py.)
"""

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import threading
import time

import pytest

from netlab import IP, eventually, read_text, sh

pytestmark = pytest.mark.e2e


def _isolated_pair(lab, backend):
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend}) for _ in range(2)]
    return nets, [lab.add(n) for n in nets]


def _frame(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


def test_socket_is_root_only(lab):
    # The agent's state root is the lab's own (bind-mounted as /run/isolation for our binary),
    # opened up so that a non-root peer reaches the socket: the real /run/isolation is made
    # 0700 by whoever runs first and is never loosened by a test.
    lab.private_state_root(mode=0o755)
    os.chmod(lab.tmp, 0o755)
    log = lab.start_agent()
    path = os.path.join(lab.state_dir(), "agent.sock")
    st, dst = os.stat(path), os.stat(lab.state_dir())
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert stat.S_IMODE(dst.st_mode) == 0o700 and dst.st_uid == 0

    # Even with the file permissions opened up, SO_PEERCRED turns a non-root peer away.
    os.chmod(lab.state_dir(), 0o755)
    os.chmod(path, 0o666)
    try:
        probe = ("import socket,struct,json,sys\n"
                 "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                 "d=json.dumps({'env':{'CNI_COMMAND':'STATUS'},'stdin':'{}'}).encode()\n"
                 "try: s.sendall(struct.pack('>I',len(d))+d); print(repr(s.recv(100)))\n"
                 "except (ConnectionResetError, BrokenPipeError): print(repr(b''))\n")  # closed unanswered, either way
        # (the agent may close before the request is even sent: BrokenPipeError)
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                              "-c", probe, path], capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "b''", (out.stdout, out.stderr)
        assert eventually(lambda: "refused a request from uid 65534" in read_text(log))
    finally:
        os.chmod(lab.state_dir(), 0o700)
        os.chmod(path, 0o600)


def test_malformed_requests_do_not_take_the_agent_down(lab):
    log = lab.start_agent()
    path = os.path.join(lab.state_dir(), "agent.sock")
    bad = [
        b"garbage that is no frame at all",
        struct.pack(">I", 0xFFFFFFFF) + b"{}",  # far above the size limit
        struct.pack(">I", 1000) + b'{"env": {',  # half a request, then the client goes away
        _frame(["not", "an", "object"]),
        _frame({"env": {"PATH": "/tmp/evil", "CNI_COMMAND": "ADD"}, "stdin": "{}"}),  # not a CNI_* variable
        _frame({"env": {"CNI_COMMAND": 7}, "stdin": "{}"}),
        _frame({"env": {}, "stdin": None}),
    ]
    for payload in bad:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            try:
                answer = s.recv(100)
            except ConnectionResetError:  # closed with our bytes unread: unanswered too
                answer = b""
            assert answer == b"", payload
    assert lab.agent.poll() is None, "the agent survived"
    net = lab.network(["bridge", "isolation"])
    lab.add(net)  # served normally afterwards
    assert "served ADD" in read_text(log) and read_text(log).count("dropped a malformed request") >= 5


def test_agent_killed_mid_request_falls_back(lab):
    """The agent is frozen while an ADD waits for its answer, then killed: the plugin does
    the work itself, and the result is whole (CHECK passes, traffic is isolated)."""
    nets = [lab.network(["bridge"]) for _ in range(2)]
    cs = [lab.add(n) for n in nets]
    lab.start_agent()
    lab.agent.send_signal(signal.SIGSTOP)
    results = {}

    def add(c):
        conf = {"cniVersion": "1.0.0", "name": c.network.name, "type": "isolation",
                "prevResult": lab.cache[(c.network.name, c.id)]}
        results[c.id] = lab.exec_plugin("isolation", "ADD", conf, lab._env(c))

    threads = [threading.Thread(target=add, args=(c,)) for c in cs]
    for t in threads:
        t.start()
    time.sleep(1.0)  # both requests are now queued at the frozen agent
    lab.agent.send_signal(signal.SIGKILL)
    lab.agent.wait()
    for t in threads:
        t.join(timeout=120)
    assert all(rc == 0 for rc, _, _ in results.values()), results
    for c in cs:
        conf = {"cniVersion": "1.0.0", "name": c.network.name, "type": "isolation",
                "prevResult": lab.cache[(c.network.name, c.id)]}
        assert lab.exec_plugin("isolation", "CHECK", conf, lab._env(c))[0] == 0
    assert lab.blocked(*cs)


@pytest.mark.parametrize("backend,wipe", [
    ("nftables", [["nft", "flush", "ruleset"]]),
    ("iptables", [["iptables", "-F"], ["ip6tables", "-F"]]),
    ("iptables", [["iptables", "-F"], ["iptables", "-X"], ["ip6tables", "-F"], ["ip6tables", "-X"]]),
], ids=["nft-flush-ruleset", "iptables-F", "iptables-F-X"])
def test_agent_heals_a_wiped_firewall(lab, backend, wipe):
    nets, (a, b) = _isolated_pair(lab, backend)
    log = lab.start_agent()
    assert lab.blocked(a, b)
    for argv in wipe:
        sh(*argv, netns=lab.host)
    assert eventually(lambda: "repaired:" in read_text(log)), read_text(log)
    assert lab.blocked(a, b), "isolation is back, proven with packets"
    assert all(rc == 0 for c in (a, b) for _, rc, _ in lab.check(c))


def test_agent_forgets_a_deleted_bridge(lab):
    nets, (a, b) = _isolated_pair(lab, "nftables")
    log = lab.start_agent()
    sh(IP, "link", "del", nets[0].bridge, netns=lab.host)

    def forgotten():
        return [x["bridge"] for x in lab.status()["bridges"]] == [nets[1].bridge]

    assert eventually(forgotten), read_text(log)
    assert f'"{nets[0].bridge}"' not in lab.nft("list", "ruleset")
    assert "vanished bridge" in read_text(log)


def test_agent_restart_loses_nothing(lab):
    nets, (a, b) = _isolated_pair(lab, "nftables")
    lab.start_agent()
    lab.stop_agent()
    log = lab.start_agent()
    c = lab.add(nets[0])
    assert "served ADD" in read_text(log)
    out = lab.cli("status", "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["problems"] == []
    assert sorted(x["attachments"] for x in report["bridges"]) == [1, 2]
    assert lab.blocked(c, b)
