"""libnftables, in-process: the process's one context, and the few ways both backends use it.

The nftables backend keeps all its rules here; the iptables backend keeps its anti-spoofing
table here (nftables' bridge family) and removes iptables-nft's filter tables and chains
it made. Neither runs an `nft` binary: the bundled libnftables is loaded by absolute path
(see library_path), and only by the verbs that need it.

Every function that changes something either raises CniError (apply) or is best effort
and says so; listings work around libnftables 1.0.6, which prints a table's `flags` in
JSON from a stale pointer (and can abort the process on it): a table with flags is never
listed as JSON.
"""

import os
import sys

from plugin import jsonio, native
from plugin.errors import ENFORCEMENT_FAILED, CniError

LIBRARY = "libnftables.so.1"
UNPARSEABLE = {"nftables": []}  # a listing libnftables could not print as JSON (compared by identity)


def library_path() -> str:
    """The bundled libnftables when frozen (so the binary needs no nftables package), else the system's."""
    bundled = os.path.join(getattr(sys, "_MEIPASS", ""), LIBRARY)
    return bundled if getattr(sys, "frozen", False) and os.path.exists(bundled) else LIBRARY


JSON, TERSE = 1 << 4, 1 << 11  # NFT_CTX_OUTPUT_JSON, NFT_CTX_OUTPUT_TERSE


class Context:
    """A libnftables context through ctypes' classes (plugin.native): what the `nftables` Python binding offers that
    we use (cmd, json_cmd, set_terse_output), without importing the binding, which imports
    `json` (and with it `re`, `enum`, `functools`, `collections`: ~15 ms of every ADD,
    CHECK and DEL on a slow machine) only to call json.dumps and json.loads. Same calls,
    same behaviour: a context made with nft_ctx_new(0), output and errors buffered, JSON
    output switched on around a JSON command only, a listing decoded as the binding does
    (a ValueError when libnftables prints something that is not JSON, as 1.0.6 can)."""

    def __init__(self, sofile: str = "libnftables.so.1"):
        lib = native.Library(sofile)  # ctypes' own classes, without importing ctypes (plugin.native)
        p, c_uint, c_int, c_char_p = native.c_void_p, native.c_uint, native.c_int, native.c_char_p
        for name, restype, argtypes in (
            ("nft_ctx_new", p, [c_int]),
            ("nft_ctx_free", None, [p]),
            ("nft_ctx_output_get_flags", c_uint, [p]),
            ("nft_ctx_output_set_flags", None, [p, c_uint]),
            ("nft_ctx_buffer_output", c_int, [p]),
            ("nft_ctx_buffer_error", c_int, [p]),
            ("nft_ctx_get_output_buffer", c_char_p, [p]),
            ("nft_ctx_get_error_buffer", c_char_p, [p]),
            ("nft_run_cmd_from_buffer", c_int, [p, c_char_p]),
        ):
            setattr(self, name, lib.function(name, restype, argtypes))  # all looked up before the first call
        self.ctx = self.nft_ctx_new(0)
        self.nft_ctx_buffer_output(self.ctx)
        self.nft_ctx_buffer_error(self.ctx)

    def __del__(self):
        if getattr(self, "ctx", None):
            self.nft_ctx_free(self.ctx)

    def _flag(self, flag: int, on: bool) -> bool:
        """Set or clear one output flag; returns whether it was set."""
        flags = self.nft_ctx_output_get_flags(self.ctx)
        self.nft_ctx_output_set_flags(self.ctx, flags | flag if on else flags & ~flag)
        return bool(flags & flag)

    def set_terse_output(self, on: bool) -> bool:
        return self._flag(TERSE, on)

    def cmd(self, text: str) -> tuple[int, str, str]:
        """(rc, stdout, stderr) of one command line or JSON document."""
        rc = self.nft_run_cmd_from_buffer(self.ctx, text.encode())
        out = self.nft_ctx_get_output_buffer(self.ctx) or b""
        err = self.nft_ctx_get_error_buffer(self.ctx) or b""
        return rc, out.decode(), err.decode()

    def json_cmd(self, root: dict) -> tuple[int, object, str]:
        """(rc, decoded output or "" when there is none, stderr); ValueError when the output is
        not JSON."""
        was = self._flag(JSON, True)
        try:
            rc, out, err = self.cmd(jsonio.dumps(root))
        finally:
            if not was:
                self._flag(JSON, False)
        return rc, jsonio.loads(out) if out else out, err


