"""Paper-style tables from per-fold ``metrics.json`` files.

Every cell is traceable: the CSV holds, per protocol and method, the number of fold runs, the mean and
standard deviation over all folds x repetitions, the standard error over repetitions (each repetition's
value is the mean over its folds; Li et al. report "the average of five experiments with its standard
error"), the published value and our difference from it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardmil.report.published import METRICS
from hardmil.utils import atomic_path, write_text

LABELS = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F-score", "auc": "AUC",
          "fpr": "FPR", "c_index": "C-index", "nll": "NLL", "balanced_accuracy": "Balanced accuracy",
          "macro_f1": "Macro F1"}


RUN_PATH = re.compile(r"(?P<method>[^/]+)/(?P<protocol>[^/]+)/seed(?P<seed>\d+)/fold(?P<fold>\d+)/metrics\.json$")


@dataclass(frozen=True)
class RunRef:
    protocol: str
    method: str
    seed: int
    fold: int
    path: str

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> RunRef:
        """Parse ``.../{method}/{protocol}/seed{seed}/fold{fold}/metrics.json`` (DESIGN §3)."""
        m = RUN_PATH.search(Path(path).as_posix())
        if m is None:
            raise ValueError(f"{path}: not a run's metrics.json path (.../method/protocol/seedS/foldF/metrics.json)")
        return cls(m["protocol"], m["method"], int(m["seed"]), int(m["fold"]), str(path))


def _stats(per_run: list[tuple[int, float]]) -> dict[str, float]:
    values = np.array([v for _, v in per_run], dtype=float)
    by_seed: dict[int, list[float]] = defaultdict(list)
    for seed, v in per_run:
        by_seed[seed].append(v)
    rep_means = np.array([np.nanmean(v) for v in by_seed.values()])
    n_rep = len(rep_means)
    return {
        "mean": float(np.nanmean(values)),
        "std": float(np.nanstd(values, ddof=1)) if len(values) > 1 else float("nan"),
        "se": float(np.nanstd(rep_means, ddof=1) / math.sqrt(n_rep)) if n_rep > 1 else float("nan"),
    }


def aggregate(runs: list[RunRef], rows: dict[str, str], published: dict[str, dict],
              metrics: tuple[str, ...] | list[str] = METRICS) -> list[dict]:
    """One record per (protocol, method): our mean/std/se per metric beside the published row.

    ``metrics``: the metrics.json keys shown (survival tables: ``["c_index"]``; cross-source tables read
    the external runs, whose paths have the same method/protocol/seed/fold tail)."""
    missing = [r.path for r in runs if not Path(r.path).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} run(s) missing, e.g. {missing[0]}")
    grouped: dict[tuple[str, str], list[tuple[RunRef, dict]]] = defaultdict(list)
    for r in runs:
        grouped[(r.protocol, r.method)].append((r, json.loads(Path(r.path).read_text())))
    records = []
    for (protocol, method), items in grouped.items():
        paper_row = rows.get(method, "")
        pub = published.get(paper_row, {})
        rec = {"protocol": protocol, "method": method, "paper_row": paper_row, "n_runs": len(items),
               "n_repetitions": len({r.seed for r, _ in items})}
        for m in metrics:
            s = _stats([(r.seed, float(d.get(m, float("nan")))) for r, d in items])
            p = pub.get(m)
            rec.update({f"{m}_mean": s["mean"], f"{m}_std": s["std"], f"{m}_se": s["se"],
                        f"{m}_published": p, f"{m}_published_se": pub.get(f"{m}_se"),
                        f"{m}_diff": (s["mean"] - p) if p is not None else None})
        records.append(rec)
    return records


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NA"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def to_markdown(records: list[dict], title: str, note: str = "",
                metrics: tuple[str, ...] | list[str] = METRICS) -> str:
    out = [f"# {title}", ""]
    if note:
        out += [note, ""]
    for protocol in sorted({r["protocol"] for r in records}, key=lambda p: (p != "paper", p)):
        out += [f"## Protocol `{protocol}`", "",
                "| Method | Paper row | Runs | " + " | ".join(LABELS.get(m, m) for m in metrics) + " |",
                "|---|---|---|" + "---|" * len(metrics)]
        for r in (r for r in records if r["protocol"] == protocol):
            cells = []
            for m in metrics:
                ours = f"{_fmt(r[f'{m}_mean'])} ± {_fmt(r[f'{m}_std'])} (se {_fmt(r[f'{m}_se'])})"
                pub = r[f"{m}_published"]
                paper = (f"paper {_fmt(pub)} ± {_fmt(r[f'{m}_published_se'])}, Δ {_fmt(r[f'{m}_diff'], True)}"
                         if pub is not None else "paper NA")
                cells.append(f"{ours}<br>{paper}")
            out.append(f"| {r['method']} | {r['paper_row'] or '—'} | {r['n_runs']} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def write_table(records: list[dict], csv_path: str | os.PathLike, md_path: str | os.PathLike, title: str,
                note: str = "", metrics: tuple[str, ...] | list[str] = METRICS) -> None:
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(records[0]), lineterminator="\n")
            w.writeheader()
            for r in records:
                w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v))
                            for k, v in r.items()})
    write_text(md_path, to_markdown(records, title, note, metrics))
