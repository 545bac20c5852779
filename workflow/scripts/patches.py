"""Adapter: tissue segmentation + patch grid for one shard of a slide dataset (hardmil.wsi.cohort.patch_shard)."""

from pathlib import Path

from hardmil.utils import rule_log
from hardmil.wsi.cohort import patch_shard

p, wc = snakemake.params, snakemake.wildcards
cfg = dict(p.patching)
patch = {k: cfg[k] for k in ("magnification", "patch_size", "overlap", "min_tissue")}
tissue = {k: cfg[k] for k in ("seg_mpp", "sat_threshold", "otsu", "median_blur", "close", "min_tissue_area_mm2",
                              "min_hole_area_mm2", "max_holes")}
with rule_log(snakemake.log[0]):
    out_dir = Path(snakemake.output.report).parent.parent  # the report lives in <out_dir>/shards/
    patch_shard(snakemake.input.manifest, p.slides_dir, out_dir, snakemake.output.report, int(wc.shard), int(wc.n),
                patch, tissue, on_error=p.on_error, qc=cfg["qc"])
