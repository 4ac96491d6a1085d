"""A disposable lab of network namespaces: one "host", containers, and an "outside" peer.

Every plugin (real bridge/host-local/firewall/portmap and our frozen binary) runs
inside the lab's host namespace, never in the root namespace. All names carry a
per-lab random prefix so parallel runs cannot collide, and close() removes
everything the lab made, also after a failure.
"""

import copy
import ctypes
import glob
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from plugin.hoststate import STATE_ROOT, netns_key
from plugin.policy import segment_of

CNI_DIR = "/usr/lib/cni"
SYSTEM_LIBNFTABLES = sorted({os.path.realpath(p) for p in glob.glob("/usr/lib/*/libnftables.so.1*")})
IP = shutil.which("ip") or "/usr/sbin/ip"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
TCP_PORT = 8080
PROBE_TIMEOUT_S = 2.0  # covers a lost first packet (neighbour discovery) and one SYN retry


class CommandFailed(subprocess.CalledProcessError):
    """A lab command that failed, shown with the command's own error message (what a
    person needs to fix it: `ip`'s "Operation not permitted", a missing module...)."""

    def __str__(self) -> str:
        said = (self.stderr or self.stdout or "").strip() or "(it printed nothing)"
        return f"`{' '.join(map(str, self.cmd))}` failed with exit code {self.returncode}: {said}"


