"""Golden files (tests/golden/): the exact text the planners render, pinned per scenario.

Tests call Golden.check(name, got). Normally it compares; under `pytest --update-golden` it
writes what the code rendered instead, so a rendering change is reviewed as
`git diff tests/golden` rather than typed in by hand. Two formats, told by the extension:
.plan, iptables-restore lines one per line; .jsonl, one libnftables JSON command per line.
Other files there (.before: iptables-save input) are inputs, read with read() only.
"""

import json
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden")
RENDERED = (".plan", ".jsonl")
HINT = ("tests/golden/{name} differs from what the code renders. If the change is intended, regenerate it "
        "with `.venv/bin/python -m pytest tests/unit --update-golden` and review `git diff tests/golden`")


def read(name: str) -> str:
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def load(name: str) -> list:
    """A rendered golden file as the planner returns it: lines, or JSON commands."""
    text = read(name)
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return text.splitlines()


def render(name: str, got: list) -> str:
    """The file's text for `got`; load(name) of it gives `got` back."""
    if name.endswith(".jsonl"):
        return "".join(json.dumps(cmd) + "\n" for cmd in got)
    return "".join(line + "\n" for line in got)


class Golden:
    """Compares with, or (update) rewrites, the golden files; one per pytest session."""

    def __init__(self, update: bool):
        self.update = update
        self.written: dict[str, str] = {}  # name -> text, so two tests rendering one file must agree

    def check(self, name: str, got: list) -> None:
        if not name.endswith(RENDERED):
            raise ValueError(f"{name}: only {RENDERED} golden files are rendered by the code")
        if not self.update:
            assert got == load(name), HINT.format(name=name)
            return
        text = render(name, got)
        assert self.written.setdefault(name, text) == text, f"two tests render tests/golden/{name} differently"
        path = os.path.join(ROOT, name)
        if not os.path.exists(path) or read(name) != text:
            with open(path, "w") as f:
                f.write(text)
