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
from plugin.record import Factory, as_dict, record

FILENAME = "registry.json"
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
    def key(self) -> str:
        return attachment_key(self.network, self.container, self.ifname)


def attachment_key(network: str, container: str, ifname: str) -> str:
    return json.dumps([network, container, ifname])


@record
class Registry:
    path: str
    attachments: dict[str, Attachment] = Factory(dict)
    backends: dict[str, dict] = Factory(dict)  # per-backend facts, e.g. tables we created

    @classmethod
    def load(cls, state_dir: str) -> "Registry":
        """The registry of this namespace; a missing one is empty, an unreadable one is set aside."""
        path = os.path.join(state_dir, FILENAME)
        try:
            with open(path) as f:
                data = json.load(f)
            if data.get("format") != FORMAT:
                raise ValueError(f"unknown registry format {data.get('format')!r}")
            atts = [Attachment(**{**a, "addresses": tuple(a.get("addresses", ()))}) for a in data["attachments"]]
            return cls(path, {a.key: a for a in atts}, data.get("backends", {}))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, TypeError, KeyError):
            # Never torn (atomic writes), so this is outside damage: keep it for inspection.
            os.replace(path, f"{path}.unreadable")
            return cls(path)

    def save(self) -> None:
        data = {
            "format": FORMAT,
            "attachments": [as_dict(a) for a in sorted(self.attachments.values(), key=lambda a: a.key)],
            "backends": self.backends,
        }
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise CniError(IO_FAILURE, f"cannot write the attachment registry {self.path}: {exc.strerror}") from None

    def on_bridge(self, bridge: str, backend: str) -> list[Attachment]:
        return [a for a in self.attachments.values() if a.bridge == bridge and a.backend == backend]

    def on_backend(self, backend: str) -> list[Attachment]:
        return [a for a in self.attachments.values() if a.backend == backend]
