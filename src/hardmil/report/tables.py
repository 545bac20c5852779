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
          "macro_f1": "Macro-F1"}


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
        """Parse ``.../{method}/{protocol}/seed{seed}/fold{fold}/metrics.json`` (docs/architecture.md#run-folders)."""
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
              metrics: tuple[str, ...] | list[str] = METRICS, spread: str = "se") -> list[dict]:
    """One record per (protocol, method): our mean/std/se per metric beside the published row.

    ``spread`` names the published +- value: ``se`` (Li et al.: standard error) or ``std`` (MHIM: std over
    folds); it becomes the ``{metric}_published_{spread}`` column."""
    missing = [r.path for r in runs if not Path(r.path).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} run(s) missing, e.g. {missing[0]}")
    grouped: dict[tuple[str, str], list[tuple[RunRef, dict]]] = defaultdict(list)
    for r in runs:
        grouped[(r.protocol, r.method)].append((r, json.loads(Path(r.path).read_text())))
    for m in metrics:
        for (_, method), items in grouped.items():
            if all(m not in d for _, d in items):
                raise ValueError(f"{items[0][0].path}: no metric {m!r} in any run of {method!r} "
                                 f"(metrics.json has {sorted(k for k in items[0][1] if k not in ('timing',))})")
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
                        f"{m}_published": p, f"{m}_published_{spread}": pub.get(f"{m}_{spread}"),
                        f"{m}_diff": (s["mean"] - p) if p is not None else None})
        records.append(rec)
    return records


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NA"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def record_metrics(rec: dict) -> list[str]:
    """The metrics a record carries, in their order (every ``{metric}_mean`` column)."""
    return [k[: -len("_mean")] for k in rec if k.endswith("_mean")]


def _spread_key(rec: dict, m: str) -> str | None:
    return next((k for k in (f"{m}_published_se", f"{m}_published_std") if k in rec), None)


def _paper_cell(r: dict, m: str) -> str:
    pub = r[f"{m}_published"]
    if pub is None:
        return "paper NA"
    key = _spread_key(r, m)
    spread = f" ± {_fmt(r[key])}" if key and r[key] is not None else ""
    return f"paper {_fmt(pub)}{spread}, Δ {_fmt(r[f'{m}_diff'], True)}"


def _protocols(records: list[dict]) -> list[str]:
    return sorted({r["protocol"] for r in records}, key=lambda p: (p != "paper", p))


def to_markdown(records: list[dict], title: str, note: str = "") -> str:
    out = [f"# {title}", ""]
    if note:
        out += [note, ""]
    metrics = record_metrics(records[0])
    for protocol in _protocols(records):
        out += [f"## Protocol `{protocol}`", "",
                "| Method | Paper row | Runs | " + " | ".join(LABELS.get(m, m) for m in metrics) + " |",
                "|---|---|---|" + "---|" * len(metrics)]
        for r in (r for r in records if r["protocol"] == protocol):
            cells = []
            for m in metrics:
                ours = f"{_fmt(r[f'{m}_mean'])} ± {_fmt(r[f'{m}_std'])} (se {_fmt(r[f'{m}_se'])})"
                cells.append(f"{ours}<br>{_paper_cell(r, m)}")
            out.append(f"| {r['method']} | {r['paper_row'] or '—'} | {r['n_runs']} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("{", r"\{"), ("}", r"\}")):
        text = text.replace(a, b)
    return text


def to_latex(records: list[dict], title: str) -> str:
    """A booktabs table per protocol: ours mean ± std, then the paper's value in parentheses."""
    metrics = record_metrics(records[0])
    out = [f"% {_tex_escape(title)} -- generated by hardmil; needs \\usepackage{{booktabs}}"]
    for protocol in _protocols(records):
        out += [r"\begin{table}[t]", r"\centering",
                rf"\caption{{{_tex_escape(title)} (protocol \texttt{{{protocol}}}). Ours: mean $\pm$ std over "
                r"folds; paper value in parentheses.}",
                r"\begin{tabular}{l" + "c" * len(metrics) + "}", r"\toprule",
                "Method & " + " & ".join(LABELS.get(m, m) for m in metrics) + r" \\", r"\midrule"]
        for r in (r for r in records if r["protocol"] == protocol):
            cells = []
            for m in metrics:
                pub = r[f"{m}_published"]
                cells.append(f"{_fmt(r[f'{m}_mean'])} $\\pm$ {_fmt(r[f'{m}_std'])}"
                             + (f" ({_fmt(pub)})" if pub is not None else ""))
            out.append(_tex_escape(r["paper_row"] or r["method"]) + " & " + " & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def write_csv(records: list[dict], csv_path: str | os.PathLike) -> None:
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(records[0]), lineterminator="\n")
            w.writeheader()
            for r in records:
                w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v))
                            for k, v in r.items()})


def write_table(records: list[dict], csv_path: str | os.PathLike, md_path: str | os.PathLike, title: str,
                note: str = "", tex_path: str | os.PathLike | None = None) -> None:
    if not records:
        raise ValueError(f"{csv_path}: no rows to write")
    write_csv(records, csv_path)
    write_text(md_path, to_markdown(records, title, note))
    if tex_path:
        write_text(tex_path, to_latex(records, title))


# --- which published values a configured table compares with -------------------------------------------
def table_spec(tcfg: dict) -> tuple[dict[str, str], dict[str, dict], str]:
    """(``{method: row label}``, ``{row label: published values}``, spread name) of one ``tables`` entry.

    Li et al.'s tables (wide CSV) carry standard errors; the MHIM tables (long CSV) carry stds over folds and
    are narrowed to one column set by ``published_encoder`` / ``published_dataset`` / ``published_baseline``
    (a row may name its own baseline column: ``method: {row: Baseline, baseline: transmil}``)."""
    from hardmil.report import published as pub

    name = tcfg.get("published")
    rows: dict[str, str] = {}
    values: dict[str, dict] = {}
    if not name:
        for method, row in tcfg["rows"].items():
            rows[method] = row if isinstance(row, str) else row["row"]
        return rows, values, "se"
    if name.startswith("li2019"):
        table = pub.load("li2019")[name]
        for method, row in tcfg["rows"].items():
            rows[method] = row if isinstance(row, str) else row["row"]
        return rows, table, "se"
    for method, row in tcfg["rows"].items():
        label, baseline = (row, tcfg.get("published_baseline", "")) if isinstance(row, str) else (
            row["row"], row.get("baseline", tcfg.get("published_baseline", "")))
        if not isinstance(row, str) and row.get("in_paper") is False:
            rows[method] = label
            continue
        column = pub.long_values(name, encoder=tcfg.get("published_encoder", ""),
                                 dataset=tcfg.get("published_dataset", ""), baseline=baseline)
        shown = f"{label} [{baseline}]" if baseline and not isinstance(row, str) else label
        rows[method] = shown
        if label not in column:
            raise ValueError(f"tables: row {label!r} (method {method!r}) is not a row of {name} for "
                             f"{tcfg.get('published_encoder') or 'any encoder'} / "
                             f"{tcfg.get('published_dataset') or 'any dataset'} / {baseline or 'any baseline'}; "
                             f"its rows: {sorted(column)}")
        values[shown] = column[label]
    return rows, values, "std"
