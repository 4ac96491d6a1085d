"""The per-container isolationGroup (a tenant) an attachment's runtime passes in its CNI args.

Two channels, as libcni offers them: `args.cni.isolationGroup` in the network configuration
(the runtime's per-attachment `args`) and `ISOLATION_GROUP=...` in `CNI_ARGS` (semicolon-
separated K=V pairs; keys of others are ignored, as libcni's IgnoreUnknown does). When both
are given, `args.cni` wins: it is the structured, per-network channel, while CNI_ARGS is one
string for every plugin of the chain. A malformed value of ours is error 7, never ignored:
a container whose tenant cannot be read must not land in no tenant at all (fail closed).
The value is checked by the rule of the model's GroupName (plugin.model), written here without
pydantic: importing it would cost every tenant's ADD ~100 ms (tests/unit/test_tenants.py holds
the two to one verdict).
"""

from plugin.errors import INVALID_CONFIG, CniError

CNI_ARGS_KEY = "ISOLATION_GROUP"
ARGS_KEY = "isolationGroup"
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_GROUP_CHARS = _ALNUM | frozenset("_.-")
GROUP_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # what group_name() accepts, as the model's pattern


def group_name(value: object) -> str:
    """`value` as an isolationGroup name (GROUP_PATTERN), or ValueError."""
    if type(value) is not str:
        raise ValueError("must be a string")
    if not (0 < len(value) <= 64 and value[0] in _ALNUM and _GROUP_CHARS.issuperset(value)):
        raise ValueError(f"must match {GROUP_PATTERN}")
    return value


def _from_cni_args(text: str) -> str | None:
    found = None
    for pair in text.split(";") if text else ():
        key, sep, value = pair.partition("=")
        if key != CNI_ARGS_KEY:
            continue  # another plugin's key (or its malformed pair): not ours to judge
        if found is not None:
            raise CniError(INVALID_CONFIG, f"CNI_ARGS: {CNI_ARGS_KEY} is given more than once")
        found = value if sep else ""
    return found


def _from_args(raw: dict):
    args = raw.get("args")
    if not isinstance(args, dict):  # absent, or not the conventions' object: it cannot hold args.cni
        return None
    if not isinstance(args.get("cni", {}), dict):  # args.cni given, but not as an object: refused
        raise CniError(INVALID_CONFIG, "args.cni: must be an object")
    return args.get("cni", {}).get(ARGS_KEY)


def container_group(raw: dict, env: dict) -> str | None:
    """The attachment's own isolationGroup (None: it has none, the network's applies)."""
    value, where = _from_args(raw), f"args.cni.{ARGS_KEY}"
    if value is None:
        value, where = _from_cni_args(env.get("CNI_ARGS", "")), f"CNI_ARGS {CNI_ARGS_KEY}"
    if value is None:
        return None
    try:
        return group_name(value)
    except ValueError as exc:
        raise CniError(INVALID_CONFIG, f"invalid configuration: {where}: {exc} (got {value!r})") from None
