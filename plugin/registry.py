"""The attachment registry: which container interfaces sit on which bridge, per host namespace.

It is the source of truth for teardown: a bridge's rules go when its last
attachment goes, and the tables when the last bridge goes. It lives in the
namespace's state directory under /run, so it vanishes at reboot together with
the rules it describes, and is only read or written under the HostLock. Writes
are atomic (write, fsync, rename): a crash leaves the old or the new registry,
never a torn one.

Damage from outside (a torn line, a flipped byte, an I/O error) is never read as
"nothing registered": the readable lines are kept, the file as found is set aside,
and a marker (`registry.damaged`) stays until `isolation reconcile` has rebuilt a
registry it can vouch for. While it is there, teardown removes only what provably
belongs to the departing attachment (plugin.lifecycle) and `isolation status` fails.
"""

import os

from plugin import jsonio as json, trace  # json's C accelerator alone: no re, enum (plugin.jsonio)
from plugin.errors import IO_FAILURE, CniError
from plugin.hoststate import private_dir, read_private, refuse, write_private
from plugin.links import valid_name as _valid_name  # loaded on every verb anyway (plugin.result)
from plugin.policy import Guard
from plugin.record import as_dict, from_dict, value_class

FILENAME = "registry.json"
DEFERRED = "deferred-del"  # DELs that could not take the lock: done by the next locked run
DAMAGED = "registry.damaged"  # present while the registry may lack attachments (see above)
FORMAT = 1
POLICIES = ("open", "same-bridge", "isolated")
BACKENDS = ("nftables", "iptables")


@value_class(frozen=True, unhashed=("guard",))
class Attachment:
    network: str
    container: str
    ifname: str
    bridge: str
    port: str | None
    policy: str
    backend: str
    addresses: tuple[str, ...] = ()
    published: bool = True
    group: str | None = None
    guard: dict | None = None  # policy.Guard.to_json()
    portindex: int | None = None  # the port's ifindex at ADD: a port gone, or replaced by a namesake, has vanished
    mac: str | None = None  # the container interface's MAC (prevResult)
    spoof: tuple[str, ...] | None = None  # antiSpoofing: the addresses the port may send from (None: off)
    logdrops: bool = False  # logDrops: its bridge's drops go to the drop log
    routed: bool = False  # `bridge` is a routed segment (policy.segment_of): no bridge, `port` is its member
    tenant: str | None = None  # its own isolationGroup from CNI args (absent from older lines: none)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.network, self.container, self.ifname)


