"""Adapter: a simulated dataset's manifest (with its pool column) -> the splits of one protocol and seed
(hardmil.data.simulated.simulated_splits)."""

from hardmil.data.bags import read_manifest_rows
from hardmil.data.simulated import simulated_splits
from hardmil.data.splits import write_splits
from hardmil.utils import rule_log

p, wc = snakemake.params, snakemake.wildcards
with rule_log(snakemake.log[0]):
    rows = read_manifest_rows(snakemake.input.manifest, ("slide", "case", "label", "pool"))
    write_splits(snakemake.output[0], simulated_splits(rows, p.folds, int(wc.seed), wc.protocol, p.val_fraction))
