"""Adapter: the slides every stage finished (hardmil.wsi.cohort.bag_manifest)."""

from hardmil.utils import rule_log
from hardmil.wsi.cohort import bag_manifest

with rule_log(snakemake.log[0]):
    bag_manifest(snakemake.input.manifest, list(snakemake.input.reports), snakemake.output[0])
