"""prevResult conversion between CNI result versions."""

from plugin.result import convert


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
