"""The papers' figures from the workflow's outputs (matplotlib; every figure is written as PNG and PDF).

* :func:`sweep_figure` -- Tang et al. (MHIM-v2) Fig. 5 (random-score masking alone vs the full framework
  across mask ratios) and Fig. 6 (sensitivity to a hyperparameter): a metric's mean ± std over folds
  against a swept value, one line per series, the un-swept baseline as a dashed band; below, each point's
  paired Δ against the baseline on the same test bags with its 95 % interval (:mod:`hardmil.eval.stats`).
* :func:`heatmap_figure` -- Fig. 7: instance scores (attention or instance probability) drawn over a slide
  thumbnail, optionally with the ground-truth tumour outline and a localisation score
  (:func:`localisation_auc`: instance-level ROC AUC of the scores against mask-derived patch labels).
* :func:`assessment_figure` -- Fig. 8: the MHIM teacher's assessment over training
  (``teacher_assessment.tsv``, :mod:`hardmil.models.assessment`).
* :func:`curves_figure` -- training curves of every fold of a method (``history.tsv``).
* :func:`mined_figure` and :func:`patch_grid` -- Li et al. Fig. 3: the mined hard negatives
  (``mined.tsv``), and a grid of patch images when slides exist.

Figures are meant to be read without the papers: titles say what is shown, axes carry units, and the
caption-level facts (folds, protocol, data set) are in the title or a footnote.

Length (over 400 lines): one drawing function per figure kind (sweep, curves, assessment, heatmap rows)
sharing the same small layout and colour helpers.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hardmil.utils import InputError, atomic_path  # noqa: E402
from hardmil.wsi.annotations import patch_labels, patch_tumour_fraction  # noqa: E402,F401  (re-exported)

METRIC_LABELS = {"auc": "AUC", "accuracy": "accuracy", "f1": "F1-score", "c_index": "C-index",
                 "balanced_accuracy": "balanced accuracy"}


def save_figure(fig, png: str | os.PathLike, pdf: str | os.PathLike | None = None, dpi: int = 150) -> None:
    """Write ``fig`` atomically as PNG (and PDF), then close it."""
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        if path is None:
            continue
        with atomic_path(path, suffix=f".{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def read_tsv(path: str | os.PathLike, required: tuple[str, ...] = ()) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: missing (has the run that writes it finished?)")
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if rows and (absent := [c for c in required if c not in rows[0]]):
        raise InputError(p, f"missing column(s) {absent}; has {list(rows[0])}")
    return rows


# --- Fig. 5 / Fig. 6: sweeps -----------------------------------------------------------------------------
def sweep_figure(panels: dict[str, dict], *, metric: str = "auc", title: str = "", footnote: str = ""):
    """One panel per entry of ``panels``: ``{panel: {"xlabel": str, "series": {label: {x: [values]}},
    "baseline": (label, [values]) | None, "deltas": {label: {x: paired_delta result}} (optional)}}``; x values
    are numbers (plotted in the order given, equally spaced, labelled with their value). Each point is the mean
    over folds with a ±1 std error bar, its value written beside it; the legend sits under each panel so it
    never hides a point. When a panel has ``deltas`` a second row shows each point's paired Δ against the
    baseline (method - baseline on the same test bags) with its confidence interval: a filled marker when the
    interval excludes 0 (resolved), an open one when it does not."""
    import textwrap

    if not panels:
        raise ValueError("sweep_figure: no panels")
    with_delta = any(p.get("deltas") for p in panels.values())
    width = 6.4 if len(panels) == 1 else 5.4
    fig, axes = plt.subplots(2 if with_delta else 1, len(panels), squeeze=False, sharey="row",
                             figsize=(width * len(panels), 8.4 if with_delta else 5.4),
                             gridspec_kw={"height_ratios": [3, 2]} if with_delta else None)
    ylabel = f"test {METRIC_LABELS.get(metric, metric)} (mean ± std over folds)"
    for col, (name, panel) in enumerate(panels.items()):
        ax = axes[0][col]
        xs_all = sorted({float(x) for s in panel["series"].values() for x in s})
        pos = {x: i for i, x in enumerate(xs_all)}
        n_series = len(panel["series"])
        for k, (label, points) in enumerate(panel["series"].items()):
            xs = sorted(points, key=float)
            mean = [np.nanmean(points[x]) for x in xs]
            std = [np.nanstd(points[x], ddof=1) if len(points[x]) > 1 else 0.0 for x in xs]
            shift = 0.14 * (k - (n_series - 1) / 2)
            px = [pos[float(x)] + shift for x in xs]
            ax.errorbar(px, mean, yerr=std, marker="os^Dv"[k % 5], capsize=3, color=f"C{k}", label=label)
            for x, m in zip(px, mean, strict=True):
                ax.annotate(f"{m:.3f}", (x, m), xytext=(7, 7) if k % 2 == 0 else (7, -7), textcoords="offset points",
                            ha="left", va="bottom" if k % 2 == 0 else "top", fontsize=8, color=f"C{k}",
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
        base_label = None
        if panel.get("baseline"):
            base_label, values = panel["baseline"]
            m, s = np.nanmean(values), (np.nanstd(values, ddof=1) if len(values) > 1 else 0.0)
            ax.axhline(m, color="0.3", ls="--", lw=1, label=f"{base_label} (no masking): {m:.3f}, band ± 1 std")
            ax.axhspan(m - s, m + s, color="0.5", alpha=0.15, lw=0)
        bottom = axes[1][col] if with_delta else ax
        if with_delta:
            _draw_deltas(bottom, panel.get("deltas") or {}, panel["series"], pos, metric, base_label)
        for a in axes[:, col]:
            a.set_xticks(range(len(xs_all)), [f"{x:g}" for x in xs_all])
            a.set_xlim(-0.5, len(xs_all) - 0.5)
            a.grid(alpha=0.3)
            a.yaxis.set_tick_params(labelleft=True)
        bottom.set_xlabel("\n".join(textwrap.wrap(panel.get("xlabel", "swept value"), 48)))
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=10)
        handles, labels = ax.get_legend_handles_labels()
        bottom.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25 if with_delta
                                                                                      else -0.2), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if footnote:
        chars = int(16 * fig.get_size_inches()[0])
        fig.text(0.01, 0.0, "\n".join(textwrap.wrap(" ".join(footnote.split()), chars)), fontsize=7.5,
                 ha="left", va="top")
    return fig


def _draw_deltas(ax, deltas: dict, series: dict, pos: dict, metric: str, base_label: str | None) -> None:
    """Each point's paired Δ against the baseline with its interval; filled = resolved (interval excludes 0)."""
    ax.axhline(0, color="0.3", ls="--", lw=1)
    n_series = len(series)
    level = None
    for k, label in enumerate(series):
        shift = 0.14 * (k - (n_series - 1) / 2)
        for x, r in sorted((deltas.get(label) or {}).items()):
            if not np.isfinite(r["delta"]):
                continue
            level = r.get("level", 0.95)
            lo, hi = (r["lo"], r["hi"]) if np.isfinite(r["lo"]) else (r["delta"], r["delta"])
            ax.errorbar([pos[float(x)] + shift], [r["delta"]], yerr=[[r["delta"] - lo], [hi - r["delta"]]],
                        marker="os^Dv"[k % 5], capsize=3, color=f"C{k}",
                        mfc=f"C{k}" if r["excludes_zero"] else "white")
    against = base_label or "baseline"
    ax.set_ylabel(f"Δ {METRIC_LABELS.get(metric, metric)} vs {against}\n(paired, {100 * (level or 0.95):g} % CI;"
                  "\nfilled: excludes 0)", fontsize=9)


