"""Prometheus' text exposition format (version 0.0.4), written by hand.

The format is a few lines of text; a client library would be a dependency of the frozen
bundle for that (and prometheus-client is the tests' reference parser, never bundled).
Each family is `# HELP`, `# TYPE`, then its samples, one per line. Label values are
arbitrary strings (a network's name is whatever its conflist says), so they are escaped
as the format requires (backslash, double quote, line feed) and made valid UTF-8: a
hostile name can never end a label, a line, or the file's encoding early. No sample
carries a timestamp: node exporter's textfile collector refuses files that do.
"""

import math
import re

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
TYPES = ("counter", "gauge", "histogram")


def escape_label(value: str) -> str:
    """`value` as it goes between a label's double quotes."""
    value = value.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate becomes "?"
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """`text` as it goes after `# HELP name `: only backslash and line feed are escaped."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\\", "\\\\").replace("\n", "\\n")


def number(value: float) -> str:
    """A sample value (or a bucket bound): integers without a fraction, infinities as Go writes them."""
    if isinstance(value, bool):
        raise TypeError("a boolean is no sample value")
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


class Family:
    """One metric family: its name, type and help, and its samples as (name suffix, labels, value)."""

    def __init__(self, name: str, kind: str, help: str):
        if not _NAME.match(name) or kind not in TYPES:
            raise ValueError(f"invalid metric family {name!r} of type {kind!r}")
        self.name, self.kind, self.help = name, kind, help
        self.samples: list[tuple[str, tuple[tuple[str, str], ...], float]] = []

    def add(self, value: float, suffix: str = "", **labels: str) -> "Family":
        for key in labels:
            if not _LABEL.match(key) or key.startswith("__"):
                raise ValueError(f"invalid label name {key!r}")
        self.samples.append((suffix, tuple(labels.items()), value))
        return self

    def add_histogram(self, histogram: "Histogram", **labels: str) -> "Family":
        """The `_bucket` (cumulative, ending with le="+Inf"), `_sum` and `_count` samples."""
        cumulative = 0
        for bound, count in zip((*histogram.bounds, math.inf), histogram.counts):
            cumulative += count
            self.add(cumulative, "_bucket", **labels, le=number(float(bound)))
        self.add(histogram.sum, "_sum", **labels)
        return self.add(histogram.count, "_count", **labels)

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for suffix, labels, value in self.samples:
            shown = ",".join(f'{key}="{escape_label(str(val))}"' for key, val in labels)
            out.append(f"{self.name}{suffix}{{{shown}}} {number(value)}" if shown else
                       f"{self.name}{suffix} {number(value)}")
        return out


def render(families: list[Family], comments: list[str] = ()) -> str:
    """The exposition text: each family whole, in the order given, then `comments` (one `#`
    line each); it ends with a line feed, as the textfile collector requires."""
    names = [f.name for f in families]
    if len(set(names)) != len(names):
        raise ValueError(f"a metric family appears twice: {names}")
    lines = [line for family in families for line in family.lines()]
    lines += ["# " + escape_help(c) for c in comments]
    return "\n".join(lines) + "\n"


class Histogram:
    """Observations counted per bucket (not cumulative: Family.add_histogram sums them up),
    with their sum and count. Not thread-safe by itself: its owner locks."""

    def __init__(self, bounds: tuple[float, ...]):
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bucket bounds must be distinct and ascending")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (le="+Inf" alone)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                break
        else:
            i = len(self.bounds)
        self.counts[i] += 1
        self.sum += value
        self.count += 1

    def copy(self) -> "Histogram":
        other = Histogram(self.bounds)
        other.counts, other.sum, other.count = list(self.counts), self.sum, self.count
        return other


def families_in(text: str) -> dict[str, list[str]]:
    """The lines of each family of an exposition `render` wrote, by family name (from its
    `# HELP` line to the next family's): how `isolation metrics` takes the agent's own
    series out of the agent's file without a parser of the whole format."""
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            current = line.split(" ", 3)[2]
            found[current] = []
        elif line.startswith("#") and not line.startswith("# TYPE "):
            current = None  # a comment of render()'s ends the family it follows
            continue
        if current is not None:
            found[current].append(line)
    return found
