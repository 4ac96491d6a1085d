"""isolation: a chained CNI plugin that keeps bridge networks apart."""

__version__ = "0.1.0"

# CNI specification versions this plugin speaks, oldest first.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
MAX_STDIN = 1 << 20  # bytes of configuration read from stdin; more is error 6 (a conflist entry is a few KiB)


def version_result() -> dict:
    """The answer to VERSION (whatever the configuration says)."""
    return {"cniVersion": SUPPORTED_VERSIONS[-1], "supportedVersions": list(SUPPORTED_VERSIONS)}


def version_json() -> str:
    """version_result() as JSON, without importing json (and re, enum...): VERSION runs for
    every plugin of every conflist a runtime loads, and is all start-up."""
    versions = ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    return f'{{"cniVersion": "{SUPPORTED_VERSIONS[-1]}", "supportedVersions": [{versions}]}}'
