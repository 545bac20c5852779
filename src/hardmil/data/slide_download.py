"""Download every slide of a cohort into ``resources/slides/{cohort}/``: resumable, verified, idempotent.

Shared by the GDC and CAMELYON clients. Each file goes through :func:`hardmil.data.download.download`
(Range resume from ``<file>.partial``, size and md5 check, atomic rename). A file this function has verified
before is recorded in ``<slides_dir>/.verified.tsv`` with its size, mtime and md5, so a re-run skips it
without a request and without re-hashing gigabytes; any change to the file (size or mtime) sends it through
the full check again. The cohort listing (one row per slide that is present and verified) is written
atomically at the end; it is what downstream rules depend on.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from hardmil.data.download import DownloadError, download
from hardmil.utils import write_tsv

log = logging.getLogger(__name__)

LEDGER = ".verified.tsv"
LEDGER_COLUMNS = ["filename", "size", "mtime_ns", "md5"]
LISTING_COLUMNS = ["slide", "filename", "path", "size", "md5", "status"]


@dataclass(frozen=True)
class SlideFile:
    """One file to fetch: ``slide`` id, local ``filename`` (``{slide}.{ext}``), source ``url`` and checksums."""

    slide: str
    filename: str
    url: str
    md5: str
    size: int | None = None


def _read_ledger(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    try:
        with open(path, newline="") as fh:
            return {r["filename"]: r for r in csv.DictReader(fh, delimiter="\t")
                    if all(r.get(c) for c in LEDGER_COLUMNS)}
    except (OSError, KeyError, csv.Error, UnicodeDecodeError) as err:
        log.warning("%s: unreadable (%s); every file will be checked again", path, err)
        return {}


def _ledger_row(dest: Path, md5: str) -> dict:
    st = dest.stat()
    return {"filename": dest.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": md5.lower()}


def _already_verified(dest: Path, item: SlideFile, ledger: dict[str, dict]) -> bool:
    rec = ledger.get(dest.name)
    if rec is None or not dest.exists():
        return False
    st = dest.stat()
    return (str(st.st_size) == rec["size"] and str(st.st_mtime_ns) == rec["mtime_ns"]
            and rec["md5"] == item.md5.lower() and (item.size is None or item.size == st.st_size))


def _fetch_one(it: SlideFile, dest: Path, bar: tqdm, net: dict) -> str:
    """Download or verify one file, advancing ``bar`` by its bytes; return its status."""
    before = dest.stat().st_mtime_ns if dest.exists() else None
    resumed = dest.with_name(dest.name + ".partial").exists()
    shown = 0

    def advance(n: int) -> None:
        nonlocal shown
        shown += n
        bar.update(n)

    download(it.url, dest, size=it.size, md5=it.md5, progress=advance, **net)
    bar.update(dest.stat().st_size - shown)  # bytes from before a resume, or a file that was already there
    if before is not None and dest.stat().st_mtime_ns == before:
        return "verified"
    return "resumed" if resumed else "downloaded"


def fetch_slides(items: list[SlideFile], slides_dir: str | os.PathLike, listing: str | os.PathLike, *,
                 on_error: str = "fail", retries: int = 4, backoff: float = 1.0, timeout: float = 60.0,
                 headers: dict[str, str] | None = None, what: str = "slides") -> dict[str, int]:
    """Fetch ``items`` into ``slides_dir`` and write ``listing``; return counts per status.

    ``what`` names the files in the progress bar and messages (``slides``; ``outlines`` for annotation XMLs,
    which share the folder and its ledger).

    Every slide is attempted even when one fails. ``on_error='fail'`` then raises (the listing is not written,
    so the job fails and a re-run retries only what is missing); ``'skip'`` leaves failed slides out of the
    listing and logs them.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    names = [it.filename for it in items]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:5]
        raise DownloadError(f"{slides_dir}: several slides would be written to the same file: {dup}")
    slides_dir = Path(slides_dir)
    slides_dir.mkdir(parents=True, exist_ok=True)
    ledger_path = slides_dir / LEDGER
    ledger = _read_ledger(ledger_path)
    rows, failed = [], []
    counts = {"skipped": 0, "verified": 0, "resumed": 0, "downloaded": 0, "failed": 0}
    total = sum(it.size for it in items if it.size) or None
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"{what} -> {slides_dir}") as bar:
        for it in items:
            dest = slides_dir / it.filename
            if _already_verified(dest, it, ledger):
                status = "skipped"
                bar.update(dest.stat().st_size)
            else:
                try:
                    status = _fetch_one(it, dest, bar, dict(retries=retries, backoff=backoff, timeout=timeout,
                                                            headers=headers))
                except DownloadError as err:
                    log.error("%s: %s", it.slide, err)
                    failed.append(f"{it.slide}: {err}")
                    counts["failed"] += 1
                    continue
                ledger[dest.name] = _ledger_row(dest, it.md5)
                write_tsv(ledger_path, list(ledger.values()), LEDGER_COLUMNS)
                log.info("%s: %s", it.slide, status)
            counts[status] += 1
            rows.append({"slide": it.slide, "filename": it.filename, "path": str(dest),
                         "size": dest.stat().st_size, "md5": it.md5.lower(), "status": status})
    log.info("%s in %s: %s", what, slides_dir, counts)
    if failed and on_error == "fail":
        raise DownloadError(f"{len(failed)} of {len(items)} {what} failed (the others are kept; re-run to "
                            "retry):\n  " + "\n  ".join(failed[:20]))
    write_tsv(listing, rows, LISTING_COLUMNS)
    return counts


def read_rows(path: str | os.PathLike, required: list[str]) -> list[dict]:
    """Rows of a manifest TSV; a missing file or column is an error naming the file."""
    from hardmil.data.bags import check_names
    from hardmil.utils import read_tsv

    rows = read_tsv(path, "manifest", required, allow_empty=True)

    check_names(rows, path, ("slide", "case", "filename"))  # a downloaded slide is saved as slides_dir/filename
    return rows


def write_cohort_manifest(manifest: str | os.PathLike, provenance: str | os.PathLike, rows: list[dict],
                          columns: list[str], excluded: Counter, info: dict,
                          classes: list[str] | None = None) -> None:
    """Check labels against ``classes``, then write the manifest TSV and its provenance JSON (both atomically).

    The provenance holds ``info`` (where the list came from) plus the counts: slides and cases kept,
    slides per label, and why slides were left out.
    """
    from datetime import datetime, timezone

    from hardmil.utils import write_json

    if classes:
        bad = sorted({r["label"] for r in rows} - set(classes))
        if bad:
            raise DownloadError(f"{manifest}: labels {bad} are not among the dataset's classes {classes}; "
                                "fix the label mapping or classes")
    for why, n in excluded.most_common():
        log.warning("left out %d slide(s): %s", n, why)
    cases = len({r["case"] for r in rows})
    write_tsv(manifest, rows, columns)
    write_json(provenance, {
        **info, "queried_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "slides_kept": len(rows), "cases_kept": cases, "excluded": dict(excluded),
        "per_label": dict(Counter(r["label"] for r in rows)),
    })
    log.info("%s: %d slides of %d cases", manifest, len(rows), cases)
