"""containerd end to end: real containerd 1.6 and `ctr run --cni` (tests/lab/containerd.py) start
busybox containers on conflists that chain our frozen binary after `bridge`; traffic is
checked with real packets from inside the containers, on both backends.

Expected, from the plugin's definition (issue 16):
  same network                        reach (IPv4 and IPv6, ICMP and TCP)
  across networks, both ways          blocked
  own gateway, the outside namespace  reach
  after the last container of A       no rule of ours names A's bridge; B and C keep theirs
  after the last container of all     the host's ruleset is what it was before
  an invalid value                    `ctr run` fails with our message naming the field;
                                      nothing of ours left (the corrected value then runs)
  HOST:port published by network P    reach from another network iff P's allowPublishedPorts
                                      (whatever the client network's own value); from the
                                      outside always; P's container address never
  `ctr run -d`, killed and deleted    no DEL ever comes: `isolation status` must name the
                                      stale attachment, `prune` (or the agent) remove it
  the nerdctl, containerd and BuildKit conf-examples: within / across as their keys say
ctr 1.6 passes no capability arguments (no `-p`), so a published port is the portmap entry's
own `runtimeConfig.portMappings`, which libcni leaves as written.

One containerd per backend serves every test (module scope); each test stops its own
containers, and the fixture then ends whatever a failed test left, so tests stay independent.
"""

import json
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from conftest import REPO
from containerd import Containerd, mount_points, real_dirs_snapshot
from netlab import IP, TCP_PORT, Lab, Network, localise, sh

pytestmark = pytest.mark.e2e
HOST = ("10.99.0.1", "fd99::1")  # the host's uplink addresses, where portmap publishes
OUTSIDE = ("10.99.0.2", "fd99::2")  # the outside namespace, routed through the host
EXAMPLES = ("buildkit.conflist", "containerd-ctr.conflist", "nerdctl.conflist", "nerdctl-custom-network.conflist",
            "nerdctl-icc-false.conflist")
AGENT_DEADLINE_S = 15.0


@dataclass
class Env:
    """The module's containerd, its lab, the backend under test and our binary's log."""

    ctr: Containerd
    lab: Lab
    backend: str
    log: str

    def network(self, *before_isolation: dict, **isolation) -> Network:
        """bridge, then `before_isolation` (e.g. portmap), then ours on this backend."""
        conf = {"backend": self.backend, "logFile": self.log, **isolation}
        return self.lab.network(["bridge", *before_isolation, "isolation"], isolation=conf)

    def verbs(self, cni_id: str) -> list[str]:
        """The verbs our binary logged for CNI_CONTAINERID `cni_id`, in order."""
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return re.findall(rf"\]: (\w+) container={re.escape(cni_id)} ", f.read())

    def isolation(self, *args: str) -> subprocess.CompletedProcess:
        return self.lab.cli(*args)

    def status(self) -> dict:
        return json.loads(self.isolation("status", "--json").stdout)


@pytest.fixture(scope="module", params=["nftables", "iptables"])
def module_env(request, isolation_bin, can_netns):
    before = real_dirs_snapshot()
    lab = Lab(isolation_bin)
    try:
        ctr = Containerd(lab)
    except BaseException:
        lab.close()
        raise
    yield Env(ctr, lab, request.param, os.path.join(lab.tmp, "isolation.log"))
    ctr.close()
    lab.close()
    assert real_dirs_snapshot() == before, "containerd or ctr wrote to the real CNI directories"


@pytest.fixture
def env(module_env):
    """The shared containerd; after the test, none of its containers, no agent, none of our rules."""
    yield module_env
    module_env.lab.stop_agent()
    module_env.ctr.stop_all()
    if module_env.status()["bridges"]:  # attachments a failing test left: the next test starts clean
        module_env.isolation("cleanup")


def expect(want: dict, src: str, addrs, reach: bool, port: int = TCP_PORT, icmp: bool = True) -> None:
    """Add to `want`: from netns `src` to each of `addrs`, TCP `port` (and ICMP) reach or not."""
    for addr in addrs:
        want[("tcp", src, addr, port)] = reach
        if icmp:
            want[("icmp", src, addr, 0)] = reach


def wrong(lab: Lab, want: dict) -> list[str]:
    """Probe every (kind, source netns, address, port) at once; the verdicts that differ."""

    def probe(key):
        kind, src, addr, port = key
        return lab.ping(src, addr) if kind == "icmp" else lab.tcp(src, addr, port)

    with ThreadPoolExecutor(max_workers=32) as pool:
        got = dict(zip(want, pool.map(probe, want)))
    return [f"{k[0]} {k[1]} -> [{k[2]}]:{k[3]}: expected {'reach' if want[k] else 'blocked'}"
            for k in want if got[k] != want[k]]


