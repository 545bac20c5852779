"""Paper-style tables from per-fold ``metrics.json`` files.

Every cell is traceable: the CSV holds, per protocol and method, the number of fold runs, the mean and
standard deviation over all folds x repetitions, the standard error over repetitions (each repetition's
value is the mean over its folds; Li et al. report "the average of five experiments with its standard
error"), the published value and our difference from it, and -- when the table names a ``baseline`` --
each row's paired difference from the row it is compared with (``{metric}_delta`` with its interval
``{metric}_delta_lo`` / ``{metric}_delta_hi`` and ``{metric}_delta_resolved``), computed from the runs'
``predictions.tsv`` on identical test bags by :func:`hardmil.eval.stats.paired_delta`.

Rendering: Markdown shows each row's label (Method) and method key (Key), ours as mean ± std (se) and the
paper's value only where one is published; LaTeX (booktabs) escapes every character and shows the paper's
value in parentheses only where there is one. Metric columns that no record fills are left out.

Length (over 400 lines): aggregation, the paired comparisons and the three renderers (CSV, Markdown,
LaTeX) share one column model and one row order; split apart they would pass that model between modules.
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
from hardmil.utils import InputError, atomic_path, read_tsv, write_text

LABELS = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F-score", "auc": "AUC",
          "fpr": "FPR", "c_index": "C-index", "nll": "NLL", "balanced_accuracy": "Balanced accuracy",
          "macro_f1": "Macro-F1", "accuracy_argmax": "Accuracy (argmax)", "n_cases": "Cases", "n_events": "Events",
          "parameters": "Parameters (M)", "train_seconds_per_epoch": "Training time (s/epoch)",
          "peak_memory": "Peak memory (GB)", "inference_slides_per_second": "Inference (slides/s)"}


def metric_label(metric: str) -> str:
    """The human name of a metrics.json key (an unknown key: its words, capitalised)."""
    return LABELS.get(metric) or metric.replace("_", " ").capitalize()


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
            for m in _delta_metric_names(deltas):
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


# --- paired Δ from each run's predictions.tsv ---------------------------------------------------------------
def predictions_path(metrics_path: str | os.PathLike) -> Path:
    """A run's ``predictions.tsv`` (beside its ``metrics.json``)."""
    return Path(metrics_path).with_name("predictions.tsv")


def read_predictions(path: str | os.PathLike) -> dict:
    """One run's out-of-fold predictions: ``{"kind", "ids", ...}``.

    Classification (``prob_<class>`` columns): ``kind="classification"``, ``ids`` (slide), ``y`` (label index),
    ``scores [n, C]``. Survival (``risk`` column): ``kind="survival"``, ``ids`` (case), ``time``, ``event``,
    ``scores`` (risk)."""
    p = Path(path)
    rows = read_tsv(p, "predictions file (has the run finished?)")
    cols = list(rows[0])
    try:
        if "risk" in cols:
            need = [c for c in ("case", "time", "event", "risk") if c not in cols]
            if need:
                raise InputError(p, f"survival predictions lack column(s) {need}")
            return {"kind": "survival", "ids": [r["case"] for r in rows],
                    "time": np.array([float(r["time"]) for r in rows]),
                    "event": np.array([int(float(r["event"])) for r in rows]).astype(bool),
                    "scores": np.array([float(r["risk"]) for r in rows])}
        probs = [c for c in cols if c.startswith("prob_")]
        id_col = "slide" if "slide" in cols else "case"
        if len(probs) < 2 or "label_index" not in cols or id_col not in cols:
            raise InputError(p, f"needs a slide (or case) column, label_index and prob_<class> columns; has {cols}")
        return {"kind": "classification", "ids": [r[id_col] for r in rows],
                "y": np.array([int(r["label_index"]) for r in rows]),
                "scores": np.array([[float(r[c]) for c in probs] for r in rows])}
    except ValueError as err:
        raise InputError(p, f"unreadable value: {err}") from None


DEFAULT_DELTA_METRICS = {"classification": ["auc", "balanced_accuracy"], "survival": ["c_index"]}


def _delta_metric_names(deltas: dict) -> list[str]:
    names: list[str] = []
    for d in deltas.values():
        names += [m for m in d if m not in names]
    return names


