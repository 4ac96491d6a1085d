"""isolation: a chained CNI plugin that keeps bridge networks apart."""

__version__ = "0.1.0"

# CNI specification versions this plugin speaks, oldest first.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
