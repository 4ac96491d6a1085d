"""`isolation drops`: each blocked attempt the drop log reports, with the container that made it
and the configuration key that blocked it.

Networks with `logDrops: true` send the first packet of each dropped flow (rate-limited per
bridge) to NFLOG group reasons.NFLOG_GROUP, prefixed reasons.log_prefix(reason, bridge). Only
one socket can listen to a group in a network namespace, so:

- The agent, when it runs, listens (`record_in_background`) and appends each drop, with its
  container identified at that moment, to a ring file in the namespace's state directory
  (RING_FILE, the last RING records; held under RING_LOCK while it records).
- `isolation drops` prints the drops the agent recorded (the last `--count N` of them) and
  exits; when no agent records here it says so on stderr (what an earlier agent recorded is
  still printed).
- `isolation drops --follow` prints the drops from now on, as they come, until Ctrl-C (exit 0),
  `--count N` lines or `--timeout S` seconds: from the agent's ring file when the agent
  records, else by listening to the group itself for as long as it runs.

The sender is found in the registry among the attachments of the prefix's bridge: by the
port the packet came in by (the kernel says for bridge-family logs and with br_netfilter),
else by the port the bridge last saw the source MAC on (its forwarding database), else by the
MAC anti-spoofing recorded, else by the source address. A source address the sender was not
given is said to be spoofed; a packet no attachment accounts for is from "unknown" (a spoofed
MAC and address, or an interface on the bridge that no runtime attached through the plugin).
An `internal` or `direct-access` drop may name the bridge the packet was going into (INBOUND):
when the packet came in by another interface, the sender is looked up on the bridge (or routed
segment) of that interface, and when none is registered it is no container of ours but a host
beyond that interface (container null, never a container of the prefix's bridge).
"""

import ipaddress
import os
import socket
import sys
import threading
import time

from plugin import jsonio as json
from plugin.reasons import DIRECT_ACCESS, INTERNAL, KEY, NFLOG_GROUP, parse_prefix

RING_FILE = "drops.jsonl"
RING_LOCK = "drops.lock"
RING = 1000  # records kept; the file is cut back to RING once it holds 2 * RING
POLL_S = 0.2  # how often a follower of the ring file looks for new records
RETRY_BIND_S = 10.0  # how often the agent tries again for a group someone else holds
INBOUND = (INTERNAL, DIRECT_ACCESS)  # reasons whose prefix may name the bridge the packet went into


# --- who sent it -----------------------------------------------------------------------------
def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.split("/", 1)[0]))
    except ValueError:
        return None


