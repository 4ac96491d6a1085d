"""Both backends keep the one contract of plugin/backends/base.py: every abstract method
implemented, with the very signature the base class documents (a drifted signature is how
`cleanup_commands` once took `facts` on one backend and `ports` on the other)."""

import inspect

import pytest

from plugin.backends.base import Backend
from plugin.backends.iptables import IptablesBackend
from plugin.backends.nftables import NftablesBackend

BACKENDS = [IptablesBackend, NftablesBackend]
CONTRACT = sorted(Backend.__abstractmethods__)


def test_the_contract_is_what_the_callers_use():
    assert CONTRACT == ["apply", "audit", "cleanup_commands", "drops", "enforced", "ensure", "release", "revoke",
                        "surplus", "unavailable_reason", "verify"]


@pytest.mark.parametrize("cls", BACKENDS, ids=lambda c: c.name)
def test_each_backend_implements_every_method_with_the_same_signature(cls):
    assert issubclass(cls, Backend) and not cls.__abstractmethods__, cls.__abstractmethods__
    for name in CONTRACT:
        mine, documented = getattr(cls, name), getattr(Backend, name)
        assert mine is not documented, f"{cls.__name__}.{name} is not implemented"
        got = [(p.name, p.kind, p.default) for p in inspect.signature(mine).parameters.values()]
        want = [(p.name, p.kind, p.default) for p in inspect.signature(documented).parameters.values()]
        assert got == want, f"{cls.__name__}.{name}{inspect.signature(mine)} != Backend.{name}{inspect.signature(documented)}"


def test_both_backends_expose_nothing_else_to_the_engine():
    """What lifecycle, admin and cni call on a backend is the contract (plus `name`); a public
    method outside it on one backend only is how the shapes drifted apart before."""
    public = [{n for n, v in vars(cls).items() if callable(v) and not n.startswith("_")} for cls in BACKENDS]
    assert public == [set(CONTRACT), set(CONTRACT)], public
    assert {cls.name for cls in BACKENDS} == {"iptables", "nftables"}


@pytest.mark.parametrize("cls", BACKENDS, ids=lambda c: c.name)
def test_drops_answers_per_bridge_and_reason(cls):
    """drops() is what status, the metrics and explain read: bridge -> reason -> packets (issue 19)."""
    want = inspect.signature(Backend.drops).return_annotation
    assert want == dict[str, dict[str, int]]
    assert inspect.signature(cls.drops).return_annotation == want


def test_every_drop_rule_belongs_to_one_reason():
    """iptables: each DROP rule of ours is attributed to its reason and bridge (a cross-network
    drop to the bridge it was going into); nftables: each drop is a goto to its reason's chain,
    whose counter map is keyed the same way, and a counter's name gives back its reason and
    bridge."""
    from plugin import reasons
    from plugin.backends import iptables, nftables
    from plugin.policy import Guard, desired, intent_for

    needs = desired([intent_for("br-a", "isolated", guard=Guard(("10.0.0.0/8", "fd00::/8"), host_deny=True))])
    found = set()
    for fam in ("ipv4", "ipv6"):
        for chain, groups in iptables.wanted(needs, fam).items():
            for spec in (s for g in groups for s in g if s[-2:] == ["-j", "DROP"]):
                found.add(iptables.drop_reason(chain, spec))
    assert found == {(r, "br-a") for r in (reasons.CROSS_NETWORK, reasons.INTRA_BRIDGE, reasons.EGRESS_DENY,
                                           reasons.HOST_ACCESS)}
    spec_rules = [r for spec in (nftables.INET, nftables.BRIDGE) for _, rules in spec.chains.values() for r in rules]
    chains = [r for rules in nftables.guard_chains(needs).values() for r in rules] + spec_rules
    assert not [r for r in chains if {"drop": None} in r and r[0] != nftables.COUNTER], "a drop outside drop-R"
    gotos = {x["goto"]["target"] for r in chains for x in r if "goto" in x}
    assert gotos == {nftables.drop_chain(r) for r in reasons.REASONS}
    for reason in reasons.REASONS:
        assert nftables.parse_counter(nftables.counter_name(reason, "cni-podman1")) == (reason, "cni-podman1")
    assert nftables.parse_counter("cross-network-") is None and nftables.parse_counter("other-br0") is None


def test_status_shows_every_reason_for_every_bridge():
    from plugin.admin import drops_by_reason

    counted = {"br0": {"cross-network": 3, "anti-spoofing": 1}}
    assert drops_by_reason(counted, "br0") == {"cross-network": 3, "intra-bridge": 0, "egress-deny": 0,
                                               "host-access": 0, "anti-spoofing": 1, "cross-tenant": 0, "internal": 0,
                                               "direct-access": 0}
    assert drops_by_reason(counted, "br1") == dict.fromkeys(drops_by_reason(counted, "br0"), 0)
    assert set(drops_by_reason(None, "br0").values()) == {None}  # the backend is not usable here