class Library:
    """The process's one libnftables context, shared by every backend object and serialised.

    A fresh context per backend object leaked ~60 bytes in libnftables 1.0.6 for each one
    that ran a command: nothing to a plugin run, but the agent makes one per request
    (300 KiB per 2000 requests). One context, reused, stays flat; the lock keeps the
    agent's concurrent requests off it one at a time (a context is not thread-safe, and
    terse output is a setting of the context)."""

    _shared: "Library | None" = None

    def __init__(self) -> None:
        import _thread  # the C module: no `threading` import on a plugin run

        self.nft = Context(sofile=library_path())
        self.lock = _thread.allocate_lock()

    @classmethod
    def get(cls) -> "Library":
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def json_cmd(self, cmds: list[dict], terse: bool = False) -> tuple[int, object, str]:
        """(rc, output, error); output is UNPARSEABLE when libnftables printed broken JSON
        (1.0.6 cuts a listing short at a table's `flags`, e.g. a dormant table's)."""
        try:
            return self._run(lambda: self.nft.json_cmd({"nftables": cmds}), terse)
        except ValueError:  # not JSON; the context is left as it was
            return 0, UNPARSEABLE, "libnftables printed a listing it cannot parse"

    def cmd(self, text: str, terse: bool = False) -> tuple[int, str, str]:
        return self._run(lambda: self.nft.cmd(text), terse)

    def _run(self, call, terse: bool):
        """call(), alone on the context, with terse output (set elements left out) if asked."""
        with self.lock:
            if terse:
                self.nft.set_terse_output(True)
            try:
                return call()
            finally:
                if terse:
                    self.nft.set_terse_output(False)


def load() -> tuple[Library | None, str | None]:
    """(the shared context, None), or (None, why libnftables cannot be loaded here)."""
    try:
        return Library.get(), None
    except (ImportError, OSError, AttributeError) as exc:
        return None, f"{LIBRARY} cannot be loaded: {exc}"


def apply(lib: Library, cmds: list[dict], failure: str) -> None:
    """Run `cmds` as one transaction; {"text": ...} commands (declaring `typeof` sets, which
    libnftables 1.0.6 reads only from text) run first, as their own. Raises CniError
    (ENFORCEMENT_FAILED, "nftables " + `failure`) when libnftables refuses either."""
    texts = [c["text"] for c in cmds if "text" in c]
    cmds = [c for c in cmds if "text" not in c]
    if texts:
        rc, _, err = lib.cmd("\n".join(texts))
        if rc != 0:
            raise CniError(ENFORCEMENT_FAILED, f"nftables {failure}", err.strip())
    if cmds:
        rc, _, err = lib.json_cmd(cmds)
        if rc != 0:
            raise CniError(ENFORCEMENT_FAILED, f"nftables {failure}", err.strip())


def table_objects(lib: Library, family: str, table: str) -> list[dict] | None:
    """The objects of table `table` in `family`, elements included (None: no such table).
    A table with flags (e.g. dormant) is described by its flags only: it counts as altered.
    The terse text listing that finds flags also tells whether the table exists: an absent
    one (the anti-spoofing table of a host without antiSpoofing) costs no JSON listing."""
    tables = tables_of(lib, family)
    if table not in tables:
        return None
    if tables[table]:
        return [{"table": {"family": family, "name": table, "flags": tables[table]}}]
    rc, out, err = lib.json_cmd([{"list": {"table": {"family": family, "name": table}}}])
    if rc != 0:
        if "No such file or directory" not in err:
            raise CniError(ENFORCEMENT_FAILED, f"cannot read table {family} {table}", err.strip())
        return None
    if out is UNPARSEABLE:
        return [{"table": {"family": family, "name": table, "flags": _flags(lib, family, table)}}]
    return _true_flags(lib, out["nftables"], family, table) if out else None


def terse_table_objects(lib: Library, family: str, table: str) -> list[dict] | None:
    """The objects of table `table` in `family`, set elements left out (None: no such table).

    It lists the family's whole ruleset, tersely, and keeps the table's objects: libnftables
    (1.0.6) fetches every set element for `list table` even when terse (3.7 ms with 1000
    bridges), but not for a terse `list ruleset` (0.2 ms), so the cost does not grow with
    the number of networks."""
    tables = tables_of(lib, family)
    if table not in tables:
        return None
    if any(tables.values()):  # never a JSON listing with a flagged table in it
        return table_objects(lib, family, table)
    rc, out, err = lib.json_cmd([{"list": {"ruleset": {"family": family}}}], terse=True)
    if rc != 0:
        raise CniError(ENFORCEMENT_FAILED, f"cannot read the {family} ruleset", err.strip())
    if out is UNPARSEABLE:  # some table of the family (ours or not) cannot be listed as JSON
        return table_objects(lib, family, table)
    ours = [o for o in out["nftables"] if _table_of(o) == (family, table)]
    return _true_flags(lib, ours, family, table) or None