# --- Fig. 7: heatmaps --------------------------------------------------------------------------------------
def localisation_auc(coords: np.ndarray, scores: np.ndarray, patch_size: int, downsample: float,
                     mask: np.ndarray) -> float:
    """Instance-level ROC AUC of ``scores`` against tumour labels derived from ``mask`` (NaN if one class)."""
    from sklearn.metrics import roc_auc_score

    y = patch_labels(coords, patch_size, downsample, mask > 0)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=float)))


def heatmap_figure(thumbnail: np.ndarray, coords: np.ndarray, panels: dict[str, np.ndarray], *, patch_size: int,
                   downsample: float, mask: np.ndarray | None = None, title: str = "", cmap: str = "inferno"):
    """Draw each score array of ``panels`` (``{"AB-MIL attention": scores[N], ...}``) as coloured patches over
    the thumbnail (``[H, W, 3]`` uint8 at ``downsample`` x level 0), with the tumour outline of ``mask``
    (``[H, W]``, non-zero = tumour) and, if given, the localisation AUC in each panel's title. Scores are
    min-max scaled per panel (the colour bar says so)."""
    n = len(panels) + 1
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.4 * thumbnail.shape[0] / max(thumbnail.shape[1], 1) + 0.8),
                             squeeze=False)
    draw_heatmap_row(fig, axes[0], thumbnail, coords, panels, patch_size=patch_size, downsample=downsample,
                     mask=mask, cmaps={name: cmap for name in panels})
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def draw_heatmap_row(fig, axes, thumbnail: np.ndarray, coords: np.ndarray, panels: dict[str, np.ndarray], *,
                     patch_size: int, downsample: float, mask: np.ndarray | None = None,
                     cmaps: dict[str, str] | None = None, absolute: set[str] = frozenset(),
                     bar_labels: dict[str, str] | None = None, thumb_title: str | None = None) -> dict[str, float]:
    """One slide on ``axes`` (thumbnail, then one axis per panel); returns each panel's localisation AUC.
    Panels named in ``absolute`` are drawn on a fixed 0-1 scale (probabilities), the others min-max scaled."""
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be [N, 2] (x, y), got shape {coords.shape}")
    if mask is not None and mask.shape[:2] != thumbnail.shape[:2]:
        raise ValueError(f"mask {mask.shape[:2]} and thumbnail {thumbnail.shape[:2]} differ in size")
    size = patch_size / downsample
    axes[0].imshow(thumbnail)
    axes[0].set_title(thumb_title or "slide thumbnail" + (" + tumour outline (blue)" if mask is not None else ""),
                      fontsize=9)
    aucs = {}
    for ax, (name, scores) in zip(axes[1:], panels.items(), strict=True):
        scores = np.asarray(scores, dtype=float)
        if len(scores) != len(coords):
            raise ValueError(f"{name}: {len(scores)} scores for {len(coords)} patches")
        if name in absolute:
            norm = scores
        else:
            lo, hi = np.nanmin(scores), np.nanmax(scores)
            norm = (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)
        grid = np.full(thumbnail.shape[:2], np.nan)
        for (x, y), v in zip(coords / downsample, norm, strict=True):
            grid[int(y):int(np.ceil(y + size)), int(x):int(np.ceil(x + size))] = v
        ax.imshow(thumbnail, alpha=0.35)
        im = ax.imshow(grid, cmap=(cmaps or {}).get(name, "inferno"), vmin=0, vmax=1, alpha=0.85,
                       interpolation="nearest")
        label = name
        if mask is not None:
            auc = aucs[name] = localisation_auc(coords, scores, patch_size, downsample, mask)
            label += f"\nlocalisation AUC: {auc:.3f}" if np.isfinite(auc) else "\n(no tumour patches)"
        ax.set_title(label, fontsize=9)
        default = "score (0-1)" if name in absolute else "score (min-max scaled per slide)"
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=(bar_labels or {}).get(name, default))
    for ax in axes:
        if mask is not None:
            ax.contour(mask > 0, levels=[0.5], colors="#1f5fff", linewidths=1.2)
        ax.set_xlabel(f"x (thumbnail px, {downsample:g}x level 0)")
        ax.set_ylabel("y (thumbnail px)")
    return aucs


