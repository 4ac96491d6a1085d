"""The optional resident agent (`isolation agent`) and the plugin's side of talking to it.

The agent serves plugin invocations over a unix socket in the namespace's root-only
state directory, running the very same engine (plugin.cni.run) with its modules,
validated configurations and library handles already loaded. The plugin forwards
to it when it answers and otherwise does the work itself; every change is still one
transaction under the HostLock and the registry on disk stays the truth, so an
agent that dies mid-request costs a retry, never a half-applied rule set.

The agent also heals: it listens for link changes (a bridge or a container's veth created
or deleted) and nf_tables changes (any `nft` or iptables-nft change, a firewall reload,
`nft flush ruleset`) through pyroute2 (plugin.watch), and checks every few seconds anyway
(iptables-legacy has no events); when the kernel lacks what the registry says is
enforced, or a registered bridge or port has vanished, it reconciles and logs the repair.

Wire format, both ways: a 4-byte big-endian length, then JSON. Request
{"env": {CNI_*...}, "stdin": "<latin-1 text of the raw bytes>", "deadline": T}; reply
{"stdout": "...", "rc": N}. Only root peers (SO_PEERCRED) are served, requests are
bounded, and a bad or half-sent one only ends its own connection. The plugin, in turn,
sends nothing unless the socket is root's and the peer (SO_PEERCRED) runs as root.

T (time.monotonic(), one clock for the whole host) is when the plugin stops waiting and
does the work itself. The agent never starts a request after T: it checks under the
HostLock, so a request it began in time finishes before the plugin's own attempt can
take the lock, and one it did not begin is dropped. Without this, a DEL given up on
could be applied after the runtime had ADDed the same container again.
"""

import _socket  # the client runs on every start: `socket` would import selectors and enum
import os
import stat
import struct
import time

from plugin import jsonio as json  # json's C accelerator alone: `json` imports re and enum

SOCKET_NAME = "agent.sock"
MAX_REQUEST = 1 << 20
CLIENT_TIMEOUT_S = 60.0  # ADD waits up to 30 s for the lock, then applies; ISOLATION_AGENT_TIMEOUT_S overrides it
REQUEST_READ_TIMEOUT_S = 5.0
FORWARDED = ("CNI_", "ISOLATION_LOG_")
WARM = ("plugin.cni", "plugin.config", "plugin.model", "plugin.lifecycle", "plugin.registry",
        "plugin.backends.iptables", "plugin.backends.nftables", "plugin.topology", "pyroute2")


def socket_path() -> str:
    from plugin.hoststate import state_dir

    return os.path.join(state_dir(), SOCKET_NAME)


