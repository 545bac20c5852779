"""Adapter: a configured encoder weights file that no rule makes and that is missing -> a clear error."""

from hardmil.features.encoders import missing_weights
from hardmil.utils import rule_log

with rule_log(snakemake.log[0]):
    missing_weights(snakemake.output[0], snakemake.params.users)
