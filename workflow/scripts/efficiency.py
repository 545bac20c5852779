"""Adapter: one method's efficiency measurement (hardmil.train.efficiency.measure_method)."""

from hardmil.train.efficiency import measure_method
from hardmil.utils import rule_log

run = snakemake.params.run
with rule_log(snakemake.log[0]):
    measure_method(metrics=list(snakemake.input.metrics), out=snakemake.output[0], protocol=snakemake.params.protocol,
                   job=snakemake.params.job, features_dir=snakemake.input.features, classes=run["classes"],
                   model=run["model"], model_params=run["model_params"], train_cfg=run["train"],
                   standardize=run["standardize"], threads=snakemake.threads)
