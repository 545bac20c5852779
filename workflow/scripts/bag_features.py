"""Adapter: the training view of a slide dataset's features (hardmil.wsi.cohort.link_bags)."""

from hardmil.utils import rule_log
from hardmil.wsi.cohort import link_bags

with rule_log(snakemake.log[0]):
    link_bags(snakemake.input.bags, snakemake.params.features_dir, snakemake.output[0])
