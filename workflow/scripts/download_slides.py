"""Adapter: fetch every slide of a manifest into resources/slides/{dataset}/ (hardmil.data.slide_download), and
for CAMELYON the tumour outlines ({slide}.xml, listed in annotations.tsv; GDC has none: an empty listing)."""

from pathlib import Path

from hardmil.data import camelyon, gdc
from hardmil.data.slide_download import fetch_slides, read_rows
from hardmil.utils import rule_log

p, inp, out = snakemake.params, snakemake.input, snakemake.output
with rule_log(snakemake.log[0]):
    if p.source == "gdc":
        rows = read_rows(inp.manifest, ["slide", "file_id", "filename", "md5", "size"])
        items = gdc.slide_files(rows, p.cfg.get("api_url", gdc.GDC_API))
        outlines = []
    else:
        rows = read_rows(inp.manifest, ["slide", "key", "filename", "md5"])
        items = camelyon.slide_files(rows, p.cfg.get("base_url", camelyon.CAMELYON_URL))
        outlines = camelyon.annotation_files(rows, p.cfg.get("base_url", camelyon.CAMELYON_URL))
    fetch_slides(items, Path(out.listing).parent, out.listing, on_error=p.on_error, **dict(p.net))
    fetch_slides(outlines, Path(out.annotations).parent, out.annotations, on_error=p.on_error, what="outlines",
                 **dict(p.net))
