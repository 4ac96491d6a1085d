"""Unit tests of the pure pieces: configuration, names, results, policy."""

import pytest

from plugin.model import parse
from plugin.errors import CniError
from plugin.links import valid_name
from plugin.policy import intent_for
from plugin.result import convert


def test_config_defaults():
    conf = parse({"cniVersion": "1.0.0", "type": "isolation", "name": "n", "runtimeConfig": {}})
    assert (conf.ingressPolicy, conf.backend) == ("same-bridge", "auto")


@pytest.mark.parametrize(
    "raw,field",
    [
        ({"type": "isolation", "ingressPolicy": "Same-Bridge"}, "ingressPolicy"),
        ({"type": "isolation", "backend": "nft"}, "backend"),
        ({"ingressPolicy": "open"}, "type"),
    ],
)
def test_config_errors_name_the_field(raw, field):
    with pytest.raises(CniError) as err:
        parse(raw)
    assert err.value.code == 7 and err.value.msg.startswith(f"invalid configuration: {field}:")


@pytest.mark.parametrize("name", ["br0", "cni-podman1", "nerdctl0", "buildkit0", "a", "x_y.z", "a" * 15])
def test_valid_names(name):
    assert valid_name(name)


@pytest.mark.parametrize("name", ["", "a" * 16, "-x", ".x", "br+", "br!", "b r", "b\tr", 'b"', "b'", "b/r", "b:r", None, 3])
def test_invalid_names(name):
    assert not valid_name(name)


def test_policies():
    assert (intent_for("b", "open").isolate, intent_for("b", "open").drop_intra) == (False, False)
    assert (intent_for("b", "same-bridge").isolate, intent_for("b", "same-bridge").drop_intra) == (True, False)
    assert (intent_for("b", "isolated").isolate, intent_for("b", "isolated").drop_intra) == (True, True)


def test_convert_between_result_shapes():
    v1 = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}, {"address": "fd00::2/64"}], "dns": {}}
    legacy = convert(v1, "0.3.1")
    assert legacy == {
        "cniVersion": "0.3.1",
        "ips": [{"address": "10.0.0.2/24", "version": "4"}, {"address": "fd00::2/64", "version": "6"}],
        "dns": {},
    }
    assert convert(legacy, "1.1.0") == {**v1, "cniVersion": "1.1.0"}
    assert v1["cniVersion"] == "1.0.0"  # the input is not modified


class _Fake:
    def __init__(self, name, reason):
        self.name, self._reason = name, reason

    def unavailable_reason(self):
        return self._reason


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
    monkeypatch.setattr(backends, "_make", lambda name: _Fake(name, reasons[name]))
    if code is None:
        assert backends.select(configured).name == chosen
    else:
        with pytest.raises(CniError) as err:
            backends.select(configured)
        assert err.value.code == code
        assert all(r in err.value.details for r in (nft_reason, ipt_reason) if r and configured != "iptables")
