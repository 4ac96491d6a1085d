"""plugin.jsonio must answer exactly as json does (it calls json's own C scanner and encoder),
errors included, and the model must never read the network's name (config's verdicts are
shared between networks whose entries differ only there)."""

import json

import pytest

from plugin import jsonio

DOCS = ['{"a": [1, 2.5, -3e10, true, false, null, "\\u00e9x\\ud83d\\ude00", {"b": {}}]}', "  [1] \n", "NaN",
        "[Infinity, -Infinity]", '"x"', "12345678901234567890123", "1.0", '{"a":1,"a":2}', "[]", "\t{}\r\n"]
BAD = ["", " ", "[1] x", "{", "\ufeff[1]", b"\xef\xbb\xbf[1]", "[1,]", b"\xff", b'"\xc3"', '{"a" 1}', "[1e999999]",
       b"\x00[\x001\x00]", '"\\ud800"', "tru"]
OBJECTS = [{"a": [1, 2.5, float("nan"), float("inf"), True, None, "é\u2028\"\\\x00"], "b": {}}, "x", [], 1e300, -0.0,
           2 ** 70, {"z": 1, "a": {"y": 2, "b": 3}}, {1: 2, 2.5: "x", None: 1, False: 0}, ("t", "u")]


def outcome(fn, *args, **kw):
    try:
        return "ok", repr(fn(*args, **kw))
    except Exception as exc:  # the very same exception, type and message
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("doc", DOCS + BAD)
def test_loads_is_json_loads(doc):
    for data in ((doc, doc.encode("utf-8", "surrogatepass")) if isinstance(doc, str) else (doc,)):
        assert outcome(jsonio.loads, data) == outcome(json.loads, data)


@pytest.mark.parametrize("obj", OBJECTS + [{"a": {1, 2}}, {(1,): 2}, object()])
@pytest.mark.parametrize("kw", [{}, {"sort_keys": True}, {"separators": (",", ":")},
                                {"sort_keys": True, "separators": (",", ":")}])
def test_dumps_is_json_dumps(obj, kw):
    assert outcome(jsonio.dumps, obj, **kw) == outcome(json.dumps, obj, **kw)


def test_dumps_refuses_a_cycle_as_json_does():
    loop = []
    loop.append(loop)
    assert outcome(jsonio.dumps, loop) == outcome(json.dumps, loop)


def test_the_model_never_reads_the_network_name():
    """plugin.config shares a verdict between networks whose entries differ only in `name`:
    that holds while the model has no field of that name and accepts extra keys unvalidated."""
    from plugin import config
    from plugin.model import NetConf, parse

    assert not set(config.SHARED) & set(NetConf.model_fields)
    assert NetConf.model_config.get("extra") == "allow"
    a = parse({"type": "isolation", "name": "a", "ingressPolicy": "isolated"}).model_dump(mode="json")
    b = parse({"type": "isolation", "name": {"not": "a string"}, "ingressPolicy": "isolated"}).model_dump(mode="json")
    assert {k: v for k, v in a.items() if k != "name"} == {k: v for k, v in b.items() if k != "name"}


def test_errors_are_jsons_in_a_fresh_interpreter():
    """_json raises JSONDecodeError only once json.decoder is imported: in a plugin run it is
    not, and the scanner's failure must still end as json's own error, not a SystemError."""
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = ("import sys; sys.path.insert(0, %r)\nfrom plugin.jsonio import loads\n"
            "try:\n    loads('{not json')\nexcept ValueError as exc:\n    print(type(exc).__name__, exc)") % repo
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "JSONDecodeError Expecting property name enclosed in double quotes: line 1 column 2 (char 1)\n"
