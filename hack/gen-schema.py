#!/usr/bin/env python3
"""Write conf-examples/isolation.schema.json from the pydantic model (run after changing it;
tests/unit/test_schema.py fails while the committed file and the model disagree)."""

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from plugin.model import json_schema  # noqa: E402

PATH = os.path.join(REPO, "conf-examples", "isolation.schema.json")


def render() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    with open(PATH, "w") as f:
        f.write(render())
    print(f"wrote {os.path.relpath(PATH, REPO)}")
