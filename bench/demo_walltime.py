"""Run the demo workflow from scratch in a temporary directory and print its wall time per rule.

    python bench/demo_walltime.py [--cores 2] [--keep DIR] [--from-results results]

`--from-results` only summarises the benchmark files of an existing run (no new run).
Target (issues 6-8): the whole demo (UCSB + synthetic slide cohort, every rule) in <= 10 minutes on 2 cores,
environment set-up excluded. The machine's load average is printed before and after (shared machines).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def summarise(results: Path) -> list[tuple[str, int, float, float, float]]:
    per_rule: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        rule = tsv.relative_to(results / "benchmarks").parts[0].removesuffix(".tsv")
        with open(tsv) as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        rss = float(row["max_rss"]) if row.get("max_rss", "NA") not in ("NA", "-") else float("nan")
        per_rule[rule].append((float(row["s"]), rss))
    return [(rule, len(v), sum(s for s, _ in v), max(s for s, _ in v), max(r for _, r in v))
            for rule, v in per_rule.items()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", default="2")
    ap.add_argument("--keep", type=Path, help="run in this directory instead of a temporary one")
    ap.add_argument("--from-results", type=Path, help="summarise an existing results/ folder only")
    args = ap.parse_args()
    wall = None
    if args.from_results:
        results = args.from_results
    else:
        workdir = args.keep or Path(tempfile.mkdtemp(prefix="hardmil-demo-"))
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(REPO / "config/config.yaml"), "--cores", args.cores, "--quiet"]
        load_before = os.getloadavg()
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        results = workdir / "results"
    rows = summarise(results)
    print(f"{'rule':20s} {'jobs':>5s} {'sum s':>9s} {'max s':>8s} {'max RSS MB':>11s}")
    for rule, n, total, longest, rss in sorted(rows, key=lambda r: -r[2]):
        print(f"{rule:20s} {n:5d} {total:9.1f} {longest:8.1f} {rss:11.0f}")
    if wall is not None:
        print(f"demo wall time: {wall:.1f} s on {args.cores} cores (target <= 600 s)")
        print(f"load average (1, 5, 15 min) before: {load_before}, after: {load_after} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
