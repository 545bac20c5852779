"""Per-cohort slide jobs: a shard of a cohort's slides processed one by one, with a report per shard.

Slide ``i`` of the manifest (file order) belongs to shard ``i mod n_shards``. Each slide's outputs are written
atomically and slides whose outputs already exist are skipped, so a killed or extended job resumes where it
stopped. ``on_error='fail'`` stops at the first bad slide (the error names the file); ``'skip'`` logs it,
records it as failed in the shard report and goes on. The report TSV (slide, status, detail, ...) is the
shard's done-file; the workflow gathers the reports to drop failed slides from training.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from hardmil.utils import InputError, atomic_path

log = logging.getLogger(__name__)

REPORT_COLUMNS = ("slide", "status", "detail")
OK = ("ok", "cached")


def shard_rows(rows: list[dict], shard: int, n_shards: int) -> list[dict]:
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is not in [0, {n_shards})")
    return [r for i, r in enumerate(rows) if i % n_shards == shard]


def read_tsv(path: str | os.PathLike, columns: tuple[str, ...], what: str, allow_empty: bool = False) -> list[dict]:
    """Rows of a TSV with at least ``columns``; problems raise InputError naming the file."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except OSError as err:
        raise InputError(path, f"cannot read {what}: {err}") from err
    if not rows and not allow_empty:
        raise InputError(path, f"{what} has no rows")
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise InputError(path, f"{what} lacks column(s) {missing}")
    return rows


def read_report(path: str | os.PathLike) -> list[dict]:
    return read_tsv(path, REPORT_COLUMNS, "shard report", allow_empty=True)


def write_report(path: str | os.PathLike, rows: list[dict]) -> None:
    fields = list(REPORT_COLUMNS) + sorted({k for r in rows for k in r} - set(REPORT_COLUMNS))
    with atomic_path(path, suffix=".tsv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, delimiter="\t", lineterminator="\n", restval="")
            w.writeheader()
            w.writerows(rows)


def run_shard(rows: list[dict], work: Callable[[dict], dict], done: Callable[[dict], bool], report: str | os.PathLike,
              on_error: str = "fail", desc: str = "slides", skip: set[str] | None = None) -> list[dict]:
    """Run ``work(row)`` for every row not ``done(row)``; write and return the report rows.

    ``skip`` holds slides that failed upstream: they are reported as failed without running ``work``.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    out = []
    for row in tqdm(rows, desc=desc, unit="slide"):
        slide = row["slide"]
        if skip and slide in skip:
            out.append({"slide": slide, "status": "failed", "detail": "failed upstream"})
            continue
        if done(row):
            out.append({"slide": slide, "status": "cached", "detail": ""})
            continue
        try:
            info = work(row)
        except InputError as err:
            if on_error == "fail":
                raise
            log.warning("skipping slide %s: %s", slide, err)
            out.append({"slide": slide, "status": "failed", "detail": str(err).replace("\t", " ").replace("\n", " ")})
            continue
        out.append({"slide": slide, "status": "ok", "detail": "", **info})
    write_report(report, out)
    failed = sum(r["status"] == "failed" for r in out)
    log.info("%d slide(s): %d ok, %d cached, %d failed", len(out), sum(r["status"] == "ok" for r in out),
             sum(r["status"] == "cached" for r in out), failed)
    return out


def failed_slides(reports: list[str | os.PathLike]) -> dict[str, str]:
    """Slide -> reason for every slide some report marks as failed."""
    bad = {}
    for path in reports:
        for r in read_report(path):
            if r["status"] not in OK:
                bad.setdefault(r["slide"], r["detail"] or r["status"])
    return bad


def read_slide_manifest(path: str | os.PathLike) -> list[dict]:
    """The rows (slide, case, label, optional filename) of a cohort's slide manifest."""
    from hardmil.data.bags import check_names

    rows = read_tsv(path, ("slide", "case", "label"), "manifest")
    check_names(rows, path)
    return rows


def patch_shard(manifest: str | os.PathLike, slides_dir: str | os.PathLike, out_dir: str | os.PathLike,
                report: str | os.PathLike, shard: int, n_shards: int, patch: dict, tissue: dict,
                on_error: str = "fail", qc: bool = True) -> list[dict]:
    """Patch the slides of one shard: ``{out_dir}/{slide}.h5`` (+ ``{slide}.png`` QC) and the shard report."""
    from hardmil.wsi.patching import PatchParams, patch_slide, read_coords
    from hardmil.wsi.slide import find_slide
    from hardmil.wsi.tissue import TissueParams

    params, tparams = PatchParams(**patch), TissueParams(**tissue)
    out_dir = Path(out_dir)

    def done(row):
        path = out_dir / f"{row['slide']}.h5"
        if not path.exists():
            return False
        try:
            _, attrs = read_coords(path)
        except InputError:
            return False
        return (attrs.get("patch_size") == params.patch_size and attrs.get("min_tissue") == params.min_tissue
                and float(attrs.get("target_magnification")) == params.magnification
                and attrs.get("segmentation") == json.dumps(asdict(tparams)))

    def work(row):
        path = find_slide(slides_dir, row["slide"], row.get("filename") or None)
        qc_path = out_dir / f"{row['slide']}.png" if qc else None
        return patch_slide(path, out_dir / f"{row['slide']}.h5", qc_path, params, tparams, name=row["slide"])

    rows = shard_rows(read_slide_manifest(manifest), shard, n_shards)
    return run_shard(rows, work, done, report, on_error, desc="patching")


def bag_manifest(manifest: str | os.PathLike, reports: list[str | os.PathLike], out: str | os.PathLike) -> list[dict]:
    """The manifest rows of slides that every stage finished (failed slides, logged, are left out)."""
    rows = read_slide_manifest(manifest)
    bad = failed_slides(reports)
    seen = set()
    for path in reports:
        seen.update(r["slide"] for r in read_report(path))
    missing = [r["slide"] for r in rows if r["slide"] not in seen]
    if missing:
        raise InputError(manifest, f"{len(missing)} slide(s) are in no shard report (shards out of date?): "
                                   f"{', '.join(missing[:5])}")
    for slide, why in bad.items():
        log.warning("left out %s: %s", slide, why)
    keep = [r for r in rows if r["slide"] not in bad]
    if not keep:
        raise InputError(manifest, "every slide failed; nothing to train on")
    with atomic_path(out, suffix=".tsv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
            w.writeheader()
            w.writerows(keep)
    log.info("%d of %d slides usable", len(keep), len(rows))
    return keep


def link_bags(bag_rows_path: str | os.PathLike, features_dir: str | os.PathLike, out_dir: str | os.PathLike) -> int:
    """Hard-link (or copy) the features file of every usable slide into ``out_dir``, the training view."""
    import shutil

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for row in read_slide_manifest(bag_rows_path):
        src = Path(features_dir) / f"{row['slide']}.h5"
        if not src.exists():
            raise InputError(src, "features file missing although its shard reported success")
        dst = out_dir / src.name
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        n += 1
    return n