def heatmap_inputs(thumbnail_png: str | os.PathLike, coords_h5: str | os.PathLike,
                   mask_png: str | os.PathLike | None = None) -> dict:
    """Read the heatmap's files: thumbnail PNG, TRIDENT-style coords h5 (``coords`` [N, 2] with attrs
    ``patch_size_level0`` or ``patch_size``), optional mask PNG (non-zero = tumour, same size as the
    thumbnail). Returns ``thumbnail``, ``coords``, ``patch_size``, ``mask``."""
    import h5py
    from PIL import Image

    for p in (thumbnail_png, coords_h5, mask_png):
        if p is not None and not Path(p).exists():
            raise FileNotFoundError(f"{p}: missing")
    thumb = np.asarray(Image.open(thumbnail_png).convert("RGB"))
    with h5py.File(coords_h5, "r") as f:
        if "coords" not in f:
            raise InputError(coords_h5, "no 'coords' dataset")
        coords = f["coords"][:]
        attrs = dict(f["coords"].attrs) | dict(f.attrs)
    patch = attrs.get("patch_size_level0", attrs.get("patch_size"))
    if patch is None:
        raise InputError(coords_h5, "coords has no patch_size_level0 / patch_size attribute")
    mask = None
    if mask_png is not None:
        mask = np.asarray(Image.open(mask_png).convert("L")) > 0
        if mask.shape != thumb.shape[:2]:
            raise InputError(mask_png, f"mask is {mask.shape}, thumbnail {thumbnail_png} is {thumb.shape[:2]}")
    return {"thumbnail": thumb, "coords": coords, "patch_size": int(patch), "mask": mask}


# --- Fig. 8: teacher assessment ----------------------------------------------------------------------------
ASSESSMENT_PANELS = (("score_entropy", "normalised entropy of the teacher's scores\n(1 = uniform over instances)"),
                     ("top_decile_mass", "share of score mass in the top 10 % instances"),
                     ("attention_overlap", "overlap of top-10 % by score and by attention"))


