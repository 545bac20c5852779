"""Cohort-scale benchmark of the data path: bag store build, job memory, start-up and epoch time.

For each cohort size (default 40 / 120 / 360 bags of 8,000 x 1024 random float32 features, TRIDENT-layout h5
files under a temporary directory) this

1. builds the bag store (:func:`hardmil.data.store.build_store`) and times it;
2. runs one training fold (1 epoch) of AB-MIL and of MHIM-v2(AB-MIL) through :func:`hardmil.train.run.run_fold`,
   the function the workflow's ``train`` rule runs, each in a fresh process, and samples that process every
   20 ms: peak ``RssAnon`` (private, non-reclaimable memory), peak total RSS (which also counts the store's
   file-backed pages: shared page cache), seconds from job start to the first training step and seconds per
   epoch (``metrics.json``);
3. at the middle size, the same AB-MIL fold with ``placement: resident`` (the fold's bags held in the job's
   memory: the in-memory path) for the epoch-time ratio, and two AB-MIL jobs at once on the same store
   (USS and PSS of each, from ``/proc/<pid>/smaps_rollup``).

Prints a table; ``--json FILE`` also writes every figure. Not a test: it takes minutes and tens of GB of disk
(``--sizes`` / ``--bag-size`` make it smaller). ``--device cuda`` runs the folds on the GPU (resident vs
streamed bags then differ in transfers, not only in memory).

    python bench/scale.py                       # 40 / 120 / 360 bags (about 25 GB of temporary disk)
    python bench/scale.py --sizes 40 120 --json scale.json
    python bench/scale.py --verify 100000       # cost of the store's per-bag checksum on one 10^5-patch bag
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_cohort(root: Path, n_bags: int, bag_size: int, dim: int, seed: int = 0) -> tuple[Path, Path]:
    """``n_bags`` h5 files + a splits file (fold 0: 80 % train, 10 % val, 10 % test; classes neg / pos)."""
    from hardmil.data.bags import write_features
    from hardmil.data.splits import write_splits

    feats_dir = root / "features"
    feats_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_bags):
        label = i % 2
        x = rng.standard_normal((bag_size, dim), dtype=np.float32)
        x[: bag_size // 50, :8] += 1.5 * label  # 2 % witnesses in positive bags
        coords = np.stack(np.divmod(np.arange(bag_size), 100), axis=1).astype(np.int64) * 256
        write_features(feats_dir / f"s{i:04d}.h5", x, coords)
        j, pairs = i // 2, n_bags // 2  # pairs of one negative and one positive bag: 80 / 10 / 10 %
        k = j % 10 if pairs >= 10 else 10 - (pairs - j)
        role = "val" if k == 8 else ("test" if k == 9 else "train")
        rows.append({"slide": f"s{i:04d}", "case": f"s{i:04d}", "label": ["neg", "pos"][label], "fold": 0,
                     "role": role})
    write_splits(root / "splits.tsv", rows)
    return feats_dir, root / "splits.tsv"


MODELS = {"abmil": ("abmil", {}),
          "mhim_v2_abmil": ("mhim", {"baseline": "abmil", "version": "v2", "teacher_init": "none"})}


def _fold(store: str, splits: str, out: str, model: str, params: dict, device: str, placement: str) -> None:
    import torch

    from hardmil.train.run import run_fold

    torch.set_num_threads(1)
    run_fold(splits=splits, features_dir=store, classes=["neg", "pos"], fold=0, protocol="clean", seed=0,
             model=model, model_params=params, out_dir=out, progress=False, threads=1,
             train_cfg={"epochs": 1, "patience": 1, "device": device, "placement": placement})


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("RssAnon:", "VmRSS:")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0]) * 1024
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                k, _, rest = line.partition(":")
                if k in ("Pss", "Private_Clean", "Private_Dirty"):
                    out[k] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    out["USS"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    return out


def run_jobs(specs: list[dict]) -> list[dict]:
    """Start every spec's fold in its own process at once; sample each until all exit."""
    ctx = mp.get_context("spawn")
    procs = []
    for s in specs:
        p = ctx.Process(target=_fold, kwargs=s)
        p.start()
        procs.append(p)
    peaks = [{} for _ in procs]
    while any(p.is_alive() for p in procs):
        for p, peak in zip(procs, peaks, strict=True):
            if p.is_alive():
                for k, v in _status(p.pid).items():
                    peak[k] = max(peak.get(k, 0), v)
        time.sleep(0.02)
    results = []
    for p, peak, s in zip(procs, peaks, specs, strict=True):
        if p.exitcode != 0:
            raise RuntimeError(f"fold {s['model']} exited with {p.exitcode}")
        timing = json.loads((Path(s["out"]) / "metrics.json").read_text())["timing"]
        results.append({"peak_anon_mb": peak.get("RssAnon", 0) / 1e6, "peak_rss_mb": peak.get("VmRSS", 0) / 1e6,
                        "peak_uss_mb": peak.get("USS", 0) / 1e6, "peak_pss_mb": peak.get("Pss", 0) / 1e6,
                        "first_step_s": timing["seconds_to_first_step"], "epoch_s": timing["seconds_per_epoch"],
                        "wall_s": timing["wall_seconds"]})
    return results


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[40, 120, 360])
    ap.add_argument("--bag-size", type=int, default=8000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--compare-at", type=int, default=None, help="size for the resident and two-job runs "
                                                                  "(default: the middle size)")
    ap.add_argument("--tmp", default=None, help="where to put the cohorts (default: the system's temp dir)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--verify", type=int, default=None, metavar="ROWS",
                    help="only time the bag store's checksum verification on one bag of ROWS x --dim")
    args = ap.parse_args(argv)
    if args.verify:
        return verify_cost(args.verify, args.dim, args.tmp)
    from hardmil.data.store import build_store

    compare_at = args.compare_at or args.sizes[len(args.sizes) // 2]
    report: dict = {"bag_size": args.bag_size, "dim": args.dim, "device": args.device, "dtype": args.dtype,
                    "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0], "sizes": {}}
    for n in args.sizes:
        root = Path(tempfile.mkdtemp(prefix=f"hardmil-scale-{n}-", dir=args.tmp))
        try:
            t = time.perf_counter()
            feats, splits = make_cohort(root, n, args.bag_size, args.dim)
            gen_s = time.perf_counter() - t
            t = time.perf_counter()
            slides = sorted(p.stem for p in feats.glob("*.h5"))
            build_store(slides, feats, root / "store", dtype=args.dtype)
            build_s = time.perf_counter() - t
            entry = {"feature_gb": n * args.bag_size * args.dim * 4 / 1e9, "generate_s": gen_s,
                     "store_build_s": build_s}
            common = {"store": str(root / "store"), "splits": str(splits), "device": args.device}
            for name in args.models:
                model, params = MODELS[name]
                spec = {**common, "out": str(root / f"run-{name}"), "model": model, "params": params,
                        "placement": "auto"}
                entry[name] = run_jobs([spec])[0]
                print(f"{n:4d} bags {name:14s} " + "  ".join(f"{k} {v:.2f}" for k, v in entry[name].items()),
                      flush=True)
            if n == compare_at:
                model, params = MODELS["abmil"]
                spec = {**common, "model": model, "params": params}
                entry["abmil_resident"] = run_jobs([{**spec, "out": str(root / "res"), "placement": "resident"}])[0]
                entry["abmil_two_jobs"] = run_jobs([{**spec, "out": str(root / f"two{k}"), "placement": "auto"}
                                                    for k in range(2)])
                print(f"{n:4d} bags resident       " + "  ".join(f"{k} {v:.2f}" for k, v in
                                                                  entry["abmil_resident"].items()), flush=True)
                for k, r in enumerate(entry["abmil_two_jobs"]):
                    print(f"{n:4d} bags two jobs [{k}]   " + "  ".join(f"{a} {v:.2f}" for a, v in r.items()),
                          flush=True)
            report["sizes"][n] = entry
            print(f"{n:4d} bags: {entry['feature_gb']:.2f} GB of features, store built in {build_s:.1f} s "
                  f"(cohort generated in {gen_s:.1f} s)", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    report["load_avg_end"] = os.getloadavg()[0]
    _summary(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return report


def verify_cost(rows: int, dim: int, tmp: str | None = None, repeats: int = 3) -> dict:
    """Seconds to verify one bag's checksum (:meth:`hardmil.data.store.BagStore.verify`, page cache warm) next to
    what a training step does with the same bag anyway (its float32 copy from the memory map)."""
    import torch

    from hardmil.data.bags import write_features
    from hardmil.data.store import BagStore, build_store

    root = Path(tempfile.mkdtemp(prefix="hardmil-verify-", dir=tmp))
    try:
        rng = np.random.default_rng(0)
        write_features(root / "f" / "s0.h5", rng.standard_normal((rows, dim), dtype=np.float32),
                       np.zeros((rows, 2), np.int64))
        t = time.perf_counter()
        build_store(["s0"], root / "f", root / "store")
        build_s = time.perf_counter() - t
        verify, convert = [], []
        for _ in range(repeats):
            store = BagStore(root / "store")  # a new process's view: nothing verified yet
            t = time.perf_counter()
            store.verify("s0")
            verify.append(time.perf_counter() - t)
            t = time.perf_counter()
            torch.from_numpy(np.array(store.features("s0"), dtype=np.float32))
            convert.append(time.perf_counter() - t)
        mb = rows * dim * 4 / 1e6
        report = {"rows": rows, "dim": dim, "bag_mb": mb, "store_build_s": build_s, "verify_s": min(verify),
                  "verify_gb_per_s": mb / 1e3 / min(verify), "step_copy_s": min(convert)}
        print(f"one bag of {rows} x {dim} float32 ({mb:.0f} MB): build {build_s:.2f} s, checksum verify "
              f"{min(verify):.3f} s ({report['verify_gb_per_s']:.2f} GB/s), the step's own float32 copy "
              f"{min(convert):.3f} s (best of {repeats}, page cache warm)")
        return report
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _summary(report: dict) -> None:
    sizes = sorted(report["sizes"])
    print("\nbags | store build s | model | peak RssAnon MB | peak RSS MB | start->first step s | s/epoch")
    for n in sizes:
        e = report["sizes"][n]
        for name in MODELS:
            if name in e:
                r = e[name]
                print(f"{n:4d} | {e['store_build_s']:13.1f} | {name:14s} | {r['peak_anon_mb']:15.0f} | "
                      f"{r['peak_rss_mb']:11.0f} | {r['first_step_s']:19.2f} | {r['epoch_s']:7.2f}")
    for name in MODELS:
        have = [n for n in sizes if name in report["sizes"][n]]
        if len(have) > 1:
            a, b = report["sizes"][have[0]][name], report["sizes"][have[-1]][name]
            print(f"{name}: peak RssAnon growth {have[0]} -> {have[-1]} bags: "
                  f"{100 * (b['peak_anon_mb'] / a['peak_anon_mb'] - 1):+.1f} %")
    for n in sizes:
        e = report["sizes"][n]
        if "abmil_resident" in e:
            print(f"{n} bags: streamed / resident seconds per epoch = "
                  f"{e['abmil']['epoch_s'] / e['abmil_resident']['epoch_s']:.3f}")
            two = e["abmil_two_jobs"]
            print(f"{n} bags: two jobs at once: USS {two[0]['peak_uss_mb']:.0f} + {two[1]['peak_uss_mb']:.0f} MB, "
                  f"PSS {two[0]['peak_pss_mb']:.0f} + {two[1]['peak_pss_mb']:.0f} MB; one job alone: USS "
                  f"{e['abmil']['peak_uss_mb']:.0f} MB -> two/one = "
                  f"{(two[0]['peak_uss_mb'] + two[1]['peak_uss_mb']) / (2 * e['abmil']['peak_uss_mb']):.3f} "
                  "per job")


if __name__ == "__main__":
    main()
