"""Adapter: slide manifest with tumour_fraction -> survival manifest (hardmil.data.survival_sim)."""

import logging

from hardmil.data.survival_sim import HazardModel, simulate_manifest
from hardmil.utils import rule_log

with rule_log(snakemake.log[0]):
    summary = simulate_manifest(snakemake.input.manifest, snakemake.output.manifest,
                                HazardModel(**snakemake.params.model))
    logging.getLogger("hardmil").info("simulated survival: %s", summary)
