"""The controlled benchmark's report (``make claims``): paired Δ AUC of each method against its baseline per
regime, as a Markdown table, a TSV and a forest plot, and each method's instance localisation AUC against
the known witnesses of :mod:`hardmil.data.simulated`.

Bag level: for each regime (a simulated dataset) and each row with a baseline, the method's and the
baseline's out-of-fold test predictions are paired on identical test bags (same seed, fold and splits) and
passed to :func:`hardmil.eval.stats.paired_delta` (Δ = method − baseline, its interval and whether it
excludes 0): the AUC of each seed's pooled out-of-fold predictions (``groups``), averaged over seeds, with
bags resampled within their class and a bag's predictions under every seed kept together (``clusters``).
The per-fold Δ and its standard deviation ``sd`` are reported too, that is the fold variance the benchmark's
size is argued from (docs/benchmark.md), with the number of test folds (fold x seed runs) whose mean Δ would
have a 95 % half-width of ``resolve``: ``ceil((1.96 sd / resolve)^2)``, and the runs done. Verdict: *better* /
*worse* when the interval excludes 0; *within ±e* when it lies inside ``[-equivalence, +equivalence]`` (the data
resolve that any difference is small: two one-sided tests at the interval's level); else *not resolved*.
Per method: the rate of fold runs whose test AUC is below ``fail_below`` (runs that did not train; a comparison
against a baseline that fails often measures the baseline's failures, not the method's gain).

Instance level: every positive test bag (at most ``localisation_bags`` per fold, the first by name) is scored
by its own test fold's trained model (for MHIM the student,
as at inference); the localisation AUC of a bag is the ROC AUC of the attention weights against the bag's
witness labels; reported per method and regime as the mean over bags, with the same AUC restricted to the
subtle witnesses (salient witnesses left out) and of witnesses against hard negatives only (bags with both).
"""

from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from hardmil.utils import InputError, write_text, write_tsv

log = logging.getLogger(__name__)

DELTA_COLUMNS = ("regime", "dataset", "method", "row", "baseline", "baseline_row", "n_bags", "n_predictions",
                 "auc", "auc_baseline", "delta", "lo", "hi", "excludes_zero", "verdict", "fold_delta_mean",
                 "fold_delta_sd", "n_folds", "folds_to_resolve", "procedure")
LOC_COLUMNS = ("regime", "dataset", "method", "row", "runs", "failed_runs", "bag_auc_mean", "bag_auc_sd", "loc_auc",
               "loc_auc_sd", "loc_auc_subtle", "loc_auc_vs_hard", "n_bags")


def read_predictions(path: str | os.PathLike, positive: str) -> dict[str, tuple[int, float]]:
    """``{slide: (label_index, probability of the positive class)}`` of one fold's predictions.tsv."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "predictions file does not exist")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    col = f"prob_{positive}"
    if not rows or col not in rows[0] or "label_index" not in rows[0]:
        raise InputError(path, f"not a classification predictions file with column {col!r}")
    return {r["slide"]: (int(r["label_index"]), float(r[col])) for r in rows}


def _auc(y, s) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def pair_runs(method_runs: list[dict], base_runs: list[dict], positive: str) -> dict:
    """Pair two methods' predictions by (seed, fold, slide); ``*_runs``: [{seed, fold, predictions}]."""
    base = {(r["seed"], r["fold"]): read_predictions(r["predictions"], positive) for r in base_runs}
    keys, y, s_m, s_b, fold_deltas = [], [], [], [], []
    for r in method_runs:
        k = (r["seed"], r["fold"])
        if k not in base:
            raise InputError(r["predictions"], f"the baseline has no run for seed {k[0]} fold {k[1]}")
        m, b = read_predictions(r["predictions"], positive), base[k]
        if set(m) != set(b):
            raise InputError(r["predictions"], "test bags differ from the baseline's run of the same seed and fold")
        slides = sorted(m)
        keys += [(k[0], k[1], sl) for sl in slides]
        y += [m[sl][0] for sl in slides]
        s_m += [m[sl][1] for sl in slides]
        s_b += [b[sl][1] for sl in slides]
        fy = [m[sl][0] for sl in slides]
        fold_deltas.append(_auc(fy, [m[sl][1] for sl in slides]) - _auc(fy, [b[sl][1] for sl in slides]))
    return {"keys": keys, "y": np.array(y), "method": np.array(s_m), "base": np.array(s_b),
            "fold_deltas": np.array(fold_deltas)}


