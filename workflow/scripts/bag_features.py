"""Adapter: the training view of a slide dataset's features (hardmil.wsi.cohort.link_bags)."""

from pathlib import Path

from hardmil.utils import rule_log
from hardmil.wsi.cohort import link_bags

with rule_log(snakemake.log[0]):
    features_dir = Path(snakemake.input.reports[0]).parent.parent  # reports live in <features_dir>/shards/
    link_bags(snakemake.input.bags, features_dir, snakemake.output[0])
