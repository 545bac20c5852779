"""Adapter: a slide cohort's patch features + true masks -> the simulated benchmark cohort (hardmil.data.simulated),
or, for a dataset with block mil_test, an algorithmic unit test of the MIL assumption (hardmil.data.mil_tests).
Its splits are rule simulated_splits's (scripts/simulated_splits.py)."""

from hardmil.data.mil_tests import TestModel, make_mil_test
from hardmil.data.simulated import BagModel, bank_from_slides, make_simulated
from hardmil.utils import rule_log

p, inp, out = snakemake.params, snakemake.input, snakemake.output
with rule_log(snakemake.log[0]):
    files = dict(classes=list(p.classes), features_dir=out.features, manifest=out.manifest, truth=out.truth,
                 summary=out.summary, cohort=snakemake.wildcards.dataset)
    if p.mil_test:
        make_mil_test(TestModel.from_config(dict(p.model)), **files)
    else:
        bank = bank_from_slides(inp.manifest, inp.features, p.slides_dir, p.patch_size, dim=p.dim,
                                tumour_min=p.tumour_min)
        make_simulated(bank, BagModel.from_config(dict(p.model)), **files,
                       provenance={"bank_manifest": inp.manifest, "bank_features": inp.features})
