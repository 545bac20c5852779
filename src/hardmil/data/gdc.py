"""TCGA diagnostic slides and their clinical fields from the NCI Genomic Data Commons (GDC) API.

Written from the API documentation (https://docs.gdc.cancer.gov/API/Users_Guide/Search_and_Retrieval/), not
from gdc-client. Three calls:

- ``POST {api}/files``: open-access FFPE diagnostic slides (``data_type = Slide Image``,
  ``experimental_strategy = Diagnostic Slide``, ``data_format = SVS``) of the configured TCGA projects, with
  file id, name, md5, size and the case. Paged with ``from``/``size``; the loop is bounded by the
  ``pagination.pages`` of the first answer.
- ``POST {api}/cases``: the clinical fields of those projects (vital status, days to death, days to last
  follow-up, primary diagnosis), joined to the slides on ``case_id``.
- ``GET {api}/data/{file_id}``: the slide itself, with Range resume and md5 check
  (:mod:`hardmil.data.slide_download`).

The manifest has one row per slide: ``slide`` (file name without extension, e.g.
``TCGA-05-4245-01Z-00-DX1.<uuid>``, the id CLAM and TRIDENT use), ``case`` (the 12-character TCGA patient
barcode, the grouping key for folds), ``label`` (mapped from the project or the primary diagnosis through
the config's ``labels``; slides whose value is not mapped are left out and counted), then the raw fields.
The survival fields are kept raw (``vital_status``, ``days_to_death``, ``days_to_last_follow_up`` = the
largest over the case's diagnoses; ``days_to_follow_up`` = the largest over its follow-ups); turning them
into (time, event) is the survival task's job.

Datasets of the MHIM-v2 paper (Tang et al., arXiv 2509.11526, sec. 4.1; reference code
https://github.com/DearCaat/MHIM-MIL): TCGA-NSCLC (LUAD vs LUSC, label from the project), TCGA-BRCA
(IDC vs ILC from ``primary_diagnosis``), and TCGA-LUAD / LUSC / BLCA for survival.
Deviation: the paper's slide lists are not published; ours are whatever the GDC serves today for the filter
above (counts are logged in the provenance file next to the manifest).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

from hardmil.data.download import DownloadError, get_json
from hardmil.data.slide_download import SlideFile, write_cohort_manifest

log = logging.getLogger(__name__)

GDC_API = "https://api.gdc.cancer.gov"
FILE_FIELDS = ["file_id", "file_name", "md5sum", "file_size", "cases.case_id", "cases.submitter_id",
               "cases.project.project_id"]
CASE_FIELDS = ["case_id", "submitter_id", "project.project_id", "demographic.vital_status",
               "demographic.days_to_death", "diagnoses.days_to_last_follow_up", "diagnoses.primary_diagnosis",
               "follow_ups.days_to_follow_up"]
MANIFEST_COLUMNS = ["slide", "case", "label", "project", "file_id", "filename", "md5", "size", "case_id",
                    "primary_diagnosis", "vital_status", "days_to_death", "days_to_last_follow_up",
                    "days_to_follow_up"]
LABEL_FIELDS = ("project", "primary_diagnosis")


def _in(field: str, values: list[str]) -> dict:
    return {"op": "in", "content": {"field": field, "value": list(values)}}


def slide_filter(projects: list[str], experimental_strategy: str = "Diagnostic Slide",
                 data_format: str = "SVS") -> dict:
    """The ``/files`` filter for open-access whole-slide images of ``projects``."""
    return {"op": "and", "content": [
        _in("cases.project.project_id", projects),
        _in("data_type", ["Slide Image"]),
        _in("experimental_strategy", [experimental_strategy]),
        _in("data_format", [data_format]),
        _in("access", ["open"]),
    ]}


def search(api_url: str, endpoint: str, filters: dict, fields: list[str], *, page_size: int = 500,
           retries: int = 4, backoff: float = 1.0, timeout: float = 60.0) -> list[dict]:
    """All hits of a GDC search endpoint, page by page (``from``/``size``).

    The number of pages comes from the first answer's ``pagination.pages`` and bounds the loop; a page
    that is short or empty before ``pagination.total`` hits have arrived is an error naming the URL.
    """
    url = f"{api_url.rstrip('/')}/{endpoint}"
    hits: list[dict] = []
    pages = 1
    page = 0
    while page < pages:
        body = {"filters": filters, "fields": ",".join(fields), "format": "JSON", "size": page_size,
                "from": len(hits)}
        answer = get_json(url, body=body, retries=retries, backoff=backoff, timeout=timeout)
        page_hits, pagination = _page(answer, url)
        if page == 0:
            total = pagination["total"]
            pages = pagination["pages"]
        hits.extend(page_hits)
        page += 1
        log.info("%s: page %d/%d, %d of %d hits", url, page, pages, len(hits), total)
        if len(hits) >= total:
            break
        if not page_hits:
            raise DownloadError(f"{url}: page {page} is empty after {len(hits)} of {total} hits")
    if len(hits) != total:
        raise DownloadError(f"{url}: got {len(hits)} hits but pagination.total says {total}")
    return hits


def _page(answer: object, url: str) -> tuple[list[dict], dict]:
    """Check the shape of one search answer; return (hits, pagination with int total/pages)."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("hits"), list):
        warnings = answer.get("warnings") if isinstance(answer, dict) else None
        raise DownloadError(f"{url}: malformed GDC answer: no data.hits list"
                            + (f" (warnings: {warnings})" if warnings else ""))
    pag = data.get("pagination")
    try:
        total, pages = int(pag["total"]), int(pag["pages"])
    except (TypeError, KeyError, ValueError) as err:
        raise DownloadError(f"{url}: malformed GDC answer: data.pagination lacks total/pages ({pag!r})") from err
    if total < 0 or pages < 0:
        raise DownloadError(f"{url}: malformed GDC answer: negative pagination {pag!r}")
    return data["hits"], {"total": total, "pages": pages}


