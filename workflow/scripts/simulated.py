"""Adapter: a slide cohort's patch features + true masks -> the simulated benchmark cohort (hardmil.data.simulated)."""

from hardmil.data.simulated import BagModel, bank_from_slides, make_simulated
from hardmil.utils import rule_log

p, inp, out = snakemake.params, snakemake.input, snakemake.output
with rule_log(snakemake.log[0]):
    bank = bank_from_slides(inp.manifest, inp.features, p.slides_dir, p.patch_size, dim=p.dim,
                            tumour_min=p.tumour_min)
    outputs = iter(out.splits)
    splits = {(protocol, seed): next(outputs) for protocol in p.protocols for seed in p.seeds}
    make_simulated(bank, BagModel.from_config(dict(p.model)), classes=list(p.classes), features_dir=out.features,
                   manifest=out.manifest, truth=out.truth, summary=out.summary, splits=splits, folds=p.folds,
                   val_fraction=p.val_fraction, cohort=snakemake.wildcards.dataset,
                   provenance={"bank_manifest": inp.manifest, "bank_features": inp.features})
