"""Run `isolation explain --batch` in a lab and set its verdicts beside real packets' fate.

A probe is keyed as the lab's traffic helpers key it: (kind, source netns, address, port),
kind icmp, tcp or udp. Only probes from containers can be explained (explain's source is
a registered attachment): others are left out of the comparison.
"""

import json
import os

from netlab import TCP_PORT


def explain(lab, probes, check: bool = False) -> tuple[dict, int]:
    """{probe: answer} for every probe whose source is one of the lab's containers, from one
    `isolation explain --batch` run, and its exit status."""
    ids = {c.name: c.id for net in lab.networks for c in net.containers}
    asked = [p for p in probes if p[1] in ids]
    path = os.path.join(lab.tmp, "probes.jsonl")
    with open(path, "w") as f:
        for kind, src, addr, port in asked:
            f.write(json.dumps({"from": ids[src], "to": addr, "proto": kind,
                                "port": None if kind == "icmp" else port}) + "\n")
    proc = lab.cli("explain", "--batch", path, *(["--check"] if check else []))
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(answers) == len(asked), f"{len(asked)} probes, {len(answers)} answers: {proc.stdout} {proc.stderr}"
    errors = [a for a in answers if "error" in a]
    assert not errors, errors
    return dict(zip(asked, answers)), proc.returncode


def disagreements(got: dict, answers: dict) -> list[str]:
    """Where explain's verdict differs from the packets' fate ({probe: reached?})."""
    return [f"{kind} {src} -> [{addr}]:{port}: packets {'reach' if got[(kind, src, addr, port)] else 'blocked'}, "
            f"explain says {a['verdict']} ({a['cause']})"
            for (kind, src, addr, port), a in answers.items()
            if (a["verdict"] == "pass") != got[(kind, src, addr, port)]]


def reach_keys(got: dict) -> dict:
    """lab.reach()'s {(kind, src, addr): ok} keyed as probes: (kind, src, addr, port)."""
    return {(kind, src, addr, TCP_PORT): ok for (kind, src, addr), ok in got.items()}
