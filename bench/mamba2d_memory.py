"""Host memory of one 2DMamba training step as a function of the grid it scans (not a test: prints figures).

The 2-D scan keeps ``[H, W, 2 x dim, d_state]`` states (and the tensors autograd saves to differentiate it) for
every grid cell, pad cells included, so a training step's memory follows the number of cells, not the number of
patches: with ``grid_extent: dataset`` (the reference's one grid per dataset, config/paper.yaml's 2DMamba rows)
every bag costs the whole grid. This script measures it so that the job memory model
(:func:`hardmil.data.store.job_memory_mb`, ``GRID_CELL_MB``) requests enough for such jobs.

For each grid side G (default 32 / 64 / 96 / 128) and each scan (``kernel``, ``pscan``), a fresh process builds
the model at its defaults (dim 128, d_state 16, 1024-d features) with ``grid_extent: dataset``, ``grid_w = grid_h
= G``, ``pool: grid``, places a bag of 500 patches on the grid, runs forward + backward + an Adam step, and reports
the growth of its peak resident set (``VmHWM``) over the same process's peak after a 1-cell warm-up step. Prints
MB per cell from a least-squares line through the sizes.

    python bench/mamba2d_memory.py
    python bench/mamba2d_memory.py --sides 64 128 192 --scans kernel
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _step(side: int, scan: str, n_patches: int) -> tuple[float, float]:
    """In this process: the peak after a 2 x 2 warm-up step, and after one step on a ``side`` x ``side`` grid."""
    import torch

    from hardmil.models import build_model

    torch.manual_seed(0)
    torch.set_num_threads(1)

    def one_step(g: int, n: int) -> None:
        model = build_model("mamba2d", in_dim=1024, n_classes=2, grid_extent="dataset", grid_w=g, grid_h=g,
                            pool="grid", scan=scan, patch_size=256)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        cells = torch.randperm(g * g)[:n]
        coords = torch.stack([cells % g, cells // g], dim=1) * 256
        out = model(torch.randn(1, n, 1024), coords=coords[None])
        torch.nn.functional.cross_entropy(out.logits, torch.tensor([1])).backward()
        opt.step()

    one_step(2, 2)  # warm-up: libraries, allocator, a 2 x 2 grid
    base = _peak_mb()
    one_step(side, min(n_patches, side * side))
    return base, _peak_mb()


def measure(side: int, scan: str, n_patches: int) -> tuple[float, float]:
    """(warm-up peak MB, step peak MB) of a fresh Python process running :func:`_step`."""
    out = subprocess.run([sys.executable, __file__, "--child", str(side), scan, str(n_patches)],
                         check=True, capture_output=True, text=True).stdout
    base, peak = json.loads(out.strip().splitlines()[-1])
    return base, peak


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", type=int, nargs="+", default=[32, 64, 96, 128])
    ap.add_argument("--scans", nargs="+", default=["kernel", "pscan"], choices=["kernel", "pscan"])
    ap.add_argument("--patches", type=int, default=500, help="patches of the bag placed on the grid")
    ap.add_argument("--child", nargs=3, metavar=("SIDE", "SCAN", "PATCHES"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_step(int(args.child[0]), args.child[1], int(args.child[2]))))
        return
    print(f"{'scan':<7} {'grid':>9} {'cells':>7} {'base MB':>8} {'peak MB':>8} {'step MB':>8} {'MB/cell':>8}")
    for scan in args.scans:
        cells, grown = [], []
        for side in args.sides:
            base, peak = measure(side, scan, args.patches)
            cells.append(side * side)
            grown.append(peak - base)
            print(f"{scan:<7} {side:>4}x{side:<4} {side * side:>7} {base:>8.0f} {peak:>8.0f} {peak - base:>8.0f} "
                  f"{(peak - base) / (side * side):>8.3f}")
        if len(cells) > 1:
            slope, icept = np.polyfit(cells, grown, 1)
            print(f"{scan:<7} least squares: {slope:.3f} MB per cell + {icept:.0f} MB")


if __name__ == "__main__":
    main()
