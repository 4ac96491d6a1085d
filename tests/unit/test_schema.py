"""The committed JSON Schema is the model's (no drift), and every conf-example's isolation
entry validates against it; the schema also refuses what the plugin refuses by type."""

import json
import os

import jsonschema
import pytest

from conftest import REPO

SCHEMA_PATH = os.path.join(REPO, "conf-examples", "isolation.schema.json")
EXAMPLES = sorted(f for f in os.listdir(os.path.join(REPO, "conf-examples")) if f.endswith(".conflist"))


def _schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return json.load(f)


def test_committed_schema_matches_the_model():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_schema", os.path.join(REPO, "hack", "gen-schema.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    with open(SCHEMA_PATH) as f:
        assert f.read() == gen.render(), "conf-examples/isolation.schema.json is stale: run hack/gen-schema.py"


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_validates_against_the_schema(example):
    with open(os.path.join(REPO, "conf-examples", example)) as f:
        conflist = json.load(f)
    (ours,) = [p for p in conflist["plugins"] if p["type"] == "isolation"]
    jsonschema.Draft202012Validator(_schema()).validate(ours)


@pytest.mark.parametrize("bad", [
    {"type": "isolation", "ingressPolicy": "Same-Bridge"},
    {"type": "isolation", "allowPublishedPorts": "yes"},
    {"type": "isolation", "denyEgress": "10.0.0.0/8"},
    {"type": "isolation", "allowEgress": [{"cidr": "10.0.0.1", "protocol": "sctp"}]},
    {"type": "isolation", "allowEgress": [{"cidr": "10.0.0.1", "ports": [70000]}]},
    {"type": "isolation", "hostAccess": "deny", "allowHostPorts": [{"protocol": "tcp", "port": "53/tcp"}]},
    {"ingressPolicy": "open"},
    {"type": "isolation", "args": {"cni": {"isolationGroup": "-tenant"}}},
    {"type": "isolation", "args": {"cni": {"isolationGroup": 42}}},
    {"type": "isolation", "args": {"cni": "tenant"}},
])
def test_schema_refuses_wrong_types(bad):
    assert not jsonschema.Draft202012Validator(_schema()).is_valid(bad)
