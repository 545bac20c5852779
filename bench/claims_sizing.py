"""Sizing the controlled benchmark (``config/claims.yaml``): how often does a baseline's fold run end at chance?

A comparison can only reach a verdict when its baseline trains. This script generates a ``source: simulated``
regime from the claims bank for each *variant* of the benchmark's size and budget (development bags, witness
rate, learning rate, epochs, patience, earliest stop), trains the chosen methods on seeds x folds of it with the
project's trainer (``hardmil.train.run.run_fold``, the reference recipe of docs/recipe.md), and prints per
variant each method's mean test AUC, its rate of runs ending below AUC 0.6, the fold-to-fold standard deviation
and the wall time per run. Resumable: a finished run (``metrics.json``) is read, not retrained.

    python bench/claims_sizing.py --work /tmp/sizing --seeds 0 1 2 3 4 \
        --variant base:n_train=256 --variant dev1024:n_train=1024 --jobs 2

A variant is ``NAME:key=value,key=value``; keys are the simulated model's (``n_train``, ``witness_rate=lo/hi``,
``bag_size=lo/hi``, ``salient_train``, ``hard_rate``, ...) and the budget's (``epochs``, ``patience``,
``min_epochs``, ``lr``). Anything not given is ``config/claims.yaml``'s ``sim_plain`` and ``train`` block.
The bank must exist (``snakemake --cores 2 results/manifests/claims_bank.tsv --configfile config/claims.yaml``).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from hardmil.config import load_config
from hardmil.data.bags import read_manifest_rows
from hardmil.data.simulated import BagModel, bank_from_slides, make_simulated, simulated_splits
from hardmil.data.splits import write_splits
from hardmil.data.store import build_store
from hardmil.data.survival import manifest_slides

ROOT = Path(__file__).resolve().parents[1]
BUDGET = ("epochs", "patience", "min_epochs", "lr")
METHODS = {"abmil": ("abmil", {"act": "gelu"}),
           "abmil_mhim": ("abmil", {"act": "gelu", "attention_act": "relu", "attention_bias": False})}


def parse_variant(text: str, model: dict, train: dict) -> tuple[str, dict, dict]:
    name, _, body = text.partition(":")
    model, train = dict(model), dict(train)
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        parsed = [float(v) for v in value.split("/")] if "/" in value else float(value)
        if key in BUDGET:
            train[key] = int(parsed) if key != "lr" else parsed
        elif key in BagModel.__dataclass_fields__:
            if key in ("n_train", "n_test", "seed"):
                parsed = int(parsed)
            elif key == "bag_size":
                parsed = [int(v) for v in parsed]
            model[key] = parsed
        else:
            raise SystemExit(f"variant {name}: unknown key {key!r}")
    return name, model, train


def prepare(work: Path, name: str, model: dict, cfg: dict, bank, seeds: list[int]) -> Path:
    """The regime's features, splits (one file per seed) and store, written once."""
    d = work / name
    store = d / "store"
    splits = {("clean", s): str(d / f"splits_seed{s}.tsv") for s in seeds}
    if (store / "index.json").exists():  # generated earlier: only the splits of seeds added since
        rows = read_manifest_rows(d / "manifest.tsv", ("slide", "case", "label", "pool"))
        folds, val = cfg["cv"]["folds"], cfg["cv"]["val_fraction"]
        for (protocol, seed), path in splits.items():
            if not Path(path).exists():
                write_splits(path, simulated_splits(rows, folds, seed, protocol, val))
        return d
    make_simulated(bank, BagModel.from_config(model), classes=["negative", "positive"],
                   features_dir=d / "features", manifest=d / "manifest.tsv", truth=d / "truth.h5",
                   summary=d / "summary.json", splits=splits, folds=cfg["cv"]["folds"],
                   val_fraction=cfg["cv"]["val_fraction"], cohort=name)
    build_store(manifest_slides(d / "manifest.tsv", classes=["negative", "positive"]), d / "features", store)
    (d / "variant.json").write_text(json.dumps({"model": model}, indent=1))
    return d


