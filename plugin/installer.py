"""`isolation install`: puts this bundle on a node and chains the plugin into its CNI config.

Made for a DaemonSet's containers (deploy/kubernetes/), which see the node under a host
root such as /host, as Multus, Calico or Istio install their plugins:

- The bundle is copied to BIN_DIR/.isolation-bundle/<version>-<content hash>/ under a
  temporary name, then renamed; BIN_DIR/isolation is a relative symlink to it, replaced
  by rename(2): a runtime starting the plugin at any moment finds one whole bundle. Each
  bin dir gets its own copy (they may be different mounts). The previous bundle is kept,
  older ones removed. BIN_DIR/isolation that is not such a link belongs to someone else:
  it is never replaced, and the install fails.
- `{"type": "isolation", ...}` is appended to the node's primary network configuration,
  the first file of CONF_DIR in lexical order as libcni picks it (a `.conf` becomes a
  `.conflist`), written to a temporary file in the same directory and renamed over.
  `--watch` re-inserts it whenever the main CNI rewrites the file; `--uninstall` takes it
  out, and the links and bundles out of the bin dirs.

Imported only for this subcommand, never by the plugin's verbs.
"""

import hashlib
import json
import os
import shutil
import signal
import sys
import time

from plugin import __version__

BUNDLE_DIR = ".isolation-bundle"
NAME = "isolation"
CONF_EXTENSIONS = (".conf", ".conflist", ".json")  # what libcni reads from a config dir
CHAINABLE = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


class InstallError(Exception):
    """Something the admin must fix; nothing was changed by the step that raised it."""


# --- the bundle ---------------------------------------------------------------------------
def running_bundle() -> str:
    """The directory of the bundle this process runs from (holds `isolation` and _internal)."""
    return os.path.dirname(os.path.realpath(sys.executable))


def bundle_id(bundle: str) -> str:
    """<version>-<hash of every file's path and content>: the same build, the same name."""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(bundle):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, bundle).encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return f"{__version__}-{digest.hexdigest()[:12]}"


def _link_target(version: str) -> str:
    return os.path.join(BUNDLE_DIR, version, NAME)


def _owned(link: str) -> bool:
    """Whether `link` is ours: a symlink into our bundle directory (or absent)."""
    if not os.path.lexists(link):
        return True
    return os.path.islink(link) and os.readlink(link).startswith(BUNDLE_DIR + "/")


