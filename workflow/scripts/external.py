"""Adapter: evaluate each fold's trained model on an external dataset (hardmil.eval.external)."""

from hardmil.eval.external import evaluate_external
from hardmil.utils import rule_log

p = snakemake.params
with rule_log(snakemake.log[0]):
    for job in p.jobs:
        evaluate_external(model_path=job["model"], manifest=snakemake.input.manifest,
                          features_dir=snakemake.input.features, out_dir=job["out_dir"], task=p.task,
                          classes=p.classes, device=p.device, threads=snakemake.threads)
