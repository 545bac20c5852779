"""Where MHIM-v2 works (``make mhim-sweep``, docs/mhim_sweep.md): Δ AUC of MHIM-v2 against its teacher's baseline
by witness rate and high-score mask ratio h, with the runs' instance diagnostics, as a Markdown table, two TSVs
and a three-panel figure.

Bag level, per regime (a simulated dataset with its witness-rate range) and MHIM method: the method's and the
baseline's out-of-fold test predictions paired on identical test bags, Δ AUC (method − baseline) with its
interval (:func:`hardmil.report.claims.pair_runs` / :func:`~hardmil.report.claims.delta_record`, the claims
report's procedure: each seed's pooled out-of-fold AUC averaged over seeds, bags resampled within class with a
bag's predictions under every seed together), the per-fold Δ and the fold runs whose test AUC stays below
``chance`` (failed runs, method and baseline).

Instance level, per regime and method, from each run's ``instance_diagnostics.tsv``
(:mod:`hardmil.train.diagnostics`, positive bags of the fold's selection set): the witness share removed by the
high-score mask and the share of bags that lose every witness, each the mean over the epochs the run trained
(what the student saw during training), and the teacher's and the student's localisation AUC at the run's
selected epoch (the model that was tested); then the mean over the runs (seeds x folds).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from hardmil.report.claims import delta_record, fold_aucs, pair_runs
from hardmil.utils import InputError, read_tsv, write_text, write_tsv

DELTA_COLUMNS = ("regime", "dataset", "witness_rate_lo", "witness_rate_hi", "method", "h", "baseline", "n_bags",
                 "n_predictions", "n_runs", "auc", "auc_baseline", "delta", "lo", "hi", "excludes_zero",
                 "fold_delta_mean", "fold_delta_sd", "failed", "failed_baseline", "procedure")
DIAG_COLUMNS = ("regime", "dataset", "witness_rate_lo", "witness_rate_hi", "method", "h", "n_runs",
                "witness_share_masked", "bags_all_witnesses_masked", "teacher_loc_auc", "student_loc_auc",
                "epochs_mean")
PER_EPOCH_MEANS = ("witness_share_masked", "bags_all_witnesses_masked")
AT_SELECTED = ("teacher_loc_auc", "student_loc_auc")


def mask_high(params: dict) -> float:
    """h of an MHIM method's params (flat or nested names; the model's default when not given)."""
    from hardmil.models.mhim import MHIMConfig, flatten_params

    flat = flatten_params(params)
    return float(flat.get("mask_high", MHIMConfig.__dataclass_fields__["mask_high"].default))


def _float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return float("nan")


def _nanmean(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def run_diagnostics(run: dict) -> dict:
    """One run's summary (``run``: {diagnostics, metrics}): per-epoch means and the selected epoch's values."""
    path, metrics = Path(run["diagnostics"]), Path(run["metrics"])
    if not path.exists():
        raise InputError(path, "no instance_diagnostics.tsv in this run folder: it was trained without the instance "
                               "truth (older code?); rerun its training job (snakemake -R train)")
    rows = read_tsv(path, "instance diagnostics", columns=("epoch", *PER_EPOCH_MEANS, *AT_SELECTED))
    with open(metrics) as fh:
        selected = int(json.load(fh)["selected_epoch"])
    at = [r for r in rows if int(r["epoch"]) == selected]
    if not at:
        raise InputError(path, f"no row for the selected epoch {selected} ({metrics})")
    out = {k: _nanmean([_float(r[k]) for r in rows]) for k in PER_EPOCH_MEANS}
    out.update({k: _float(at[0][k]) for k in AT_SELECTED})
    out["epochs"] = len(rows)
    return out


def sweep_records(sweep: dict, jobs: dict, classes: dict[str, list[str]]) -> tuple[list[dict], list[dict]]:
    """(Δ records, diagnostics records). ``sweep``: {regimes: {dataset: {label, witness_rate}}, baseline,
    methods: {method: params}, n_boot, level, chance}; ``jobs``: {dataset: {method: [{seed, fold, predictions,
    metrics, diagnostics}]}}."""
    base, chance = sweep["baseline"], sweep.get("chance", 0.6)
    deltas, diags = [], []
    for dataset, regime in sweep["regimes"].items():
        positive = classes[dataset][1]
        lo, hi = regime["witness_rate"]
        where = {"regime": regime["label"], "dataset": dataset, "witness_rate_lo": lo, "witness_rate_hi": hi}
        base_aucs = fold_aucs(jobs[dataset][base], positive)
        for method, params in sweep["methods"].items():
            runs = jobs[dataset][method]
            rec = delta_record(pair_runs(runs, jobs[dataset][base], positive), n_boot=sweep.get("n_boot", 2000),
                               level=sweep.get("level", 0.95))
            deltas.append({**where, "method": method, "h": mask_high(params), "baseline": base, "n_runs": len(runs),
                           **rec, "failed": int((fold_aucs(runs, positive) < chance).sum()),
                           "failed_baseline": int((base_aucs < chance).sum())})
        for method in [base, *sweep["methods"]]:
            per_run = [run_diagnostics(r) for r in jobs[dataset][method]]
            h = mask_high(sweep["methods"][method]) if method in sweep["methods"] else float("nan")
            diags.append({**where, "method": method, "h": h, "n_runs": len(per_run),
                          **{k: _nanmean([p[k] for p in per_run]) for k in (*PER_EPOCH_MEANS, *AT_SELECTED)},
                          "epochs_mean": float(np.mean([p["epochs"] for p in per_run]))})
    return deltas, diags


def _f(v, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _h(v: float) -> str:
    return "—" if not math.isfinite(v) else f"h = {v:g}"


def sweep_markdown(deltas: list[dict], diags: list[dict], *, title: str, note: str, level: float = 0.95) -> str:
    pct = f"{100 * level:g} %"
    lines = [f"# {title}", "", note, "", f"## Δ AUC (MHIM-v2 − baseline) with its {pct} interval", "",
             f"| Regime | Method | AUC | AUC baseline | Δ AUC | {pct} interval | resolved | fold Δ (mean ± sd) | "
             "failed runs (method / baseline) |", "|---|---|---|---|---|---|---|---|---|"]
    for d in deltas:
        verdict = "not resolved" if not d["excludes_zero"] else "yes, better" if d["delta"] > 0 else "yes, worse"
        cells = [d["regime"], f"{d['method']} ({_h(d['h'])})", _f(d["auc"]), _f(d["auc_baseline"]),
                 f"{d['delta']:+.3f}", f"[{d['lo']:+.3f}, {d['hi']:+.3f}]", verdict,
                 f"{_f(d['fold_delta_mean'])} ± {_f(d['fold_delta_sd'])} (n={d['n_folds']})",
                 f"{d['failed']} / {d['failed_baseline']} of {d['n_runs']}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Instance diagnostics (positive bags of each fold's selection set; mean over runs)", "",
              "Witnesses masked: share of a bag's witnesses in the high-score mask, and share of bags losing all of "
              "them, averaged over the epochs trained. Localisation AUC (per bag, averaged) at the selected epoch: "
              "the teacher's instance scores (what it masks by) and the student's attention at inference (for the "
              "baseline, its own attention).", "",
              "| Regime | Method | witnesses masked | bags losing all | teacher loc. AUC | student loc. AUC | runs |",
              "|---|---|---|---|---|---|---|"]
    for r in diags:
        lines.append(f"| {r['regime']} | {r['method']} ({_h(r['h'])}) | {_f(r['witness_share_masked'])} | "
                     f"{_f(r['bags_all_witnesses_masked'])} | {_f(r['teacher_loc_auc'])} | "
                     f"{_f(r['student_loc_auc'])} | {r['n_runs']} |")
    return "\n".join(lines) + "\n"


def sweep_figure(deltas: list[dict], diags: list[dict], *, title: str = "", level: float = 0.95):
    """(a) Δ AUC vs witness rate, one line per h, with intervals; (b) the witness share the high-score mask removes
    (solid) and the share of bags losing every witness (dashed); (c) localisation AUC, student (solid), teacher
    (dashed), the baseline's attention (black)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def x_of(r):  # geometric midpoint of the regime's witness-rate range, in percent
        return 100 * math.sqrt(r["witness_rate_lo"] * r["witness_rate_hi"])

    hs = sorted({d["h"] for d in deltas})
    colours = plt.get_cmap("viridis")
    colour = {h: colours(i / max(len(hs) - 1, 1) * 0.85) for i, h in enumerate(hs)}
    offset = {h: 1 + 0.04 * (i - (len(hs) - 1) / 2) for i, h in enumerate(hs)}  # side by side on a log axis
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax = axes[0]
    for h in hs:
        ds = [d for d in deltas if d["h"] == h]
        xs = [x_of(d) * offset[h] for d in ds]
        ax.plot(xs, [d["delta"] for d in ds], color=colour[h], label=_h(h))
        for x, d in zip(xs, ds, strict=True):
            ax.errorbar(x, d["delta"], yerr=[[d["delta"] - d["lo"]], [d["hi"] - d["delta"]]], fmt="o",
                        color=colour[h], capsize=3, mfc=colour[h] if d["excludes_zero"] else "white")
    ax.axhline(0, color="black", lw=1)
    ax.set_ylabel(f"Δ AUC (MHIM-v2 − baseline), {100 * level:g} % interval")
    ax.set_title("(a) bag level; filled: interval excludes 0", fontsize=10)
    def per_h(ax, solid: str, dashed: str, what: tuple[str, str], markers: str):
        for h in hs:
            rs = [r for r in diags if r["h"] == h]
            xs = [x_of(r) for r in rs]
            ax.plot(xs, [r[solid] for r in rs], markers[0] + "-", color=colour[h], label=f"{_h(h)}: {what[0]}")
            ax.plot(xs, [r[dashed] for r in rs], markers[1] + "--", color=colour[h], mfc="white",
                    label=f"{_h(h)}: {what[1]}")

    per_h(axes[1], "witness_share_masked", "bags_all_witnesses_masked", ("witnesses", "bags losing all"), "os")
    axes[1].set_ylim(-0.03, 1.03)
    axes[1].set_ylabel("share removed by the high-score mask")
    axes[1].set_title("(b) witnesses removed (mean over epochs)", fontsize=10)
    ax = axes[2]
    base = [r for r in diags if not math.isfinite(r["h"])]
    if base:
        ax.plot([x_of(r) for r in base], [r["student_loc_auc"] for r in base], "o-", color="black",
                label="baseline (attention)")
    per_h(ax, "student_loc_auc", "teacher_loc_auc", ("student", "teacher"), "o^")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_ylabel("localisation AUC (per positive bag, mean)")
    ax.set_title("(c) localisation at the selected epoch", fontsize=10)
    ticks = sorted({x_of(r) for r in diags})
    labels = {x_of(r): f"{100 * r['witness_rate_lo']:g}–{100 * r['witness_rate_hi']:g} %" for r in diags}
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(ticks, [labels[t] for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("witness rate of positive bags")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def write_sweep(deltas: list[dict], diags: list[dict], *, md: str | os.PathLike, tsv: str | os.PathLike,
                diagnostics_tsv: str | os.PathLike, figure: str | os.PathLike, title: str, note: str,
                level: float = 0.95) -> None:
    from hardmil.report.figures import save_figure

    if not deltas:
        raise ValueError("mhim_sweep: no comparison to report")
    write_tsv(tsv, deltas, list(DELTA_COLUMNS))
    write_tsv(diagnostics_tsv, diags, list(DIAG_COLUMNS))
    write_text(md, sweep_markdown(deltas, diags, title=title, note=note, level=level))
    save_figure(sweep_figure(deltas, diags, title=title, level=level), figure)
