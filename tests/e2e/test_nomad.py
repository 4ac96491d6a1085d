"""Nomad's `network { mode = "cni/isolated" }` with conf-examples/nomad.conflist (cniVersion
0.4.0; loopback, bridge, firewall with Nomad's admin chain, portmap, then ours), every
plugin invoked with the CNI_ARGS Nomad's client passes: the same traffic checks as every
example (tests/e2e/test_conf_examples.py), which runs it with plain CNI_ARGS too."""

import pytest

from test_conf_examples import test_example as check_example

pytestmark = pytest.mark.e2e

NOMAD_ARGS = ("IgnoreUnknown=true;NOMAD_REGION=global;NOMAD_NAMESPACE=default;NOMAD_JOB_ID=web;"
              "NOMAD_GROUP_NAME=frontend;NOMAD_ALLOC_ID=5c0f2a7e-52f4-4a3b-9a61-3c2b8e1f0d47")


def test_nomad_conflist_with_nomads_cni_args(lab, monkeypatch):
    plain = lab._env
    seen = []

    def nomad_env(c, with_netns=True):
        env = {**plain(c, with_netns), "CNI_ARGS": NOMAD_ARGS}
        seen.append(env["CNI_ARGS"])
        return env

    monkeypatch.setattr(lab, "_env", nomad_env)
    check_example(lab, "nomad.conflist")
    assert seen and set(seen) == {NOMAD_ARGS}, "every plugin ran with Nomad's CNI_ARGS"
