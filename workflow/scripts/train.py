"""Adapter: train and evaluate the folds of one job (hardmil.train.run.run_fold)."""

from hardmil.train.run import run_fold
from hardmil.utils import rule_log

run = snakemake.params.run
with rule_log(snakemake.log[0]):
    for job in snakemake.params.jobs:
        run_fold(splits=job["splits"], features_dir=snakemake.input.features, classes=run["classes"],
                 fold=job["fold"], protocol=snakemake.wildcards.protocol, seed=job["seed"], model=run["model"],
                 model_params=run["model_params"], train_cfg=run["train"], out_dir=job["out_dir"],
                 standardize=run["standardize"], threads=snakemake.threads, extra_bags=job["extra_bags"],
                 confounders=job["confounders"], teacher=job["teacher"], init_from=job["init_from"],
                 task=run["task"],
                 time_bins=run["time_bins"])