def run_one(spec: dict) -> dict:
    import torch

    from hardmil.train.run import run_fold

    torch.set_num_threads(1)
    d, out = Path(spec["dir"]), Path(spec["out"])
    done = out / "metrics.json"
    t0 = time.perf_counter()
    if done.exists():
        m, seconds = json.loads(done.read_text()), float("nan")
    else:
        model, params = METHODS[spec["method"]]
        m = run_fold(splits=d / f"splits_seed{spec['seed']}.tsv", features_dir=d / "store",
                     classes=["negative", "positive"], fold=spec["fold"], protocol="clean", seed=spec["seed"],
                     model=model, model_params=params, train_cfg=spec["train"], out_dir=out, progress=False)
        seconds = time.perf_counter() - t0
    return {**{k: spec[k] for k in ("variant", "method", "seed", "fold")}, "auc": m["auc"],
            "epoch": m["selected_epoch"], "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "config" / "claims.yaml"))
    ap.add_argument("--regime", default="sim_plain")
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--methods", nargs="+", default=["abmil"], choices=sorted(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--fail-below", type=float, default=0.6)
    a = ap.parse_args()

    cfg = load_config(a.config)
    model = dict(cfg["datasets"][a.regime]["simulated"])
    bank_name = model.pop("bank")
    dim, tumour_min = model.pop("dim"), model.pop("tumour_min")
    model.pop("bank_encoder", None)
    train = {k: cfg["train"][k] for k in BUDGET} | {"device": "cpu"}
    enc = next(iter(cfg["encoders"]))
    bank = bank_from_slides(ROOT / "results" / "manifests" / f"{bank_name}.tsv",
                            ROOT / "results" / "features" / bank_name / enc, ROOT / "results" / "slides" / bank_name,
                            cfg["patching"]["patch_size"], dim=dim, tumour_min=tumour_min)
    specs = []
    for text in a.variant:
        name, vmodel, vtrain = parse_variant(text, model, train)
        d = prepare(a.work, name, vmodel, cfg, bank, a.seeds)
        (d / "budget.json").write_text(json.dumps(vtrain))
        specs += [{"variant": name, "method": m, "seed": s, "fold": f, "dir": str(d), "train": vtrain,
                   "out": str(d / "runs" / f"seed{s}" / f"fold{f}" / m)}
                  for s in a.seeds for f in range(cfg["cv"]["folds"]) for m in a.methods]
    rows = []
    with ProcessPoolExecutor(a.jobs) as pool:
        for r in pool.map(run_one, specs):
            rows.append(r)
            print("\t".join(str(r[k]) for k in ("variant", "method", "seed", "fold", "auc", "epoch", "seconds")),
                  flush=True)
    with open(a.work / "runs.tsv", "w") as fh:
        fh.write("variant\tmethod\tseed\tfold\tauc\tepoch\tseconds\n")
        for r in rows:
            fh.write("\t".join(str(r[k]) for k in ("variant", "method", "seed", "fold", "auc", "epoch", "seconds"))
                     + "\n")
    print(f"\n| variant | method | runs | mean AUC | runs < {a.fail_below} | SD over runs | s per run |")
    print("|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["variant"] for r in rows):
        for m in a.methods:
            sel = [r for r in rows if r["variant"] == name and r["method"] == m]
            auc = np.array([r["auc"] for r in sel])
            secs = np.array([r["seconds"] for r in sel], dtype=float)
            per = f"{np.nanmean(secs):.0f}" if np.isfinite(secs).any() else "(resumed)"
            print(f"| {name} | {m} | {len(sel)} | {auc.mean():.3f} | {(auc < a.fail_below).sum()} | "
                  f"{auc.std(ddof=1):.3f} | {per} |")


if __name__ == "__main__":
    main()