def query_slides(api_url: str, projects: list[str], *, experimental_strategy: str = "Diagnostic Slide",
                 data_format: str = "SVS", **net) -> list[dict]:
    """One dict per slide file: file_id, file_name, md5, size, case_id, submitter_id, project."""
    url = f"{api_url.rstrip('/')}/files"
    out = []
    for hit in search(api_url, "files", slide_filter(projects, experimental_strategy, data_format),
                      FILE_FIELDS, **net):
        try:
            (case,) = hit["cases"]
            out.append({"file_id": hit["file_id"], "file_name": hit["file_name"], "md5": hit["md5sum"].lower(),
                        "size": int(hit["file_size"]), "case_id": case["case_id"],
                        "submitter_id": case["submitter_id"], "project": case["project"]["project_id"]})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DownloadError(f"{url}: malformed file hit (need file_id, file_name, md5sum, file_size and "
                                f"exactly one case with its project): {hit!r:.300}") from err
    return out


def _largest(values: list) -> int | None:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return int(max(nums)) if nums else None


def query_clinical(api_url: str, projects: list[str], **net) -> dict[str, dict]:
    """``case_id -> {vital_status, days_to_death, days_to_last_follow_up, days_to_follow_up, diagnoses}``."""
    url = f"{api_url.rstrip('/')}/cases"
    out = {}
    for hit in search(api_url, "cases", _in("project.project_id", projects), CASE_FIELDS, **net):
        if not isinstance(hit, dict) or "case_id" not in hit:
            raise DownloadError(f"{url}: malformed case hit without case_id: {hit!r:.300}")
        demo = hit.get("demographic") or {}
        diagnoses = hit.get("diagnoses") or []
        follow_ups = hit.get("follow_ups") or []
        out[hit["case_id"]] = {
            "vital_status": demo.get("vital_status"),
            "days_to_death": _largest([demo.get("days_to_death")]),
            "days_to_last_follow_up": _largest([d.get("days_to_last_follow_up") for d in diagnoses]),
            "days_to_follow_up": _largest([f.get("days_to_follow_up") for f in follow_ups]),
            "diagnoses": sorted({d["primary_diagnosis"] for d in diagnoses if d.get("primary_diagnosis")}),
        }
    return out


