"""Adapter: patch features for one shard of a slide dataset (hardmil.features.extract.feature_shard)."""

from hardmil.features.extract import feature_shard
from hardmil.utils import rule_log

p, inp = snakemake.params, snakemake.input
enc = dict(p.encoder)
with rule_log(snakemake.log[0]):
    feature_shard(inp.patches, inp.manifest, p.slides_dir, p.coords_dir, p.out_dir, snakemake.output.report,
                  enc, on_error=p.on_error, device=enc.pop("device", "auto"), threads=snakemake.threads)
