"""isolationGroup: networks sharing a group reach each other; every other pair stays apart.

Networks A and B are in group "a", C is in no group, D is in group "b" (alone). Expected,
from the definition of the key: A and B reach each other both ways; C and D reach
neither A nor B nor each other; containers of one network reach each other.
"""

import json

import pytest

from netlab import addresses

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_isolation_groups(lab, backend):
    groups = ["a", "a", None, "b"]
    nets = [lab.network(["bridge", "isolation"], isolation={"backend": backend, **({"isolationGroup": g} if g else {})})
            for g in groups]
    cs = [lab.add(n) for n in nets]
    a2 = lab.add(nets[0])
    want = {}
    for i, src in enumerate(cs):
        for j, dst in enumerate(cs):
            if i != j:
                for addr in addresses(dst):
                    want[(src.name, addr)] = groups[i] is not None and groups[i] == groups[j]
    want[(cs[0].name, a2.ipv4)] = True
    got = lab.reach(list(want))
    wrong = [f"{k} {s} -> {d}: expected {'reach' if want[(s, d)] else 'blocked'}"
             for (k, s, d), ok in got.items() if ok != want[(s, d)]]
    assert not wrong, "\n".join(wrong)
    assert all(rc == 0 for c in cs for _, rc, _ in lab.check(c))

    lab.delete(cs[1])  # network B's last container: its group exceptions go with it
    if backend == "nftables":
        listing = json.loads(lab.nft("-j", "list", "set", "inet", "isolation", "peers"))["nftables"]
        assert next(o["set"] for o in listing if "set" in o).get("elem", []) == []
    else:
        for fam in ("ipv4", "ipv6"):
            assert f"-i {nets[1].bridge} " not in lab.save(fam) and f"-o {nets[1].bridge} " not in lab.save(fam)


@pytest.mark.parametrize("value", ["", "two words", "-lead", "x" * 65, 7])
def test_invalid_isolation_group(lab, value):
    net = lab.network(["bridge"])
    c = lab.add(net)
    conf = {"cniVersion": "1.0.0", "name": net.name, "type": "isolation", "isolationGroup": value,
            "prevResult": lab.cache[(net.name, c.id)]}
    before = lab.ruleset()
    rc, out, _ = lab.exec_plugin("isolation", "ADD", conf, lab._env(c))
    assert rc != 0 and out["code"] == 7 and "isolationGroup" in out["msg"], out
    assert lab.ruleset() == before
