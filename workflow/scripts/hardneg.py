"""Adapter: mine hard negatives and generate bags for the folds of one job (hardmil.mining.run)."""

from hardmil.mining.run import generate_fold
from hardmil.utils import rule_log

p = snakemake.params
with rule_log(snakemake.log[0]):
    for job in p.jobs:
        generate_fold(model_path=job["model"], splits=job["splits"], features_dir=snakemake.input.features,
                      classes=p.classes, fold=job["fold"], seed=job["seed"], variant=snakemake.wildcards.variant,
                      cfg=p.cfg, out_dir=job["out_dir"])
