"""deploy/: the Kubernetes manifests validate offline against the Kubernetes schemas in
strict mode (kubernetes-validate, test dependency only), and the image built by `make image`
(FROM scratch, podman, no pull) runs under podman against a temporary host root and installs
the plugin there, as the DaemonSet's init container does."""

import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from podman import private_settings

pytestmark = pytest.mark.e2e

MANIFESTS = sorted(glob.glob(os.path.join(REPO, "deploy", "kubernetes", "*.yaml")))


def validate(*paths) -> subprocess.CompletedProcess:
    """kubernetes-validate's command line: it ships the schemas, so nothing is fetched."""
    return subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", *paths], capture_output=True,
                          text=True)


def test_manifests_validate_strictly(tmp_path):
    assert len(MANIFESTS) >= 2
    proc = validate(*MANIFESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # negative control: strict mode rejects a field Kubernetes does not know
    with open(os.path.join(REPO, "deploy", "kubernetes", "daemonset.yaml")) as f:
        text = f.read()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("hostNetwork: true", "hostNetwork: true\n      hostNetworking: true"))
    assert validate(str(bad)).returncode != 0


def test_daemonset_says_what_the_issue_asks():
    import yaml

    with open(os.path.join(REPO, "deploy", "kubernetes", "daemonset.yaml")) as f:
        ds = yaml.safe_load(f)
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] and spec["priorityClassName"] == "system-node-critical" and spec["tolerations"]
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert spec["initContainers"][0]["args"][:3] == ["install", "--host-root", "/host"]
    agent = next(c for c in spec["containers"] if c["name"] == "agent")
    assert agent["args"] == ["agent"] and {"mountPath": "/run/isolation", "name": "run-isolation"} in agent["volumeMounts"]


@pytest.fixture
def podman_env(tmp_path):
    """A private podman: its own storage and settings (those of tests/lab/podman.py), nothing pulled."""
    env = private_settings(str(tmp_path / "podman"))
    yield env
    subprocess.run(["podman", "rmi", "-a", "-f"], env=env, capture_output=True)
    subprocess.run(["podman", "system", "reset", "-f"], env=env, capture_output=True)


def test_image_installs_into_a_host_root(tmp_path, podman_env, isolation_bin):
    tag = "localhost/isolation:test-deploy"
    build = subprocess.run(["make", "-s", "image", f"IMAGE={tag}"], cwd=REPO, env=podman_env, capture_output=True,
                           text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    host = tmp_path / "host"
    for d in ("opt/cni/bin", "etc/cni/net.d"):
        (host / d).mkdir(parents=True)
    conf = {"cniVersion": "0.3.1", "name": "k8s-pod-network", "plugins": [{"type": "calico"}]}
    (host / "etc/cni/net.d/10-calico.conflist").write_text(json.dumps(conf))
    run = subprocess.run(["podman", "run", "--rm", "--network", "none",
                          "-v", f"{host}/opt/cni/bin:/host/opt/cni/bin", "-v", f"{host}/etc/cni/net.d:/host/etc/cni/net.d",
                          tag, "install", "--host-root", "/host"], env=podman_env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    link = host / "opt/cni/bin/isolation"
    assert os.readlink(link).startswith(".isolation-bundle/")
    proc = subprocess.run([link], env={"CNI_COMMAND": "VERSION"}, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "supportedVersions" in proc.stdout, proc.stdout + proc.stderr
    got = json.loads((host / "etc/cni/net.d/10-calico.conflist").read_text())
    assert [p["type"] for p in got["plugins"]] == ["calico", "isolation"]