def sh(*argv: str, check: bool = True, netns: str | None = None, **kw) -> subprocess.CompletedProcess:
    if netns:
        argv = (IP, "netns", "exec", netns, *argv)
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise CommandFailed(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


def eventually(predicate, deadline: float = 15.0, step: float = 0.1) -> bool:
    """Whether `predicate` holds within `deadline` seconds (asked once more at the end): a
    correctness deadline, generous on purpose, never a speed claim (bench/ measures that)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def end_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not ended within `timeout` seconds; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tcp_connect(netns: str, addr: str, port: int = TCP_PORT, timeout: float = PROBE_TIMEOUT_S,
                source: str | None = None) -> bool:
    """Whether a TCP connection from `netns` (from its address `source`, if given) to
    addr:port completes within `timeout` seconds."""
    def connect():
        with socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                if source:
                    s.bind((source, 0))
                s.connect((addr, port))
                return True
            except OSError:
                return False

    return in_netns(netns, connect)


def send_datagrams(netns: str, addr: str, count: int, port: int = TCP_PORT) -> None:
    """`count` UDP datagrams from `netns` to addr:port, each sent once, no answer awaited: a
    probe whose packets can be counted exactly (a TCP connect retransmits its SYN)."""
    def send():
        with socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(count):
                s.sendto(b"probe %d" % i, (addr, port))

    in_netns(netns, send)


def in_netns(netns: str, fn, *args):
    """Run fn(*args) on a fresh thread that has entered `netns`; sockets made there stay there."""
    box = {}

    def target():
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            box["value"] = fn(*args)
        except BaseException as exc:  # handed back to the caller
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass
class Container:
    name: str  # netns name
    id: str
    network: "Network"
    ipv4: str = ""
    ipv6: str = ""
    cni_args: str = "IgnoreUnknown=1"  # CNI_ARGS, as the runtime passes it to every plugin of the chain
    args: dict | None = None  # the runtime's per-attachment `args` (libcni puts it in every plugin's conf)


@dataclass
class Network:
    name: str
    bridge: str
    index: int
    plugins: list[dict]
    cni_version: str = "1.0.0"
    containers: list[Container] = field(default_factory=list)

    @property
    def gateway4(self) -> str:
        return f"10.77.{self.index}.1"

    @property
    def gateway6(self) -> str:
        return f"fd77:{self.index}::1"


def bridge_plugin(bridge: str, index: int, datadir: str) -> dict:
    return {
        "type": "bridge",
        "bridge": bridge,
        "isGateway": True,
        "ipMasq": False,
        "hairpinMode": True,
        "ipam": {
            "type": "host-local",
            "dataDir": datadir,
            "ranges": [[{"subnet": f"10.77.{index}.0/24"}], [{"subnet": f"fd77:{index}::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        },
    }


def ptp_plugin(index: int, datadir: str) -> dict:
    """The CNI `ptp` plugin on the lab's ranges of network `index`: a routed network, no
    bridge (a host-side veth per container, /32 and /128 routes to it)."""
    return {
        "type": "ptp",
        "ipMasq": False,
        "ipam": {
            "type": "host-local",
            "dataDir": datadir,
            "ranges": [[{"subnet": f"10.77.{index}.0/24"}], [{"subnet": f"fd77:{index}::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        },
    }


def localise(lab: "Lab", conflist: dict, index: int) -> list[dict]:
    """A conflist's plugins (conf-examples/), its bridge plugin pointed at lab-owned names and
    ranges: the examples run unchanged otherwise, in the end-to-end tests and with containerd."""
    plugins = copy.deepcopy(conflist["plugins"])
    for i, p in enumerate(plugins):
        if p["type"] == "bridge":
            mine = bridge_plugin(f"{lab.prefix}b{index}", index, os.path.join(lab.tmp, "ipam"))
            if p.get("isDefaultGateway"):  # the bridge plugin adds the default routes itself
                mine["ipam"]["routes"] = []
            plugins[i] = {**p, "bridge": mine["bridge"], "ipMasq": False, "ipam": mine["ipam"]}
        elif p["type"] == "ptp":
            plugins[i] = {**p, **ptp_plugin(index, os.path.join(lab.tmp, "ipam"))}
    return plugins


class Lab:
    def __init__(self, isolation_bin: str, bridge_nf: int = 1):
        self.prefix = "t" + secrets.token_hex(3)  # 7 chars: leaves room within IFNAMSIZ
        self.isolation_bin = isolation_bin
        self.namespaces: list[str] = []
        self.networks: list[Network] = []
        self.cache: dict[tuple[str, str], dict] = {}
        self.listeners: list[socket.socket] = []
        self.agent: subprocess.Popen | None = None
        self.state_root: str | None = None  # see private_state_root()
        self.host = self.outside = ""
        self.tmp = tempfile.mkdtemp(prefix=f"isolation-{self.prefix}-")
        try:  # whatever fails from here on, close() removes what was made so far
            self.host = self._netns("h")
            self.outside = self._netns("o")
            self._setup_host(bridge_nf)
        except BaseException:
            self.close()
            raise

    # --- namespaces -------------------------------------------------------------------------
    def _netns(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        sh(IP, "netns", "add", name)
        self.namespaces.append(name)
        sh(IP, "link", "set", "lo", "up", netns=name)
        # Addresses must be usable at once: skip duplicate address detection (irrelevant here).
        sh("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0", netns=name)
        return name

    def _setup_host(self, bridge_nf: int) -> None:
        h, o = self.host, self.outside
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            sh("sysctl", "-qw", key, netns=h)
        self.set_bridge_nf(bridge_nf)
        up = f"{self.prefix}up"
        sh(IP, "link", "add", up, "netns", h, "type", "veth", "peer", "name", "eth0", "netns", o)
        for ns, v4, v6 in ((h, "10.99.0.1/24", "fd99::1/64"), (o, "10.99.0.2/24", "fd99::2/64")):
            dev = up if ns == h else "eth0"
            sh(IP, "addr", "add", v4, "dev", dev, netns=ns)
            sh(IP, "-6", "addr", "add", v6, "dev", dev, "nodad", netns=ns)
            sh(IP, "link", "set", dev, "up", netns=ns)
        sh(IP, "route", "add", "10.77.0.0/16", "via", "10.99.0.1", netns=o)
        sh(IP, "-6", "route", "add", "fd77::/16", "via", "fd99::1", netns=o)
        self.listen(o)
        self.listen(h)  # the gateways and the uplink address live in the host namespace

    def set_bridge_nf(self, value: int) -> None:
        for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
            sh("sysctl", "-qw", f"net.bridge.{key}={value}", netns=self.host)

    def bridge_nf(self) -> str:
        return sh("cat", "/proc/sys/net/bridge/bridge-nf-call-iptables", netns=self.host).stdout.strip()

    def close(self) -> None:
        self.stop_agent()
        for s in self.listeners:
            s.close()
        if self.host in self.namespaces:  # the plugin's state for this host namespace goes too
            shutil.rmtree(os.path.join(STATE_ROOT, in_netns(self.host, netns_key)), ignore_errors=True)
        for ns in reversed(self.namespaces):
            sh(IP, "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the resident agent -----------------------------------------------------------------
    def state_dir(self) -> str:
        return os.path.join(self.state_root or STATE_ROOT, in_netns(self.host, netns_key))

    def private_state_root(self, mode: int = 0o700) -> str:
        """From now on our binary sees a directory of this lab (returned) as /run/isolation,
        bind-mounted in its private mount namespace: tests may plant hostile files there
        without ever touching the host's real state directory."""
        self.state_root = os.path.join(self.tmp, "state-root")
        os.mkdir(self.state_root)
        os.chmod(self.state_root, mode)
        os.makedirs(STATE_ROOT, mode=0o700, exist_ok=True)  # the mount point (the plugin makes it anyway)
        return self.state_root

    def start_agent(self) -> str:
        """Run `isolation agent` in the host namespace; returns its log file once it serves
        and watches (its first reconcile done and its event sources open: on a loaded
        machine importing pyroute2 alone can take seconds, and a test that damages the
        firewall before then would be testing the start-up reconcile, not the healing)."""
        log = os.path.join(self.tmp, "agent.log")
        sock = os.path.join(self.state_dir(), "agent.sock")
        self.agent = subprocess.Popen(self.isolation_argv("agent", "--log-file", log), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60  # generous: readiness, not a speed claim

        def watching() -> bool:
            try:
                with open(log) as f:
                    return " watching " in f.read()
            except FileNotFoundError:
                return False

        while not (os.path.exists(sock) and watching()):
            if self.agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not start watching (rc={self.agent.poll()})")
            time.sleep(0.02)
        return log

    def stop_agent(self) -> None:
        if self.agent is not None:
            end_process(self.agent, 10)
        self.agent = None

    # --- networks and the runtime -----------------------------------------------------------
    def network(self, chain: list, isolation: dict | None = None, cni_version: str = "1.0.0") -> Network:
        """A network whose conflist runs `chain` (e.g. ["bridge", "firewall", "isolation"]).

        An item may also be a full plugin dict, used as given.
        """
        index = len(self.networks) + 1
        name, bridge = f"{self.prefix}-net{index}", f"{self.prefix}b{index}"
        plugins = []
        for kind in chain:
            if isinstance(kind, dict):
                plugins.append(kind)
            elif kind == "bridge":
                plugins.append(bridge_plugin(bridge, index, os.path.join(self.tmp, "ipam")))
            elif kind == "ptp":  # routed: no bridge; its segment stands where the bridge's name would
                plugins.append(ptp_plugin(index, os.path.join(self.tmp, "ipam")))
                bridge = segment_of(name)
            elif kind == "isolation":
                plugins.append({"type": "isolation", **(isolation or {})})
            elif kind == "firewall":
                plugins.append({"type": "firewall", "backend": "iptables"})
            else:
                plugins.append({"type": kind})
        net = Network(name, bridge, index, plugins, cni_version)
        self.networks.append(net)
        return net

    def plugin_path(self, kind: str) -> str:
        return self.isolation_bin if kind == "isolation" else os.path.join(CNI_DIR, kind)

    def exec_plugin(self, kind: str, command: str, conf: dict, env: dict) -> tuple[int, dict | None, str]:
        """Run one plugin in the host namespace.

        Upstream plugins get a PATH as libcni passes the runtime's environment; ours gets
        nothing but the CNI variables, the harshest environment a runtime may give it.
        """
        full_env = {"CNI_COMMAND": command, "CNI_PATH": CNI_DIR, **env}
        if kind != "isolation":
            full_env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
        argv = self.isolation_argv() if kind == "isolation" else [IP, "netns", "exec", self.host, self.plugin_path(kind)]
        proc = subprocess.run(
            argv,
            input=json.dumps(conf),
            capture_output=True,
            text=True,
            env=full_env,
            timeout=60,
        )
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        return proc.returncode, out, proc.stderr

    def isolation_argv(self, *args: str) -> list[str]:
        """Our binary (with `args`) as every test runs it: in the host namespace, the system
        libnftables hidden."""
        return self.without_system_libnftables([IP, "netns", "exec", self.host, self.isolation_bin, *args])

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Our command line (`status`, `prune`, `reconcile`...) run as isolation_argv runs
        it; whatever it answers, it never answers with a Python traceback."""
        proc = subprocess.run(self.isolation_argv(*args), capture_output=True, text=True, timeout=timeout)
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        return proc

    def status(self) -> dict:
        """`isolation status --json`, parsed (its exit code says only whether problems exist)."""
        return json.loads(self.cli("status", "--json").stdout)

    def without_system_libnftables(self, argv: list[str]) -> list[str]:
        """`argv` in a private mount namespace where the system's libnftables is an empty file.

        Our frozen binary must bring its own copy; every end-to-end run proves it does.
        """
        empty = os.path.join(self.tmp, "empty")
        open(empty, "w").close()
        script = 'for lib in "$@"; do case "$lib" in --) shift; break;; esac; mount --bind "$0" "$lib"; shift; done; exec "$@"'
        if self.state_root:
            script = f'mount --bind {self.state_root} {STATE_ROOT} || exit 99; {script}'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, empty, *SYSTEM_LIBNFTABLES, "--", *argv]

    def _conf(self, net: Network, plugin: dict, prev: dict | None, port_mappings: list | None = None,
              args: dict | None = None) -> dict:
        conf = {"cniVersion": net.cni_version, "name": net.name, **plugin}
        if args is not None:
            conf["args"] = args
        if port_mappings and plugin.get("capabilities", {}).get("portMappings"):
            conf["runtimeConfig"] = {"portMappings": port_mappings}  # as libcni injects capabilities
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def isolation_conf(self, c: Container, **extra) -> dict:
        """A bare configuration of our plugin for `c` (its cached prevResult), with `extra`
        keys: for running our plugin alone, outside the network's chain."""
        return {"cniVersion": "1.0.0", "name": c.network.name, "type": "isolation",
                "prevResult": self.cache[(c.network.name, c.id)], **extra}

    def host_port(self, c: Container) -> str:
        """`c`'s host-side veth (its bridge port), from its cached prevResult: the bridge plugin
        lists the bridge first (not always c.network.bridge: a network may share another's),
        then this veth, then the container's end (with a sandbox)."""
        interfaces = self.cache[(c.network.name, c.id)]["interfaces"]
        if any(p["type"] == "ptp" for p in c.network.plugins):  # no bridge: the veth comes first
            return next(i["name"] for i in interfaces if not i.get("sandbox"))
        return next(i["name"] for i in interfaces[1:] if not i.get("sandbox"))

    def _env(self, c: Container, with_netns: bool = True) -> dict:
        env = {"CNI_CONTAINERID": c.id, "CNI_IFNAME": "eth0", "CNI_ARGS": c.cni_args}
        if with_netns:
            env["CNI_NETNS"] = f"/run/netns/{c.name}"
        return env

    def add(self, net: Network, port_mappings: list | None = None, cni_args: str | None = None,
            args: dict | None = None) -> Container:
        """Start a container on `net` the way libcni does, and record its cached result.

        `port_mappings` ({hostPort, containerPort, protocol}) go to plugins declaring the
        portMappings capability (portmap), as `-p` does with a runtime. `cni_args`: the
        container's CNI_ARGS (default "IgnoreUnknown=1"); `args`: its runtime `args`
        (e.g. {"cni": {"isolationGroup": "t1"}}), both given to every plugin, at every verb."""
        n = sum(len(x.containers) for x in self.networks) + 1
        c = Container(self._netns(f"c{n}"), f"{self.prefix}-ctr{n}", net, args=args)
        if cni_args is not None:
            c.cni_args = cni_args
        prev = None
        for plugin in net.plugins:
            conf = self._conf(net, plugin, prev, port_mappings, args)
            rc, out, err = self.exec_plugin(plugin["type"], "ADD", conf, self._env(c))
            if rc != 0:
                raise PluginError(plugin["type"], "ADD", rc, out, err)
            prev = out
        self.cache[(net.name, c.id)] = prev
        for ip in prev["ips"]:
            addr = ip["address"].split("/")[0]
            if ":" in addr:
                c.ipv6 = addr
            else:
                c.ipv4 = addr
        net.containers.append(c)
        self.listen(c.name)
        return c

    def check(self, c: Container) -> list[tuple[str, int, dict | None]]:
        """CHECK each plugin with the cached result; returns (type, rc, output) per plugin."""
        prev = self.cache[(c.network.name, c.id)]
        return [
            (p["type"], *self.exec_plugin(p["type"], "CHECK", self._conf(c.network, p, prev, args=c.args),
                                          self._env(c))[:2])
            for p in c.network.plugins
        ]

    def delete(self, c: Container, with_prev: bool = True, with_netns: bool = True) -> list[tuple[str, int]]:
        prev = self.cache.get((c.network.name, c.id)) if with_prev else None
        results = []
        for p in reversed(c.network.plugins):
            rc, _, _ = self.exec_plugin(p["type"], "DEL", self._conf(c.network, p, prev, args=c.args),
                                        self._env(c, with_netns))
            results.append((p["type"], rc))
        return results

    # --- traffic ----------------------------------------------------------------------------
    def listen(self, netns: str, port: int = TCP_PORT) -> None:
        """A dual-stack TCP listener on `port` inside `netns`, accepting in the background."""

        def serve(s):
            s.listen(128)
            while True:
                conn, _ = s.accept()
                conn.close()

        self._serve(netns, socket.SOCK_STREAM, port, serve)

    def udp_echo(self, netns: str, port: int) -> None:
        """A dual-stack UDP server on `port` inside `netns` that sends every datagram back."""

        def serve(s):
            while True:
                data, peer = s.recvfrom(512)
                s.sendto(data, peer)

        self._serve(netns, socket.SOCK_DGRAM, port, serve)

    def _serve(self, netns: str, kind: int, port: int, serve) -> None:
        """Bind a dual-stack socket of `kind` on `port` inside `netns` and run serve(socket) in
        the background until close() closes the socket."""

        def make():
            s = socket.socket(socket.AF_INET6, kind)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::", port))
            return s

        s = in_netns(netns, make)
        self.listeners.append(s)

        def run():
            try:
                serve(s)
            except OSError:  # the socket was closed: the lab is going away
                return

        threading.Thread(target=run, daemon=True).start()

    def udp(self, src_netns: str, addr: str, port: int) -> bool:
        """True when a datagram to [addr]:port is echoed back within the probe deadline
        (sent every 0.2 s, so one lost to neighbour discovery does not matter)."""
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET

        def exchange():
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(0.2)
                for _ in range(int(PROBE_TIMEOUT_S / 0.2)):
                    try:
                        s.sendto(b"probe", (addr, port))
                        if s.recv(512) == b"probe":
                            return True
                    except OSError:  # timeout, or an ICMP error reported on the socket
                        pass
                return False

        return in_netns(src_netns, exchange)

    def udp_once(self, src_netns: str, addr: str, port: int, source: str | None = None) -> bool:
        """True when ONE datagram to [addr]:port (from `source`, if given) is echoed back within
        the probe deadline: for counting what a log saw, where lab.udp sends up to ten."""
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET

        def exchange():
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(PROBE_TIMEOUT_S)
                try:
                    if source:
                        s.bind((source, 0))
                    s.sendto(b"probe", (addr, port))
                    return s.recv(512) == b"probe"
                except OSError:
                    return False

        return in_netns(src_netns, exchange)

    def arp_request(self, netns: str, sender: str, target: str) -> str:
        """Write ONE broadcast ARP request "who has `target`, tell `sender`" on `netns`'s eth0,
        from eth0's own MAC (returned), whatever addresses eth0 really has."""
        mac = json.loads(sh(IP, "-j", "link", "show", "eth0", netns=netns).stdout)[0]["address"]
        raw = bytes.fromhex(mac.replace(":", ""))
        frame = (b"\xff" * 6 + raw + b"\x08\x06"  # Ethernet: broadcast, from eth0, ARP
                 + bytes.fromhex("0001 0800 06 04 0001".replace(" ", ""))  # Ethernet/IPv4, request
                 + raw + socket.inet_aton(sender) + b"\0" * 6 + socket.inet_aton(target))

        def send():
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind(("eth0", 0))
                s.send(frame)

        in_netns(netns, send)
        return mac

    def stranger(self, net: Network, host: int = 250, ipv6: bool = False) -> str:
        """A namespace plugged into `net`'s bridge by hand, as no runtime would (no CNI ADD: the
        registry knows nothing of it), at 10.77.<net>.<host>/24 routed via the gateway (and
        with `ipv6`, at fd77:<net>::<host>/64 too)."""
        ns = self._netns(f"x{host}")
        port = f"{self.prefix}x{host}"
        sh(IP, "link", "add", port, "netns", self.host, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh(IP, "link", "set", port, "master", net.bridge, "up", netns=self.host)
        sh(IP, "addr", "add", f"10.77.{net.index}.{host}/24", "dev", "eth0", netns=ns)
        sh(IP, "link", "set", "eth0", "up", netns=ns)
        sh(IP, "route", "add", "default", "via", net.gateway4, netns=ns)
        if ipv6:
            sh(IP, "-6", "addr", "add", f"fd77:{net.index}::{host:x}/64", "dev", "eth0", "nodad", netns=ns)
            sh(IP, "-6", "route", "add", "default", "via", net.gateway6, netns=ns)
        return ns

    def follow_drops(self, *args: str) -> "DropsReader":
        """`isolation drops --follow --json ARGS` in the host namespace, started and listening
        (the agent's ring file or the NFLOG group itself) when this returns."""
        return DropsReader(self.isolation_argv("drops", "--follow", "--json", *args))

    def management(self) -> str:
        """A "management" namespace reachable through the host: 10.98.0.2 and .3, fd98::2 and ::3,
        with the host at 10.98.0.1 / fd98::1; it routes the containers' subnets via the host
        and listens on TCP_PORT."""
        h, m = self.host, self._netns("m")
        link = f"{self.prefix}mg"
        sh(IP, "link", "add", link, "netns", h, "type", "veth", "peer", "name", "eth0", "netns", m)
        sh(IP, "addr", "add", "10.98.0.1/24", "dev", link, netns=h)
        sh(IP, "-6", "addr", "add", "fd98::1/64", "dev", link, "nodad", netns=h)
        for v4, v6 in (("10.98.0.2/24", "fd98::2/64"), ("10.98.0.3/24", "fd98::3/64")):
            sh(IP, "addr", "add", v4, "dev", "eth0", netns=m)
            sh(IP, "-6", "addr", "add", v6, "dev", "eth0", "nodad", netns=m)
        sh(IP, "link", "set", link, "up", netns=h)
        sh(IP, "link", "set", "eth0", "up", netns=m)
        sh(IP, "route", "add", "10.77.0.0/16", "via", "10.98.0.1", netns=m)
        sh(IP, "-6", "route", "add", "fd77::/16", "via", "fd98::1", netns=m)
        self.listen(m)
        return m

    def tcp(self, src_netns: str, addr: str, port: int = TCP_PORT) -> bool:
        return tcp_connect(src_netns, addr, port)

    def ping(self, src_netns: str, addr: str) -> bool:
        flag = "-6" if ":" in addr else "-4"
        # An echo every 0.2 s until one reply comes back or the deadline passes.
        argv = ("ping", flag, "-n", "-q", "-c", "1", "-i", "0.2", "-w", str(int(PROBE_TIMEOUT_S)), addr)
        proc = sh(*argv, netns=src_netns, check=False)
        return proc.returncode == 0

    def reach(self, probes: list[tuple[str, str]]) -> dict[tuple[str, str, str], bool]:
        """Probe every (source netns, address) by ICMP and TCP, concurrently."""
        jobs = [(kind, src, addr) for src, addr in probes for kind in ("icmp", "tcp")]
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = pool.map(lambda j: (self.ping if j[0] == "icmp" else self.tcp)(j[1], j[2]), jobs)
            return dict(zip(jobs, results))

    def blocked(self, a: Container, b: Container) -> bool:
        """Neither a -> b (ICMP and TCP, IPv4 and IPv6) nor b -> a (IPv4) gets through."""
        return not any(self.reach([(a.name, b.ipv4), (a.name, b.ipv6), (b.name, a.ipv4)]).values())

    # --- firewall state ---------------------------------------------------------------------
    def ruleset(self) -> str:
        """Everything the host namespace's firewall holds (both xtables families and nftables),
        packet counters zeroed: br_netfilter passes the containers' own neighbour discovery
        through FORWARD, so counters move by themselves; rules, chains and tables must not."""
        text = "\n".join([self.save("ipv4"), self.save("ipv6"), sh("nft", "list", "ruleset", netns=self.host).stdout])
        text = re.sub(r"^(:\S+ \S+) \[\d+:\d+\]$", r"\1 [0:0]", text, flags=re.M)
        return re.sub(r"counter packets \d+ bytes \d+", "counter packets 0 bytes 0", text)

    def ours_mentioning(self, bridge: str) -> list[str]:
        """Lines of our rules (nftables tables, iptables rules with our comment) naming `bridge`."""
        found = [line for line in self.nft("list", "ruleset").splitlines()
                 if f'"{bridge}"' in line or f"-{bridge} " in line]
        for fam in ("ipv4", "ipv6"):
            found += [r for r in self.save(fam).splitlines() if "isolation-plugin" in r and f" {bridge} " in r]
        return found

    def nft(self, *args: str) -> str:
        return sh("nft", *args, netns=self.host).stdout

    def save(self, family: str = "ipv4") -> str:
        tool = "iptables-save" if family == "ipv4" else "ip6tables-save"
        lines = sh(tool, netns=self.host).stdout.splitlines()
        return "\n".join(line for line in lines if not line.startswith("#"))


class DropsReader:
    """A running `isolation drops --follow --json`: its stderr names what it listens to once it
    does; finish() waits for its exit and returns (exit code, the JSON records, stderr)."""

    READY = ("isolation: listening to NFLOG group", "isolation: following the agent's drop log")

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.said = ""
        deadline = time.monotonic() + 60  # readiness, not a speed claim
        while not self.said.startswith(self.READY):
            line = self.proc.stderr.readline()
            if not line or time.monotonic() > deadline:
                end_process(self.proc, 5)
                raise AssertionError(f"`isolation drops --follow` did not start listening: {self.said + line!r}"
                                     f" {self.proc.stdout.read()!r}")
            self.said += line
        self.mode = "agent" if "the agent's drop log" in self.said else "group"

    def wait_for(self, text: str, deadline: float = 60) -> None:
        """Read its stderr until a line contains `text` (it is still running)."""
        end = time.monotonic() + deadline
        while text not in self.said:
            line = self.proc.stderr.readline()
            if not line or time.monotonic() > end:
                raise AssertionError(f"`isolation drops --follow` never said {text!r}: {self.said + line!r}")
            self.said += line

    def finish(self, timeout: float = 90) -> tuple[int, list[dict], str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            end_process(self.proc, 5)
            out, err = self.proc.communicate()
        assert "Traceback" not in out + err, out + err
        return self.proc.returncode, [json.loads(line) for line in out.splitlines()], self.said + err


class PluginError(AssertionError):
    def __init__(self, kind, command, rc, out, err):
        super().__init__(f"{kind} {command} failed (rc={rc}): {out} {err}")
        self.rc, self.out, self.err = rc, out, err


FIREWALL_SAME_BRIDGE = {"type": "firewall", "backend": "iptables", "ingressPolicy": "same-bridge"}


def firewall_shared_networks(lab: Lab, order: str) -> tuple[Container, Container]:
    """Two networks chaining the firewall plugin's `ingressPolicy: same-bridge` with ours
    (iptables backend, sharing its chains), firewall first or isolation first; a container each.
    allowPublishedPorts is off: that plugin's own DROP blocks published ports whatever we do."""
    chain = ["bridge", FIREWALL_SAME_BRIDGE, "isolation"]
    if order == "isolation-first":
        chain = ["bridge", "isolation", FIREWALL_SAME_BRIDGE]
    ours = {"backend": "iptables", "allowPublishedPorts": False}
    a, b = (lab.add(lab.network(chain, isolation=ours)) for _ in range(2))
    return a, b


def on_the_same_bridge(lab: Lab, first: Network, isolation: dict) -> Network:
    """A second conflist naming `first`'s bridge and subnets (its addresses from another part
    of them), with `isolation` as its entry of ours."""
    shared = copy.deepcopy(first.plugins[0])
    v4, v6 = shared["ipam"]["ranges"]
    v4[0] |= {"rangeStart": f"10.77.{first.index}.100", "rangeEnd": f"10.77.{first.index}.150"}
    v6[0] |= {"rangeStart": f"fd77:{first.index}::100", "rangeEnd": f"fd77:{first.index}::150"}
    return lab.network([shared, isolation])


def addresses(c: Container) -> list[str]:
    return [a for a in (c.ipv4, c.ipv6) if a]


def is_ipv6(addr: str) -> bool:
    return ipaddress.ip_address(addr).version == 6
