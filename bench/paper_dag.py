"""Time `snakemake -n --configfile config/paper.yaml` (no data present) and print the job count per rule.

    python bench/paper_dag.py [--configfile config/paper.yaml]

Target (cluster issue): the whole reproduction DAG is listed within 30 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default="config/paper.yaml")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # an empty working directory: no data, no .snakemake state
        cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "-s", str(ROOT / "Snakefile"), "-d", tmp,
               "--configfile", str((ROOT / args.configfile).resolve())]
        t = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        wall = time.perf_counter() - t
    if res.returncode:
        print(res.stdout[-3000:], res.stderr[-3000:])
        return res.returncode
    stats = res.stdout[res.stdout.index("Job stats:"):].split("\n\n")[0]
    rows = re.findall(r"^(\w+)\s+(\d+)$", stats, re.M)
    print(f"snakemake -n --configfile {args.configfile}: {wall:.1f} s wall, {dict(rows).get('total')} jobs")
    for rule, n in rows:
        print(f"  {rule:20s} {n:>6s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