def chain_rules(lib: Library, family: str, table: str, chain: str) -> list[list[dict]] | None:
    """The expressions of each rule of a chain (None: no such chain, or unreadable)."""
    rc, out, _ = lib.json_cmd([{"list": {"chain": {"family": family, "table": table, "name": chain}}}])
    if rc != 0 or out is UNPARSEABLE:
        return None
    return [o["rule"]["expr"] for o in out["nftables"] if "rule" in o]


def flagged_tables(lib: Library, family: str) -> dict[str, list[str]]:
    """The tables of `family` that carry flags (e.g. dormant) -> their flags. libnftables
    1.0.6 prints a flagged table's `flags` in JSON from a stale pointer ("inet", its
    release name, or garbage that makes it abort the process), so no table with flags is
    ever listed in JSON."""
    return {name: flags for name, flags in tables_of(lib, family).items() if flags}


def tables_of(lib: Library, family: str) -> dict[str, list[str]]:
    """Every table of `family` -> its flags (empty: none), from one terse text listing."""
    rc, text, err = lib.cmd(f"list ruleset {family}", terse=True)
    if rc != 0:
        raise CniError(ENFORCEMENT_FAILED, f"cannot read the {family} ruleset", err.strip())
    found, current = {}, None
    for line in text.splitlines():
        words = line.split()
        if line.startswith("table ") and len(words) >= 3:
            current = words[2]
            found[current] = []
        elif line.startswith("\tflags ") and current:  # the table's own (a set's is indented twice)
            found[current] = [f for word in words[1:] for f in word.split(",") if f] or ["unknown"]
    return found


def _true_flags(lib: Library, listing: list[dict], family: str, table: str) -> list[dict]:
    """`listing` with the table's flags as the text listing gives them: libnftables 1.0.6
    prints a flagged table's `flags` wrongly in JSON (`"inet"`, or cuts the listing short)."""
    for obj in listing:
        if "table" in obj and obj["table"].get("flags"):
            obj["table"]["flags"] = _flags(lib, family, table)
    return listing


def _flags(lib: Library, family: str, table: str) -> list[str]:
    rc, text, _ = lib.cmd(f"list table {family} {table}")
    flags = next((line.split()[1:] for line in text.splitlines() if line.strip().startswith("flags ")), [])
    return [f for word in flags for f in word.split(",") if f] or ["unknown"]


def _table_of(obj: dict) -> tuple[str, str] | None:
    """(family, table) of one object of a JSON listing."""
    for kind, body in obj.items():
        if kind == "table":
            return body.get("family"), body.get("name")
        if isinstance(body, dict) and "table" in body:
            return body.get("family"), body.get("table")
    return None


def table_exists(family: str, name: str) -> bool:
    """True when the table exists, or when nftables cannot tell (then nothing is deleted later)."""
    lib, _ = load()
    if lib is None:
        return True
    rc, _, _ = lib.json_cmd([{"list": {"table": {"family": family, "name": name}}}])
    return rc == 0


def chain_exists(family: str, table: str, chain: str) -> bool:
    """True when the chain exists, or when nftables cannot tell (then nothing is deleted later)."""
    lib, _ = load()
    if lib is None:
        return True
    rc, _, _ = lib.json_cmd([{"list": {"chain": {"family": family, "table": table, "name": chain}}}], terse=True)
    return rc == 0


def delete_empty_chains(chains: list[tuple[str, str, str]]) -> None:
    """Delete each (family, table, chain) that holds no rule: built-in chains iptables-nft made
    for our jumps in a table that was there before. Best effort, one transaction each (a chain
    some other rule still jumps to stays)."""
    lib = load()[0] if chains else None
    if lib is None:
        return
    for family, table, name in chains:
        if chain_rules(lib, family, table, name) == []:
            lib.json_cmd([{"delete": {"chain": {"family": family, "table": table, "name": name}}}])


def delete_tables(tables: list[tuple[str, str]]) -> None:
    """Delete (family, name) tables, each in its own transaction (one already gone must not keep
    the others): used to remove the filter tables the iptables backend created on iptables-nft
    once they are pristine again. Best effort."""
    lib = load()[0] if tables else None
    if lib is None:
        return
    for family, name in tables:
        lib.json_cmd([{"delete": {"table": {"family": family, "name": name}}}])


def run_command(argv: list[str]) -> str | None:
    """Execute one `nft ...` command line (as `isolation cleanup` prints it) through libnftables,
    so the host needs no nft binary: None when it succeeded, else the error."""
    lib, reason = load()
    if lib is None:
        return f"{' '.join(argv)}: {reason}"
    rc, _, err = lib.cmd(" ".join(argv[1:]))
    return None if rc == 0 else err.strip()
