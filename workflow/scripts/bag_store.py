"""Adapter: pack a dataset's features into its bag store (hardmil.data.store.build_store)."""

from pathlib import Path

from hardmil.data.store import build_store
from hardmil.data.survival import manifest_slides
from hardmil.utils import rule_log

p = snakemake.params
with rule_log(snakemake.log[0]):
    slides = manifest_slides(snakemake.input.manifest, p.task, p.classes)
    build_store(slides, snakemake.input.features, Path(snakemake.output[0]).parent, dtype=p.dtype, progress=True)
