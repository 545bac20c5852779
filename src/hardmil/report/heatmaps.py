"""Tang et al. (MHIM-MIL / MHIM-v2) Fig. 7 on slides with a known tumour mask: per-patch attention and
class-aware instance probability of trained fold models, drawn over the slide thumbnail with the tumour
outline, and the instance-level localisation AUC of each map (the figure's quantitative counterpart).

Reference: Tang et al., "Multiple Instance Learning Framework with Masked Hard Instance Mining for Gigapixel
Histopathology Image Analysis" (MHIM-v2), Fig. 7; code github.com/DearCaat/MHIM-MIL. There the cyan map is
the teacher classifier's softmax on attention-weighted instance features, ``softmax(W (a_i z_i) + b)``
(``modules/mhim_modules/scoring.py``); MHIM masks by its maximum over classes (our models'
``instance_scores(h, out, "v2")`` hook).

Deliberate deviations:

* The figure shows the deployed model (for MHIM the student, as at inference), not the teacher.
* For models with a bag classifier on instance-sized embeddings (AB-MIL and its MHIM wrappers) the map is the
  probability of the *positive* class (the paper's "probability of tumour presence"), not the max over
  classes that MHIM masks by: the max also lights up confidently normal patches. Its relation to the hook
  (``max(p, 1 - p)`` for two classes) is tested. Models without such a classifier (DSMIL, TransMIL) fall back
  to the hook's max-over-classes score and say so in the panel title.
* Slides default to each slide's own test fold of the first seed, so no model saw the slide in training.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from hardmil.utils import InputError, atomic_path

log = logging.getLogger(__name__)

TSV_COLUMNS = ("slide", "label", "fold", "seed", "method", "label_method", "map", "auc", "patches",
               "tumour_patches", "slide_probability")


def instance_maps(net, features: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None, positive: int = 1
                  ) -> tuple[dict[str, np.ndarray], float]:
    """``({"attention": [N], "probability": [N]}, bag probability of class ``positive``)`` of one bag under a
    trained model in eval mode (features standardised as in training). Maps a model lacks are left out.
    The forward pass is the shared one (:func:`hardmil.infer.infer`); the probability map reuses its input."""
    import torch

    from hardmil.data.bags import Bag
    from hardmil.data.bagset import BagSet
    from hardmil.infer import infer
    from hardmil.models.base import EmbedHead, LinearHead, MaskableBaseline
    from hardmil.models.mhim import MHIM

    bags = BagSet([Bag("slide", "slide", 0, features)], mean, std)
    res = next(infer(net, bags, keep=("attention", "output")))
    x = res.x
    base = net.student if isinstance(net, MHIM) else net  # MHIM: the student is what inference runs
    maps: dict[str, np.ndarray] = {}
    bag_prob = float(torch.softmax(torch.from_numpy(res.logits), -1)[positive])
    if res.attention is not None:
        maps["attention"] = res.attention
    with torch.no_grad():
        if isinstance(base, EmbedHead):
            h = base.embed(x)
            head = base.head(h)
            if isinstance(base, LinearHead) and head.attention is not None:
                weighted = head.attention[0][:, None] * h[0]
                maps["probability"] = torch.softmax(base.classify(weighted).float(), -1)[:, positive].numpy()
            elif isinstance(base, MaskableBaseline):
                maps["probability (max over classes)"] = base.instance_scores(h, head, "v2").float().numpy()
    return maps, bag_prob


def slide_test_folds(splits_tsv: str | os.PathLike) -> dict[str, dict]:
    """``{slide: {"fold", "label"}}``: the fold whose test set holds each slide (one seed's splits file)."""
    p = Path(splits_tsv)
    if not p.exists():
        raise InputError(p, "splits file does not exist")
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or not {"slide", "label", "fold", "role"} <= set(rows[0]):
        raise InputError(p, "not a splits file (needs columns slide, label, fold, role)")
    from hardmil.data.bags import check_names

    check_names(rows, p)
    return {r["slide"]: {"fold": int(r["fold"]), "label": r["label"]} for r in rows if r["role"] == "test"}


def choose_slides(folds: dict[str, dict], classes: list[str], slides: list[str] | None = None,
                  n_positive: int = 2, source: str = "splits") -> list[str]:
    """The listed slides (each must be a test slide of the splits), else the first ``n_positive`` slides
    (sorted by name) whose label is not the first class."""
    if slides:
        missing = [s for s in slides if s not in folds]
        if missing:
            raise InputError(source, f"slides {missing} are in no test fold")
        return list(slides)
    positive = sorted(s for s, v in folds.items() if v["label"] != classes[0])
    if len(positive) < n_positive:
        raise InputError(source, f"{n_positive} positive test slides asked for, {len(positive)} found")
    return positive[:n_positive]


def slide_thumbnail(slide_path: str | os.PathLike, shape: tuple[int, int] | None, downsample: float) -> np.ndarray:
    """The slide at ``downsample`` x level 0, resized to exactly ``shape`` (H, W) of its mask if given."""
    import cv2

    from hardmil.wsi.slide import open_slide

    with open_slide(slide_path) as s:
        img = s.read_downsampled(downsample)
    if shape is not None and img.shape[:2] != tuple(shape):
        img = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return img


def heatmap_rows(slides: list[str], folds: dict[str, dict], models: dict[str, dict[int, str]],
                 labels: dict[str, str], *, features_dir: str | os.PathLike, coords_dir: str | os.PathLike,
                 slides_dir: str | os.PathLike, classes: list[str], seed: int = 0,
                 annotations_dir: str | os.PathLike | None = None) -> tuple[list[dict], list[dict]]:
    """Compute every map. ``models``: ``{method: {fold: model.pt}}``; ``labels``: method -> display name.
    Patch labels for the localisation AUC: a synthetic slide's ``{slide}.mask.png``, else a CAMELYON16 ASAP
    annotation ``{slide}.xml`` in ``annotations_dir`` (default: beside the slides; a patch is tumour when
    >= 50 % of its area lies in a tumour polygon and outside the exclusion polygons, as for the masks).
    Returns (per-slide drawing inputs, TSV rows)."""
    from hardmil.checkpoint import load_model
    from hardmil.data.store import open_bags
    from hardmil.report.figures import patch_labels
    from hardmil.wsi.annotations import annotation_mask, annotation_patch_labels, find_annotation, read_asap_xml
    from hardmil.wsi.patching import read_coords
    from hardmil.wsi.slide import find_slide
    from hardmil.wsi.synthetic import read_truth

    positive = len(classes) - 1
    drawn, rows = [], []
    source = open_bags(features_dir)
    for slide in slides:
        fold = folds[slide]["fold"]
        fpath = source.path(slide)
        feats, fcoords = source.features(slide), source.coords(slide)
        coords, attrs = read_coords(Path(coords_dir) / f"{slide}.h5")
        if fcoords is not None and not np.array_equal(fcoords, coords):
            raise InputError(fpath, f"coords differ from {Path(coords_dir) / f'{slide}.h5'}")
        if len(coords) != len(feats):
            raise InputError(fpath, f"{len(feats)} feature rows but {len(coords)} patch coords")
        mask, ds, annotation = None, 16, None
        if (Path(slides_dir) / f"{slide}.mask.png").exists():
            mask, ds = read_truth(slides_dir, slide)
        elif (xml := find_annotation(annotations_dir or slides_dir, slide)) is not None:
            annotation = read_asap_xml(xml)  # CAMELYON16: tumour polygons of a real slide
        patch = int(attrs["patch_size_level0"])
        thumb = slide_thumbnail(find_slide(slides_dir, slide), None if mask is None else mask.shape, ds)
        if annotation is not None:
            mask = annotation_mask(annotation, thumb.shape[:2], ds)  # the outline drawn over the thumbnail
            truth = annotation_patch_labels(annotation, coords, patch, rule="fraction", min_fraction=0.5)
        else:
            truth = patch_labels(coords, patch, ds, mask) if mask is not None else None
        panels = {}
        for method, by_fold in models.items():
            if fold not in by_fold:
                raise InputError(slide, f"no trained {method} model for fold {fold} (its test fold)")
            net, saved = load_model(by_fold[fold])
            mean, std = saved["feature_mean"], saved["feature_std"]
            maps, bag_prob = instance_maps(net, feats, mean, std, positive)
            if not maps:
                raise InputError(by_fold[fold], f"{method}: the model gives neither attention nor instance scores")
            for name, scores in maps.items():
                auc = _labels_auc(truth, scores) if truth is not None else float("nan")
                panels[f"{labels[method]}: {name}"] = scores
                rows.append({"slide": slide, "label": folds[slide]["label"], "fold": fold, "seed": seed,
                             "method": method, "label_method": labels[method], "map": name,
                             "auc": round(auc, 4) if np.isfinite(auc) else "nan", "patches": len(coords),
                             "tumour_patches": int(truth.sum()) if truth is not None else "",
                             "slide_probability": round(bag_prob, 4)})
            log.info("%s (fold %d) %s: %s", slide, fold, method,
                     {r["map"]: r["auc"] for r in rows[-len(maps):]})
        drawn.append({"slide": slide, "fold": fold, "label": folds[slide]["label"], "thumbnail": thumb,
                      "coords": coords, "patch_size": patch, "downsample": ds, "mask": mask, "panels": panels,
                      "tumour_patches": None if truth is None else int(truth.sum())})
    return drawn, rows


def _labels_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Instance-level ROC AUC of ``scores`` against 0/1 patch labels (NaN when one class is absent)."""
    from sklearn.metrics import roc_auc_score

    return float("nan") if truth.size == 0 or truth.min() == truth.max() else float(roc_auc_score(truth, scores))


def write_auc_tsv(path: str | os.PathLike, rows: list[dict]) -> None:
    with atomic_path(path, suffix=".tsv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(TSV_COLUMNS), delimiter="\t", lineterminator="\n")
            w.writeheader()
            w.writerows(rows)


def probability_cmap():
    """Black (0) to bright cyan (1): the paper's cyan tumour-probability map."""
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("tumour_probability", ["#000000", "#005f6b", "#00e5ff", "#e0ffff"])


def heatmap_grid(drawn: list[dict], *, title: str = "", footnote: str = "", positive: str = "tumour"):
    """One row per slide of :func:`heatmap_rows`' output: thumbnail with outline, then every map."""
    import matplotlib.pyplot as plt

    from hardmil.report.figures import draw_heatmap_row

    if not drawn:
        raise ValueError("no slides to draw")
    ncols = 1 + max(len(d["panels"]) for d in drawn)
    h, w = drawn[0]["thumbnail"].shape[:2]
    fig, axes = plt.subplots(len(drawn), ncols, figsize=(3.9 * ncols, (3.6 * h / max(w, 1) + 1.1) * len(drawn)),
                             squeeze=False)
    cmap = probability_cmap()
    for row, d in zip(axes, drawn, strict=True):
        names = list(d["panels"])
        prob = {n for n in names if n.endswith(": probability")}
        bars = {n: ("attention weight\n(min-max scaled per slide)" if n.endswith(": attention")
                    else f"P({positive}) of the patch" if n in prob else "score (min-max scaled per slide)")
                for n in names}
        tumour = "" if d["tumour_patches"] is None else f", {d['tumour_patches']} of {len(d['coords'])} patches tumour"
        draw_heatmap_row(fig, row[: 1 + len(names)], d["thumbnail"], d["coords"], d["panels"],
                         patch_size=d["patch_size"], downsample=d["downsample"], mask=d["mask"],
                         cmaps={n: cmap if n in prob else "inferno" for n in names}, absolute=prob,
                         bar_labels=bars,
                         thumb_title=f"{d['slide']} (label {d['label']}, test fold {d['fold']}{tumour})\n"
                                     + ("blue line: true tumour outline" if d["mask"] is not None else "no mask"))
        for ax in row[1 + len(names):]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=12)
    if footnote:
        fig.text(0.01, 0.0, footnote, fontsize=8, ha="left", va="top", wrap=True)
    fig.tight_layout()
    return fig