def _send(sock, obj: dict) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _recv(sock, limit: int) -> dict | None:
    """One framed JSON object, or None when the peer closed or sent something malformed."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > limit:
        return None
    body = _recv_exact(sock, size)
    try:
        obj = json.loads(body) if body is not None else None
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _recv_exact(sock, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 65536))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# --- the plugin's side -----------------------------------------------------------------------
def forward(env: dict, stdin: bytes) -> tuple[str, int] | None:
    """(stdout, exit code) as the agent computed them, or None: no agent here, or it failed
    before answering (the caller then does the work itself)."""
    if env.get("ISOLATION_AGENT") == "off" or len(stdin) > MAX_REQUEST:
        return None
    try:
        path = socket_path()  # the state directory is checked to be root's alone
        st = os.lstat(path)
    except Exception:  # no state directory, or no agent: nothing to talk to
        return None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != 0:
        return None  # not a root agent's socket: never sent anything; the work is done here
    try:
        timeout = float(env.get("ISOLATION_AGENT_TIMEOUT_S", CLIENT_TIMEOUT_S))
    except ValueError:
        timeout = CLIENT_TIMEOUT_S
    deadline = time.monotonic() + timeout
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        _, uid, _ = struct.unpack("3i", sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid != 0:
            return None
        request_env = {k: v for k, v in env.items() if k.startswith(FORWARDED)}
        _send(sock, {"env": request_env, "stdin": stdin.decode("latin-1"), "deadline": deadline})
        sock.settimeout(max(deadline - time.monotonic(), 0.001))  # never given up before the deadline
        reply = _recv(sock, 16 * MAX_REQUEST)
    except OSError:
        return None
    finally:
        sock.close()
    if reply is None or not isinstance(reply.get("stdout"), str) or not isinstance(reply.get("rc"), int):
        return None
    return reply["stdout"], reply["rc"]


# --- the agent -------------------------------------------------------------------------------
class Agent:
    """Serves plugin requests and keeps the kernel in step with the registry."""

    CHECK_EVERY_S = 3.0  # full check without an event (iptables-legacy changes send none)
    SETTLE_S = 0.05  # after an event, let a burst of changes finish first

    def __init__(self, log_file: str | None = None, check_every_s: float | None = None):
        import threading

        self.log_file = log_file
        self.check_every_s = check_every_s or self.CHECK_EVERY_S
        self.stop = threading.Event()
        self.served = 0
        self.repairs = 0
        from plugin.metrics import AgentMetrics  # here, not above: the plugin's side never loads it

        self.metrics = AgentMetrics()
        self._slots = threading.BoundedSemaphore(64)

    def log(self, message: str) -> None:
        import sys
        import time

        from plugin.log import append_line

        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}Z isolation-agent[{os.getpid()}]: {message}"
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        if self.log_file:
            try:
                append_line(self.log_file, line)
            except OSError:
                pass

    def run(self) -> int:
        import socket
        import threading

        import importlib

        for module in WARM:  # loaded once, here, instead of by every request
            importlib.import_module(module)

        path = socket_path()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            os.unlink(path)  # a previous agent's socket; the directory is root-only
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        listener.listen(128)
        listener.settimeout(0.5)
        self.log(f"serving on {path}")
        watcher = threading.Thread(target=self._watch, name="watch", daemon=True)
        watcher.start()
        from plugin.droplog import record_in_background  # networks with logDrops: `isolation drops`

        record_in_background(self.stop, self.log)
        from plugin.metrics import Publisher

        publisher = Publisher(self.metrics, self.log)  # its file: see plugin.metrics
        threading.Thread(target=publisher.run, args=(self.stop,), name="metrics", daemon=True).start()
        try:
            while not self.stop.is_set():
                try:
                    conn, _ = listener.accept()
                except socket.timeout:
                    continue
                self._slots.acquire()
                threading.Thread(target=self._serve_one, args=(conn,), daemon=True).start()
        finally:
            listener.close()
            try:
                os.unlink(path)
            except OSError:
                pass
            publisher.close()
            self.log(f"stopped after {self.served} request(s) and {self.repairs} repair(s)")
        return 0

    def _serve_one(self, conn) -> None:
        try:
            with conn:
                creds = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
                pid, uid, _ = struct.unpack("3i", creds)
                if uid != 0:
                    self.log(f"refused a request from uid {uid} (pid {pid}): only root is served")
                    return
                conn.settimeout(REQUEST_READ_TIMEOUT_S)
                received = time.monotonic()
                request = _recv(conn, MAX_REQUEST)
                env, stdin = (request or {}).get("env"), (request or {}).get("stdin")
                deadline = (request or {}).get("deadline", received + CLIENT_TIMEOUT_S)
                if not isinstance(env, dict) or not isinstance(stdin, str) or not all(
                        isinstance(k, str) and isinstance(v, str) and k.startswith(FORWARDED) for k, v in env.items()
                        ) or not isinstance(deadline, (int, float)) or isinstance(deadline, bool):
                    self.log(f"dropped a malformed request from pid {pid}")
                    return
                what = f"{env.get('CNI_COMMAND')} for {env.get('CNI_CONTAINERID', '-')}"
                if time.monotonic() >= deadline:
                    self.log(f"dropped {what}: its client had stopped waiting")
                    return
                from plugin import cni

                out, rc = cni.run(env, stdin.encode("latin-1"), deadline)
                conn.settimeout(max(deadline - time.monotonic(), 0.001))
                self.served += 1
                self.metrics.served(env.get("CNI_COMMAND"), out, rc, time.monotonic() - received, stdin)
                self.log(f"served {what}: rc={rc}" + (f" ({out.get('msg')})" if rc and isinstance(out, dict) else ""))
                _send(conn, {"stdout": json.dumps(out) + "\n" if out is not None else "", "rc": rc})
        except Exception as exc:  # one connection's trouble never takes the agent down
            self.log(f"request failed: {type(exc).__name__}: {exc}")
        finally:
            self._slots.release()

    def _watch(self) -> None:
        """Reconcile at start, after every link or nf_tables change (settled: a burst of
        changes costs one reconcile) and every check_every_s without one."""
        from plugin.watch import Changes

        changes = Changes()
        sources = changes.start()
        for name, why in sources.items():
            if why:
                self.log(f"no {name} events ({why}): relying on the check every {self.check_every_s:g} s")
        self._reconcile("start")
        listening = " and ".join(name for name, why in sources.items() if why is None) or "no"
        self.log(f"watching {listening} events; a full check every {self.check_every_s:g} s")
        next_full = time.monotonic() + self.check_every_s
        while not self.stop.is_set():
            if changes.wait(0.25):
                time.sleep(self.SETTLE_S)
                trigger = " and ".join(sorted(changes.take())) + " event"
            elif time.monotonic() >= next_full:
                trigger = "periodic check"
            else:
                continue
            next_full = time.monotonic() + self.check_every_s
            self._reconcile(trigger)

    def _reconcile(self, trigger: str) -> None:
        from plugin.hoststate import HostLock
        from plugin.lifecycle import reconcile

        try:
            with HostLock(timeout=5.0):
                done = reconcile()
        except Exception as exc:
            self.metrics.reconcile_failed()
            self.log(f"reconcile failed: {type(exc).__name__}: {exc}")
            return
        for line in done:
            self.repairs += 1
            self.log(f"repaired: {line} (after: {trigger})")
        self.metrics.repaired(len(done))


def serve(log_file: str | None = None) -> int:
    """`isolation agent`: run until SIGTERM or SIGINT. ISOLATION_AGENT_CHECK_EVERY_S sets
    the interval of the full check made without any event (default 3 s)."""
    import signal

    try:
        every = float(os.environ.get("ISOLATION_AGENT_CHECK_EVERY_S", Agent.CHECK_EVERY_S))
    except ValueError:
        every = Agent.CHECK_EVERY_S
    agent = Agent(log_file, every if every > 0 else Agent.CHECK_EVERY_S)

    def stop(*_):
        agent.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return agent.run()
