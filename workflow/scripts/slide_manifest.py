"""Adapter: query the slide source of a dataset (GDC or CAMELYON bucket) and write its manifest."""

from hardmil.data import camelyon, gdc
from hardmil.utils import rule_log

p, out = snakemake.params, snakemake.output
BUILDERS = {"gdc": gdc.build_manifest, "camelyon": camelyon.build_manifest}
with rule_log(snakemake.log[0]):
    BUILDERS[p.source](dict(p.cfg), out.manifest, out.provenance, classes=list(p.classes), **dict(p.net))
