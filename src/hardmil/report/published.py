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