def heatmap_job(fig_cfg: dict, *, splits: str | os.PathLike, models: dict[str, dict[int, str]],
                features_dir: str | os.PathLike, coords_dir: str | os.PathLike, slides_dir: str | os.PathLike,
                classes: list[str], png: str | os.PathLike, pdf: str | os.PathLike | None,
                tsv: str | os.PathLike, seed: int = 0, name: str = "heatmap") -> list[dict]:
    """The workflow's ``heatmap`` figure: choose slides, compute maps, write the PNG/PDF and the AUC TSV."""
    from hardmil.report.figures import save_figure

    annotations_dir = fig_cfg.get("annotations")
    if annotations_dir is not None and not Path(annotations_dir).is_dir():
        raise InputError(annotations_dir, f"figures.{name}.annotations: not a folder (it should hold the ASAP XML "
                                          "tumour outlines, one {slide}.xml per slide)")
    folds = slide_test_folds(splits)
    slides = choose_slides(folds, classes, fig_cfg.get("slides"), fig_cfg.get("n_positive", 2), str(splits))
    drawn, rows = heatmap_rows(slides, folds, models, fig_cfg["methods"], features_dir=features_dir,
                               coords_dir=coords_dir, slides_dir=slides_dir, classes=classes, seed=seed,
                               annotations_dir=annotations_dir)
    if rows and all(r["tumour_patches"] == "" for r in rows if r["label"] == classes[-1]):
        log.warning("%s: no positive slide has a tumour mask or an ASAP outline ({slide}.xml in %s): the figure "
                    "has no localisation AUC", name, annotations_dir or slides_dir)
    fig = heatmap_grid(
        drawn, positive=classes[-1],
        title=fig_cfg.get("title") or f"Where the models look (MHIM Fig. 7 counterpart): {name}",
        footnote=fig_cfg.get("footnote") or (
            "Each patch is coloured by its score under the fold model that never saw the slide (test fold, seed "
            f"{seed}, protocol {fig_cfg.get('protocol', 'paper')}). Attention: the model's softmax weight of the "
            f"patch. Probability: softmax of the bag classifier on the attention-weighted patch embedding "
            f"(MHIM-v2's class-aware instance probability), class {classes[-1]}. Localisation AUC: ROC AUC of "
            "the scores against patch labels from the tumour mask (a patch is tumour if >= 50 % of it is); "
            "0.5 = chance, 1 = every tumour patch above every normal one."))
    save_figure(fig, png, pdf)
    write_auc_tsv(tsv, rows)
    return rows
