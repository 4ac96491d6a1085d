"""Review of issue 21's newest rules (tenants across bridges, closed routed segments), as an
attacker: a container is root in its netns with CAP_NET_RAW. Each finding is proven with
packets in the lab, a positive control beside each blocked verdict.

Finding 1 (tcross rides for everyone on the tenant's bridge): the inet table's cross-bridge
pass is keyed (bridge . address). The bridge table keeps a port from it only when the address
is a tenant's (taddr), when the port is tenanted, or when the port is unknown. A plain
container on the tenant's bridge sending to a plain member of the tenant's group on another
bridge matched none of those, and rode the pass through the cross-network drop.
"""

import pytest

from frames import datagram_arrives
from netlab import addresses

pytestmark = [pytest.mark.e2e, pytest.mark.beside]  # run beside the rest by make test


def by_args(group: str) -> dict:
    return {"cni": {"isolationGroup": group}}


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_plain_neighbour_of_a_tenant_does_not_ride_its_groups_pass_across_bridges(lab, backend):
    """A: `same-bridge` in network group g, plain container c (effective group g).
    P: `same-bridge` in no group: t (tenant g: a per-container group g) and v (plain: no group).

    Expected, from the README's table: t -> c passes (one effective group g across bridges,
    one side a tenant); v -> c is dropped (P and A both isolating, no common group, no tenant
    involved: `to bridge D, both S and D isolating: dropped`), not even one way (a datagram
    with a sniffer at c). v's own control: it reaches its gateway."""
    A = lab.network(["bridge", "isolation"], isolation={"backend": backend, "isolationGroup": "g"})
    P = lab.network(["bridge", "isolation"], isolation={"backend": backend})
    c = lab.add(A)
    t = lab.add(P, args=by_args("g"))
    v = lab.add(P)

    for x in addresses(c):
        assert datagram_arrives(t.name, c.name, x), f"positive control: t's datagram to {x} arrives"
        assert lab.tcp(t.name, x), f"positive control: t reaches c at {x}"
        assert not datagram_arrives(v.name, c.name, x), f"v's datagram to {x} arrived through t's pass"
        assert not lab.tcp(v.name, x), f"v reached c at {x} through t's pass"
    assert lab.ping(v.name, P.gateway4) and lab.ping(v.name, P.gateway6), "positive control: v is up"
