"""Many probes at once, each (kind, source netns, address, port) set beside the verdict expected.

kind is icmp (port ignored), tcp or udp; the results are keyed as the probes are, so they
can be handed to explaining.disagreements as they are.
"""

from concurrent.futures import ThreadPoolExecutor


def probe_all(lab, want: dict) -> tuple[dict, list[str]]:
    """Run every probe of `want` ({probe: expected to reach?}) concurrently: (results, a line
    for each probe whose fate differs from what `want` expects)."""
    run = {"icmp": lambda s, a, p: lab.ping(s, a), "tcp": lab.tcp, "udp": lab.udp}
    with ThreadPoolExecutor(max_workers=32) as pool:
        got = dict(zip(want, pool.map(lambda k: run[k[0]](*k[1:]), want)))
    return got, [f"{kind} {src} -> [{addr}]:{port}: expected {'reach' if want[(kind, src, addr, port)] else 'blocked'}"
                 for (kind, src, addr, port), ok in got.items() if ok != want[(kind, src, addr, port)]]
