"""The configuration model: defaults, canonical values, and errors that name their field."""

import pytest

from plugin.errors import CniError
from plugin.model import parse


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


def test_egress_values_are_canonicalised():
    conf = parse({"type": "isolation", "denyEgress": ["10.1.2.3/8", "10.0.0.0/9", "192.168.1.7", "fd00::1/8"],
                  "allowEgress": [{"cidr": "10.0.0.53", "protocol": "udp", "ports": [53, "50-60", "8000-8100", 8101]}],
                  "hostAccess": "deny"})
    assert conf.denyEgress == ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]  # merged, host bits cleared
    assert conf.allowEgress[0].cidr == "10.0.0.53/32"
    assert conf.allowEgress[0].ports == ["50-60", "8000-8101"]  # 53 lies in 50-60; 8101 extends the range
    assert [(h.protocol, h.port) for h in conf.allowHostPorts] == [("tcp", "53"), ("udp", "53")]  # the default
    assert parse({"type": "isolation"}).allowHostPorts is not None


def test_the_verdict_fingerprint_follows_the_bundled_code_not_the_bootloader(tmp_path, monkeypatch):
    """The frozen bundle keeps its modules as .pyc files beside a bootloader that is the same
    from build to build: a verdict must be keyed by the validating code itself, so a
    rebuilt model never trusts an old verdict, whatever the executable's size and mtime."""
    import sys

    from plugin import config

    code = tmp_path / "plugin"
    code.mkdir()
    (code / "model.pyc").write_bytes(b"model v1")
    (code / "config.pyc").write_bytes(b"config v1")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)

    def fingerprint() -> str:
        monkeypatch.setattr(config, "_FINGERPRINT", [])
        return config._fingerprint()

    first = fingerprint()
    assert fingerprint() == first, "the same code, the same fingerprint"
    (code / "model.pyc").write_bytes(b"model v2")
    assert fingerprint() != first, "a changed model invalidates every cached verdict"


def test_the_per_container_keys_never_split_a_network_verdict():
    """A tenant's `args` and libcni's `runtimeConfig` differ per container: a verdict keyed by
    them would import pydantic for each container and leave a file per container. The model
    must not look at them (its fields are disjoint from what the cache ignores)."""
    from plugin import config
    from plugin.model import NetConf

    entry = {"cniVersion": "1.0.0", "type": "isolation", "name": "n", "ingressPolicy": "isolated"}
    one = config._digest({**entry, "args": {"cni": {"isolationGroup": "t1"}}, "runtimeConfig": {"portMappings": []}})
    two = config._digest({**entry, "args": {"cni": {"isolationGroup": "t2"}}})
    assert one == two == config._digest(entry)
    assert config._digest({**entry, "ingressPolicy": "open"}) != one, "what the model reads stays in the key"
    assert not set(config.IGNORED) & set(NetConf.model_fields)
