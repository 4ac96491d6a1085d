"""containerd 1.6 with `ctr run --cni`, confined to a Lab's host network namespace.

`ctr run --cni` runs the CNI plugins itself (go-cni, client side), from the FIRST conflist
in /etc/cni/net.d and plugins in /opt/cni/bin then /usr/lib/cni; it sends DEL only when a
foreground `ctr run` ends. So containerd and every ctr run in:
  - the lab's host network namespace, entered with `nsenter --net` (never `ip netns exec`:
    it remounts /sys and hides the cgroups runc needs);
  - a private mount namespace: tmpfs over /run and /opt (/opt/cni/bin/isolation is our frozen
    binary), the lab's own directories bound over /etc/cni/net.d and /var/lib (containerd's
    root, libcni's cache /var/lib/cni). Only the real /run/isolation is bound back in, so the
    plugin's registry is the one the Lab's `isolation status|prune|agent` read;
  - each `ctr run` in a further mount namespace of its own, with the network's directory bound
    over /etc/cni/net.d: that conflist is then the first (and only) one it sees.
The CRI plugin is disabled; containers run busybox-static from a rootfs directory
(`ctr run --rootfs`), serving TCP 8080 with busybox httpd. Each container's network
namespace is attached as a name under /run/netns for the Lab's probes, and detached
before the container stops, so the namespace and its veth vanish with it as they would.
close() ends tasks, shims and containerd by pid, whatever state a failed test left.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

from netlab import IP, Lab, Network, end_process, sh

BUSYBOX = "/bin/busybox"
# What ctr and its plugins would write to without the private mounts. (Not /var/lib/containerd
# or /run/containerd: a packaged containerd service may be running and writing there.)
REAL_DIRS = ("/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni")
CGROUP_ROOT = "/sys/fs/cgroup"
START_TIMEOUT_S = 30.0

# Runs as `sh -c MOUNTS WORKDIR ISOLATION_BIN` in the new mount namespace, then becomes containerd.
MOUNTS = r"""set -e
work=$0
mount --bind /run/isolation "$work/hold"
mount -t tmpfs -o mode=0755 isolation-test-run /run
mkdir -m 0700 /run/isolation
mount --move "$work/hold" /run/isolation
mount -t tmpfs -o mode=0755 isolation-test-opt /opt
mkdir -p /opt/cni/bin
ln -s "$1" /opt/cni/bin/isolation
mount --bind "$work/net.d" /etc/cni/net.d
mount --bind "$work/var-lib" /var/lib
exec containerd --config "$work/config.toml"
"""
CONFIG = """version = 2
disabled_plugins = ["io.containerd.grpc.v1.cri"]
"""
# The conflist a `ctr run` sees: its network's directory over /etc/cni/net.d.
WITH_CONF = 'mount --bind "$0" /etc/cni/net.d && exec "$@"'


class CtrError(RuntimeError):
    pass


@dataclass
class Task:
    """One container started by `ctr run --cni`."""

    id: str
    cni_id: str  # CNI_CONTAINERID as ctr passes it: `<namespace>-<id>`
    netns: str  # its network namespace, attached under /run/netns for the Lab's probes
    network: Network
    pid: int
    foreground: subprocess.Popen | None  # the `ctr run` that sends DEL when it ends; None with -d
    ipv4: str = ""
    ipv6: str = ""

    @property
    def addresses(self) -> list[str]:
        return [a for a in (self.ipv4, self.ipv6) if a]


def real_dirs_snapshot() -> dict:
    """Every file under the real CNI directories, with its mode, size and mtime."""
    snap = {}
    for top in REAL_DIRS:
        if not os.path.lexists(top):
            snap[top] = None
            continue
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                st = os.lstat(os.path.join(root, name))
                snap[os.path.join(root, name)] = (st.st_mode, st.st_size, st.st_mtime_ns)
        snap[top] = "dir"
    return snap


def require_tools() -> None:
    """containerd, ctr, runc and busybox-static, or a loud failure (tests never skip)."""
    missing = [t for t in ("containerd", "ctr", "runc") if shutil.which(t) is None]
    if not os.path.exists(BUSYBOX):
        missing.append(BUSYBOX)
    if missing:
        raise CtrError(f"missing {missing}: apt-get install containerd runc busybox-static")
    if not os.path.isdir("/etc/cni/net.d"):
        # A mount point is needed, and creating it would write to the real /etc.
        raise CtrError("/etc/cni/net.d does not exist (the podman package ships it): mkdir -p /etc/cni/net.d")


class Containerd:
    def __init__(self, lab: Lab):
        require_tools()
        self.lab = lab
        self.namespace = lab.prefix  # ctr's namespace: CNI_CONTAINERID is `<namespace>-<id>`
        self.work = os.path.join(lab.tmp, "containerd")
        self.rootfs = os.path.join(self.work, "rootfs")
        self.tasks: dict[str, Task] = {}
        self.count = 0
        for sub in ("hold", "net.d", "var-lib", "conf", "log"):
            os.makedirs(os.path.join(self.work, sub))
        os.makedirs(os.path.join(self.rootfs, "bin"))
        shutil.copy(BUSYBOX, os.path.join(self.rootfs, "bin", "busybox"))
        with open(os.path.join(self.work, "config.toml"), "w") as f:
            f.write(CONFIG)
        os.makedirs("/run/isolation", mode=0o700, exist_ok=True)
        self.log_path = os.path.join(self.work, "containerd.log")
        self.daemon = None
        self.mnt_ns = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        """nsenter, unshare and sh each exec the next: the Popen's pid is containerd's."""
        with open(self.log_path, "w") as log:
            self.daemon = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.lab.host}", "unshare", "--mount", "--propagation", "private",
                 "sh", "-c", MOUNTS, self.work, self.lab.isolation_bin],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        sock = f"/proc/{self.daemon.pid}/root/run/containerd/containerd.sock"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(sock):
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise CtrError(f"containerd did not start (rc={self.daemon.poll()}): {self.log()[-2000:]}")
            time.sleep(0.05)
        self.mnt_ns = os.readlink(f"/proc/{self.daemon.pid}/ns/mnt")

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    # --- ctr ----------------------------------------------------------------------------------
    def argv(self, *args: str, conf_dir: str | None = None) -> list[str]:
        """`ctr` in containerd's network and mount namespaces (and, with conf_dir, a mount
        namespace of its own where conf_dir is /etc/cni/net.d)."""
        argv = ["nsenter", "-t", str(self.daemon.pid), "-m", "-n"]
        if conf_dir:
            argv += ["unshare", "--mount", "--propagation", "private", "sh", "-c", WITH_CONF, conf_dir]
        return argv + ["ctr", "-n", self.namespace, *args]

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise CtrError(f"ctr {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def task_list(self) -> dict[str, tuple[int, str]]:
        """{id: (pid, status)} of this namespace's tasks."""
        rows = self.ctr("task", "ls").stdout.splitlines()[1:]
        return {r.split()[0]: (int(r.split()[1]), r.split()[2]) for r in rows if r.strip()}

    def conf_dir(self, net: Network) -> str:
        """The network's conflist, alone in a directory of its own (written once per network)."""
        path = os.path.join(self.work, "conf", net.name)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, f"{net.name}.conflist"), "w") as f:
            json.dump({"cniVersion": net.cni_version, "name": net.name, "plugins": net.plugins}, f, indent=1)
        return path

    def _run_argv(self, net: Network, cid: str, detach: bool) -> list[str]:
        flags = ["-d"] if detach else ["--rm"]
        return self.argv("run", *flags, "--cni", "--rootfs", self.rootfs, cid,
                         "/bin/busybox", "httpd", "-f", "-p", "8080", conf_dir=self.conf_dir(net))

    def run(self, net: Network, detach: bool = False) -> Task:
        """`ctr run --cni` a container on `net` and wait until it runs (its ADD is done by then).
        Foreground unless `detach`: that ctr stays until the container ends, then sends DEL."""
        self.count += 1
        cid = f"c{self.count}"
        out = os.path.join(self.work, "log", f"{cid}.out")
        if detach:
            proc = subprocess.run(self._run_argv(net, cid, True), capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise CtrError(f"ctr run -d {cid} failed ({proc.returncode}): {proc.stderr.strip()}")
            fg = None
        else:
            with open(out, "w") as f:
                fg = subprocess.Popen(self._run_argv(net, cid, False), stdin=subprocess.DEVNULL, stdout=f,
                                      stderr=subprocess.STDOUT)
        task = Task(cid, f"{self.namespace}-{cid}", f"{self.lab.prefix}k{self.count}", net, 0, fg)
        self.tasks[cid] = task
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            pid, state = self.task_list().get(cid, (0, ""))
            if state == "RUNNING":
                break
            if (fg is not None and fg.poll() is not None) or time.monotonic() > deadline:
                said = open(out).read().strip() if fg is not None else ""
                raise CtrError(f"ctr run {cid} did not start (state {state!r}, rc={fg and fg.poll()}): {said}")
            time.sleep(0.05)
        task.pid = pid
        sh(IP, "netns", "attach", task.netns, str(pid))
        self.lab.namespaces.append(task.netns)  # the Lab detaches it at the latest on close()
        shown = sh(IP, "-o", "addr", "show", "dev", "eth0", "scope", "global", netns=task.netns).stdout
        for line in shown.splitlines():
            addr = line.split()[3].split("/")[0]
            if ":" in addr:
                task.ipv6 = addr
            else:
                task.ipv4 = addr
        return task

    def run_failing(self, net: Network) -> subprocess.CompletedProcess:
        """A foreground `ctr run --rm --cni` expected to fail; returns how it ended."""
        self.count += 1
        return subprocess.run(self._run_argv(net, f"c{self.count}", False), capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)

    def _detach_netns(self, task: Task) -> None:
        if task.netns in self.lab.namespaces:
            sh(IP, "netns", "del", task.netns, check=False)
            self.lab.namespaces.remove(task.netns)

    def stop(self, task: Task) -> None:
        """End a container as its user would: a foreground ctr sees it exit and sends DEL; a
        detached one is killed and deleted with ctr, which sends nothing."""
        self._detach_netns(task)
        self.ctr("task", "kill", "-s", "SIGKILL", task.id, check=False)
        if task.foreground is not None:
            task.foreground.wait(timeout=60)
        else:
            deadline = time.monotonic() + START_TIMEOUT_S
            while self.task_list().get(task.id, (0, "STOPPED"))[1] != "STOPPED" and time.monotonic() < deadline:
                time.sleep(0.05)
            self.ctr("task", "delete", task.id)
            self.ctr("container", "delete", task.id)
        del self.tasks[task.id]

    def stop_all(self) -> None:
        """Every container still there (also those a failed ADD left CREATED), as stop() does."""
        for task in list(self.tasks.values()):
            try:
                self.stop(task)
            except (CtrError, subprocess.TimeoutExpired):
                pass
        for cid in self.task_list():
            self.ctr("task", "delete", "-f", cid, check=False)
        for cid in self.ctr("container", "ls", "-q").stdout.split():
            self.ctr("container", "delete", cid, check=False)

    # --- teardown -----------------------------------------------------------------------------
    def processes(self) -> list[int]:
        """Pids in containerd's mount namespace (containerd, its shims) and their children
        (the containers' own processes), found through /proc, never by name."""
        inside, parent = set(), {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") == self.mnt_ns:
                    inside.add(int(entry))
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:  # gone meanwhile
                continue
        found = set(inside)
        while True:
            more = {pid for pid, ppid in parent.items() if ppid in found} - found
            if not more:
                return sorted(found)
            found |= more

    def close(self) -> None:
        """Containers, shims and containerd ended (by pid), cgroups of this namespace removed;
        also when containerd or a test died half-way."""
        if self.daemon is None:
            return
        if self.daemon.poll() is None:
            try:
                self.stop_all()
            except (CtrError, subprocess.TimeoutExpired, OSError):
                pass
        for task in list(self.tasks.values()):
            self._detach_netns(task)
        if self.mnt_ns is not None:  # whatever stop_all could not end: shims, container processes
            for pid in self.processes():
                if pid != self.daemon.pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        end_process(self.daemon, 15)
        for task in self.tasks.values():  # a foreground ctr still waiting: its DEL, then its end
            if task.foreground is not None:
                try:
                    task.foreground.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    task.foreground.kill()
                    task.foreground.wait()
        self.daemon = None
        self._remove_cgroups()

    def cgroups(self) -> list[str]:
        """The cgroup directories of this ctr namespace: ctr puts each container under
        /<namespace>/<id>, in every v1 hierarchy or at the top of the v2 tree."""
        candidates = [os.path.join(CGROUP_ROOT, c, self.namespace) for c in os.listdir(CGROUP_ROOT)]
        return [d for d in [*candidates, os.path.join(CGROUP_ROOT, self.namespace)] if os.path.isdir(d)]

    def _remove_cgroups(self) -> None:
        """runc removes each container's cgroup, the namespace level stays: remove it when empty."""
        for top in self.cgroups():
            for root, _, _ in os.walk(top, topdown=False):  # the deepest first
                try:
                    os.rmdir(root)
                except OSError:
                    pass


def mount_points(work: str) -> list[str]:
    """The caller's mount points where this helper mounts in its own namespace (/run, /opt,
    /etc/cni/net.d, /var/lib) or below its work directory: unchanged unless its mounts leaked."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p in ("/run", "/opt", "/etc/cni/net.d", "/var/lib") or p.startswith(work)]
