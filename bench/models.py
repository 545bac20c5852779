"""Per-bag forward + backward time and peak memory of every registered model.

    python bench/models.py [--sizes 500 2000 8000 20000] [--dim 1024] [--repeats 3] [--device cpu|cuda]
    python bench/models.py --mhim abmil transmil    # MHIM-v2 over each baseline against the baseline alone
    python bench/models.py --device cuda --sizes 8000 20000 50000 --mhim abmil transmil --json out.json

A model is a registry name or ``mhim:<baseline>[:field=json,...]`` (MHIM-v2 with its defaults over that
baseline: h = 0.01, RSM 0.8 with the GRN). ``--mhim`` prints, per baseline, both rows and the MHIM / baseline
ratios of time and peak memory (issue targets at 8000 instances: AB-MIL time <= 1.2x; TransMIL time <= 0.6x,
memory <= 0.5x), then the time ratios again from interleaved steps, with the MHIM teacher's scoring pass alone
(``teacher only``: its no-grad forward over every instance, a floor on the MHIM step's extra cost).

Each model runs in its own process, sizes in increasing order, so the peak RSS growth over the process's
baseline after each size is that size's peak (CPU). On CUDA the figure is torch.cuda.max_memory_allocated.
Times are the median of ``--repeats`` steps after one warm-up step, with 1 CPU thread unless --threads.
``--json PATH`` also writes every row, ratio and interleaved time (and the device's name) to PATH.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def build(name: str, dim: int, device: str):
    import torch

    from hardmil.models import build_model

    registry, _, rest = name.partition(":")
    baseline, _, extra = rest.partition(":")
    params = {k: json.loads(v) for k, v in (kv.split("=") for kv in extra.split(",") if kv)}
    if baseline:
        params["baseline"] = baseline
    torch.manual_seed(0)
    model = build_model(registry, in_dim=dim, **params).to(device).train()
    if registry == "ibmil":
        model.set_confounders(torch.randn_like(model.confounders))
    if registry == "mhim":  # a teacher equal to the student's initialisation
        model.init_teacher({"model": model.cfg.baseline, "model_config": dict(model.student.cfg.__dict__),
                            "state_dict": model.student.state_dict()})
    return model


def bag(n: int, dim: int, device: str):
    import torch

    x = torch.randn(1, n, dim, device=device)
    side = int(n**0.5) + 1  # patches on a regular grid of 256-px steps (only 2DMamba reads them)
    cells = torch.randperm(side * side)[:n]
    coords = (torch.stack([cells % side, cells // side], dim=-1) * 256)[None].to(device)
    return x, coords, torch.tensor([1], device=device)


def step(model, x, coords, y, device: str) -> float:
    """One training step on one bag (forward, loss, backward, MHIM's teacher EMA); seconds."""
    import torch
    import torch.nn.functional as F

    model.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = model(x, label=y, coords=coords)
    loss = out.bag_loss_weight * F.cross_entropy(out.logits, y) + sum(out.aux_losses.values())
    loss.backward()
    if hasattr(model, "after_step"):  # MHIM's teacher EMA is part of its per-bag cost
        model.after_step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def measure(name: str, sizes: list[int], dim: int, repeats: int, device: str, threads: int) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    model = build(name, dim, device)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = []
    for n in sizes:
        x, coords, y = bag(n, dim, device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = [step(model, x, coords, y, device) for _ in range(repeats + 1)][1:]
        peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)
        rows.append({"model": name, "n": n, "ms": 1000 * sorted(times)[len(times) // 2], "peak_mb": peak})
    return rows


def interleaved(names: list[str], sizes: list[int], dim: int, repeats: int, device: str, threads: int) -> dict:
    """Median ms per (name, size), the models' steps alternating so that a busy machine slows all alike."""
    import torch

    torch.set_num_threads(threads)
    models = {name: build(name, dim, device) for name in names}
    teachers = [name for name in names if name.startswith("mhim:")]  # + the teacher's scoring pass alone
    out = {name: [] for name in names + [f"{t} teacher only" for t in teachers]}
    for n in sizes:
        x, coords, y = bag(n, dim, device)
        times = {name: [] for name in out}
        for i in range(repeats + 1):
            for name, model in models.items():
                t = step(model, x, coords, y, device)
                if name in teachers:
                    times[f"{name} teacher only"].append(timed(model.teacher_scores, x, device))
                if i:
                    times[name].append(t)
        for name in out:
            out[name].append(1000 * sorted(times[name])[len(times[name]) // 2])
    return out


def timed(fn, x, device: str) -> float:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 8000, 20000])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", nargs="+", help="only these models (default: every registry name)")
    ap.add_argument("--mhim", nargs="+", metavar="BASELINE", help="compare MHIM-v2 over these baselines with them")
    ap.add_argument("--no-interleaved", action="store_true", help="with --mhim: skip the interleaved pass")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.sizes, args.dim, args.repeats, args.device, args.threads)))
        return 0
    from hardmil.models import MODELS

    names = [n for b in args.mhim for n in (b, f"mhim:{b}")] if args.mhim else []
    names += args.models or ([] if args.mhim else list(MODELS))
    width = max(16, *map(len, names))
    print(f"{'model':{width}s} " + " ".join(f"{f'N={n}':>20s}" for n in args.sizes))
    print(f"{'':{width}s} " + " ".join(f"{'ms / peak MB':>20s}" for _ in args.sizes))
    results, failed, ratios, inter = {}, {}, {}, {}
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--sizes", *map(str, args.sizes), "--dim", str(args.dim),
               "--repeats", str(args.repeats), "--device", args.device, "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            failed[name] = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
            print(f"{name:{width}s} failed: {failed[name]}")
            continue
        rows = results[name] = json.loads(res.stdout)
        print(f"{name:{width}s} " + " ".join(f"{r['ms']:9.1f} / {r['peak_mb']:7.0f}" + " " * 1 for r in rows))
    for base in args.mhim or []:
        if base in results and f"mhim:{base}" in results:
            ratios[base] = [{"n": b["n"], "time": m["ms"] / b["ms"], "memory": m["peak_mb"] / max(b["peak_mb"], 1)}
                            for b, m in zip(results[base], results[f"mhim:{base}"], strict=True)]
            cells = [f"{r['time']:9.2f}x / {r['memory']:5.2f}x" for r in ratios[base]]
            print(f"{'ratio ' + base:{width}s} " + " ".join(cells))
    if args.mhim and not args.no_interleaved:  # time ratios again, steps interleaved in one process
        print("\ninterleaved steps, ms (ratio to the baseline)")
        for base in args.mhim:
            pair = [base, f"mhim:{base}"] + [m for m in args.models or [] if m.startswith(f"mhim:{base}:")]
            ms = interleaved(pair, args.sizes, args.dim, args.repeats, args.device, args.threads)
            inter.update(ms)
            for name in ms:
                cells = [f"{t:9.1f} ({t / b:4.2f}x)" for t, b in zip(ms[name], ms[base], strict=True)]
                print(f"{name:{width}s} " + " ".join(f"{c:>20s}" for c in cells))
    if args.json:
        write_report(args, results, failed, ratios, inter)
    return 0


def write_report(args, results: dict, failed: dict, ratios: dict, interleaved_ms: dict) -> None:
    import platform

    import torch

    from hardmil.utils import write_json

    device_name = (torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available()
                   else platform.processor() or platform.machine())
    write_json(args.json, {"device": args.device, "device_name": device_name, "torch": torch.__version__,
                           "sizes": args.sizes, "dim": args.dim, "repeats": args.repeats, "threads": args.threads,
                           "peak": "torch.cuda.max_memory_allocated" if args.device.startswith("cuda")
                           else "RSS growth", "rows": results, "failed": failed, "ratios": ratios,
                           "interleaved_ms": interleaved_ms})


if __name__ == "__main__":
    sys.exit(main())
