"""Per-bag forward + backward time and peak memory of every registered model.

    python bench/models.py [--sizes 500 2000 8000 20000] [--dim 1024] [--repeats 3] [--device cpu|cuda]

Each model runs in its own process, sizes in increasing order, so the peak RSS growth over the process's
baseline after each size is that size's peak (CPU). On CUDA the figure is torch.cuda.max_memory_allocated.
Times are the median of ``--repeats`` steps after one warm-up step, with 1 CPU thread unless --threads.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(name: str, sizes: list[int], dim: int, repeats: int, device: str, threads: int) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from hardmil.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(name, in_dim=dim).to(device).train()
    if name == "ibmil":
        model.set_confounders(torch.randn_like(model.confounders))
    if name == "mhim":  # a teacher equal to the student's initialisation
        model.init_teacher({"model": model.cfg.baseline, "model_config": dict(model.student.cfg.__dict__),
                            "state_dict": model.student.state_dict()})
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = []
    for n in sizes:
        x = torch.randn(1, n, dim, device=device)
        side = int(n**0.5) + 1  # patches on a regular grid of 256-px steps (only 2DMamba reads them)
        cells = torch.randperm(side * side)[:n]
        coords = (torch.stack([cells % side, cells // side], dim=-1) * 256)[None].to(device)
        y = torch.tensor([1], device=device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(repeats + 1):
            model.zero_grad(set_to_none=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = model(x, label=y, coords=coords)
            loss = out.bag_loss_weight * F.cross_entropy(out.logits, y) + sum(out.aux_losses.values())
            loss.backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t)
        peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)
        rows.append({"model": name, "n": n, "ms": 1000 * sorted(times)[len(times) // 2], "peak_mb": peak})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 8000, 20000])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", nargs="+", help="only these registry names (default: all)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.sizes, args.dim, args.repeats, args.device, args.threads)))
        return 0
    from hardmil.models import MODELS

    print(f"{'model':10s} " + " ".join(f"{f'N={n}':>20s}" for n in args.sizes))
    print(f"{'':10s} " + " ".join(f"{'ms / peak MB':>20s}" for _ in args.sizes))
    for name in args.models or MODELS:
        cmd = [sys.executable, __file__, "--one", name, "--sizes", *map(str, args.sizes), "--dim", str(args.dim),
               "--repeats", str(args.repeats), "--device", args.device, "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            print(f"{name:10s} failed: {res.stderr.strip().splitlines()[-1]}")
            continue
        rows = json.loads(res.stdout)
        print(f"{name:10s} " + " ".join(f"{r['ms']:9.1f} / {r['peak_mb']:7.0f}" + " " * 1 for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
