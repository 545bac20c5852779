"""Adapter: train and evaluate one fold, or every seed x fold of one method (hardmil.train.run.run_fold)."""

from pathlib import Path

from hardmil.train.run import run_fold
from hardmil.utils import rule_log

wc, p = snakemake.wildcards, snakemake.params
run = p.run
if hasattr(wc, "fold"):
    jobs = [(int(wc.seed), int(wc.fold), snakemake.input.splits)]
else:
    splits_of = dict(zip(p.seeds, snakemake.input.splits, strict=True))
    jobs = [(s, f, splits_of[s]) for s in p.seeds for f in p.folds]

with rule_log(snakemake.log[0]):
    for seed, fold, splits in jobs:
        out_dir = Path(snakemake.output[0]).parents[2] / f"seed{seed}" / f"fold{fold}"
        run_fold(splits=splits, features_dir=snakemake.input.features, classes=run["classes"], fold=fold,
                 protocol=wc.protocol, seed=seed, model=run["model"], model_params=run["model_params"],
                 train_cfg=run["train"], out_dir=out_dir, standardize=run["standardize"],
                 threads=snakemake.threads, progress=True)
