"""The pydantic model of the plugin's configuration: the single source of truth for what is valid.

Importing pydantic and building the model costs ~70 ms, so it is only loaded when
plugin.config meets a configuration it has not validated before.

Only the keys this plugin owns are modelled; everything runtimes add (`name`,
`runtimeConfig`, `args`, `capabilities`, `prevResult`, ...) is accepted and ignored
here. `prevResult` is the protocol layer's business.

Addresses and ports are canonicalised here, once, so every backend renders the same
values: `10.1.2.3/8` becomes `10.0.0.0/8`, overlapping deny ranges are merged, port
lists are sorted and merged into ranges (`"8000-8100"`).
"""

import ipaddress
import os
import re
from typing import Annotated, Literal

# pydantic looks for plugins on every first validation, reading the metadata of every
# distribution on sys.path (~100 ms of a network's first ADD); this plugin uses none.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from plugin.deferred import metadata_deferred  # noqa: E402

with metadata_deferred():  # the loader of the plugins searched for above: ~6 MiB (plugin.deferred)
    from pydantic import (  # noqa: E402
        AfterValidator,
        BaseModel,
        ConfigDict,
        Field,
        StringConstraints,
        ValidationError,
        WithJsonSchema,
        field_validator,
        model_validator,
    )

    try:
        import pydantic.plugin._loader  # noqa: F401  (binds the deferred entry_points)
    except ImportError:  # a pydantic without it: nothing to defer (tests/unit/test_import_budget.py notices)
        pass

from plugin.errors import INVALID_CONFIG, CniError
from plugin.tenant import GROUP_PATTERN

IngressPolicy = Literal["same-bridge", "isolated", "open"]
Backend = Literal["auto", "iptables", "nftables"]
GroupName = Annotated[str, StringConstraints(pattern=GROUP_PATTERN)]  # a per-container one: plugin.tenant


IfName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")]
_RANGE = re.compile(r"^([0-9]{1,5})(?:-([0-9]{1,5}))?$")


def _cidr(text: str) -> str:
    """A network in canonical form; host bits are cleared (`10.1.2.3/8` -> `10.0.0.0/8`)."""
    if ":" in text and "." in text:  # ::ffff:10.0.0.0/104 would never match an IPv4 packet
        raise ValueError("write IPv4 ranges as IPv4 (a.b.c.d/n), not inside an IPv6 address")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"not a CIDR: {exc}") from None
    return str(net)


Cidr = Annotated[str, AfterValidator(_cidr), WithJsonSchema({
    "type": "string", "pattern": "^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$",
    "description": "an IPv4 or IPv6 address or CIDR", "examples": ["10.0.0.0/8", "fd00::/8", "10.0.0.53"]})]


def _port_range(value: int | str) -> tuple[int, int]:
    if isinstance(value, int):
        lo = hi = value
    else:
        m = _RANGE.fullmatch(value)
        if not m:
            raise ValueError(f"{value!r} is not a port or a range like '8000-8100'")
        lo, hi = int(m[1]), int(m[2] or m[1])
    if not (1 <= lo <= hi <= 65535):
        raise ValueError(f"{value!r} is outside 1-65535 (or the range is reversed)")
    return lo, hi


def _merge_ports(values: list[int | str]) -> list[str]:
    """Sorted, overlapping and adjacent ranges merged: one canonical list of "N" and "N-M"."""
    merged: list[list[int]] = []
    for lo, hi in sorted(_port_range(v) for v in values):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in merged]


def _valid_port(value: int | str) -> int | str:
    _port_range(value)
    return value


Port = Annotated[int | str, AfterValidator(_valid_port), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string", "pattern": "^[0-9]{1,5}(-[0-9]{1,5})?$"}],
    "description": "a port (1-65535) or a range 'LOW-HIGH'", "examples": [53, "8000-8100"]})]


class EgressException(BaseModel):
    """One `allowEgress` entry: a hole punched into `denyEgress`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    cidr: Cidr
    protocol: Literal["tcp", "udp", "icmp", "any"] = Field("any", description="icmp means ICMPv6 for an IPv6 cidr")
    ports: list[Port] = Field([], description="destination ports; only with tcp or udp (default: all)")

    @model_validator(mode="after")
    def _ports(self):
        if self.ports and self.protocol not in ("tcp", "udp"):
            raise ValueError(f"ports need protocol 'tcp' or 'udp', not {self.protocol!r}")
        object.__setattr__(self, "ports", _merge_ports(self.ports))
        return self


class HostPort(BaseModel):
    """One `allowHostPorts` entry: a host service containers may use despite `hostAccess: deny`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    protocol: Literal["tcp", "udp", "icmp"]
    port: Port | None = Field(None, description="required for tcp and udp, absent for icmp")

    @model_validator(mode="after")
    def _port(self):
        if self.protocol == "icmp":
            if self.port is not None:
                raise ValueError("icmp has no port")
        elif self.port is None:
            raise ValueError(f"{self.protocol} needs a port")
        else:
            object.__setattr__(self, "port", _merge_ports([self.port])[0])
        return self


DEFAULT_HOST_PORTS = (HostPort(protocol="tcp", port=53), HostPort(protocol="udp", port=53))


