"""Every conflist in conf-examples/ runs end to end: two networks made from the same
example (bridge name, subnets and IPAM state rewritten to the lab's own), then real
traffic must reach within a network and be blocked across networks."""

import copy
import json
import os

import pytest

from conftest import REPO
from netlab import bridge_plugin

pytestmark = pytest.mark.e2e
EXAMPLES = sorted(f for f in os.listdir(os.path.join(REPO, "conf-examples")) if f.endswith(".conflist"))


def localise(lab, conflist: dict, index: int) -> list[dict]:
    """The example's plugins, with the bridge plugin pointed at lab-owned names and ranges."""
    plugins = copy.deepcopy(conflist["plugins"])
    for i, p in enumerate(plugins):
        if p["type"] == "bridge":
            mine = bridge_plugin(f"{lab.prefix}b{index}", index, os.path.join(lab.tmp, "ipam"))
            plugins[i] = {**p, "bridge": mine["bridge"], "ipMasq": False, "ipam": mine["ipam"]}
    return plugins


@pytest.mark.parametrize("example", EXAMPLES)
def test_example(lab, example):
    with open(os.path.join(REPO, "conf-examples", example)) as f:
        conflist = json.load(f)
    assert [p["type"] for p in conflist["plugins"]].count("isolation") == 1
    nets = [lab.network(localise(lab, conflist, i + 1), cni_version=conflist["cniVersion"]) for i in range(2)]
    a1, a2, b1 = lab.add(nets[0]), lab.add(nets[0]), lab.add(nets[1])
    got = lab.reach([(a1.name, a2.ipv4), (a1.name, b1.ipv4), (b1.name, a1.ipv4)])
    assert got[("icmp", a1.name, a2.ipv4)] and got[("tcp", a1.name, a2.ipv4)]
    assert not any(v for (k, src, dst), v in got.items() if dst != a2.ipv4)
    if conflist["cniVersion"] != "0.3.1":
        assert all(rc == 0 for _, rc, _ in lab.check(a1))