def identify(attachments: list, source: str | None, mac: str | None, physindev: int | None,
             fdb_port: int | None) -> tuple[object | None, str | None]:
    """(the attachment that sent the packet or None, a note) among `attachments` (those of the
    bridge), from what the kernel said: the port it came in by (`physindev`), the port the bridge
    last saw its source MAC on (`fdb_port`), the MAC and the source address."""
    source = _address(source) if source else None
    own = {id(a): {_address(x) for x in a.addresses} for a in attachments}
    by = None
    for port in (physindev, fdb_port):
        if port is not None and by is None:
            found = [a for a in attachments if a.portindex == port]
            by = found[-1] if found else None
    if physindev is None and by is not None and mac and by.mac and by.mac.lower() != mac.lower():
        # the port is the bridge's answer now, not the kernel's at the drop: the MAC is another
        # container's, so one of the two forged it, and which one sent this packet is unknown
        claimed = sorted(f"{a.network}/{a.container}/{a.ifname}" for a in attachments
                         if a is not by and a.mac and a.mac.lower() == mac.lower())
        if claimed:
            return None, (f"spoofed: MAC {mac} is {', '.join(claimed)}'s, but the bridge now sees it on the port "
                          f"of {by.network}/{by.container}/{by.ifname}: one of them forged it")
    entered = next((p for p in (physindev, fdb_port) if p is not None), None)
    if by is None and entered is not None and all(a.portindex is not None for a in attachments):
        # the kernel named the port it came in by, and it is no registered container's: whoever
        # owns its MAC or address is being impersonated, not the sender (never blame them)
        owners = sorted({f"{a.network}/{a.container}/{a.ifname}" for a in attachments
                         if (mac and a.mac and a.mac.lower() == mac.lower()) or (source and source in own[id(a)])})
        if owners:
            return None, (f"spoofed: came in by port #{entered}, which is not {', '.join(owners)}'s (no container "
                          f"registered on this bridge has it), from MAC {mac or '-'} address {source or '-'}")
    if by is None and mac:
        found = [a for a in attachments if a.mac and a.mac.lower() == mac.lower()]
        by = found[-1] if len(found) == 1 else None
    if by is not None:
        if source is not None and source not in own[id(by)]:
            return by, f"spoofed source: {source} is not one of its addresses"
        return by, None
    found = [a for a in attachments if source is not None and source in own[id(a)]]
    if len(found) == 1:
        owner = found[0]
        if mac and owner.mac and owner.mac.lower() != mac.lower():
            return None, (f"spoofed: {source} is {owner.network}/{owner.container}/{owner.ifname}'s address, "
                          f"but MAC {mac} is not its MAC")
        return owner, None
    what = " or ".join(x for x in (f"MAC {mac}" if mac else "", f"address {source}" if source else "") if x)
    return None, (f"no container registered on this bridge has {what}: spoofed, or an interface the plugin "
                  "did not attach" if what else "the packet names no source")


class Senders:
    """The registry as the drop log needs it: attachments by bridge, read again when the file
    changes, and the bridges' forwarding databases asked when a packet needs them."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self._stamp = None
        self._by_bridge: dict[str, list] = {}

    def on(self, bridge: str) -> list:
        from plugin.registry import FILENAME

        try:
            st = os.stat(os.path.join(self.state_dir, FILENAME))
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._by_bridge = self._load()
            self._stamp = stamp
        return self._by_bridge.get(bridge, [])

    def entered_by(self, bridge: str, ifname: str | None) -> tuple[str, list] | None:
        """See came_from (the registry read again first when it changed)."""
        self.on(bridge)
        return came_from(self._by_bridge, bridge, ifname)

    def _load(self) -> dict[str, list]:
        from plugin.errors import CniError
        from plugin.hoststate import HostLock
        from plugin.registry import Registry

        try:
            with HostLock(timeout=2.0):  # as every reader: a damaged registry is salvaged under it
                atts = Registry.load(self.state_dir).attachments.values()
        except CniError:
            return self._by_bridge  # busy or unreadable now: the last snapshot, and read again next time
        found: dict[str, list] = {}
        for att in atts:
            found.setdefault(att.bridge, []).append(att)
        return found

    def fdb_port(self, bridge: str, mac: str | None) -> int | None:
        """The ifindex of the port `bridge` last saw `mac` on (its forwarding database), or None.
        Asked anew for every packet (one entry, ~1 ms): an answer kept even for a second let a
        neighbour forge a container's MAC right after that container's own drop and be taken
        for it. (What the bridge learns between the drop and this question still counts: the
        kernel names the port itself only with br_netfilter.)"""
        return self._ask_fdb(bridge, mac) if mac else None

    @staticmethod
    def _ask_fdb(bridge: str, mac: str) -> int | None:
        """One entry asked for by MAC (RTM_GETNEIGH, Linux 5.2+), never the whole database
        dumped: a container can fill a bridge's database with spoofed MACs by the ten thousand,
        and parsing such a dump took seconds of the agent's CPU per logged packet."""
        try:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                master = ipr.link_lookup(ifname=bridge)
                if not master:
                    return None
                for entry in ipr.fdb("get", lladdr=mac.lower(), master=master[0]):
                    if entry.get("ifindex"):
                        return entry["ifindex"]
        except Exception:  # unknown MAC (ENOENT), an older kernel: the database is a hint; without
            return None  # it the MAC and address still identify
        return None