class NetConf(BaseModel):
    """This plugin's entry in a conflist."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    type: str = Field(description='"isolation"')
    ingressPolicy: IngressPolicy = Field(
        "same-bridge", description="same-bridge: traffic from other isolated bridges is dropped; isolated: also "
        "between containers of this bridge; open: no isolation")
    backend: Backend = Field("auto", description="firewall backend; auto: nftables where usable, else iptables")
    allowPublishedPorts: bool = Field(
        True, description="traffic DNAT'd to this network's containers (a published port) passes isolation")
    isolationGroup: GroupName | None = Field(
        None, description="networks sharing a group reach each other despite isolation")
    denyEgress: list[Cidr] = Field(
        [], description="destinations containers of this network cannot open connections to, forwarded or "
        "on the host itself; replies pass")
    allowEgress: list[EgressException] = Field([], description="exceptions punched into denyEgress")
    internal: bool = Field(
        False, description="containers reach each other and nothing else: nothing forwarded leaves or enters the "
        "network (published ports included), the host is closed as by hostAccess deny, with allowHostPorts "
        "defaulting to none; the host may still open connections to them")
    directAccess: Literal["allow", "deny"] = Field(
        "allow", description="deny: packets forwarded to this network's containers from an interface that is "
        "neither a bridge the plugin isolates or guards nor in trustedInterfaces are dropped, unless they are "
        "replies or DNAT'd by a published port")
    trustedInterfaces: list[IfName] = Field(
        [], description="with directAccess deny, the host interfaces whose traffic may reach the containers directly")
    hostAccess: Literal["allow", "deny"] = Field(
        "allow", description="deny: containers cannot reach the host's own addresses, except allowHostPorts")
    allowHostPorts: list[HostPort] | None = Field(
        None, description="with hostAccess deny, the host services containers may use (default: TCP and UDP 53; "
        "none for an internal network)")
    antiSpoofing: bool | None = Field(
        None, description="containers may send only from the MAC and IP addresses their attachment was given "
        "(ARP, neighbour discovery, IP sources); default (null): on for ingressPolicy isolated, off otherwise")
    logDrops: bool = Field(
        False, description="send the first packet of each flow this network's isolation drops to NFLOG group 1907 "
        "(rate-limited per bridge; the whole bridge logs when any of its networks asks)")
    logFile: str | None = Field(
        None, description='absolute path, or "syslog": one line per invocation (default: ISOLATION_LOG_FILE, else none)')
    logLevel: Literal["info", "error", "off"] | None = Field(
        None, description="info: every invocation; error: failed ones only; off (default: ISOLATION_LOG_LEVEL, else info)")

    @field_validator("logFile")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and value != "syslog" and (not value.startswith("/") or "\0" in value):
            raise ValueError('must be an absolute path or "syslog"')
        return value

    @field_validator("denyEgress")
    @classmethod
    def _collapse(cls, value: list[str]) -> list[str]:
        """Overlapping ranges merged (nftables interval sets refuse overlaps), IPv4 first."""
        nets = [ipaddress.ip_network(v) for v in value]
        out = []
        for version in (4, 6):
            out += [str(n) for n in ipaddress.collapse_addresses(n for n in nets if n.version == version)]
        return out

    @model_validator(mode="after")
    def _host_ports_default(self):
        if self.allowHostPorts is None:  # an internal network opens nothing of the host unless told
            object.__setattr__(self, "allowHostPorts", [] if self.internal else list(DEFAULT_HOST_PORTS))
        return self


UNION_TAGS = ("int", "str")
SCHEMA_ID = "https://github.com/isolation-cni/isolation/conf-examples/isolation.schema.json"


def container_args_schema(group: dict) -> dict:
    """The schema of the per-attachment `args` a runtime may add (CNI conventions), as far as
    this plugin reads them: `args.cni.isolationGroup`, a container's own group (a tenant). Not a
    model field: it varies per container, so plugin.tenant checks it (with the same GroupName)
    on every ADD, and the memoised verdict of the network's entry does not depend on it."""
    tenant = {**group, "description": "this container's own isolationGroup (a tenant): replaces the network's for "
              "it; containers of different groups never reach each other, on one bridge or across bridges; "
              "wins over CNI_ARGS ISOLATION_GROUP"}
    return {"type": "object", "description": "per-attachment arguments the runtime adds (CNI conventions)",
            "properties": {"cni": {"type": "object", "properties": {"isolationGroup": tenant}}}}


def json_schema() -> dict:
    """The JSON Schema of this plugin's conflist entry, generated from the model (the committed
    copy in conf-examples/ is checked against this by the tests). Value rules the schema cannot
    say (CIDR syntax, port ranges) are in the descriptions and enforced by the plugin."""
    from pydantic import TypeAdapter

    schema = NetConf.model_json_schema(mode="validation")
    schema["properties"]["args"] = container_args_schema(TypeAdapter(GroupName).json_schema())
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            **schema, "title": "isolation CNI plugin configuration"}


def parse(raw: dict) -> NetConf:
    """Validate a decoded configuration, or raise error 7 naming the offending field."""
    try:
        return NetConf.model_validate(raw)
    except ValidationError as exc:
        problems: dict[str, str] = {}
        for err in exc.errors(include_url=False):
            loc = list(err["loc"])
            if loc and loc[-1] in UNION_TAGS:  # one message for `int | str`, not one per member
                loc.pop()
                err = {**err, "msg": "Input should be an integer or a string like '8000-8100'"}
            field = ".".join(str(p) for p in loc) or "(root)"
            problems.setdefault(field, f"{field}: {err['msg']} (got {err.get('input')!r})")
        problems = list(problems.values())
        raise CniError(INVALID_CONFIG, "invalid configuration: " + "; ".join(problems)) from None
