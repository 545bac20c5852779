"""Adapter: patch features for one shard of a slide dataset (hardmil.features.extract.feature_shard)."""

from pathlib import Path

from hardmil.features.extract import feature_shard
from hardmil.utils import rule_log

p, inp = snakemake.params, snakemake.input
enc = dict(p.encoder)
with rule_log(snakemake.log[0]):
    # reports live in <dir>/shards/: the coords are in the patch report's <dir>, the features in our own
    coords_dir, out_dir = Path(inp.patches).parent.parent, Path(snakemake.output.report).parent.parent
    feature_shard(inp.patches, inp.manifest, p.slides_dir, coords_dir, out_dir, snakemake.output.report,
                  enc, on_error=p.on_error, device=enc.pop("device", "auto"), threads=snakemake.threads)