def label_of(slide: dict, clinical: dict | None, label_field: str, labels: dict[str, str]) -> tuple[str | None, str]:
    """The mapped label of one slide, or (None, reason) when it has none.

    ``labels`` empty: the raw value is the label. For ``primary_diagnosis`` a case may list several
    diagnoses; the label is the one mapped value among them (several different mapped values: ambiguous).
    """
    if label_field == "project":
        raw = [slide["project"]]
    elif label_field == "primary_diagnosis":
        raw = clinical["diagnoses"] if clinical else []
    else:
        raise ValueError(f"label_field must be one of {LABEL_FIELDS}, not {label_field!r}")
    if not raw:
        return None, f"no {label_field}"
    if not labels:
        return (raw[0], "") if len(raw) == 1 else (None, f"several {label_field} values")
    mapped = {labels[v] for v in raw if v in labels}
    if len(mapped) == 1:
        return mapped.pop(), ""
    return None, (f"{label_field} not in labels: {' | '.join(raw)}" if not mapped else
                  f"ambiguous {label_field}: {' | '.join(raw)}")


def manifest_rows(slides: list[dict], clinical: dict[str, dict], label_field: str,
                  labels: dict[str, str]) -> tuple[list[dict], Counter]:
    """Join slides with clinical data and map labels; return (rows sorted by slide, excluded reasons)."""
    rows, excluded = [], Counter()
    for s in slides:
        c = clinical.get(s["case_id"])
        label, why = label_of(s, c, label_field, labels)
        if label is None:
            excluded[why] += 1
            continue
        c = c or {}
        rows.append({
            "slide": Path(s["file_name"]).stem, "case": s["submitter_id"], "label": label,
            "project": s["project"], "file_id": s["file_id"], "filename": s["file_name"], "md5": s["md5"],
            "size": s["size"], "case_id": s["case_id"],
            "primary_diagnosis": " | ".join(c.get("diagnoses", [])),
            "vital_status": c.get("vital_status"), "days_to_death": c.get("days_to_death"),
            "days_to_last_follow_up": c.get("days_to_last_follow_up"),
            "days_to_follow_up": c.get("days_to_follow_up"),
        })
    rows.sort(key=lambda r: r["slide"])
    seen = Counter(r["slide"] for r in rows)
    dups = [s for s, n in seen.items() if n > 1]
    if dups:
        raise DownloadError(f"GDC lists several files named {dups[:3]}: slide ids would clash")
    return rows, excluded


def build_manifest(cfg: dict, manifest: str | os.PathLike, provenance: str | os.PathLike,
                   classes: list[str] | None = None, **net) -> list[dict]:
    """Query the GDC as ``cfg`` (a dataset's ``gdc`` block) says; write the manifest TSV and its provenance."""
    api = cfg.get("api_url", GDC_API)
    projects = list(cfg["projects"])
    label_field = cfg.get("label_field", "project")
    labels = dict(cfg.get("labels", {}))
    page = {"page_size": cfg.get("page_size", 500)}
    slides = query_slides(api, projects, experimental_strategy=cfg.get("experimental_strategy", "Diagnostic Slide"),
                          data_format=cfg.get("data_format", "SVS"), **page, **net)
    clinical = query_clinical(api, projects, **page, **net)
    rows, excluded = manifest_rows(slides, clinical, label_field, labels)
    if not rows:
        raise DownloadError(f"{api}/files: no slide left for projects {projects} "
                            f"({sum(excluded.values())} excluded: {dict(excluded)})")
    write_cohort_manifest(manifest, provenance, rows, MANIFEST_COLUMNS, excluded, {
        "source": "gdc", "api_url": api, "projects": projects, "label_field": label_field, "labels": labels,
        "filter": slide_filter(projects, cfg.get("experimental_strategy", "Diagnostic Slide"),
                               cfg.get("data_format", "SVS")),
        "slides_found": len(slides),
        "slides_without_clinical_record": sum(1 for s in slides if s["case_id"] not in clinical),
    }, classes)
    return rows


def slide_files(rows: list[dict], api_url: str = GDC_API) -> list[SlideFile]:
    """What :func:`hardmil.data.slide_download.fetch_slides` needs for each manifest row."""
    api = api_url.rstrip("/")
    return [SlideFile(slide=r["slide"], filename=r["filename"], url=f"{api}/data/{r['file_id']}", md5=r["md5"],
                      size=int(r["size"])) for r in rows]
