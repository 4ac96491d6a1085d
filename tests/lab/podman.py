"""Podman 4.3 with its CNI network backend, confined to a Lab's host namespace.

Every podman call runs under `nsenter --net=` the lab's host namespace, with a private
containers.conf / storage.conf (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF): its own
network_config_dir, cni_plugin_dirs (the real upstream plugins and our frozen binary),
graphroot and runroot. No registry: the image is busybox-static `podman import`ed.
Settings that work on this kind of machine: runc (crun fails on its cgroup layout),
cgroupfs, events to a file, explicit ulimits.
"""

import glob
import json
import os
import shutil
import subprocess

from netlab import CNI_DIR, Lab, sh

BUSYBOX = "/bin/busybox"
IMAGE = "localhost/isolation-test-busybox:latest"
CNI_STATE = "/var/lib/cni"  # libcni's cache (podman offers no setting for it): cleaned per network


def private_settings(root: str, network: str = "") -> dict:
    """The environment of a podman confined to `root` (created): its own containers.conf (with
    `network`, a [network] section, appended) and storage.conf, storage, run and tmp."""
    for name in ("storage", "run", "tmp"):
        os.makedirs(os.path.join(root, name), exist_ok=True)
    conf, storage = os.path.join(root, "containers.conf"), os.path.join(root, "storage.conf")
    with open(conf, "w") as f:
        f.write(f"""[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{root}/events.log"
runtime = "runc"
tmp_dir = "{root}/tmp"
{network}""")
    with open(storage, "w") as f:
        f.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/storage"\nrunroot = "{root}/run"\n')
    return {**os.environ, "CONTAINERS_CONF": conf, "CONTAINERS_STORAGE_CONF": storage}


class PodmanError(RuntimeError):
    pass


class Podman:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.root = os.path.join(lab.tmp, "podman")
        self.networks: list[str] = []
        d = {name: os.path.join(self.root, name) for name in ("cni-conf", "cni-bin", "ipam")}
        for path in d.values():
            os.makedirs(path)
        for plugin in glob.glob(os.path.join(CNI_DIR, "*")):
            os.symlink(plugin, os.path.join(d["cni-bin"], os.path.basename(plugin)))
        os.symlink(lab.isolation_bin, os.path.join(d["cni-bin"], "isolation"))
        self.conf_dir, self.ipam_dir = d["cni-conf"], d["ipam"]
        self.env = private_settings(self.root, f"""[network]
network_backend = "cni"
network_config_dir = "{d['cni-conf']}"
cni_plugin_dirs = ["{d['cni-bin']}"]
""")
        self._import_image()

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["nsenter", f"--net=/run/netns/{self.lab.host}", "podman", *args],
                              capture_output=True, text=True, env=self.env, timeout=120, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise PodmanError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def _import_image(self) -> None:
        rootfs = os.path.join(self.root, "rootfs")
        os.makedirs(os.path.join(rootfs, "bin"))
        shutil.copy(BUSYBOX, os.path.join(rootfs, "bin", "busybox"))
        for applet in ("sh", "sleep"):
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))
        tar = os.path.join(self.root, "rootfs.tar")
        sh("tar", "-C", rootfs, "-cf", tar, ".")
        self("import", tar, IMAGE)

    def network(self, name: str, index: int, isolation: dict | None, options: tuple = ()) -> dict:
        """`podman network create` a dual-stack network, then (as a user would) append our entry
        to the conflist podman wrote; host-local's state goes to the lab's directory."""
        self("network", "create", "--ipv6", "--subnet", f"10.77.{index}.0/24", "--subnet", f"fd77:{index}::/64",
             *options, name)
        self.networks.append(name)
        path = os.path.join(self.conf_dir, f"{name}.conflist")
        with open(path) as f:
            conflist = json.load(f)
        conflist["plugins"][0]["ipam"]["dataDir"] = self.ipam_dir
        if isolation is not None:
            conflist["plugins"].append({"type": "isolation", **isolation})
        with open(path, "w") as f:
            json.dump(conflist, f, indent=1)
        return conflist

    def run(self, name: str, network: str, *options: str, check: bool = True) -> subprocess.CompletedProcess:
        return self("run", "-d", "--name", name, "--network", network, *options, IMAGE, "sleep", "100000", check=check)

    def netns(self, container: str) -> str:
        """The container's network namespace, as a name under /run/netns (for the Lab probes)."""
        key = self("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", container).stdout.strip()
        assert key.startswith("/run/netns/"), key
        return os.path.basename(key)

    def addresses(self, container: str) -> tuple[str, str]:
        nets = json.loads(self("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout)
        (net,) = nets.values()
        return net["IPAddress"], net["GlobalIPv6Address"]

    def close(self) -> None:
        self("rm", "-a", "-f", "-t", "0", check=False)
        for name in self.networks:
            self("network", "rm", "-f", name, check=False)
            for path in glob.glob(os.path.join(CNI_STATE, "results", f"{name}-*")):
                os.remove(path)
        self("rmi", "-a", "-f", check=False)
