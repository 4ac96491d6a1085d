"""The pydantic model of the plugin's configuration: the single source of truth for what is valid.

Importing pydantic and building the model costs ~70 ms, so it is only loaded when
plugin.config meets a configuration it has not validated before.

Only the keys this plugin owns are modelled; everything runtimes add (`name`,
`runtimeConfig`, `args`, `capabilities`, `prevResult`, ...) is accepted and ignored
here. `prevResult` is the protocol layer's business.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError, field_validator

from plugin.errors import INVALID_CONFIG, CniError

IngressPolicy = Literal["same-bridge", "isolated", "open"]
Backend = Literal["auto", "iptables", "nftables"]
GroupName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class NetConf(BaseModel):
    """This plugin's entry in a conflist."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    type: str
    ingressPolicy: IngressPolicy = "same-bridge"
    backend: Backend = "auto"
    allowPublishedPorts: bool = True
    isolationGroup: GroupName | None = None
    logFile: str | None = None

    @field_validator("logFile")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or "\0" in value):
            raise ValueError("must be an absolute path")
        return value


def parse(raw: dict) -> NetConf:
    """Validate a decoded configuration, or raise error 7 naming the offending field."""
    try:
        return NetConf.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            field = ".".join(str(p) for p in err["loc"]) or "(root)"
            problems.append(f"{field}: {err['msg']} (got {err.get('input')!r})")
        raise CniError(INVALID_CONFIG, "invalid configuration: " + "; ".join(problems)) from None
