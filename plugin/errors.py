"""CNI error codes and the one exception type every layer raises.

Codes below 100 are the CNI specification's; 100 and up are this plugin's own
and are documented in the README.
"""

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50  # STATUS: the plugin cannot serve ADD right now

# Plugin-specific codes.
ENFORCEMENT_FAILED = 100  # the rules could not be applied or verified: fail closed
NO_BRIDGE = 101  # prevResult names no Linux bridge on the host side
CHECK_FAILED = 102  # CHECK found this attachment's isolation missing or out of place
BACKEND_UNAVAILABLE = 103  # the configured firewall backend cannot be used here


class CniError(Exception):
    """An error reported to the runtime as CNI error JSON."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def as_dict(self, cni_version: str) -> dict:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details}
INTERNAL_ERROR = 104  # a bug: reported as CNI error JSON instead of a traceback