def assessment_figure(tables: dict[str, list[str | os.PathLike]], *, classes: list[str] | None = None,
                      title: str = ""):
    """``{method label: [teacher_assessment.tsv of each fold]}`` -> three panels over epochs, one line per
    method and bag class (mean over folds)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    styles = ["-", "--", ":", "-."]
    for k, (label, paths) in enumerate(tables.items()):
        by = defaultdict(lambda: defaultdict(list))
        for p in paths:
            for row in read_tsv(p, ("epoch", "label") + tuple(c for c, _ in ASSESSMENT_PANELS)):
                for col, _ in ASSESSMENT_PANELS:
                    by[(int(row["label"]), col)][int(row["epoch"])].append(float(row[col]))
        for (cls, col), series in sorted(by.items()):
            ax = axes[[c for c, _ in ASSESSMENT_PANELS].index(col)]
            ep = sorted(series)
            name = classes[cls] if classes and cls < len(classes) else f"class {cls}"
            ax.plot([e + 1 for e in ep], [np.nanmean(series[e]) for e in ep], ls=styles[cls % 4], color=f"C{k}",
                    label=f"{label}, {name} bags")
    for ax, (_, ylabel) in zip(axes, ASSESSMENT_PANELS, strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "MHIM teacher's instance assessment during training (mean over folds)")
    fig.tight_layout()
    return fig


# --- training curves ---------------------------------------------------------------------------------------
def curves_figure(histories: dict[str, list[str | os.PathLike]], *, title: str = ""):
    """``{method label: [history.tsv of each fold]}`` -> training loss, selection loss and selection AUC
    per epoch: thin lines per fold, a thick line for the mean over the folds still running, drawn while at least
    half of them are."""
    cols = (("train_loss", "training loss (cross-entropy + aux.)"), ("select_loss", "selection-set loss"),
            ("select_auc", "selection-set AUC"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for k, (label, paths) in enumerate(histories.items()):
        runs = [read_tsv(p, ("epoch",) + tuple(c for c, _ in cols)) for p in paths]
        for ax, (col, _) in zip(axes, cols, strict=True):
            per_epoch = defaultdict(list)
            for rows in runs:
                ep = [int(r["epoch"]) + 1 for r in rows]
                vals = [float(r[col]) for r in rows]
                ax.plot(ep, vals, color=f"C{k}", alpha=0.15, lw=0.7)
                for e, v in zip(ep, vals, strict=True):
                    per_epoch[e].append(v)
            # the mean only while at least half the folds still train: later, the few longest runs alone would
            # make it jump (early stopping ends folds at different epochs)
            ep = [e for e in sorted(per_epoch) if 2 * len(per_epoch[e]) >= len(runs)]
            ax.plot(ep, [np.nanmean(per_epoch[e]) for e in ep], color=f"C{k}", lw=2,
                    label=f"{label} ({len(runs)} folds)")
    for ax, (_, ylabel) in zip(axes, cols, strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.suptitle(title or "Training curves (thin: one fold; thick: mean over the folds still training, while at "
                          "least half are)")
    fig.tight_layout()
    return fig


# --- Li et al. Fig. 3: mined hard negatives ----------------------------------------------------------------
def mined_figure(mined: list[str | os.PathLike], *, title: str = ""):
    """From the ``mined.tsv`` of every fold: per mined negative bag, the stage-1 model's P(not negative)
    against the share of its instances selected as hard negatives by eq. 3 (colour: why the bag was mined),
    and the histogram of hard negatives per bag."""
    rows = [r for p in mined for r in read_tsv(p, ("reason", "prob_not_negative", "n_instances", "n_hard"))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    reasons = {"false_positive": "false-positive bag (P >= 0.5)",
               "hardest_negative": "most positive-looking negative (top-up)"}
    for k, (reason, text) in enumerate(reasons.items()):
        sel = [r for r in rows if r["reason"] == reason]
        if not sel:
            continue
        p = [float(r["prob_not_negative"]) for r in sel]
        share = [int(r["n_hard"]) / max(1, int(r["n_instances"])) for r in sel]
        axes[0].scatter(p, share, s=18, alpha=0.7, color=f"C{k}", label=f"{text}: {len(sel)} bags")
        axes[1].hist([int(r["n_hard"]) for r in sel], bins=range(0, max(int(r["n_hard"]) for r in rows) + 2),
                     alpha=0.6, color=f"C{k}", label=text)
    axes[0].set_xlabel("stage-1 model's P(not negative) of the bag")
    axes[0].set_ylabel("share of the bag's instances mined (eq. 3)")
    axes[0].set_xlim(0, 1)
    axes[1].set_xlabel("hard-negative instances per mined bag")
    axes[1].set_ylabel("mined bags")
    axes[1].yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or f"Hard negatives mined from negative training bags ({len(mined)} folds, {len(rows)} bags)")
    fig.tight_layout()
    return fig


def patch_grid(patches: list[np.ndarray], labels: list[str] | None = None, *, columns: int = 8, title: str = "",
               sections: list[tuple[str, list[np.ndarray], list[str]]] | None = None, footnote: str = ""):
    """A grid of patch images ([h, w, 3] uint8), e.g. the hard negatives of a false-positive slide; with
    ``sections`` (``[(heading, patches, labels), ...]``) one headed block of rows per section instead."""
    import textwrap

    sections = [s for s in (sections or [("", patches, labels or [])]) if len(s[1])]
    if not sections:
        raise ValueError("patch_grid: no patches")
    columns = max(1, min(columns, max(len(p) for _, p, _ in sections)))
    n_lines = max((str(t).count("\n") + 1 for _, _, lab in sections for t in lab), default=0)
    cell_h = 1.55 + 0.13 * n_lines
    heights = [-(-len(p) // columns) * cell_h + (0.4 if head else 0) for head, p, _ in sections]
    fig = plt.figure(figsize=(1.75 * columns, sum(heights) + 0.5), layout="constrained")
    subfigs = fig.subfigures(len(sections), 1, height_ratios=heights, squeeze=False)[:, 0]
    for sub, (head, pics, labs) in zip(subfigs, sections, strict=True):
        axes = sub.subplots(-(-len(pics) // columns), columns, squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < len(pics):
                ax.imshow(pics[i])
                if i < len(labs):
                    ax.set_title(labs[i], fontsize=6.5)
        if head:
            sub.suptitle("\n".join(textwrap.wrap(head, int(15 * columns))), fontsize=9, x=0.01, ha="left",
                         fontweight="bold")
    fig.suptitle(title or f"{sum(len(p) for _, p, _ in sections)} patches")
    if footnote:
        fig.text(0.01, 0.0, "\n".join(textwrap.wrap(" ".join(footnote.split()), int(16 * 1.75 * columns))),
                 fontsize=7, ha="left", va="top")
    return fig


def fold_values(paths: list[str | os.PathLike], metric: str) -> list[float]:
    """``metric`` from each run's ``metrics.json`` (a missing run or metric is an error naming the file)."""
    import json

    out = []
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"{p}: missing run (needed by this figure)")
        d = json.loads(Path(p).read_text())
        if metric not in d:
            raise InputError(p, f"no metric {metric!r}")
        out.append(float(d[metric]))
    return out


