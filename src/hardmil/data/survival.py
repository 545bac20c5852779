"""Survival labels, case-level bags and discrete time bins (Tang et al. MHIM-v2 §4.1, Table 4).

Labels come from manifest columns, either ready ``time`` / ``event`` (event 1 = death observed, 0 =
censored), or the raw GDC clinical fields ``vital_status``, ``days_to_death`` and ``days_to_last_follow_up``:

* ``vital_status == "Dead"`` with a usable ``days_to_death`` -> event 1 at ``days_to_death``;
* otherwise (alive, or dead without a date of death) -> censored (event 0) at ``days_to_last_follow_up``;
* a missing, non-numeric or non-positive time drops the slide; the reader returns the count per reason.

GDC writes ``'--``, ``NA`` or an empty field for "not reported"; all count as missing. Times stay in the
manifest's unit (GDC: days); the C-index and quantile bins do not depend on the unit.

A case is one bag: the features of all its slides are concatenated (docs/architecture.md#features-files).
Coordinates are kept per slide and shifted along x so that the slides of a case lie side by side on one plane
without overlapping (models that read coordinates, e.g. 2D-Mamba, then see separate tissue regions); a case
where any slide lacks coordinates has none.

Time bins (reference: ``survival_label`` in MHIM-MIL ``data_utils.py``): the inner edges are the 25/50/75 %
quantiles (``n_bins`` - 1 edges, linear interpolation as ``pandas.qcut``) of the **uncensored** times of
the **training fold only**, so no test time leaks into the labels; the outer edges are -inf and +inf (the
reference widens them to the global min / max, which is the same on its own data and also covers test
times outside the training range). A time ``t`` falls in bin ``k`` when ``edge_k <= t < edge_{k+1}``
(``pandas.cut(right=False)``, as in the reference).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter

import numpy as np

from hardmil.data.bags import Bag, read_manifest, read_manifest_rows
from hardmil.data.store import as_source
from hardmil.utils import InputError

log = logging.getLogger(__name__)

GDC_COLUMNS = ("vital_status", "days_to_death", "days_to_last_follow_up")
READY_COLUMNS = ("time", "event")
MISSING = {"", "--", "'--", "na", "nan", "none", "null", "not reported", "unknown"}
EVENT_VALUES = {"1": 1, "0": 0, "true": 1, "false": 0, "dead": 1, "alive": 0}


def _number(value: str | None) -> float | None:
    if value is None or value.strip().lower() in MISSING:
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def label_row(row: dict) -> tuple[float, int] | str:
    """``(time, event)`` of one manifest row, or the reason it is dropped."""
    if "time" in row and "event" in row:
        event = EVENT_VALUES.get(str(row["event"]).strip().lower())
        if event is None:
            return f"event {row['event']!r} is not 0/1"
        time = _number(row["time"])
    else:
        dead = str(row.get("vital_status", "")).strip().lower() == "dead"
        death = _number(row.get("days_to_death"))
        if dead and death is not None and death > 0:
            return death, 1
        event, time = 0, _number(row.get("days_to_last_follow_up"))
    if time is None:
        return "missing time"
    if time <= 0:
        return "non-positive time"
    return time, event


def read_survival_manifest(path: str | os.PathLike) -> tuple[list[dict], Counter]:
    """Slide rows (``slide``, ``case``, ..., ``time`` float, ``event`` 0/1) with a usable label, and the
    number of dropped slides per reason. The slides of one case must agree on their label."""
    rows = read_manifest_rows(path, ("slide", "case"))
    cols = set(rows[0])
    if not (set(READY_COLUMNS) <= cols or set(GDC_COLUMNS) <= cols):
        raise InputError(path, f"a survival manifest needs columns {list(READY_COLUMNS)} or {list(GDC_COLUMNS)}; "
                               f"found {sorted(cols)}")
    kept, dropped, seen, by_case = [], Counter(), set(), {}
    for i, row in enumerate(rows, start=2):
        if row["slide"] in seen:
            raise InputError(path, f"line {i}: slide {row['slide']} appears twice")
        seen.add(row["slide"])
        label = label_row(row)
        if isinstance(label, str):
            dropped[label] += 1
            continue
        if by_case.setdefault(row["case"], label) != label:
            raise InputError(path, f"line {i}: case {row['case']} has slides with different survival labels "
                                   f"{by_case[row['case']]} and {label}")
        kept.append({**row, "time": label[0], "event": label[1]})
    if dropped:
        log.info("%s: dropped %d of %d slide(s): %s", path, sum(dropped.values()), len(rows), dict(dropped))
    if not kept:
        raise InputError(path, f"no slide has a usable survival label (dropped: {dict(dropped)})")
    return kept, dropped


def strata(rows: list[dict], by: str = "event") -> list[dict]:
    """Rows with ``label`` set to the stratum the case-level folds are balanced on: the event indicator
    (``by='event'``), or event x time above / below the median time of all cases (``'event_time'``)."""
    if by not in ("event", "event_time"):
        raise ValueError(f"unknown survival stratification {by!r}; valid: event, event_time")
    times = {r["case"]: float(r["time"]) for r in rows}
    median = float(np.median(list(times.values())))
    out = []
    for r in rows:
        label = f"event{int(r['event'])}"
        if by == "event_time":
            label += "_late" if times[r["case"]] > median else "_early"
        out.append({**r, "label": label})
    return out


def bin_edges(times: np.ndarray, events: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """The ``n_bins - 1`` inner edges: quantiles of the uncensored ``times`` (of the training fold)."""
    times, events = np.asarray(times, dtype=float), np.asarray(events).astype(bool)
    observed = times[events]
    if len(observed) < n_bins:
        raise ValueError(f"{len(observed)} uncensored time(s) cannot define {n_bins} quantile bins")
    edges = np.quantile(observed, np.arange(1, n_bins) / n_bins)
    if len(np.unique(edges)) < len(edges):
        log.warning("tied time-bin edges %s: some bins are empty", edges.tolist())
    return edges


def discretise(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each time: ``k`` with ``edge_k <= t < edge_{k+1}`` (outer edges -inf / +inf)."""
    return np.searchsorted(np.asarray(edges, dtype=float), np.asarray(times, dtype=float), side="right")


