"""Adapter: the synthetic slide cohort (hardmil.wsi.synthetic.make_cohort)."""

import json
from pathlib import Path

from hardmil.utils import rule_log
from hardmil.wsi.synthetic import make_cohort

c, inp, out = snakemake.params.cfg, snakemake.input, snakemake.output
with rule_log(snakemake.log[0]):
    textures = list(inp.normal) + list(inp.tumour)
    sources = {p: json.loads(Path(f"{p}.provenance.json").read_text()) for p in textures}
    make_cohort(Path(out.provenance).parent, out.manifest, list(inp.normal), list(inp.tumour),
                snakemake.params.texture_mpp, n_slides=c["n_slides"], positive_fraction=c["positive_fraction"],
                size=(c["width"], c["height"]), magnification=c["magnification"],
                tumour_fraction=tuple(c["tumour_fraction"]), regions=tuple(c["regions"]),
                patch_size=snakemake.params.patch_size, seed=c["seed"], cohort=snakemake.wildcards.dataset,
                provenance=sources)
