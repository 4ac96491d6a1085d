"""Choosing a backend: `auto` falls back, an explicit one never does, and `auto` keeps its
first choice per network namespace (fake backends: no firewall is touched)."""

import pytest

from plugin.errors import CniError
from fakes import FakeBackend


@pytest.mark.parametrize(
    "configured,nft_reason,ipt_reason,chosen,code",
    [
        ("auto", None, None, "nftables", None),
        ("auto", "no libnftables", None, "iptables", None),
        ("auto", "no libnftables", "no iptables-restore", None, 103),
        ("nftables", "kernel refuses", None, None, 103),
        ("iptables", None, None, "iptables", None),
    ],
)
def test_backend_selection(monkeypatch, configured, nft_reason, ipt_reason, chosen, code):
    import plugin.backends as backends

    reasons = {"nftables": nft_reason, "iptables": ipt_reason}
    monkeypatch.setattr(backends, "make", lambda name: FakeBackend(name, reasons[name]))
    if code is None:
        assert backends.select(configured).name == chosen
    else:
        with pytest.raises(CniError) as err:
            backends.select(configured)
        assert err.value.code == code
        assert all(r in err.value.details for r in (nft_reason, ipt_reason) if r and configured != "iptables")


def test_auto_is_decided_once_per_namespace(tmp_path, monkeypatch):
    """Item 5: `auto` keeps the first backend it chose; when that one fails later, 103."""
    import plugin.backends as backends

    reasons = {"nftables": None, "iptables": None}
    monkeypatch.setattr(backends, "make", lambda name: FakeBackend(name, reasons[name]))
    assert backends.select("auto", str(tmp_path)).name == "nftables"
    assert open(tmp_path / "backend").read() == "nftables\n"
    reasons["nftables"] = "libnftables cannot be loaded"
    with pytest.raises(CniError) as err:
        backends.select("auto", str(tmp_path))
    assert err.value.code == 103 and "libnftables cannot be loaded" in err.value.details
    assert backends.select("iptables", str(tmp_path)).name == "iptables", "an explicit backend is not affected"
    other = tmp_path / "other"
    other.mkdir()
    assert backends.select("auto", str(other)).name == "iptables", "a namespace deciding now picks what works"
    reasons["nftables"] = None
    assert backends.select("auto", str(other)).name == "iptables", "and keeps it"
