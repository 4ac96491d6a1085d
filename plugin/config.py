"""Loading the plugin configuration, validating each distinct one only once.

Every container of a network brings the same configuration (only prevResult
differs), yet validating it means importing pydantic and building the model:
~70 ms on every container start. The model's verdict for an accepted
configuration is therefore memoised in the namespace's root-only state
directory, keyed by the exact input (but for the network's name, which the model
never looks at) and by the fingerprint of the running code, so a new build never
trusts an old verdict; the first container of a network whose entry another
network already has (runtimes give every network the same one) copies that
network's verdict instead of importing pydantic. Rejected input is never cached: it
is validated (and explained) every time. A cached verdict decides the rules, so one
that is not root's alone is refused (error 5), never used; each file is named after
its network, and a network's verdicts go when its last attachment does (prune).
"""

import os
import sys

try:  # CPython's own SHA-256: `hashlib` would load OpenSSL's libcrypto and parse openssl.cnf (~2 ms)
    from _sha256 import sha256
except ImportError:  # Python >= 3.12 names it _sha2; elsewhere, hashlib
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

from plugin import __version__
from plugin import jsonio as json  # json's C accelerator alone: no re, enum (plugin.jsonio)
from plugin.hoststate import private_dir, read_private, state_dir

SimpleNamespace = type(sys.implementation)  # types.SimpleNamespace, without importing `types` from the bundle's zip

# Vary per container, and the model never looks at them (its fields are disjoint from these:
# tests/unit/test_config.py): prevResult is the protocol layer's, `args` plugin.tenant's,
# `runtimeConfig` (what libcni injects for capabilities) nobody's here. Kept in the key, each
# container with its own tenant or port mappings would import pydantic (~100 ms) and leave a
# cache file of its own until its network's last container goes.
IGNORED = ("prevResult", "args", "runtimeConfig")
# The network's name is in the file name, not in the digest: the model does not look at it
# (tests/unit/test_import_budget.py checks that), so networks whose entries differ only in
# their names (runtimes give each network the same `{"type": "isolation"}`) share one verdict.
SHARED = ("name",)
FOLDER = "config"


_FINGERPRINT = []  # computed once per process


def _fingerprint() -> str:
    """Changes whenever the code that validates changes: a digest of the model's and this
    module's code as the running program loads them (the bundle's .pyc files when frozen,
    the sources otherwise). Not the executable's size and mtime: the bundle keeps its
    modules beside a bootloader that stays the same from build to build, and reproducible
    builds clamp mtimes."""
    if not _FINGERPRINT:
        frozen = getattr(sys, "frozen", False)
        here = os.path.join(sys._MEIPASS, "plugin") if frozen else os.path.dirname(os.path.abspath(__file__))
        digest = sha256(__version__.encode())
        for name in ("model", "config"):
            with open(os.path.join(here, name + (".pyc" if frozen else ".py")), "rb") as f:
                digest.update(f.read())
        _FINGERPRINT.append(digest.hexdigest())
    return _FINGERPRINT[0]


def _key(raw: dict) -> str:
    return f"{network_tag(raw.get('name'))}-{_digest(raw)}"


def _digest(raw: dict) -> str:
    subset = {k: v for k, v in raw.items() if k not in IGNORED and k not in SHARED}
    text = json.dumps([_fingerprint(), subset], sort_keys=True, separators=(",", ":"))
    return sha256(text.encode()).hexdigest()


def network_tag(name) -> str:
    """The first part of the cache file names of network `name` (prune matches on it)."""
    return sha256(json.dumps(name).encode()).hexdigest()[:16]


def load(raw: dict, use_cache: bool = True) -> SimpleNamespace:
    """The validated configuration (attributes as in plugin.model.NetConf), or CniError 7."""
    path = None
    if use_cache:
        folder = private_dir(os.path.join(state_dir(), FOLDER))
        path = os.path.join(folder, _key(raw) + ".json")
        try:
            return SimpleNamespace(**json.loads(read_private(path)))  # refused (CniError 5) unless ours alone
        except (OSError, ValueError, TypeError):
            pass
        values = _sibling(folder, _digest(raw))  # the first container of a network: another network's
        if values is not None:  # verdict for the same entry saves importing pydantic (~100 ms)
            _store(path, values)
            return SimpleNamespace(**values)
    from plugin.model import parse

    conf = parse(raw)
    extra = conf.model_extra or {}  # what runtimes add (name, cniVersion, prevResult...): not ours to keep
    values = {k: v for k, v in conf.model_dump(mode="json").items() if k not in extra}
    if path:
        _store(path, values)
    return SimpleNamespace(**values)


def _sibling(folder: str, digest: str) -> dict | None:
    """The verdict another network's identical entry got (checked as our own: CniError 5 unless
    root's alone), or None."""
    suffix = f"-{digest}.json"
    for name in os.listdir(folder):
        if name.endswith(suffix):
            try:
                values = json.loads(read_private(os.path.join(folder, name)))
            except (OSError, ValueError):
                continue
            if isinstance(values, dict):
                return values
    return None


def _store(path: str, values: dict) -> None:
    """Write atomically; a cache that cannot be written only costs time."""
    try:
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(values))
        os.replace(tmp, path)
    except OSError:
        pass


def prune(networks) -> int:
    """Remove the cached verdicts of every network not in `networks` (those with attachments
    left); returns how many went. Called under the HostLock after a detach."""
    folder = os.path.join(state_dir(), FOLDER)
    keep = {network_tag(n) for n in networks}
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    private_dir(folder)
    gone = 0
    for name in names:
        if name.split("-", 1)[0] not in keep:
            try:
                os.unlink(os.path.join(folder, name))
                gone += 1
            except OSError:
                pass
    return gone
