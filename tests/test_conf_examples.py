"""Every conflist in conf-examples/ runs end to end: two networks made from the same
example (bridge name, subnets and IPAM state rewritten to the lab's own), then real
traffic is checked against what the example's own keys define:
  within a network: reach, unless ingressPolicy is `isolated`
  across the two:   blocked, unless ingressPolicy is `open` or they share an isolationGroup
                    (two networks from one example share its group, if it names one)."""

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
    ours = next(p for p in conflist["plugins"] if p["type"] == "isolation")
    policy = ours.get("ingressPolicy", "same-bridge")
    within = policy != "isolated"
    across = policy == "open" or "isolationGroup" in ours
    nets = [lab.network(localise(lab, conflist, i + 1), cni_version=conflist["cniVersion"]) for i in range(2)]
    a1, a2, b1 = lab.add(nets[0]), lab.add(nets[0]), lab.add(nets[1])
    want = {(a1.name, a2.ipv4): within, (a1.name, b1.ipv4): across, (b1.name, a1.ipv4): across}
    got = lab.reach(list(want))
    wrong = [f"{k} {s} -> {d}" for (k, s, d), ok in got.items() if ok != want[(s, d)]]
    assert not wrong, f"{example}: {wrong} (want {want})"
    if conflist["cniVersion"] != "0.3.1":
        assert all(rc == 0 for _, rc, _ in lab.check(a1))
