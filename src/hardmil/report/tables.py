"""Paper-style tables from per-fold ``metrics.json`` files.

Every cell is traceable: the CSV holds, per protocol and method, the number of fold runs, the mean and
standard deviation over all folds x repetitions, the standard error over repetitions (each repetition's
value is the mean over its folds; Li et al. report "the average of five experiments with its standard
error"), the published value and our difference from it, and -- when the table names a ``baseline`` --
each row's paired difference from the row it is compared with (``{metric}_delta`` with its interval
``{metric}_delta_lo`` / ``{metric}_delta_hi`` and ``{metric}_delta_resolved``), computed from the runs'
``predictions.tsv`` on identical test bags (:func:`hardmil.report.deltas.paired_deltas`).

Rendering: Markdown shows each row's label (Method) and method key (Key), ours as mean ± std (se) and the
paper's value only where one is published; LaTeX (booktabs) escapes every character and shows the paper's
value in parentheses only where there is one. Metric columns that no record fills are left out.

The paired comparisons live in :mod:`hardmil.report.deltas` (the sweep figures use them too). Length (about
400 lines): aggregation and the three renderers (CSV, Markdown, LaTeX) share one column model and one row
order; split apart they would pass that model between modules.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from hardmil.report.deltas import RunRef, delta_metric_names, paired_deltas  # RunRef: re-exported
from hardmil.report.published import METRICS
from hardmil.utils import atomic_path, write_text

LABELS = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F-score", "auc": "AUC",
          "fpr": "FPR", "c_index": "C-index", "nll": "NLL", "balanced_accuracy": "Balanced accuracy",
          "macro_f1": "Macro-F1", "accuracy_argmax": "Accuracy (argmax)", "n_cases": "Cases", "n_events": "Events",
          "parameters": "Parameters (M)", "train_seconds_per_epoch": "Training time (s/epoch)",
          "peak_memory": "Peak memory (GB)", "inference_slides_per_second": "Inference (slides/s)"}


def metric_label(metric: str) -> str:
    """The human name of a metrics.json key (an unknown key: its words, capitalised)."""
    return LABELS.get(metric) or metric.replace("_", " ").capitalize()






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
              metrics: tuple[str, ...] | list[str] = METRICS, spread: str = "se", *,
              versus: dict[str, str | None] | None = None, delta_metrics: list[str] | None = None,
              n_boot: int = 2000, level: float = 0.95) -> list[dict]:
    """One record per (protocol, method): our mean/std/se per metric beside the published row.

    ``spread`` names the published +- value: ``se`` (Li et al.: standard error) or ``std`` (MHIM: std over
    folds); it becomes the ``{metric}_published_{spread}`` column. ``versus`` (``{method: the row it is
    compared with}``, :func:`hardmil.config.table_versus`) adds the paired Δ columns of :func:`paired_deltas`."""
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
    deltas = paired_deltas(runs, versus, delta_metrics, n_boot=n_boot, level=level) if versus else {}
    records = []
    for (protocol, method), items in grouped.items():
        paper_row = rows.get(method, "")
        pub = published.get(paper_row, {})
        rec = {"protocol": protocol, "method": method, "label": paper_row or method, "paper_row": paper_row,
               "n_runs": len(items), "n_repetitions": len({r.seed for r, _ in items})}
        for m in metrics:
            s = _stats([(r.seed, float(d.get(m, float("nan")))) for r, d in items])
            p = pub.get(m)
            rec.update({f"{m}_mean": s["mean"], f"{m}_std": s["std"], f"{m}_se": s["se"],
                        f"{m}_published": p, f"{m}_published_{spread}": pub.get(f"{m}_{spread}"),
                        f"{m}_diff": (s["mean"] - p) if p is not None else None})
        if versus:
            other = versus.get(method)
            rec.update({"versus": other or "", "versus_label": (rows.get(other) or other) if other else ""})
            d = deltas.get((protocol, method), {})
            for m in delta_metric_names(deltas):
                res = d.get(m)
                rec.update({f"{m}_delta": res["delta"] if res else None, f"{m}_delta_lo": res["lo"] if res else None,
                            f"{m}_delta_hi": res["hi"] if res else None,
                            f"{m}_delta_resolved": res["excludes_zero"] if res else None})
            first = next(iter(d.values()), None)
            rec.update({"delta_bags": first["n"] if first else None,
                        "delta_pairs": first["n_groups"] if first else None, "delta_level": level,
                        "delta_n_boot": n_boot})
        records.append(rec)
    return records


# --- rendering ----------------------------------------------------------------------------------------------
def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NA"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def record_metrics(rec: dict) -> list[str]:
    """The metrics a record carries, in their order (every ``{metric}_mean`` column)."""
    return [k[: -len("_mean")] for k in rec if k.endswith("_mean")]


def shown_metrics(records: list[dict]) -> list[str]:
    """The metric columns worth printing: those with a value (ours or published) in at least one record."""
    return [m for m in record_metrics(records[0])
            if any(_finite(r.get(f"{m}_mean")) or r.get(f"{m}_published") is not None for r in records)]


def record_delta_metrics(records: list[dict]) -> list[str]:
    """The metrics with a paired Δ column (every ``{metric}_delta`` key), in their order."""
    return [k[: -len("_delta")] for k in records[0] if k.endswith("_delta")] if records else []


def _spread_key(rec: dict, m: str) -> str | None:
    return next((k for k in (f"{m}_published_se", f"{m}_published_std") if k in rec), None)


def _ours(r: dict, m: str) -> str:
    text = _fmt(r[f"{m}_mean"])
    if _finite(r.get(f"{m}_std")):
        text += f" ± {_fmt(r[f'{m}_std'])}"
    if _finite(r.get(f"{m}_se")):
        text += f" (se {_fmt(r[f'{m}_se'])})"
    return text


def _paper_cell(r: dict, m: str) -> str:
    pub = r[f"{m}_published"]
    key = _spread_key(r, m)
    spread = f" ± {_fmt(r[key])}" if key and _finite(r[key]) else ""
    return f"paper {_fmt(pub)}{spread}, diff. {_fmt(r[f'{m}_diff'], True)}"


def _delta_text(r: dict, m: str) -> str:
    """``+0.031 [-0.012, +0.075] not resolved``; ``baseline`` for the row the others compare with."""
    if not r.get("versus"):
        return "—"
    if not _finite(r.get(f"{m}_delta")):
        return "NA"
    if not _finite(r.get(f"{m}_delta_lo")):
        return f"{_fmt(r[f'{m}_delta'], True)} (no interval)"
    word = "resolved" if r[f"{m}_delta_resolved"] else "not resolved"
    return f"{_fmt(r[f'{m}_delta'], True)} [{_fmt(r[f'{m}_delta_lo'], True)}, {_fmt(r[f'{m}_delta_hi'], True)}] {word}"


def _protocols(records: list[dict]) -> list[str]:
    return sorted({r["protocol"] for r in records}, key=lambda p: (p != "paper", p))


def _has_published(records: list[dict], m: str) -> bool:
    return any(r.get(f"{m}_published") is not None for r in records)


def _label(r: dict) -> str:
    return r.get("label") or r.get("paper_row") or r["method"]


def to_markdown(records: list[dict], title: str, note: str = "") -> str:
    """Per protocol: Method (label), Key (method key), Runs, each metric (ours, and the paper's value where one
    is published), then, when the table compares rows, the compared row and a Δ column per metric."""
    out = [f"# {title}", ""]
    if note:
        out += [note, ""]
    metrics = shown_metrics(records)
    dmetrics = record_delta_metrics(records)
    compare = any(r.get("versus") for r in records)
    targets = {r["versus"] for r in records if r.get("versus")}
    for protocol in _protocols(records):
        rows = [r for r in records if r["protocol"] == protocol]
        head = ["Method", "Key", "Runs"] + [metric_label(m) for m in metrics]
        if compare:
            head += ["Compared with"] + [f"Δ {metric_label(m)} [{_level_text(records)} CI]" for m in dmetrics]
        out += [f"## Protocol `{protocol}`", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [_label(r).replace("|", "\\|"), f"`{r['method']}`", str(r["n_runs"])]
            for m in metrics:
                paper = f"<br>{_paper_cell(r, m)}" if r.get(f"{m}_published") is not None else ""
                cells.append(_ours(r, m) + paper)
            if compare:
                if r.get("versus"):
                    cells.append((r.get("versus_label") or r["versus"]).replace("|", "\\|"))
                else:
                    cells.append("baseline" if r["method"] in targets else "—")
                cells += [_delta_text(r, m) for m in dmetrics]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _level_text(records: list[dict]) -> str:
    level = next((r.get("delta_level") for r in records if r.get("delta_level")), 0.95)
    return f"{100 * level:g} %"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
        "Δ": r"$\Delta$", "±": r"$\pm$", "×": r"$\times$", "→": r"$\rightarrow$", "←": r"$\leftarrow$",
        "≥": r"$\geq$", "≤": r"$\leq$", "–": "--", "—": "---", "−": "-", "’": "'", "‘": "`", "“": "``", "”": "''",
        "…": r"\ldots{}", "µ": r"$\mu$", "μ": r"$\mu$", "·": r"$\cdot$", "°": r"$^{\circ}$", "\u00a0": "~"}


def tex_escape(text: str) -> str:
    """``text`` as LaTeX that compiles with pdflatex's default fonts: specials escaped, common symbols as math,
    accented letters without their accent, any other non-ASCII character as ``?``."""
    import unicodedata

    out = []
    for ch in str(text):
        if ch in _TEX:
            out.append(_TEX[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            plain = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
            out.append(plain if plain and all(ord(c) < 128 for c in plain) and plain not in _TEX else "?")
    return "".join(out)


def _tex_num(x: float | None, signed: bool = False) -> str:
    return "NA" if not _finite(x) else f"${_fmt(x, signed)}$"


def to_latex(records: list[dict], title: str) -> str:
    """A booktabs table per protocol: ours mean ± std (the published value in parentheses where there is one),
    then, when the table compares rows, the compared row and the paired Δ with its interval."""
    metrics = shown_metrics(records)
    dmetrics = record_delta_metrics(records)
    compare = any(r.get("versus") for r in records)
    published = any(_has_published(records, m) for m in metrics)
    out = [f"% {tex_escape(title)} -- generated by hardmil; needs \\usepackage{{booktabs}}"]
    for protocol in _protocols(records):
        caption = (f"{tex_escape(title)} (protocol \\texttt{{{tex_escape(protocol)}}}). Mean $\\pm$ std over folds "
                   "and repetitions" + ("; the published value in parentheses" if published else ""))
        if compare:
            caption += (f"; $\\Delta$: the row minus the row it is compared with (vs.) on the same test bags, with "
                        f"its {tex_escape(_level_text(records))} paired bootstrap interval; $^{{*}}$: the interval "
                        "excludes 0")
        cols = "l" + "c" * len(metrics) + ("l" + "c" * len(dmetrics) if compare else "")
        head = ["Method"] + [tex_escape(metric_label(m)) for m in metrics]
        if compare:
            head += ["vs."] + [f"$\\Delta$ {tex_escape(metric_label(m))}" for m in dmetrics]
        out += [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}.}}", rf"\begin{{tabular}}{{{cols}}}",
                r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
        for r in (r for r in records if r["protocol"] == protocol):
            cells = [tex_escape(_label(r))]
            for m in metrics:
                cell = _tex_num(r[f"{m}_mean"])
                if _finite(r.get(f"{m}_std")) and _finite(r[f"{m}_mean"]):
                    cell = f"${_fmt(r[f'{m}_mean'])} \\pm {_fmt(r[f'{m}_std'])}$"
                if r.get(f"{m}_published") is not None:
                    cell += f" ({_fmt(r[f'{m}_published'])})"
                cells.append(cell)
            if compare:
                cells.append(tex_escape(r.get("versus_label") or "") if r.get("versus") else "---")
                for m in dmetrics:
                    if not r.get("versus") or not _finite(r.get(f"{m}_delta")):
                        cells.append("---")
                        continue
                    cell = _tex_num(r[f"{m}_delta"], True)
                    if _finite(r.get(f"{m}_delta_lo")):
                        cell += f" [{_tex_num(r[f'{m}_delta_lo'], True)}, {_tex_num(r[f'{m}_delta_hi'], True)}]"
                        cell += "$^{*}$" if r[f"{m}_delta_resolved"] else ""
                    cells.append(cell)
            out.append(" & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def runs_note(records: list[dict], spread: str, n_folds: int, n_seeds: int) -> str:
    """The paragraph under a runs table's title: what each number is."""
    note = "Ours: mean ± std over folds x repetitions; (se) = standard error over repetitions, each repetition " \
           "being the mean over its folds."
    if any(_has_published(records, m) for m in record_metrics(records[0])):
        paper = "mean ± standard error as published" if spread == "se" else "mean ± std over 5 folds as published"
        note += f" Paper: {paper}; diff. = ours - paper."
    if any(r.get("versus") for r in records):
        n_boot = next((r.get("delta_n_boot") for r in records if r.get("delta_n_boot")), 2000)
        note += (" Δ: the row minus the row in 'Compared with' (the method it wraps or extends, else the table's "
                 "baseline), on identical test bags (same seeds, folds and splits); in brackets its "
                 f"{_level_text(records)} interval from a paired bootstrap over test bags, stratified by class "
                 f"({n_boot} replicates; hardmil.eval.stats). 'resolved': the interval excludes 0; 'not resolved': "
                 "these test bags cannot tell the two rows apart.")
    note += (" Protocol `paper`: the test fold also picks the epoch and the Youden threshold (as the authors' code "
             "does); `clean`: a validation split of each training fold picks both and the test fold is used once. "
             f"{n_folds} folds x {n_seeds} repetitions (seeds).")
    return note


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
