"""Adapter: manifest -> the splits file of one (protocol, seed) of a dataset (hardmil.data.splits)."""

from hardmil.data.bags import check_features_exist, read_manifest
from hardmil.data.splits import make_splits, write_splits
from hardmil.data.survival import read_survival_manifest, strata
from hardmil.utils import rule_log

p, wc = snakemake.params, snakemake.wildcards
with rule_log(snakemake.log[0]):
    if p.task == "survival":  # labels = strata; the splits also carry time and event
        rows = strata(read_survival_manifest(snakemake.input.manifest)[0], p.stratify)
    else:
        rows = read_manifest(snakemake.input.manifest, p.classes)
    for features_dir in snakemake.input.features:
        check_features_exist(rows, features_dir, snakemake.input.manifest)
    splits = make_splits(rows, p.folds, int(wc.seed), wc.protocol, p.val_fraction, source=snakemake.input.manifest)
    write_splits(snakemake.output[0], splits)
