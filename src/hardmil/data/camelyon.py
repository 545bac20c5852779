"""CAMELYON16 and CAMELYON17 slides from the public AWS Open Data bucket ``camelyon-dataset`` over HTTPS.

Dataset: Litjens et al., "1399 H&E-stained sentinel lymph node sections of breast cancer patients: the
CAMELYON dataset", GigaScience 2018 (doi:10.1093/gigascience/giy065), CC0. MHIM-v2 (Tang et al., sec. 4.1)
merges the CAMELYON16 slides (270 training + 129 test) with the 500 CAMELYON17 training slides into one
binary metastasis task; this module builds that manifest.

Bucket layout used (keys relative to ``base_url``; every one is configurable):

- ``{part}/checksums.md5``: ``<md5>  images/<name>.tif`` lines; the list of slides and their checksums
  (the published checksums are the root of trust; slide sizes are not published, so the size check is the
  server's ``Content-Length``).
- ``CAMELYON16/images/{normal,tumor,test}_###.tif``: training labels from the file name;
  ``CAMELYON16/evaluation/reference.csv`` (``image,class,...``; with or without a header) labels the test
  slides (``Tumor`` / ``Normal``).
- ``{part}/annotations/{slide}.xml``: the ASAP XML tumour outlines (CAMELYON16's tumour slides, some
  CAMELYON17 nodes). Only those listed in the part's ``checksums.md5`` are recorded (manifest columns
  ``annotation_key`` / ``annotation_md5``) and fetched, so they are verified like the slides; the heatmap
  figure (MHIM Fig. 7) reads them from beside the slides for its localisation AUC. ``annotations: false``
  leaves them out.
- ``CAMELYON17/images/patient_###_node_#.tif`` and ``CAMELYON17/stages.csv`` (``patient,stage``; node rows
  carry ``negative`` / ``itc`` / ``micro`` / ``macro``, patient rows a pN stage and are ignored). Only the
  training patients have public stages; slides without one are left out and counted.

Cases: a CAMELYON16 slide is its own case; a CAMELYON17 case is ``patient_###`` (its five nodes share a fold).
Deviation: the bucket paths are taken from the bucket's README as quoted by third-party scripts and could not
be checked against the live bucket here; they are config keys for that reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
from collections import Counter

from hardmil.data.download import DownloadError, get_bytes
from hardmil.data.slide_download import SlideFile, write_cohort_manifest

log = logging.getLogger(__name__)

CAMELYON_URL = "https://camelyon-dataset.s3.amazonaws.com"
DEFAULTS = {
    "base_url": CAMELYON_URL,
    "parts": ["CAMELYON16", "CAMELYON17"],
    "checksums": "checksums.md5",
    "c16_reference": "CAMELYON16/evaluation/reference.csv",
    "c17_stages": "CAMELYON17/stages.csv",
    "c16_labels": {"normal": "normal", "negative": "normal", "tumor": "tumor"},
    "c17_labels": {"negative": "normal", "itc": "tumor", "micro": "tumor", "macro": "tumor"},
    "annotations": True,
}
MANIFEST_COLUMNS = ["slide", "case", "label", "part", "split", "stage", "key", "filename", "md5", "size",
                    "annotation_key", "annotation_md5"]
C16_NAME = re.compile(r"^(normal|tumor|test)_\d+$")
C17_NAME = re.compile(r"^(patient_\d+)_node_\d+$")


def parse_checksums(text: str, source: str) -> dict[str, str]:
    """``md5sum``-style lines -> ``{relative key: md5}`` (``*`` binary marks and ``./`` prefixes removed)."""
    out = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]{32}", parts[0]):
            raise DownloadError(f"{source}: line {lineno} is not '<md5>  <path>': {line[:80]!r}")
        key = parts[1].strip().lstrip("*")
        out[key[2:] if key.startswith("./") else key] = parts[0].lower()
    if not out:
        raise DownloadError(f"{source}: no checksum lines")
    return out


def _csv_rows(text: str, source: str, width: int) -> list[list[str]]:
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    for i, r in enumerate(rows, start=1):
        if len(r) < width:
            raise DownloadError(f"{source}: row {i} has {len(r)} column(s), need at least {width}: {r!r}")
    return [[c.strip() for c in r] for r in rows]


def parse_reference(text: str, source: str) -> dict[str, tuple[str, str]]:
    """CAMELYON16 test reference -> ``{slide: (class, type)}``; a header row, if any, is skipped."""
    out = {}
    for r in _csv_rows(text, source, 2):
        if r[0].lower() == "image":
            continue
        out[r[0].removesuffix(".tif")] = (r[1].lower(), r[2] if len(r) > 2 else "")
    return out


def parse_stages(text: str, source: str) -> dict[str, str]:
    """CAMELYON17 stages -> ``{slide: stage}`` for the node rows (``*.tif``)."""
    rows = _csv_rows(text, source, 2)
    return {r[0].removesuffix(".tif"): r[1].lower() for r in rows if r[0].endswith(".tif")}


def _slide_keys(checksums: dict[str, str]) -> dict[str, str]:
    """``{slide: key}`` for the ``images/*.tif`` entries of one part."""
    out = {}
    for key in checksums:
        if key.startswith("images/") and key.endswith(".tif"):
            out[key[len("images/"):-len(".tif")]] = key
    return out


def manifest_rows(part: str, checksums: dict[str, str], reference: dict | None, stages: dict | None,
                  c16_labels: dict[str, str], c17_labels: dict[str, str],
                  annotations: bool = True) -> tuple[list[dict], Counter]:
    """Rows of one part; returns (rows, reasons for leaving slides out).

    A slide whose ``annotations/{slide}.xml`` is in the part's checksums gets that key and md5 (when
    ``annotations``); the others get empty annotation columns.
    """
    rows, excluded = [], Counter()
    for slide, key in sorted(_slide_keys(checksums).items()):
        ann = f"annotations/{slide}.xml"
        listed = annotations and ann in checksums
        row = {"slide": slide, "part": part, "key": f"{part}/{key}", "filename": f"{slide}.tif",
               "md5": checksums[key], "size": None, "stage": "",
               "annotation_key": f"{part}/{ann}" if listed else "", "annotation_md5": checksums[ann] if listed else ""}
        m16, m17 = C16_NAME.match(slide), C17_NAME.match(slide)
        if part == "CAMELYON16" and m16:
            kind = m16.group(1)
            row["case"] = slide
            row["split"] = "test" if kind == "test" else "train"
            if kind == "test":
                cls, row["stage"] = (reference or {}).get(slide, ("", ""))
                raw = cls
            else:
                raw = kind
            label = c16_labels.get(raw)
        elif part == "CAMELYON17" and m17:
            row["case"], row["split"] = m17.group(1), "train"
            raw = row["stage"] = (stages or {}).get(slide, "")
            label = c17_labels.get(raw)
        else:
            excluded[f"{part}: unexpected slide name"] += 1
            continue
        if not raw:
            excluded[f"{part}: no label published"] += 1
            continue
        if label is None:
            excluded[f"{part}: label {raw!r} not mapped"] += 1
            continue
        row["label"] = label
        rows.append(row)
    return rows, excluded


def build_manifest(cfg: dict, manifest: str | os.PathLike, provenance: str | os.PathLike,
                   classes: list[str] | None = None, **net) -> list[dict]:
    """Read the published checksums and label files; write the manifest TSV and its provenance."""
    cfg = {**DEFAULTS, **cfg}
    base = cfg["base_url"].rstrip("/")
    sources = {}

    def fetch(key: str) -> str:
        url = f"{base}/{key}"
        raw = get_bytes(url, **net)
        sources[url] = hashlib.sha256(raw).hexdigest()
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise DownloadError(f"{url}: not UTF-8 text ({err})") from err

    rows, excluded = [], Counter()
    for part in cfg["parts"]:
        if part not in ("CAMELYON16", "CAMELYON17"):
            raise ValueError(f"camelyon.parts: {part!r} is neither CAMELYON16 nor CAMELYON17")
        key = f"{part}/{cfg['checksums']}"
        checksums = parse_checksums(fetch(key), f"{base}/{key}")
        reference = stages = None
        if part == "CAMELYON16":
            reference = parse_reference(fetch(cfg["c16_reference"]), f"{base}/{cfg['c16_reference']}")
        else:
            stages = parse_stages(fetch(cfg["c17_stages"]), f"{base}/{cfg['c17_stages']}")
        part_rows, part_excluded = manifest_rows(part, checksums, reference, stages, cfg["c16_labels"],
                                                 cfg["c17_labels"], cfg["annotations"])
        if not part_rows:
            raise DownloadError(f"{base}/{key}: no labelled slide under images/ ({dict(part_excluded)})")
        rows += part_rows
        excluded += part_excluded
    write_cohort_manifest(manifest, provenance, rows, MANIFEST_COLUMNS, excluded, {
        "source": "camelyon", "base_url": base, "parts": cfg["parts"], "sources_sha256": sources,
        "per_part": dict(Counter(r["part"] for r in rows)),
        "annotated_per_label": dict(Counter(r["label"] for r in rows if r["annotation_key"])),
    }, classes)
    return rows


def slide_files(rows: list[dict], base_url: str = CAMELYON_URL) -> list[SlideFile]:
    base = base_url.rstrip("/")
    return [SlideFile(slide=r["slide"], filename=r["filename"], url=f"{base}/{r['key']}", md5=r["md5"],
                      size=int(r["size"]) if r.get("size") else None) for r in rows]


def annotation_files(rows: list[dict], base_url: str = CAMELYON_URL) -> list[SlideFile]:
    """The ASAP XML outlines the manifest lists, fetched as ``{slide}.xml`` beside the slides (md5 checked)."""
    base = base_url.rstrip("/")
    return [SlideFile(slide=r["slide"], filename=f"{r['slide']}.xml", url=f"{base}/{r['annotation_key']}",
                      md5=r["annotation_md5"]) for r in rows if r.get("annotation_key")]