def _swap_link(target: str, link: str) -> None:
    tmp = f"{link}.{os.getpid()}.tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def install_bundle(bin_dir: str, bundle: str, version: str) -> str:
    """Copy and switch atomically; returns what was done, for the log."""
    link = os.path.join(bin_dir, NAME)
    if not os.path.isdir(bin_dir):
        raise InstallError(f"{bin_dir} does not exist (is the host's bin dir mounted?)")
    if not _owned(link):
        raise InstallError(f"{link} exists and is not installed by `isolation install`; left as it is")
    store = os.path.join(bin_dir, BUNDLE_DIR)
    os.makedirs(store, exist_ok=True)
    dest = os.path.join(store, version)
    if not os.path.isdir(dest):
        tmp = os.path.join(store, f".{version}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            shutil.copytree(bundle, tmp, symlinks=True)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    old = os.readlink(link) if os.path.islink(link) else None
    if old == _link_target(version):
        done = f"{link}: {version} already installed"
    else:
        if old:
            _swap_link(os.path.dirname(old)[len(BUNDLE_DIR) + 1:], os.path.join(store, "previous"))
        _swap_link(_link_target(version), link)
        done = f"{link} -> {version}" + (f" (was {os.path.dirname(old)[len(BUNDLE_DIR) + 1:]})" if old else "")
    _prune(store, keep={version, _readlink_or_none(os.path.join(store, "previous"))})
    return done


def _readlink_or_none(path: str) -> str | None:
    return os.readlink(path) if os.path.islink(path) else None


def _prune(store: str, keep: set) -> None:
    for name in os.listdir(store):
        path = os.path.join(store, name)
        if name not in keep and not os.path.islink(path) and os.path.isdir(path) and not name.endswith(".tmp"):
            shutil.rmtree(path, ignore_errors=True)


def uninstall_bundle(bin_dir: str) -> str:
    link = os.path.join(bin_dir, NAME)
    if not _owned(link):
        return f"{link} is not ours: left as it is"
    if os.path.lexists(link):
        os.unlink(link)
    shutil.rmtree(os.path.join(bin_dir, BUNDLE_DIR), ignore_errors=True)
    return f"{link} removed"


# --- the node's network configuration -------------------------------------------------------
def primary_conf(conf_dir: str) -> str | None:
    """The file libcni uses: the first of the directory in lexical order."""
    try:
        names = sorted(n for n in os.listdir(conf_dir) if n.endswith(CONF_EXTENSIONS) and not n.startswith("."))
    except FileNotFoundError:
        raise InstallError(f"{conf_dir} does not exist (is the host's CNI config dir mounted?)") from None
    return os.path.join(conf_dir, names[0]) if names else None


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise InstallError(f"{path}: not a readable JSON network configuration ({exc}); left untouched") from None
    if not isinstance(data, dict):
        raise InstallError(f"{path}: not a JSON object; left untouched")
    return data


def as_conflist(data: dict, path: str) -> dict:
    """A `.conf` (one plugin) as the equivalent conflist; a conflist as it is (validated)."""
    if "plugins" in data:
        if not isinstance(data["plugins"], list) or not all(isinstance(p, dict) for p in data["plugins"]):
            raise InstallError(f"{path}: `plugins` is not a list of objects; left untouched")
        conflist = data
    else:
        if "type" not in data:
            raise InstallError(f"{path}: neither a conflist (`plugins`) nor a plugin (`type`); left untouched")
        plugin = {k: v for k, v in data.items() if k not in ("cniVersion", "name")}
        conflist = {"cniVersion": data.get("cniVersion", "0.3.1"), "name": data.get("name", NAME), "plugins": [plugin]}
    if conflist.get("cniVersion") not in CHAINABLE:
        raise InstallError(f"{path}: cniVersion {conflist.get('cniVersion')!r} cannot chain plugins; left untouched")
    return conflist


def patched(conflist: dict, entry: dict | None) -> dict:
    """The conflist with our entry last (entry None: without it)."""
    plugins = [p for p in conflist["plugins"] if p.get("type") != NAME]
    if entry is not None:
        plugins.append(entry)
    return {**conflist, "plugins": plugins}


def _write_atomically(path: str, data: dict, mode: int) -> None:
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")  # a dot-name with no .conf suffix: libcni skips it
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def patch_conf_dir(conf_dir: str, entry: dict | None) -> str:
    """Insert (or with entry None remove) our entry in the primary configuration."""
    path = primary_conf(conf_dir)
    if path is None:
        if entry is None:
            return f"{conf_dir}: no network configuration"
        raise InstallError(f"{conf_dir}: no network configuration yet (install the main CNI first)")
    data = _read(path)
    conflist = as_conflist(data, path)
    new = patched(conflist, entry)
    # libcni reads only `.conflist` files as lists (`.conf` and `.json` as one plugin each)
    target = path if path.endswith(".conflist") else os.path.splitext(path)[0] + ".conflist"
    if new == data and target == path:
        return f"{path}: up to date"
    _write_atomically(target, new, os.stat(path).st_mode & 0o777)
    if target != path:
        os.unlink(path)  # the conflist that replaces it sorts at the same place
    return f"{target}: {'isolation entry removed' if entry is None else 'isolation entry inserted'}" + \
        (f" (converted from {os.path.basename(path)})" if target != path else "")


# --- the subcommand -----------------------------------------------------------------------
def options(option_file: str | None, pairs: list[str]) -> dict:
    """Our entry: {"type": "isolation"} with options from a JSON file, then KEY=VALUE flags
    (VALUE parsed as JSON when it is JSON, else taken as a string)."""
    entry = {}
    if option_file:
        with open(option_file) as f:
            entry = json.load(f)
        if not isinstance(entry, dict):
            raise InstallError(f"{option_file}: options must be a JSON object")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InstallError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            entry[key] = json.loads(value)
        except ValueError:
            entry[key] = value
    entry["type"] = NAME
    from plugin.model import parse

    parse({"cniVersion": "1.0.0", "name": "check", **entry})  # invalid options fail here, not in every ADD
    return entry


def run(args) -> int:
    host = args.host_root
    bin_dirs = [os.path.join(host, d.lstrip("/")) for d in (args.bin_dir or ["/opt/cni/bin"])]
    conf_dir = os.path.join(host, args.conf_dir.lstrip("/"))
    try:
        if args.uninstall:
            for line in [patch_conf_dir(conf_dir, None)] + [uninstall_bundle(d) for d in bin_dirs]:
                print(f"isolation install: {line}")
            return 0
        entry = options(args.options_file, args.option or [])
        bundle = args.bundle or running_bundle()
        version = bundle_id(bundle)
        for d in bin_dirs:
            print(f"isolation install: {install_bundle(d, bundle, version)}")
        if not args.skip_conf:
            print(f"isolation install: {patch_conf_dir(conf_dir, entry)}")
        if args.watch:
            return watch(conf_dir, entry, args.interval)
        return 0
    except (InstallError, OSError) as exc:
        print(f"isolation install: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # pydantic's ValidationError: the options are wrong
        print(f"isolation install: invalid options: {exc}", file=sys.stderr)
        return 1


def watch(conf_dir: str, entry: dict, interval: float) -> int:
    """Poll the primary configuration; re-insert our entry when the main CNI rewrote it.
    Ends on SIGTERM/SIGINT (a pod stopping). A bad file is reported, and retried."""
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    last = None
    while not stop:
        try:
            line = patch_conf_dir(conf_dir, entry)
            if not line.endswith("up to date"):
                print(f"isolation install: {line}", flush=True)
            last = None
        except (InstallError, OSError) as exc:
            if str(exc) != last:
                print(f"isolation install: {exc}", file=sys.stderr, flush=True)
            last = str(exc)
        time.sleep(interval)
    return 0
