"""The isolation matrix with real packets: 3 bridges x 2 containers, IPv4 and IPv6,
bridge-nf-call-iptables 0 and 1, three chain orders, three policies, both backends; and
the `ptp` column: 3 routed networks (the CNI ptp plugin, no bridge) x 2 containers, whose
"same bridge" is the same CNI network.

Expected verdicts come from the policy definitions, not from the plugin:
  open        everything reaches everything
  same-bridge same-bridge pairs reach; cross-bridge pairs are blocked both ways
  isolated    like same-bridge, and same-bridge pairs are blocked too
and in every case a container reaches its own gateway and a host beyond the host.
`isolation explain` is asked about every probe of a cell in one batch, and must give each
the verdict the packets had.
The expectations do not depend on the backend, nor on whether the resident agent serves
the invocations (mode "agent": every ADD and CHECK must have been served by it). The agent
runs the same engine as the plugin, and what bridge-nf-call changes is the path packets
take, not what the engine does: the agent cells run with bridge-nf-call 1 only (the 36
plain cells cover 0 and 1), which keeps the matrix at 54 cells (about 7 minutes).
"""

import pytest

from explaining import disagreements, explain, reach_keys
from netlab import addresses

pytestmark = pytest.mark.aside  # the longest module, mostly waiting: make test runs it in a run of its own

CHAINS = {
    "bridge,isolation": ["bridge", "isolation"],
    "bridge,firewall,isolation": ["bridge", "firewall", "isolation"],
    "bridge,isolation,firewall": ["bridge", "isolation", "firewall"],
    "ptp,isolation": ["ptp", "isolation"],  # routed: no bridge, a host-side veth per container
}
OUTSIDE = ("10.99.0.2", "fd99::2")


def expected(policy: str, same_bridge: bool) -> bool:
    if policy == "open":
        return True
    return same_bridge and policy == "same-bridge"


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["iptables", "nftables"])
@pytest.mark.parametrize("policy", ["open", "same-bridge", "isolated"])
@pytest.mark.parametrize("chain", list(CHAINS))
@pytest.mark.parametrize("mode,bridge_nf", [("exec", 0), ("exec", 1), ("agent", 1)])
def test_matrix(make_lab, policy, chain, bridge_nf, backend, mode):
    lab = make_lab(bridge_nf=bridge_nf)
    agent_log = lab.start_agent() if mode == "agent" else None
    nets = [lab.network(CHAINS[chain], isolation={"ingressPolicy": policy, "backend": backend}) for _ in range(3)]
    containers = [lab.add(net) for net in nets for _ in range(2)]

    want = {}
    for src in containers:
        for dst in containers:
            if dst is not src:
                for addr in addresses(dst):
                    want[(src.name, addr)] = expected(policy, src.network is dst.network)
        for addr in (src.network.gateway4, src.network.gateway6, *OUTSIDE):
            want[(src.name, addr)] = True
    assert all(len(addresses(c)) == 2 for c in containers), "every container must be dual-stack"

    got = lab.reach(list(want))
    wrong = [
        f"{kind} {src} -> {addr}: expected {'reach' if want[(src, addr)] else 'blocked'}"
        for (kind, src, addr), ok in got.items()
        if ok != want[(src, addr)]
    ]
    assert not wrong, "\n".join(wrong)
    # `isolation explain`, from the registry alone, agrees with every probe's real fate
    probes = reach_keys(got)
    answers, _ = explain(lab, probes)
    assert len(answers) == len(probes), "every probe of the matrix comes from a container"
    assert not disagreements(probes, answers), "\n".join(disagreements(probes, answers))

    for c in containers:
        failed = [(kind, rc, out) for kind, rc, out in lab.check(c) if rc != 0]
        assert not failed, f"CHECK of {c.name}: {failed}"
    # `isolated` is the bridge-port isolation flag on both backends: no br_netfilter needed
    assert lab.bridge_nf() == str(bridge_nf), "the plugin never changes bridge-nf-call-iptables"
    if policy != "open":
        other = "nftables" if backend == "iptables" else "iptables"
        assert not _has_rules(lab, other), f"{backend} was configured, yet {other} rules appeared"
    assert _has_rules(lab, backend) == (policy != "open")
    if agent_log:
        with open(agent_log) as f:
            served = [line for line in f if ": served " in line]
        assert sum(" ADD " in line and "rc=0" in line for line in served) == len(containers)
        assert sum(" CHECK " in line and "rc=0" in line for line in served) == len(containers)


def _has_rules(lab, backend: str) -> bool:
    if backend == "iptables":
        return "isolation-plugin" in lab.save("ipv4") + lab.save("ipv6")
    return "table inet isolation" in lab.nft("list", "tables")