def delta_record(pairs: dict, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Δ AUC (method − baseline) with its interval from :func:`hardmil.eval.stats.paired_delta`."""
    from hardmil.eval.stats import paired_delta

    y = pairs["y"]
    bags = np.array([k[2] for k in pairs["keys"]])
    seeds = np.array([k[0] for k in pairs["keys"]])
    res = paired_delta(y, pairs["method"], pairs["base"], "auc", groups=seeds, clusters=bags, n_boot=n_boot,
                       level=level, seed=seed)
    fd = pairs["fold_deltas"][np.isfinite(pairs["fold_deltas"])]
    return {"n_bags": len(set(bags.tolist())), "n_predictions": len(y), "auc": res["value_method"],
            "auc_baseline": res["value_base"], "delta": res["delta"], "lo": res["lo"], "hi": res["hi"],
            "excludes_zero": bool(res["excludes_zero"]), "fold_delta_mean": float(fd.mean()) if len(fd) else None,
            "fold_delta_sd": float(fd.std(ddof=1)) if len(fd) > 1 else None, "n_folds": len(fd),
            "procedure": res.get("method", "")}


def verdict(delta: float, lo: float, hi: float, excludes_zero: bool, equivalence: float) -> str:
    """'better' / 'worse' (the interval excludes 0), 'within ±e' (it lies inside ±equivalence), 'not resolved'."""
    if excludes_zero:
        return "better" if delta > 0 else "worse"
    if -equivalence <= lo and hi <= equivalence:
        return f"within ±{equivalence:g}"
    return "not resolved"


def fold_aucs(runs: list[dict], positive: str) -> np.ndarray:
    out = []
    for r in runs:
        p = read_predictions(r["predictions"], positive)
        out.append(_auc([v[0] for v in p.values()], [v[1] for v in p.values()]))
    return np.array(out)


def bag_localisation(attention: np.ndarray, kind: np.ndarray) -> dict:
    """Localisation AUCs of one positive bag's attention against its instance kinds (NaN where undefined)."""
    from hardmil.data.simulated import HARD, SALIENT, SUBTLE

    witness = (kind == SALIENT) | (kind == SUBTLE)
    out = {"loc_auc": _auc(witness, attention)}
    keep = kind != SALIENT
    out["loc_auc_subtle"] = _auc(witness[keep], attention[keep]) if (kind == SUBTLE).any() else float("nan")
    keep = witness | (kind == HARD)
    out["loc_auc_vs_hard"] = _auc(witness[keep], attention[keep]) if (kind == HARD).any() else float("nan")
    return out


def attention_of(net, features: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    """The model's attention over one bag ``[N]`` (features standardised as in training; the shared inference
    path, :func:`hardmil.infer.infer`)."""
    from hardmil.data.bags import Bag
    from hardmil.data.bagset import BagSet
    from hardmil.infer import infer

    res = next(infer(net, BagSet([Bag("bag", "bag", 0, features)], mean, std), keep=("attention",)))
    if res.attention is None:
        raise ValueError(f"model {type(net).__name__} has no attention map to localise with")
    return res.attention


def localisation(runs: list[dict], features_dir: str | os.PathLike, truth: dict[str, np.ndarray],
                 max_bags: int | None = None) -> dict:
    """Mean localisation AUCs over the positive test bags of every run (``[{model, predictions, ...}]``; at most
    ``max_bags`` per run, the first by name), each bag under its own fold's model; also the spread over runs."""
    import torch

    from hardmil.checkpoint import load_model
    from hardmil.data.bags import features_path, read_features

    torch.set_num_threads(1)

    per_bag: dict[str, list[float]] = defaultdict(list)
    per_run: list[float] = []
    for r in runs:
        net, saved = load_model(r["model"])
        mean, std = saved["feature_mean"], saved["feature_std"]
        with open(r["predictions"], newline="") as fh:
            slides = sorted(row["slide"] for row in csv.DictReader(fh, delimiter="\t") if int(row["label_index"]) == 1)
        run_vals = []
        for slide in slides[:max_bags]:
            if slide not in truth:
                raise InputError(r["predictions"], f"bag {slide} has no ground truth")
            feats, _ = read_features(features_path(features_dir, slide))
            if len(feats) != len(truth[slide]):
                raise InputError(features_path(features_dir, slide),
                                 f"{len(feats)} instances but {len(truth[slide])} ground-truth labels")
            vals = bag_localisation(attention_of(net, feats, mean, std), truth[slide])
            for k, v in vals.items():
                per_bag[k].append(v)
            run_vals.append(vals["loc_auc"])
        per_run.append(float(np.nanmean(run_vals)) if run_vals else float("nan"))
    out = {k: float(np.nanmean(v)) if np.isfinite(v).any() else None for k, v in per_bag.items()}
    finite = np.array([v for v in per_run if np.isfinite(v)])
    out["loc_auc_sd"] = float(finite.std(ddof=1)) if len(finite) > 1 else None
    out["n_bags"] = len(per_bag.get("loc_auc", []))
    return out


def claims_records(claims: dict, jobs: dict, classes: dict[str, list[str]], *, features: dict | None = None,
                   truth_files: dict | None = None, with_localisation: bool = True) -> tuple[list[dict], list[dict]]:
    """(Δ records, localisation records) of every regime and row. ``jobs``: {dataset: {method: [runs]}}."""
    rows = claims["rows"]
    deltas, locs = [], []
    for dataset, regime in claims["regimes"].items():
        positive = classes[dataset][1]
        for method, spec in rows.items():
            base = spec.get("baseline")
            if base:
                pairs = pair_runs(jobs[dataset][method], jobs[dataset][base], positive)
                rec = delta_record(pairs, n_boot=claims.get("n_boot", 2000), level=claims.get("level", 0.95))
                sd, resolve = rec["fold_delta_sd"], claims.get("resolve", 0.02)
                # test folds (fold x seed runs) whose mean Δ would have a 95 % half-width of `resolve`
                rec["folds_to_resolve"] = int(np.ceil((1.96 * sd / resolve) ** 2)) if sd is not None else None
                rec["verdict"] = verdict(rec["delta"], rec["lo"], rec["hi"], rec["excludes_zero"],
                                         claims.get("equivalence", 0.03))
                deltas.append({"regime": regime, "dataset": dataset, "method": method, "row": spec["row"],
                               "baseline": base, "baseline_row": rows.get(base, {}).get("row", base), **rec})
        for method in dict.fromkeys(list(rows) + [r["baseline"] for r in rows.values() if r.get("baseline")]):
            a = fold_aucs(jobs[dataset][method], positive)
            rec = {"regime": regime, "dataset": dataset, "method": method,
                   "row": rows.get(method, {}).get("row", method), "runs": len(a),
                   "failed_runs": int((a < claims.get("fail_below", 0.6)).sum()),
                   "bag_auc_mean": float(np.nanmean(a)),
                   "bag_auc_sd": float(np.nanstd(a, ddof=1)) if len(a) > 1 else None}
            if with_localisation:
                from hardmil.data.simulated import read_truth

                rec.update(localisation(jobs[dataset][method], features[dataset], read_truth(truth_files[dataset]),
                                        max_bags=claims.get("localisation_bags", 50)))
            locs.append(rec)
    return deltas, locs


def _f(v, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def claims_markdown(deltas: list[dict], locs: list[dict], *, title: str, note: str, level: float = 0.95,
                    resolve: float = 0.02, fail_below: float = 0.6) -> str:
    pct = f"{100 * level:g} %"
    failed = {(r["dataset"], r["method"]): r for r in locs if "failed_runs" in r}

    def fails(dataset, method):
        r = failed.get((dataset, method))
        return f"{r['failed_runs']}/{r['runs']}" if r else "—"

    lines = [f"# {title}", "", note, "", f"## Bag level: paired Δ AUC (method − baseline) with {pct} interval", "",
             f"*failed*: fold runs ending below test AUC {fail_below:g} (did not train), method / baseline.", "",
             "| Regime | Method | Baseline | runs done | failed | AUC | AUC baseline | Δ AUC | " + pct + " interval | "
             "verdict | fold Δ (mean ± sd) | folds to resolve ±" + f"{resolve:g} |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in deltas:
        verdict_ = d.get("verdict") or verdict(d["delta"], d["lo"], d["hi"], d["excludes_zero"], 0.0)
        lines.append(f"| {d['regime']} | {d['row']} | {d['baseline_row']} | {d['n_folds']} | "
                     f"{fails(d['dataset'], d['method'])} / {fails(d['dataset'], d['baseline'])} | {_f(d['auc'])} | "
                     f"{_f(d['auc_baseline'])} | {d['delta']:+.3f} | [{d['lo']:+.3f}, {d['hi']:+.3f}] | {verdict_} | "
                     f"{_f(d['fold_delta_mean'])} ± {_f(d['fold_delta_sd'])} | "
                     f"{d.get('folds_to_resolve') if d.get('folds_to_resolve') is not None else '—'} |")
    lines += ["", "## Instance level: localisation AUC of the attention against the known witnesses", "",
              "Mean over the scored positive test bags (each under its own fold's model); ± sd over folds. *subtle*: "
              "salient witnesses left out; *vs hard neg.*: witnesses against hard negatives only.", "",
              "| Regime | Method | runs | failed | bag AUC (mean ± sd over folds) | localisation AUC | subtle only | "
              "vs hard neg. | positive bags |", "|---|---|---|---|---|---|---|---|---|"]
    for r in locs:
        lines.append(f"| {r['regime']} | {r['row']} | {r.get('runs', '—')} | {r.get('failed_runs', '—')} | "
                     f"{_f(r['bag_auc_mean'])} ± {_f(r['bag_auc_sd'])} | "
                     f"{_f(r.get('loc_auc'))} ± {_f(r.get('loc_auc_sd'))} | {_f(r.get('loc_auc_subtle'))} | "
                     f"{_f(r.get('loc_auc_vs_hard'))} | {r.get('n_bags', '—')} |")
    return "\n".join(lines) + "\n"


def forest_figure(deltas: list[dict], *, title: str = "", resolve: float | None = 0.02, level: float = 0.95):
    """Δ AUC with its interval, one line per (regime, comparison), regimes as blocks from the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(dict.fromkeys(d["regime"] for d in deltas))
    comparisons = list(dict.fromkeys(f"{d['row']} vs {d['baseline_row']}" for d in deltas))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.38 * (len(deltas) + 2 * len(regimes))))
    y, ticks, labels = 0.0, [], []
    for regime in regimes:
        ax.text(0.0, y, regime, transform=ax.get_yaxis_transform(), ha="left", va="center", fontweight="bold",
                fontsize=9)
        y -= 1
        for d in (d for d in deltas if d["regime"] == regime):
            c = colours(comparisons.index(f"{d['row']} vs {d['baseline_row']}") % 10)
            ax.errorbar(d["delta"], y, xerr=[[d["delta"] - d["lo"]], [d["hi"] - d["delta"]]], fmt="o", color=c,
                        capsize=3, mfc=c if d["excludes_zero"] else "white")
            ticks.append(y)
            labels.append(f"{d['row']} vs {d['baseline_row']}")
            y -= 1
        y -= 0.6
    ax.axvline(0, color="black", lw=1)
    if resolve:
        for x in (-resolve, resolve):
            ax.axvline(x, color="grey", lw=0.8, ls="--")
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_ylim(y + 0.4, 1.0)
    ax.set_xlabel(f"Δ AUC (method − baseline), {100 * level:g} % interval; filled: interval excludes 0"
                  + (f"; dashed: ±{resolve:g}" if resolve else ""))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def write_claims(deltas: list[dict], locs: list[dict], *, md: str | os.PathLike, tsv: str | os.PathLike,
                 localisation_tsv: str | os.PathLike, forest: str | os.PathLike, title: str, note: str,
                 level: float = 0.95, resolve: float | None = 0.02, fail_below: float = 0.6) -> None:
    from hardmil.report.figures import save_figure

    if not deltas:
        raise ValueError("claims: no row has a baseline, nothing to compare")
    write_tsv(tsv, deltas, list(DELTA_COLUMNS))
    write_tsv(localisation_tsv, locs, list(LOC_COLUMNS))
    write_text(md, claims_markdown(deltas, locs, title=title, note=note, level=level, resolve=resolve or 0.02,
                                   fail_below=fail_below))
    save_figure(forest_figure(deltas, title=title, resolve=resolve, level=level), forest)