def _paired_rows(mine: dict[tuple[int, int], RunRef], base: dict[tuple[int, int], RunRef], cache: dict,
                 threshold_metrics: bool = False) -> dict:
    """Stack the two methods' predictions of every shared (seed, fold), aligned bag by bag; with
    ``threshold_metrics``, also each binary run's 0/1 decisions at its own threshold."""
    def load(run: RunRef) -> dict:
        path = predictions_path(run.path)
        if path not in cache:
            cache[path] = read_predictions(path)
        return cache[path]

    def decisions(run: RunRef, pred: dict) -> np.ndarray:
        """0/1 decisions of a binary run at its own threshold (``metrics.json``), as its accuracy / F1 used."""
        if run.path not in cache:
            cache[run.path] = json.loads(Path(run.path).read_text()).get("threshold")
        thr = cache[run.path]
        if not _finite(thr):
            raise InputError(run.path, "no decision threshold: a paired Δ of accuracy / f1 compares the runs' "
                                       "thresholded decisions")
        return (pred["scores"][:, 1] >= float(thr)).astype(float)

    out: dict[str, list] = defaultdict(list)
    kind = None
    for key in sorted(set(mine) & set(base)):
        a, b = load(mine[key]), load(base[key])
        pa, pb = predictions_path(mine[key].path), predictions_path(base[key].path)
        if a["kind"] != b["kind"] or a["scores"].shape[1:] != b["scores"].shape[1:]:
            raise InputError(pa, f"predictions are not of the same kind / classes as {pb}")
        kind = a["kind"]
        index_b = {i: k for k, i in enumerate(b["ids"])}
        if len(index_b) != len(b["ids"]) or set(index_b) != set(a["ids"]) or len(a["ids"]) != len(b["ids"]):
            only_a, only_b = sorted(set(a["ids"]) - set(index_b)), sorted(set(index_b) - set(a["ids"]))
            raise InputError(pa, f"test bags differ from {pb} (only here: {only_a[:3]}, only there: {only_b[:3]}"
                                 f"{', or a bag listed twice' if not (only_a or only_b) else ''}); a paired Δ needs "
                                 "identical splits")
        order = np.array([index_b[i] for i in a["ids"]])
        if kind == "survival":
            if not (np.allclose(a["time"], b["time"][order]) and np.array_equal(a["event"], b["event"][order])):
                raise InputError(pa, f"survival times / events differ from {pb} for the same cases")
            out["time"].append(a["time"])
            out["event"].append(a["event"])
        elif not np.array_equal(a["y"], b["y"][order]):
            raise InputError(pa, f"labels differ from {pb} for the same slides")
        else:
            out["y"].append(a["y"])
        out["method"].append(a["scores"])
        out["base"].append(b["scores"][order])
        if threshold_metrics and kind == "classification" and a["scores"].shape[1] == 2:
            out["method_decisions"].append(decisions(mine[key], a))
            out["base_decisions"].append(decisions(base[key], b)[order])
        out["groups"] += [f"seed{key[0]}/fold{key[1]}"] * len(a["ids"])
        out["clusters"] += list(a["ids"])
    out["kind"] = kind
    return out


def paired_deltas(runs: list[RunRef], versus: dict[str, str | None], delta_metrics: list[str] | None = None, *,
                  n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[tuple[str, str], dict]:
    """``{(protocol, method): {metric: paired_delta result}}`` for every row with a comparison.

    Each row is paired with the row it is compared with on the (seed, fold) runs both have, bag by bag (slide
    or case id), from each run's ``predictions.tsv``; the Δ and its interval come from
    :func:`hardmil.eval.stats.paired_delta` (groups: seed x fold; resampling unit: the bag). Accuracy and F1 of
    a binary task compare the decisions each run made at its own threshold (``metrics.json``), so the Δ is the
    difference of the table's two columns; the thresholds are held fixed in the bootstrap."""
    from hardmil.eval.stats import THRESHOLD_METRICS, paired_delta

    by: dict[tuple[str, str], dict[tuple[int, int], RunRef]] = defaultdict(dict)
    for r in runs:
        by[(r.protocol, r.method)][(r.seed, r.fold)] = r
    cache: dict = {}
    out: dict[tuple[str, str], dict] = {}
    for (protocol, method), mine in by.items():
        other = versus.get(method)
        if not other:
            continue
        if (protocol, other) not in by:
            raise ValueError(f"row {method!r} is compared with {other!r}, which has no runs under protocol "
                             f"{protocol!r} in this table")
        paired = _paired_rows(mine, by[(protocol, other)], cache,
                              threshold_metrics=bool(set(delta_metrics or ()) & set(THRESHOLD_METRICS)))
        if paired["kind"] is None:
            raise ValueError(f"rows {method!r} and {other!r} share no (seed, fold) run under protocol {protocol!r}")
        wanted = delta_metrics or DEFAULT_DELTA_METRICS[paired["kind"]]
        res = {}
        for metric in wanted:
            if (metric == "c_index") != (paired["kind"] == "survival"):
                raise ValueError(f"delta metric {metric!r} does not apply to {paired['kind']} predictions "
                                 f"(row {method!r})")
            y = ({"time": np.concatenate(paired["time"]), "event": np.concatenate(paired["event"])}
                 if paired["kind"] == "survival" else np.concatenate(paired["y"]))
            scores = ("method_decisions", "base_decisions") if (
                metric in THRESHOLD_METRICS and paired["method_decisions"]) else ("method", "base")
            res[metric] = paired_delta(y, np.concatenate(paired[scores[0]]), np.concatenate(paired[scores[1]]), metric,
                                       groups=paired["groups"], clusters=paired["clusters"], n_boot=n_boot,
                                       level=level, seed=seed)
        out[(protocol, method)] = res
    return out


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