def _attachment(raw: dict) -> Attachment:
    """An Attachment from its decoded line, checked field by field: a damaged line that is
    still JSON must not reach the rules (or fail later with an internal error)."""
    if not isinstance(raw, dict):
        raise ValueError("an attachment must be an object")
    att = from_dict(Attachment, raw)
    fields = att.__dict__
    addresses = fields["addresses"]
    if type(addresses) is not list or not all(type(a) is str for a in addresses):
        raise ValueError("addresses: not a list of strings")
    fields["addresses"] = tuple(addresses)  # JSON has lists; records are hashable
    if not (type(fields["network"]) is type(fields["container"]) is type(fields["ifname"]) is str):
        raise ValueError("network, container and ifname must be strings")
    port = fields["port"]
    if not _valid_name(fields["bridge"]) or not (port is None or _valid_name(port)):
        raise ValueError("bridge or port: not an interface name")
    if fields["policy"] not in POLICIES or fields["backend"] not in BACKENDS or type(fields["published"]) is not bool:
        raise ValueError("policy, backend or published: not a known value")
    if fields["group"] is not None and type(fields["group"]) is not str or (
            fields["portindex"] is not None and type(fields["portindex"]) is not int):
        raise ValueError("group or portindex: wrong type")
    if fields["guard"] is not None:
        try:
            Guard.from_json(fields["guard"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError("guard: malformed") from None
    if fields["mac"] is not None and type(fields["mac"]) is not str:
        raise ValueError("mac: not a string")
    if fields["tenant"] is not None and type(fields["tenant"]) is not str:
        raise ValueError("tenant: not a string")
    if type(fields["logdrops"]) is not bool:
        raise ValueError("logdrops: not a bool")
    if type(fields["routed"]) is not bool or (fields["routed"] and fields["port"] is None):
        raise ValueError("routed: not a bool, or a routed attachment without its interface")
    spoof = fields["spoof"]
    if spoof is not None:
        if type(spoof) is not list or not all(type(a) is str for a in spoof):
            raise ValueError("spoof: not a list of strings")
        fields["spoof"] = tuple(spoof)
    return att


def attachment_key(network: str, container: str, ifname: str) -> tuple[str, str, str]:
    """What identifies an attachment (CNI's network name, container ID and interface)."""
    return (network, container, ifname)


def _encode(att: Attachment) -> str:
    return json.dumps(as_dict(att), separators=(",", ":"))


def _line_prefix(key: tuple[str, str, str]) -> str:
    """How the line of the attachment with `key` begins (its first fields are the key's)."""
    return '{"network":%s,"container":%s,"ifname":%s,' % tuple(json.dumps(k) for k in key)


class Unreadable(ValueError):
    """The registry file is damaged (from outside: our writes are atomic)."""


class Registry:
    """The attachments of one host namespace, read lazily.

    The file holds one JSON object per line. An ADD or CHECK needs only the attachments
    of one bridge or isolationGroup: `matching` and `get` find their lines by substring
    and decode just those, and `put` + `save` write the others back as they were read,
    so their cost does not grow with the number of networks. Anything that needs every
    attachment (`attachments`) decodes the whole file once, with one call to json's C
    decoder; `save` then re-encodes only what changed.
    """

    def __init__(self, path: str, backends: dict | None = None, lines: list[str] | None = None):
        self.path = path
        self.backends: dict[str, dict] = backends if backends is not None else {}  # per-backend facts
        self._lines = lines or []  # attachments as read, undecoded, in file order
        self._decoded: dict[tuple[str, str, str], Attachment] | None = None if lines else {}
        self._as_read: dict = {}  # key -> (attachment as decoded, its line): unchanged ones keep their line
        self.writes = 0  # saves by this object (detaching N attachments must cost one)
        self.damaged: str | None = None  # why this registry may lack attachments (see the module)

    @classmethod
    def load(cls, state_dir: str) -> "Registry":
        """The registry of this namespace; a missing one is empty, a damaged one is salvaged
        (its readable lines kept, the file set aside, the damage marked)."""
        reg = cls._load(os.path.join(state_dir, FILENAME))
        trace.stamp("registry")
        return reg

    @classmethod
    def _load(cls, path: str) -> "Registry":
        try:
            raw = read_private(path, binary=True)  # ours alone, or refused (CniError 5): it decides the rules
        except FileNotFoundError:
            return cls(path)._note_marker()
        except OSError as exc:
            return cls._salvage(path, b"", f"cannot read it: {exc.strerror}")
        try:
            text = raw.decode()
            head, _, rest = text.partition("\n")
            one_per_line = head.endswith('"attachments": [') and rest.endswith("\n]}\n")
            data = json.loads(head + "]}" if one_per_line else text)
            if data.get("format") != FORMAT or not isinstance(data.get("backends", {}), dict):
                raise Unreadable(f"unknown registry format {data.get('format')!r}")
            if one_per_line:
                body = rest[:-4]
                return cls(path, data.get("backends", {}), body.split(",\n") if body else [])._note_marker()
            reg = cls(path, data.get("backends", {}))  # written some other way (by hand): decoded whole
            reg._decoded = {att.key: att for att in map(_attachment, data["attachments"])}
            return reg._note_marker()
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return cls._salvage(path, raw, f"{type(exc).__name__}: {exc}"[:200])

    def _note_marker(self) -> "Registry":
        """Take over the damage recorded by an earlier run (until `isolation reconcile` clears it)."""
        try:
            with open(os.path.join(os.path.dirname(self.path), DAMAGED), errors="replace") as f:
                self.damaged = f.read().strip() or "damaged"
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.damaged = f"the damage marker cannot be read: {exc.strerror}"
        return self

    @classmethod
    def _salvage(cls, path: str, raw: bytes, reason: str, as_found: bytes | None = None) -> "Registry":
        """The attachments of every line that still decodes on its own; the rest is damage.
        `as_found`: what to set aside, when `raw` is not the file's content (default: `raw`)."""
        backends, found, bad = {}, {}, 0
        lines = raw.split(b"\n")
        try:
            head = json.loads(lines[0] + b"]}")
            if head.get("format") == FORMAT and isinstance(head.get("backends"), dict):
                backends = head["backends"]
        except (ValueError, TypeError, AttributeError):
            pass
        for line in lines[1:]:
            line = line.strip().rstrip(b",")
            if line in (b"", b"]}"):
                continue
            try:
                att = _attachment(json.loads(line))
                found[att.key] = att
            except (ValueError, TypeError, KeyError, AttributeError):
                bad += 1
        reg = cls(path, backends)
        reg._decoded = found
        reg._mark_damaged(f"{reason}; {bad} unreadable line(s), {len(found)} attachment(s) kept",
                          raw if as_found is None else as_found)
        return reg

    def _mark_damaged(self, reason: str, raw: bytes) -> None:
        """Set the damaged file aside (first copy kept) and leave the marker for later runs."""
        import time

        folder = os.path.dirname(self.path)
        aside = f"{self.path}.damaged"
        note = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: {reason} (as found: {aside})"
        if self.damaged is None:
            self._note_marker()
        try:
            if self.damaged is None:  # a new episode: keep the file as found, then mark it
                _write_atomically(aside, raw)
                _write_atomically(os.path.join(folder, DAMAGED), note.encode() + b"\n")
        except OSError:
            pass  # the damage is still known to this run; later runs find the file damaged again
        self.damaged = self.damaged or note

    def clear_damage(self) -> None:
        """Only `isolation reconcile`, once it has rebuilt the registry from what it can prove."""
        try:
            os.remove(os.path.join(os.path.dirname(self.path), DAMAGED))
        except FileNotFoundError:
            pass
        self.damaged = None

    def _decode(self, lines: list[str]) -> list[Attachment]:
        try:
            items = json.loads(f"[{','.join(lines)}]")  # one call: the C decoder, not one per line
            if len(items) != len(lines):
                raise Unreadable("an attachment spans lines")
            found = [_attachment(raw) for raw in items]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # damage found lazily: salvage the whole file, then answer from what survived
            keys = set()
            for line in lines:
                try:
                    keys.add(_attachment(json.loads(line)).key)
                except (ValueError, TypeError, KeyError, AttributeError):
                    pass
            everything = "\n".join(["{}", *[line + "," for line in self._lines], "]}"]).encode()
            try:
                with open(self.path, "rb") as f:
                    as_found = f.read()
            except OSError:
                as_found = everything
            fresh = self._salvage(self.path, everything, f"{type(exc).__name__}: {exc}"[:200], as_found)
            self._lines, self._decoded, self._as_read = [], fresh._decoded, {}
            self.damaged = fresh.damaged
            return [att for key, att in self._decoded.items() if key in keys]
        for att, line in zip(found, lines):
            self._as_read[att.key] = (att, line)
        return found

    @property
    def attachments(self) -> dict[tuple[str, str, str], Attachment]:
        """Every attachment by key (decodes the whole file the first time)."""
        if self._decoded is None:
            found = self._decode(self._lines)
            if self._decoded is None:  # not salvaged as damaged
                self._decoded = {att.key: att for att in found}
                self._lines = []
        return self._decoded

    def matching(self, bridge: str, group: str | None = None) -> list[Attachment]:
        """The attachments on `bridge` or in isolationGroup `group`, decoding only their lines."""
        if self._decoded is not None:
            return [a for a in self._decoded.values() if a.bridge == bridge or (group and a.group == group)]
        needles = ['"bridge":%s,' % json.dumps(bridge)] + (['"group":%s,' % json.dumps(group)] if group else [])
        lines = [line for line in self._lines if any(n in line for n in needles)]
        return [a for a in self._decode(lines) if a.bridge == bridge or (group and a.group == group)]

    def get(self, key: tuple[str, str, str]) -> Attachment | None:
        if self._decoded is not None:
            return self._decoded.get(key)
        prefix = _line_prefix(key)
        found = self._decode([line for line in self._lines if line.startswith(prefix)])
        return found[-1] if found else None

    def put(self, att: Attachment) -> None:
        """Record `att`, replacing the attachment with its key."""
        if self._decoded is not None:
            self._decoded.pop(att.key, None)
            self._decoded[att.key] = att
            return
        prefix = _line_prefix(att.key)
        self._lines = [line for line in self._lines if not line.startswith(prefix)]
        self._lines.append(_encode(att))

    def save(self) -> None:
        """Atomically (write, fsync, rename); only ever called under the HostLock."""
        # One line per attachment: json's C encoder, and only for attachments not read as
        # they are (an indent would select the pure-Python encoder: 100 ms per ADD at 1000).
        trace.stamp("save")
        if self._decoded is None:
            lines = self._lines
        else:
            lines = []
            for key, att in self._decoded.items():
                cached = self._as_read.get(key)
                lines.append(cached[1] if cached and cached[0] is att else _encode(att))
        text = "".join([
            f'{{"format": {FORMAT}, "backends": {json.dumps(self.backends, sort_keys=True)}, "attachments": [\n',
            ",\n".join(lines),
            "\n]}\n",
        ]).encode()
        folder, prefix = os.path.split(self.path)
        for name in os.listdir(folder):  # a run killed mid-write left it: writers hold the lock
            if name.startswith(prefix + ".") and name.endswith(".tmp"):
                os.unlink(os.path.join(folder, name))
        try:
            _write_atomically(self.path, text)
        except OSError as exc:
            raise CniError(IO_FAILURE, f"cannot write the attachment registry {self.path}: {exc.strerror}") from None
        self.writes += 1
        trace.stamp("saved")

    def tenanted(self) -> bool:
        """Whether some attachment has a per-container isolationGroup (a tenant's elements span
        bridges: judging one bridge then needs every attachment). Decodes nothing."""
        if self._decoded is not None:
            return any(a.tenant for a in self._decoded.values())
        return any('"tenant":"' in line for line in self._lines)

    def on_bridge(self, bridge: str, backend: str) -> list[Attachment]:
        return [a for a in self.matching(bridge) if a.bridge == bridge and a.backend == backend]

    def on_backend(self, backend: str) -> list[Attachment]:
        return [a for a in self.attachments.values() if a.backend == backend]


def _write_atomically(path: str, data: bytes) -> None:
    """Write, fsync, rename: readers see the old file or the new one, never a torn one."""
    write_private(path, data)


def defer_delete(state_dir: str, key: tuple[str, str, str]) -> None:
    """Record a DEL for the next run that holds the lock (atomic file per attachment)."""
    import hashlib

    folder = private_dir(os.path.join(state_dir, DEFERRED))
    name = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]
    tmp = os.path.join(folder, f".{name}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(list(key)))
    os.replace(tmp, os.path.join(folder, name))


def deferred_deletes(state_dir: str) -> list[tuple[str, tuple[str, str, str]]]:
    """(file, attachment key) of every deferred DEL; unreadable files are dropped."""
    folder = os.path.join(state_dir, DEFERRED)
    try:
        names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise refuse(folder, "it is not a directory") from None
    private_dir(folder)  # a planted DEL would remove a container's isolation
    found = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path) as f:
                key = json.loads(f.read())
            if isinstance(key, list) and len(key) == 3 and all(isinstance(k, str) for k in key):
                found.append((path, tuple(key)))
                continue
        except (OSError, ValueError):
            pass
        os.remove(path)
    return found
