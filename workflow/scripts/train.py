"""Adapter: train and evaluate the folds of one job (hardmil.train.run.run_fold).

On a GPU workstation the job first takes a GPU slot (hardmil.gpu; config ``jobs_per_gpu``), so concurrent
training jobs spread over the visible GPUs instead of all landing on GPU 0."""

from hardmil.gpu import gpu_slot
from hardmil.train.run import run_fold
from hardmil.utils import rule_log

run = snakemake.params.run
with rule_log(snakemake.log[0]), gpu_slot(run["train"].get("device", "auto"),
                                          jobs_per_gpu=snakemake.config.get("jobs_per_gpu", 1)):
    for job in snakemake.params.jobs:
        run_fold(splits=job["splits"], features_dir=snakemake.input.features, classes=run["classes"],
                 fold=job["fold"], protocol=snakemake.wildcards.protocol, seed=job["seed"], model=run["model"],
                 model_params=run["model_params"], train_cfg=run["train"], out_dir=job["out_dir"],
                 standardize=run["standardize"], threads=snakemake.threads, extra_bags=job["extra_bags"],
                 confounders=job["confounders"], teacher=job["teacher"], init_from=job["init_from"],
                 truth=job["truth"],
                 task=run["task"],
                 time_bins=run["time_bins"])
