"""Published numbers, transcribed from the papers into ``published/*.csv`` (package data)."""

from __future__ import annotations

import csv
import io
from importlib import resources

METRICS = ("accuracy", "precision", "recall", "f1", "auc", "fpr")


def load(paper: str = "li2019") -> dict[str, dict[str, dict[str, float | None]]]:
    """``{table: {method: {metric: value, metric_se: value}}}``; missing (NA) values are None."""
    text = resources.files("hardmil.report").joinpath("published", f"{paper}.csv").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        table, method = row.pop("table"), row.pop("method")
        out.setdefault(table, {})[method] = {k: (float(v) if v else None) for k, v in row.items()}
    return out


# --- long-format transcriptions (one value per line): the MHIM-v2 paper -------------------------------------
LONG_KEYS = ("table", "baseline", "encoder", "row", "dataset", "metric")
PERCENT = "percent"


def load_long(paper: str = "mhim2025") -> list[dict]:
    """Every transcribed value of ``published/{paper}.csv`` as a dict (value/std/delta floats or None)."""
    text = resources.files("hardmil.report").joinpath("published", f"{paper}.csv").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    out = []
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        for k in ("value", "std", "delta"):
            row[k] = float(row[k]) if row[k] else None
        out.append(row)
    return out


def tables_of(paper: str = "mhim2025") -> list[str]:
    return list(dict.fromkeys(r["table"] for r in load_long(paper)))


def long_values(table: str, *, encoder: str = "", dataset: str = "", baseline: str = "",
                paper: str | None = None) -> dict[str, dict[str, float | None]]:
    """``{row: {metric: value, metric_std: std, metric_delta: delta}}`` of one column set of a long table.

    ``encoder`` / ``dataset`` / ``baseline`` filter when given (empty = any). Percentages become fractions so
    that they compare with our metrics.json values; other units (M, s, GB, slides/s) stay as printed. A
    filter that leaves two values for the same (row, metric) is ambiguous and an error.
    """
    paper = paper or table.split("_")[0]
    rows = [r for r in load_long(paper) if r["table"] == table]
    if not rows:
        raise ValueError(f"no published table {table!r} in {paper}.csv; known: {tables_of(paper)}")
    want = {"encoder": encoder, "dataset": dataset, "baseline": baseline}
    out: dict[str, dict[str, float | None]] = {}
    for r in rows:
        if any(v and r[k] not in (v, "") for k, v in want.items()):
            continue
        scale = 0.01 if r["unit"] == PERCENT else 1.0
        cell = out.setdefault(r["row"], {})
        if r["metric"] in cell:
            raise ValueError(f"{table}: row {r['row']!r} metric {r['metric']!r} is ambiguous for {want}; "
                             "give encoder / dataset / baseline")
        cell[r["metric"]] = r["value"] * scale
        cell[f"{r['metric']}_std"] = None if r["std"] is None else r["std"] * scale
        cell[f"{r['metric']}_delta"] = None if r["delta"] is None else r["delta"] * scale
    return out