def load_case_bags(rows: list[dict], source, expected_dim: int | None = None) -> list[Bag]:
    """One lazy bag per case of ``rows`` (slide rows with ``time`` / ``event``), in order of first appearance:
    the case's slides concatenated, coordinates side by side (:func:`~hardmil.data.bags.place_side_by_side`).

    ``label`` is -1 until :func:`set_bins`; ``extra`` holds ``time``, ``event`` and the case's ``slides``.
    ``expected_dim`` is checked against the source's dimension when the source knows it (a store)."""
    source = as_source(source)
    if expected_dim is not None and source.dim is not None and source.dim != expected_dim:
        raise InputError(getattr(source, "root", "features"), f"feature dimension {source.dim} != {expected_dim}")
    cases: dict[str, list[dict]] = {}
    for r in rows:
        cases.setdefault(r["case"], []).append(r)
    bags = []
    for case, slides in cases.items():
        time, event = float(slides[0]["time"]), int(slides[0]["event"])
        names = tuple(r["slide"] for r in slides)
        bags.append(Bag.lazy(names[0], case, -1, source, names,
                             {"time": time, "event": event, "slides": list(names)}))
    return bags


def set_bins(bags: list[Bag], edges: np.ndarray) -> None:
    """Label every case bag with its time bin under ``edges``."""
    bins = discretise([b.extra["time"] for b in bags], edges)
    for b, k in zip(bags, bins, strict=True):
        b.label = int(k)


def manifest_slides(manifest: str | os.PathLike, task: str = "classification", classes: list[str] | None = None
                    ) -> list[str]:
    """The slides a dataset's store holds: every slide of its manifest (classification: labels checked against
    ``classes``; survival: the slides with a usable time and event)."""
    if task == "survival":
        rows = read_survival_manifest(manifest)[0]
    else:
        rows = read_manifest(manifest, list(classes or []))
    return [r["slide"] for r in rows]