def portmap(host_port: int) -> dict:
    """A portmap entry publishing container TCP 8080 on `host_port` by its own runtimeConfig."""
    mapping = {"hostPort": host_port, "containerPort": TCP_PORT, "protocol": "tcp"}
    return {"type": "portmap", "capabilities": {"portMappings": True}, "runtimeConfig": {"portMappings": [mapping]}}


def test_isolation_and_teardown(env):
    lab, ctr = env.lab, env.ctr
    baseline = lab.ruleset()
    net_a, net_b, net_c = env.network(), env.network(), env.network()
    a1, a2, b1, c1 = ctr.run(net_a), ctr.run(net_a), ctr.run(net_b), ctr.run(net_c)
    want = {}
    expect(want, a2.netns, a1.addresses, True)
    expect(want, b1.netns, a1.addresses, False)
    expect(want, a1.netns, b1.addresses, False)
    expect(want, a1.netns, (net_a.gateway4, net_a.gateway6), True)
    expect(want, a1.netns, OUTSIDE, True)
    expect(want, b1.netns, OUTSIDE, True)
    assert not (bad := wrong(lab, want)), "\n".join(bad)

    ctr.stop(a1)
    assert lab.ours_mentioning(net_a.bridge), "a2 still runs on A"
    ctr.stop(a2)
    assert lab.ours_mentioning(net_a.bridge) == [], "A's last container took A's rules with it"
    assert lab.ours_mentioning(net_b.bridge) and lab.ours_mentioning(net_c.bridge)
    want = {}
    expect(want, b1.netns, c1.addresses, False)
    expect(want, c1.netns, b1.addresses, False)
    expect(want, b1.netns, OUTSIDE, True)
    expect(want, c1.netns, (net_c.gateway4, net_c.gateway6), True)
    assert not (bad := wrong(lab, want)), "B and C, after A's teardown:\n" + "\n".join(bad)

    ctr.stop(b1)
    ctr.stop(c1)
    assert lab.ruleset() == baseline, "the last container of all took every rule of ours with it"
    assert env.status()["bridges"] == []
    for task in (a1, a2, b1, c1):  # ctr's protocol as seen by our binary: ADD at start, DEL at exit
        assert env.verbs(task.cni_id) == ["ADD", "DEL"], task.cni_id


def test_invalid_configuration_fails_ctr_run_and_leaves_nothing(env):
    lab, ctr = env.lab, env.ctr
    baseline = lab.ruleset()
    net = env.network(denyEgress=["10.0.0.0/33"])
    proc = ctr.run_failing(net)
    assert proc.returncode != 0, "the container must not start unprotected"
    assert "denyEgress" in proc.stderr and "10.0.0.0/33" in proc.stderr, proc.stderr
    assert "RUNNING" not in [state for _, state in ctr.task_list().values()]
    assert lab.ours_mentioning(net.bridge) == []
    assert lab.ruleset() == baseline
    assert env.status()["bridges"] == []

    net.plugins[-1]["denyEgress"] = ["192.0.2.0/24"]  # the same network, the value corrected: it runs
    task = ctr.run(net)
    assert lab.ours_mentioning(net.bridge)
    ctr.stop(task)
    assert lab.ruleset() == baseline


def test_published_port_follows_the_publishing_network(env):
    lab, ctr = env.lab, env.ctr
    net_open = env.network(portmap(18080), allowPublishedPorts=True)
    net_closed = env.network(portmap(18081), allowPublishedPorts=False)
    net_client = env.network()  # allowPublishedPorts: true (the default)
    p_open, p_closed, client = ctr.run(net_open), ctr.run(net_closed), ctr.run(net_client)
    want = {}
    expect(want, client.netns, HOST, True, port=18080, icmp=False)
    expect(want, client.netns, HOST, False, port=18081, icmp=False)
    expect(want, lab.outside, HOST, True, port=18080, icmp=False)
    expect(want, lab.outside, HOST, True, port=18081, icmp=False)  # 18081 is published all the same
    expect(want, client.netns, p_open.addresses, False)
    expect(want, client.netns, p_closed.addresses, False)
    assert not (bad := wrong(lab, want)), "\n".join(bad)


def test_published_port_reaches_a_client_network_that_disallows_published_ports(env):
    """Issue 14 item 5: the PUBLISHING network's allowPublishedPorts decides; a client network
    with `false` still reaches a port that a network with `true` publishes."""
    lab, ctr = env.lab, env.ctr
    net_pub = env.network(portmap(18082), allowPublishedPorts=True)
    net_client = env.network(allowPublishedPorts=False)
    publisher, client = ctr.run(net_pub), ctr.run(net_client)
    want = {}
    expect(want, client.netns, HOST, True, port=18082, icmp=False)
    expect(want, lab.outside, HOST, True, port=18082, icmp=False)
    expect(want, client.netns, publisher.addresses, False)
    expect(want, publisher.netns, client.addresses, False)
    assert not (bad := wrong(lab, want)), "\n".join(bad)


