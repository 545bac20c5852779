"""Adapter: IBMIL confounder dictionaries for the folds of one job (hardmil.mining.confounders)."""

from hardmil.mining.confounders import build_confounders
from hardmil.utils import rule_log

p = snakemake.params
with rule_log(snakemake.log[0]):
    for job in p.jobs:
        build_confounders(model_path=job["model"], splits=job["splits"], features_dir=snakemake.input.features,
                          classes=p.classes, fold=job["fold"], seed=job["seed"], clusters=p.clusters,
                          out_dir=job["out_dir"])