def came_from(by_bridge: dict[str, list], bridge: str, ifname: str | None) -> tuple[str, list] | None:
    """(the bridge or routed segment a packet logged for `bridge` came from, its attachments),
    given the interface it came in by (`ifname`) and the registered attachments by bridge:
    `bridge` itself when `ifname` is it or one of its members (or unknown), another registered
    bridge or segment when `ifname` is one (or one's member), None when no registered one has
    it (a host beyond that interface, not a container of ours)."""
    atts = by_bridge.get(bridge, [])
    if ifname is None or ifname == bridge or any(a.routed and a.port == ifname for a in atts):
        return bridge, atts
    for other, theirs in by_bridge.items():
        if other == ifname or any(a.routed and a.port == ifname for a in theirs):
            return other, theirs
    return None


def _ifname(index: int | None) -> str | None:
    if index is None:
        return None
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"#{index}"


def _timestamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def describe(logged, senders: Senders) -> dict | None:
    """The drop log's record of one logged packet (None when its prefix is not ours)."""
    parsed = parse_prefix(logged.prefix)
    if parsed is None:
        return None
    reason, bridge = parsed
    h = logged.headers
    indev = _ifname(logged.indev)
    known = indev if indev and not indev.startswith("#") else None  # "#N": gone since, so not told
    came = senders.entered_by(bridge, known) if reason in INBOUND else (bridge, senders.on(bridge))
    if came is None:  # from beyond an interface that is none of ours: no container sent it
        sender, fdb, networks = None, None, []
        note = f"from outside: came in by {indev}, which no network of the plugin is on (a host, not a container)"
    else:
        side, atts = came
        fdb = senders.fdb_port(side, logged.mac) if logged.physindev is None and logged.mac else None
        sender, note = identify(atts, h.source, logged.mac, logged.physindev, fdb)
        networks = sorted({a.network for a in atts})
    notes = [n for n in (note, h.note) if n]
    return {
        "time": _timestamp(logged.time),
        "reason": reason,
        "key": KEY[reason],
        "bridge": bridge,
        "network": sender.network if sender else (networks[0] if len(networks) == 1 else None),
        "container": sender.container if sender else "unknown" if came is not None else None,
        "ifname": sender.ifname if sender else None,
        "port": (sender.port if sender else None) or _ifname(logged.physindev if logged.physindev else fdb),
        "source": h.source,
        "sourceMac": logged.mac,
        "sourcePort": h.source_port,
        "destination": h.destination,
        "protocol": h.protocol or h.family,
        "destinationPort": h.destination_port,
        "icmpType": h.icmp_type,
        "icmpCode": h.icmp_code,
        "arp": h.arp_op,
        "fragment": h.fragment,
        "service": h.service(),
        "in": indev,
        "out": _ifname(logged.outdev),
        "note": "; ".join(notes) or None,
    }


def line(record: dict) -> str:
    """One line of `isolation drops` for a record."""
    who = (f"net={record['network'] or '-'} container={record['container'] or '-'} if={record['ifname'] or '-'}")
    parts = [record["time"], f"{record['reason']:<13}", who, f"src={record['source'] or '-'}",
             f"dst={record['destination'] or '-'}", record["service"], f"key={record['key']}"]
    if record["container"] == "unknown" or record.get("note"):
        parts.insert(3, f"mac={record['sourceMac'] or '-'}")
    if record.get("note"):
        parts.append(f"note={json.dumps(record['note'])}")
    return " ".join(parts)


# --- the ring file the agent writes ------------------------------------------------------------
class Ring:
    """Append-only JSON lines, cut back to the last RING once it holds 2 * RING; each record
    carries `seq`, increasing across cuts and agent restarts, so a follower never prints one
    twice."""

    def __init__(self, path: str, keep: int = RING):
        self.path, self.keep = path, keep
        records = read(path)
        self.count = len(records)
        self.seq = records[-1]["seq"] if records else 0
        self.fd = self._open()

    def _open(self) -> int:
        from plugin.hoststate import open_private

        return open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def append(self, record: dict) -> None:
        self.seq += 1
        os.write(self.fd, (json.dumps({"seq": self.seq, **record}) + "\n").encode())
        self.count += 1
        if self.count >= 2 * self.keep:
            self._cut()

    def _cut(self) -> None:
        from plugin.registry import _write_atomically

        kept = read(self.path)[-self.keep:]
        _write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        os.close(self.fd)
        self.fd, self.count = self._open(), len(kept)