@pytest.mark.parametrize("example", EXAMPLES)
def test_conf_example_through_ctr(env, example):
    """Two networks made from the example (bridge and ranges the lab's, our backend the one
    under test), two containers on the first, one on the second."""
    with open(os.path.join(REPO, "conf-examples", example)) as f:
        conflist = json.load(f)
    ours = next(p for p in conflist["plugins"] if p["type"] == "isolation")
    ours["backend"] = env.backend
    policy = ours.get("ingressPolicy", "same-bridge")
    within, across = policy != "isolated", policy == "open" or "isolationGroup" in ours
    nets = [env.lab.network(localise(env.lab, conflist, len(env.lab.networks) + 1), cni_version=conflist["cniVersion"])
            for _ in range(2)]
    a1, a2, b1 = env.ctr.run(nets[0]), env.ctr.run(nets[0]), env.ctr.run(nets[1])
    want = {}
    expect(want, a2.netns, a1.addresses, within)
    expect(want, b1.netns, a1.addresses, across)
    expect(want, a1.netns, b1.addresses, across)
    expect(want, a1.netns, OUTSIDE[:1], True)
    assert not (bad := wrong(env.lab, want)), f"{example}:\n" + "\n".join(bad)


def _detached_with_a_neighbour(env) -> tuple:
    """Network D with a detached container, network E with a foreground one, isolated."""
    net_d, net_e = env.network(), env.network()
    d1, e1 = env.ctr.run(net_d, detach=True), env.ctr.run(net_e)
    want = {}
    expect(want, d1.netns, e1.addresses, False)
    expect(want, e1.netns, d1.addresses, False)
    expect(want, d1.netns, OUTSIDE, True)
    assert not (bad := wrong(env.lab, want)), "\n".join(bad)
    assert env.lab.ours_mentioning(net_d.bridge)
    env.ctr.stop(d1)  # `ctr task kill` + `ctr task delete` + `ctr container delete`: no DEL
    assert env.verbs(d1.cni_id) == ["ADD"], "nothing told the plugin the container is gone"
    veths = sh(IP, "-o", "link", "show", "master", net_d.bridge, netns=env.lab.host).stdout
    assert veths == "", f"the container's veth went with its network namespace: {veths}"
    return net_d, net_e, d1


def test_detached_container_killed_without_del_is_found_by_status_and_pruned(env):
    """Issue 15 item 6: an attachment whose veth vanished is named by `status` and removed
    by `prune`, while the bridge itself (and network E's container) remain."""
    net_d, net_e, d1 = _detached_with_a_neighbour(env)
    report = env.status()
    assert any(net_d.bridge in p or d1.cni_id in p for p in report["problems"]), \
        f"status names no stale attachment of {net_d.bridge}: problems {report['problems']}"
    proc = env.isolation("prune")
    assert proc.returncode == 0, proc.stderr
    assert env.lab.ours_mentioning(net_d.bridge) == [], proc.stdout
    assert env.lab.ours_mentioning(net_e.bridge), "E's container still runs"
    report = env.status()
    assert report["problems"] == [] and [b["bridge"] for b in report["bridges"]] == [net_e.bridge], report


def test_agent_removes_a_detached_container_killed_without_del(env):
    """Issue 15 item 6, the agent's side: it notices the vanished veth by itself."""
    log = env.lab.start_agent()
    net_d, net_e, _ = _detached_with_a_neighbour(env)
    deadline = time.monotonic() + AGENT_DEADLINE_S
    while env.lab.ours_mentioning(net_d.bridge) and time.monotonic() < deadline:
        time.sleep(0.2)
    with open(log) as f:
        assert env.lab.ours_mentioning(net_d.bridge) == [], f.read()[-2000:]
    assert env.lab.ours_mentioning(net_e.bridge), "E's container still runs"


def test_cleanup_ends_containerd_shims_and_tasks(isolation_bin, can_netns):
    """close() in the middle of a test (a foreground and a detached container running) ends
    every process by pid, removes the cgroups, and leaves the real directories and this
    mount namespace as they were."""
    before = real_dirs_snapshot()
    with Lab(isolation_bin) as lab:
        work = os.path.join(lab.tmp, "containerd")
        mounts = mount_points(work)
        ctr = Containerd(lab)
        try:
            net = lab.network(["bridge", "isolation"])
            fg, detached = ctr.run(net), ctr.run(net, detach=True)
            pids = ctr.processes()
            assert {ctr.daemon.pid, fg.pid, detached.pid} <= set(pids) and len(pids) >= 5, pids  # + 2 shims
            assert os.readlink("/proc/self/ns/mnt") != ctr.mnt_ns
            assert mount_points(work) == mounts, "containerd's mounts are private"
            assert ctr.cgroups(), "ctr puts the containers under /<namespace>/<id>"
        finally:
            ctr.close()
        alive = [p for p in pids if _alive(p)]
        assert alive == [], alive
        assert ctr.cgroups() == []
        assert mount_points(work) == mounts
    assert real_dirs_snapshot() == before


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
