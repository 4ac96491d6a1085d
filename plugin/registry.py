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
from plugin.record import Factory, as_dict, from_dict, record

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

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.network, self.container, self.ifname)


def _attachment(raw: dict) -> Attachment:
    if not isinstance(raw, dict):
        raise ValueError("an attachment must be an object")
    att = from_dict(Attachment, raw)
    att.__dict__["addresses"] = tuple(att.addresses)  # JSON has lists; records are hashable
    return att


def attachment_key(network: str, container: str, ifname: str) -> tuple[str, str, str]:
    """What identifies an attachment (CNI's network name, container ID and interface)."""
    return (network, container, ifname)


@record
class Registry:
    path: str
    attachments: dict[tuple[str, str, str], Attachment] = Factory(dict)
    backends: dict[str, dict] = Factory(dict)  # per-backend facts, e.g. tables we created
    lines: dict = Factory(dict)  # key -> (attachment as loaded, its line): unchanged ones are not re-encoded

    @classmethod
    def load(cls, state_dir: str) -> "Registry":
        """The registry of this namespace; a missing one is empty, an unreadable one is set aside."""
        path = os.path.join(state_dir, FILENAME)
        try:
            with open(path) as f:
                text = f.read()
            reg = cls(path)
            head, _, rest = text.partition("\n")
            if head.endswith('"attachments": [') and rest.endswith("\n]}\n"):  # one line per attachment
                data = json.loads(head + "]}")
                body = rest[:-4]
                lines = body.split(",\n") if body else []
                items = json.loads(f"[{body}]")  # one call: the C decoder, not one per line
                if len(items) != len(lines):
                    raise ValueError("an attachment spans lines")
                for line, raw in zip(lines, items):
                    att = _attachment(raw)
                    reg.attachments[att.key] = att
                    reg.lines[att.key] = (att, line)
            else:
                data = json.loads(text)
                for raw in data["attachments"]:
                    att = _attachment(raw)
                    reg.attachments[att.key] = att
            if data.get("format") != FORMAT:
                raise ValueError(f"unknown registry format {data.get('format')!r}")
            reg.backends = data.get("backends", {})
            return reg
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            # Never torn (atomic writes), so this is outside damage: keep it for inspection.
            os.replace(path, f"{path}.unreadable")
            return cls(path)

    def save(self) -> None:
        """Atomically (write, fsync, rename); only ever called under the HostLock."""
        # One line per attachment: json's C encoder, and only for attachments not read as
        # they are (an indent would select the pure-Python encoder: 100 ms per ADD at 1000).
        lines = []
        for key in sorted(self.attachments):
            att, cached = self.attachments[key], self.lines.get(key)
            lines.append(cached[1] if cached and cached[0] is att else json.dumps(as_dict(att), separators=(",", ":")))
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
        return [a for a in self.attachments.values() if a.bridge == bridge and a.backend == backend]

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
