"""Adapter: one `patches` figure (patch grid) -> results/figures/{figure}.{png,pdf,tsv} (hardmil.report.patches)."""

from hardmil.report.patches import patches_job
from hardmil.utils import rule_log

p = snakemake.params
with rule_log(snakemake.log[0]):
    patches_job(p.figure, p.hardneg, splits=snakemake.input.splits, models=p.models,
                features_dir=snakemake.input.features, coords_dir=p.coords_dir, slides_dir=p.slides_dir,
                classes=p.classes, png=snakemake.output.png, pdf=snakemake.output.pdf, tsv=snakemake.output.tsv,
                seed=p.seed, name=snakemake.wildcards.figure)