def sweep_panels(fig_cfg: dict, runs_of, *, n_boot: int = 2000, level: float = 0.95) -> dict:
    """Panels for :func:`sweep_figure` from a ``figures`` entry of kind ``sweep``; ``runs_of(method)`` gives
    the method's metrics.json paths. With a panel ``baseline`` and a metric that has a paired procedure
    (AUC, balanced accuracy, C-index) each point also gets its paired Δ against the baseline, from the runs'
    ``predictions.tsv`` on identical test bags (:func:`hardmil.report.deltas.paired_deltas`)."""
    from hardmil.eval.stats import METRICS as PAIRED
    from hardmil.report.deltas import RunRef, paired_deltas

    metric = fig_cfg.get("metric", "auc")
    panels = {}
    for name, p in fig_cfg["panels"].items():
        series = {label: {float(x): fold_values(runs_of(m), metric) for x, m in points.items()}
                  for label, points in p["series"].items()}
        base = p.get("baseline")
        baseline = (p.get("baseline_label", base), fold_values(runs_of(base), metric)) if base else None
        deltas: dict[str, dict[float, dict]] = {}
        if base and metric in PAIRED:
            base_runs = [RunRef.from_path(q) for q in runs_of(base)]
            for label, points in p["series"].items():
                for x, m in points.items():
                    if m == base:
                        continue
                    res = paired_deltas([RunRef.from_path(q) for q in runs_of(m)] + base_runs, {m: base}, [metric],
                                        n_boot=n_boot, level=level)
                    deltas.setdefault(label, {})[float(x)] = next(iter(res.values()))[metric]
        panels[name] = {"xlabel": p.get("xlabel", "swept value"), "series": series, "baseline": baseline,
                        "deltas": deltas}
    return panels