def _records(text: str) -> list[dict]:
    out = []
    for raw in text.splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue  # a line cut short by a crash: the others stand
        if isinstance(rec, dict) and isinstance(rec.get("seq"), int):
            out.append(rec)
    return out


def read(path: str) -> list[dict]:
    """The ring's records, oldest first ([] when there is none)."""
    from plugin.hoststate import read_private

    try:
        return _records(read_private(path))
    except FileNotFoundError:
        return []


def recording(state_dir: str) -> bool:
    """Whether an agent holds the ring's lock here (it is recording drops)."""
    import fcntl

    try:
        fd = os.open(os.path.join(state_dir, RING_LOCK), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # missing, or a symlink planted there: nobody records (a FIFO opens at once, unlocked)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


# --- the agent's side --------------------------------------------------------------------------
def record_in_background(stop: threading.Event, log) -> threading.Thread | None:
    """Start the agent's drop log recorder (unless ISOLATION_AGENT_DROP_LOG=off leaves the group
    to ulogd2 or another listener)."""
    if os.environ.get("ISOLATION_AGENT_DROP_LOG") == "off":
        log(f"drop log: not recorded (ISOLATION_AGENT_DROP_LOG=off): NFLOG group {NFLOG_GROUP} left to others")
        return None
    thread = threading.Thread(target=_record, args=(stop, log), name="drop-log", daemon=True)
    thread.start()
    return thread


def _record(stop: threading.Event, log) -> None:
    """Bind the group (waiting while another listener holds it), then record every drop until
    the agent stops; a failure is logged and the group bound anew after a pause, never raised."""
    import fcntl

    from plugin.hoststate import open_private, state_dir
    from plugin.nflog import GroupBusy, Listener, Logged

    lock, said = None, False
    while not stop.is_set():
        listener = None
        try:
            folder = state_dir()
            try:
                listener = Listener(NFLOG_GROUP)
            except GroupBusy as exc:
                if not said:
                    log(f"drop log: {exc.strerror}; trying again every {RETRY_BIND_S:g} s")
                    said = True
                stop.wait(RETRY_BIND_S)
                continue
            if lock is None:
                lock = open_private(os.path.join(folder, RING_LOCK), os.O_RDWR | os.O_CREAT)
                fcntl.flock(lock, fcntl.LOCK_EX)  # held until the agent exits: followers read the ring
            ring, senders = Ring(os.path.join(folder, RING_FILE)), Senders(folder)
            log(f"drop log: recording NFLOG group {NFLOG_GROUP} into {ring.path} (the last {RING} drops)")
            said = False
            while not stop.is_set():
                for item in listener.read(0.5):
                    if not isinstance(item, Logged):
                        log(f"drop log: skipped {item.note}")
                        continue
                    try:
                        record = describe(item, senders)
                    except Exception as exc:  # one packet's trouble is that packet's alone
                        log(f"drop log: skipped a packet: {type(exc).__name__}: {exc}")
                        continue
                    if record is not None:
                        ring.append(record)
        except Exception as exc:  # the drop log never takes the agent down
            log(f"drop log: {type(exc).__name__}: {exc}; starting again in {RETRY_BIND_S:g} s")
            stop.wait(RETRY_BIND_S)
        finally:
            if listener is not None:
                listener.close()


# --- `isolation drops` -------------------------------------------------------------------------
class _Done(Exception):
    """--count lines printed or --timeout reached."""


class _Printer:
    def __init__(self, as_json: bool, count: int | None, timeout: float | None):
        self.as_json, self.left = as_json, count
        self.until = time.monotonic() + timeout if timeout is not None else None

    def remaining(self) -> float | None:
        if self.until is None:
            return None
        left = self.until - time.monotonic()
        if left <= 0:
            raise _Done()
        return left

    def emit(self, record: dict) -> None:
        record = {k: v for k, v in record.items() if k != "seq"}
        sys.stdout.write((json.dumps(record) if self.as_json else line(record)) + "\n")
        sys.stdout.flush()
        if self.left is not None:
            self.left -= 1
            if self.left <= 0:
                raise _Done()


def run(follow: bool, as_json: bool, count: int | None, timeout: float | None) -> int:
    """`isolation drops`; see the module for what each form prints."""
    from plugin.hoststate import state_dir

    folder = state_dir()
    path = os.path.join(folder, RING_FILE)
    out = _Printer(as_json, count, timeout)
    try:
        if not follow:
            if not recording(folder):
                print(f"isolation: no agent is recording drops here: `isolation agent` records them, or run "
                      f"`isolation drops --follow` to listen to NFLOG group {NFLOG_GROUP} now", file=sys.stderr)
            records = read(path)
            for record in records[-count:] if count else records:
                out.emit(record)
            return 0
        if recording(folder):
            _follow_ring(folder, path, out)  # returns when the agent stops recording
            print("isolation: the agent stopped recording drops: listening to the group itself", file=sys.stderr,
                  flush=True)
        _follow_group(folder, out)
    except (_Done, KeyboardInterrupt, BrokenPipeError):
        pass
    return 0


def _follow_ring(folder: str, path: str, out: _Printer) -> None:
    """Print the ring's new records until the agent no longer records."""
    from plugin.hoststate import open_private

    print(f"isolation: following the agent's drop log {path}", file=sys.stderr, flush=True)
    seen = max((r["seq"] for r in read(path)), default=0)
    inode, offset, partial = None, 0, b""
    next_check, stopped = time.monotonic() + 1.0, False
    while not stopped:
        if time.monotonic() >= next_check:
            stopped = not recording(folder)  # what it wrote before it stopped is still read below
            next_check = time.monotonic() + 1.0
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_ino != inode or st.st_size < offset):  # new, or cut back
            inode, offset, partial = st.st_ino, 0, b""
            fresh = read(path)
            if fresh and fresh[-1]["seq"] < seen:  # the file was made anew: its numbering too
                seen = 0
        if st is not None and st.st_size > offset:
            with os.fdopen(open_private(path), "rb") as f:  # never through a symlink, never a FIFO
                f.seek(offset)
                data = f.read(st.st_size - offset)
            offset += len(data)
            chunk, _, partial = (partial + data).rpartition(b"\n")
            for record in _records(chunk.decode(errors="replace")):
                if record["seq"] > seen:
                    seen = record["seq"]
                    out.emit(record)
        left = out.remaining()
        if not stopped:
            time.sleep(POLL_S if left is None else min(POLL_S, left))


def _follow_group(folder: str, out: _Printer) -> None:
    from plugin.nflog import GroupBusy, Listener, Logged

    try:
        listener = Listener(NFLOG_GROUP)
    except GroupBusy as exc:
        raise SystemExit(_fail(exc.strerror)) from None
    except OSError as exc:
        raise SystemExit(_fail(exc.strerror or str(exc))) from None
    print(f"isolation: listening to NFLOG group {NFLOG_GROUP} (no agent records drops here)", file=sys.stderr,
          flush=True)
    senders = Senders(folder)
    try:
        while True:
            for item in listener.read(out.remaining()):
                if not isinstance(item, Logged):
                    print(f"isolation: skipped {item.note}", file=sys.stderr, flush=True)
                    continue
                record = describe(item, senders)
                if record is not None:
                    out.emit(record)
            out.remaining()
    finally:
        listener.close()


def _fail(message: str) -> int:
    print(f"isolation: {message}", file=sys.stderr)
    return 1
