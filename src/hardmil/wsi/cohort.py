"""Per-cohort slide jobs: a shard of a cohort's slides processed one by one, with a report per shard.

Slide ``i`` of the manifest (file order) belongs to shard ``i mod n_shards``. Each slide's outputs are written
atomically and slides whose outputs already exist are skipped, so a killed or extended job resumes where it
stopped. ``on_error='fail'`` stops at the first bad slide (the error names the file); ``'skip'`` logs it,
records it as failed in the shard report and goes on. The report TSV (slide, status, detail, ...) is the
shard's done-file; the workflow gathers the reports to drop failed slides from training.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
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


def read_report(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except OSError as err:
        raise InputError(path, f"cannot read shard report: {err}") from err
    if rows and any(c not in rows[0] for c in REPORT_COLUMNS):
        raise InputError(path, f"shard report lacks columns {REPORT_COLUMNS}")
    return rows


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
