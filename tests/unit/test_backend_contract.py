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
