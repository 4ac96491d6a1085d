"""The attachment registry: which container interfaces sit on which bridge, per host namespace.

It is the source of truth for teardown: a bridge's rules go when its last
attachment goes, and the tables when the last bridge goes. It lives in the
namespace's state directory under /run, so it vanishes at reboot together with
the rules it describes, and is only read or written under the HostLock. Writes
are atomic (write, fsync, rename): a crash leaves the old or the new registry,
never a torn one.
"""

import json
import os

from plugin.errors import IO_FAILURE, CniError
from plugin.record import as_dict, from_dict, record

FILENAME = "registry.json"
DEFERRED = "deferred-del"  # DELs that could not take the lock: done by the next locked run
FORMAT = 1


@record(frozen=True, unhashed=("guard",))
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
    mac: str | None = None  # the container interface's MAC (prevResult)
    spoof: tuple[str, ...] | None = None  # antiSpoofing: the addresses the port may send from (None: off)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.network, self.container, self.ifname)


def _attachment(raw: dict) -> Attachment:
    if not isinstance(raw, dict):
        raise ValueError("an attachment must be an object")
    att = from_dict(Attachment, raw)
    att.__dict__["addresses"] = tuple(att.addresses)  # JSON has lists; records are hashable
    if att.spoof is not None:
        att.__dict__["spoof"] = tuple(att.spoof)
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

    @classmethod
    def load(cls, state_dir: str) -> "Registry":
        """The registry of this namespace; a missing one is empty, an unreadable one is set aside."""
        path = os.path.join(state_dir, FILENAME)
        try:
            with open(path) as f:
                text = f.read()
            head, _, rest = text.partition("\n")
            one_per_line = head.endswith('"attachments": [') and rest.endswith("\n]}\n")
            data = json.loads(head + "]}" if one_per_line else text)
            if data.get("format") != FORMAT or not isinstance(data.get("backends", {}), dict):
                raise Unreadable(f"unknown registry format {data.get('format')!r}")
            if one_per_line:
                body = rest[:-4]
                return cls(path, data.get("backends", {}), body.split(",\n") if body else [])
            reg = cls(path, data.get("backends", {}))  # written some other way (by hand): decoded whole
            reg._decoded = {att.key: att for att in map(_attachment, data["attachments"])}
            return reg
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return cls._set_aside(path)

    @classmethod
    def _set_aside(cls, path: str) -> "Registry":
        # Never torn (atomic writes), so this is outside damage: keep it for inspection.
        os.replace(path, f"{path}.unreadable")
        return cls(path)

    def _decode(self, lines: list[str]) -> list[Attachment]:
        try:
            items = json.loads(f"[{','.join(lines)}]")  # one call: the C decoder, not one per line
            if len(items) != len(lines):
                raise Unreadable("an attachment spans lines")
            found = [_attachment(raw) for raw in items]
        except (ValueError, TypeError, KeyError, AttributeError):
            fresh = self._set_aside(self.path)
            self.backends, self._lines, self._decoded, self._as_read = fresh.backends, [], {}, {}
            return []
        for att, line in zip(found, lines):
            self._as_read[att.key] = (att, line)
        return found

    @property
    def attachments(self) -> dict[tuple[str, str, str], Attachment]:
        """Every attachment by key (decodes the whole file the first time)."""
        if self._decoded is None:
            found = self._decode(self._lines)
            if self._decoded is None:  # not set aside as unreadable
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
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(text)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise CniError(IO_FAILURE, f"cannot write the attachment registry {self.path}: {exc.strerror}") from None

    def on_bridge(self, bridge: str, backend: str) -> list[Attachment]:
        return [a for a in self.matching(bridge) if a.bridge == bridge and a.backend == backend]

    def on_backend(self, backend: str) -> list[Attachment]:
        return [a for a in self.attachments.values() if a.backend == backend]


def defer_delete(state_dir: str, key: tuple[str, str, str]) -> None:
    """Record a DEL for the next run that holds the lock (atomic file per attachment)."""
    import hashlib

    folder = os.path.join(state_dir, DEFERRED)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    name = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]
    tmp = os.path.join(folder, f".{name}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(list(key), f)
    os.replace(tmp, os.path.join(folder, name))


def deferred_deletes(state_dir: str) -> list[tuple[str, tuple[str, str, str]]]:
    """(file, attachment key) of every deferred DEL; unreadable files are dropped."""
    folder = os.path.join(state_dir, DEFERRED)
    try:
        names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path) as f:
                key = json.load(f)
            if isinstance(key, list) and len(key) == 3 and all(isinstance(k, str) for k in key):
                found.append((path, tuple(key)))
                continue
        except (OSError, ValueError):
            pass
        os.remove(path)
    return found
