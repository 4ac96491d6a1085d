"""The performance targets of the project, measured in one command (`make bench`).

    sudo .venv/bin/python bench/targets.py [--plugin dist/isolation/isolation] [--quick] [--json]

It runs the two benchmarks that measure them and prints one table, each figure next to
its target:
  bench/cni_latency.py at 5 bridges x 10 containers and at 20 x 50: our plugin without
      and with the resident agent, interleaved cell by cell with Debian's Go `firewall`
      plugin (ingressPolicy same-bridge): ADD, CHECK, DEL medians and their ratios to
      Go; VERSION; the largest peak RSS of one plugin exec;
  bench/scale.py: nftables ADD with 1000 isolated bridges registered over ADD with 1
      (new networks and repeated containers), and TCP throughput between two containers
      of one bridge with 1010 other isolated bridges over no isolation at all.
Each benchmark is its own process with its own namespaces and cleanup (see their
docstrings); this script only reads their --json output. Machine load at the start and
end of each is printed, since the absolute numbers drift with it (the ratios hold).
`--quick` shrinks the grids (2 x 5 and 4 x 10, sizes 1 and 100) to check the plumbing.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402


def run(script: str, *args: str) -> dict:
    harness.logger("targets")(f"running {script} {' '.join(args)}")
    proc = subprocess.run([sys.executable, os.path.join(HERE, script), *args, "--json"], stdout=subprocess.PIPE,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed (exit {proc.returncode})")
    return json.loads(proc.stdout)


def rows(small: dict, large: dict, scale: dict) -> list[tuple[str, str, float, str, bool]]:
    """(figure, measured, value, target, met) for every target."""
    out = []

    def ratio(figure, r, verb, key, limit):
        value = r["verbs"][verb][f"ratio_{key}"]
        med = r["verbs"][verb][key]["median_ms"]
        go = r["verbs"][verb]["go"]["median_ms"]
        out.append((figure, f"{med:.1f} ms vs Go {go:.1f} ms", value, f"<= {limit}x Go", value <= limit))

    g1, g2 = small["grid"], large["grid"]
    n1, n2 = f"{g1['bridges']}x{g1['containers_per_bridge']}", f"{g2['bridges']}x{g2['containers_per_bridge']}"
    ratio(f"ADD, {n1}, resident agent", small, "ADD", "agent", 1.0)
    ratio(f"ADD, {n1}, no agent (plain exec)", small, "ADD", "ours", 1.5)
    ratio(f"ADD, {n2}, no agent", large, "ADD", "ours", 0.5)
    ratio(f"ADD, {n2}, resident agent", large, "ADD", "agent", 0.5)
    for verb in ("DEL", "CHECK"):
        for r, n in ((small, n1), (large, n2)):
            ratio(f"{verb}, {n}, no agent", r, verb, "ours", 1.0)
            ratio(f"{verb}, {n}, resident agent", r, verb, "agent", 1.0)
    sizes = scale["add_ratio_largest_over_smallest"]["sizes"]
    for kind, what in (("new", "a new network"), ("repeat", "a further container")):
        value = scale["add_ratio_largest_over_smallest"]["nftables"][kind]
        out.append((f"nftables ADD ({what}) with {sizes[1]} isolated bridges / with {sizes[0]}", "", value,
                    "<= 1.2", value <= 1.2))
    version = small["verbs"]["VERSION"]["ours"]["median_ms"]
    out.append(("VERSION (frozen, no agent)", f"{version:.1f} ms", version, "<= 15 ms", version <= 15))
    fwd = scale["forwarding"]
    thr = fwd["variants"]["nftables"]["throughput_ratio_vs_none"]
    out.append((f"throughput with {fwd['forward_bridges']} other isolated bridges / no isolation (nftables)",
                f"{fwd['variants']['nftables']['throughput_median_gbps']:.2f} vs "
                f"{fwd['variants']['none']['throughput_median_gbps']:.2f} Gbit/s", thr, ">= 0.95", thr >= 0.95))
    bare = fwd["variants"]["nftables"]["throughput_ratio_vs_bare"]
    out.append(("  the same / a bare bridge without ipMasq (no conntrack at all)",
                f"{fwd['variants']['nftables']['throughput_median_gbps']:.2f} vs "
                f"{fwd['variants']['bare']['throughput_median_gbps']:.2f} Gbit/s", bare, "(shown)", None))
    rss = max(small["peak_rss_kib"]["ours"], large["peak_rss_kib"]["ours"]) / 1024
    out.append(("peak RSS of one plugin exec", f"{rss:.1f} MiB", rss, "<= 40 MB", rss * 1.048576 <= 40))
    return out


def render(results: dict) -> str:
    lines = [harness.headline("isolation performance targets", results["small"])]
    for name in ("small", "large", "scale"):
        r = results[name]
        load = r["load"]
        lines.append(f"{name:5}: load (1/5/15 min) start {harness.load(load['start'])}, end {harness.load(load['end'])}")
    lines.append("")
    table = [[figure, measured, f"{value:.2f}", target, "-" if met is None else "met" if met else "NOT MET"]
             for figure, measured, value, target, met in results["rows"]]
    lines += harness.table(["figure", "measured", "value", "target", "status"], table)
    lines += ["", "medians; ratios are ours over Go's median measured interleaved in the same run "
              "(bench/cni_latency.py), or largest over smallest (bench/scale.py); no isolation: the containers' "
              "bridge with ipMasq, as runtimes' default networks have it, so conntrack runs with or without us"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plugin", default=harness.OUR_PLUGIN, help="our frozen binary (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="small grids, to check that everything runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    grids = ((2, 5), (4, 10)) if args.quick else ((5, 10), (20, 50))
    results = {}
    for name, (bridges, containers) in zip(("small", "large"), grids):
        results[name] = run("cni_latency.py", "--plugin", args.plugin, "--bridges", str(bridges),
                            "--containers", str(containers))
    # iperf3 between two containers spreads +-10% run to run on a 2-CPU machine: 9 rounds
    # give the throughput median room to settle
    scale_args = ["--sizes", "1,100"] if args.quick else ["--rounds", "9"]
    results["scale"] = run("scale.py", "--plugin", args.plugin, *scale_args)
    results["rows"] = rows(results["small"], results["large"], results["scale"])
    print(json.dumps(results, indent=1) if args.json else render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
