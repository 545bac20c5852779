"""Li et al. (MICCAI 2019) Fig. 3 on slides: the hard-negative patches that a trained stage-1 model mines,
read from the slides at their patch coordinates and drawn as a grid.

Reference: Li, Ma, Zhang, Zhou, Zhang and Xu, "Deep Instance-Level Hard Negative Mining Model for
Histopathology Images", MICCAI 2019, sec. 3.0.2 and Fig. 3 (examples of selected hard negative instances).
The selection is exactly the workflow's hard-negative mining (:mod:`hardmil.mining.hardneg`): the fold's
stage-1 model scores its training bags; negative bags with P(not negative) >= ``fp_threshold`` are the
false positives (topped up to ``min_bags`` with the most positive-looking negatives when that deviation is
configured); eq. (3) keeps the instances whose attention weight is >= mean + std of their bag.

What the figure adds, and its deliberate choices:

* Every fold model of one seed mines its own training bags; a patch that several fold models mine is shown
  once, with its highest attention weight. Patches are ranked by that weight (bags of 18-40 patches have
  comparable softmax weights; with very different bag sizes the ranking favours small bags).
* For contrast, the top-attention patch of each positive training bag, with the share of the patch that the
  slide's true tumour mask covers when the slide has one (synthetic slides). Li et al. show no such row.
* UCSB ships features without images, so there the workflow draws the mined-bag scores instead
  (figure kind ``hardneg``); this kind needs a slide dataset.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from hardmil.utils import InputError, atomic_path

log = logging.getLogger(__name__)

TSV_COLUMNS = ("group", "slide", "label", "fold", "seed", "index", "x", "y", "attention", "bag_prob_not_negative",
               "reason", "tumour_fraction", "shown")


def mined_instances(models: dict[int, str | os.PathLike], splits: str | os.PathLike,
                    features_dir: str | os.PathLike, classes: list[str], *, fp_threshold: float = 0.5,
                    min_bags: int = 0, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(hard negatives, positive contrast)``: one dict per instance (slide, fold, index, attention, the bag's
    P(not negative) and why it was mined), hard negatives ranked by attention (highest first, each patch once),
    contrast = the top-attention instance of every positive training bag, ranked likewise."""
    from hardmil.checkpoint import load_model
    from hardmil.data.splits import read_splits
    from hardmil.data.store import load_bags, open_bags
    from hardmil.mining.hardneg import mine, score_bags

    if not Path(splits).exists():
        raise InputError(splits, "splits file does not exist")
    source = open_bags(features_dir)
    hard: dict[tuple[str, int], dict] = {}
    contrast: dict[str, dict] = {}
    for fold, model_path in sorted(models.items()):
        if not Path(model_path).exists():
            raise InputError(model_path, f"missing trained model of fold {fold} (has its training run finished?)")
        train = load_bags(read_splits(splits, fold)["train"], source, classes)
        net, saved = load_model(model_path)
        mean, std = saved["feature_mean"], saved["feature_std"]
        probs, weights = score_bags(net, train, mean, std)
        _, records = mine(probs, weights, train, fp_threshold, min_bags)
        by_slide = {b.slide: (b, p, w) for b, p, w in zip(train, probs, weights, strict=True)}
        for r in records:
            b, p, w = by_slide[r["slide"]]
            for i in (int(k) for k in r["hard_indices"].split(",") if k):
                row = {"slide": b.slide, "label": classes[b.label], "fold": fold, "seed": seed, "index": i,
                       "attention": float(w[i]), "bag_prob_not_negative": float(1.0 - p[0]), "reason": r["reason"]}
                key = (b.slide, i)
                if key not in hard or row["attention"] > hard[key]["attention"]:
                    hard[key] = row
        for b, p, w in zip(train, probs, weights, strict=True):
            if b.label == 0:
                continue
            i = int(np.argmax(w))
            row = {"slide": b.slide, "label": classes[b.label], "fold": fold, "seed": seed, "index": i,
                   "attention": float(w[i]), "bag_prob_not_negative": float(1.0 - p[0]), "reason": "top_attention"}
            if b.slide not in contrast or row["attention"] > contrast[b.slide]["attention"]:
                contrast[b.slide] = row
        log.info("fold %d: %d mined bags, %d hard-negative instances so far", fold, len(records), len(hard))
    rank = lambda rows: sorted(rows, key=lambda r: (-r["attention"], r["slide"], r["index"]))  # noqa: E731
    return rank(hard.values()), rank(contrast.values())


def read_patch_images(rows: list[dict], *, coords_dir: str | os.PathLike, slides_dir: str | os.PathLike,
                      size: int = 128) -> list[np.ndarray]:
    """Read each row's patch (``slide``, ``index`` into the slide's coords h5) from its slide at level 0,
    resized to ``size`` px; fills ``x``, ``y`` and ``tumour_fraction`` (share of the patch inside the true
    tumour mask, NaN when the slide has none) into the rows."""
    import cv2

    from hardmil.report.figures import patch_tumour_fraction
    from hardmil.wsi.patching import read_coords
    from hardmil.wsi.slide import find_slide, open_slide
    from hardmil.wsi.synthetic import read_truth

    by_slide: dict[str, list[int]] = {}
    for k, r in enumerate(rows):
        by_slide.setdefault(r["slide"], []).append(k)
    out: dict[int, np.ndarray] = {}
    for slide, ks in by_slide.items():
        coords_h5 = Path(coords_dir) / f"{slide}.h5"
        coords, attrs = read_coords(coords_h5)
        patch = attrs.get("patch_size_level0", attrs.get("patch_size"))
        if patch is None:
            raise InputError(coords_h5, "coords has no patch_size_level0 / patch_size attribute")
        patch = int(patch)
        mask = None
        if (Path(slides_dir) / f"{slide}.mask.png").exists():
            mask, ds = read_truth(slides_dir, slide)
        with open_slide(find_slide(slides_dir, slide)) as s:
            for k in ks:
                i = rows[k]["index"]
                if not 0 <= i < len(coords):
                    raise InputError(coords_h5, f"patch index {i} out of range ({len(coords)} patches): the features "
                                                "and the coords of this slide disagree")
                x, y = (int(v) for v in coords[i])
                rows[k]["x"], rows[k]["y"] = x, y
                rows[k]["tumour_fraction"] = (float(patch_tumour_fraction(coords[i:i + 1], patch, ds, mask)[0])
                                              if mask is not None else float("nan"))
                out[k] = cv2.resize(s.read(x, y, 0, (patch, patch)), (size, size), interpolation=cv2.INTER_AREA)
    return [out[k] for k in range(len(rows))]


def patch_label(row: dict, contrast: bool = False) -> str:
    text = f"{row['slide']} #{row['index']}\nattention {row['attention']:.3f} (fold {row['fold']})"
    if contrast and np.isfinite(row.get("tumour_fraction", float("nan"))):
        text += f"\ntumour in patch: {100 * row['tumour_fraction']:.0f} %"
    return text


def write_patch_tsv(path: str | os.PathLike, rows: list[dict]) -> None:
    with atomic_path(path, suffix=".tsv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(TSV_COLUMNS), delimiter="\t", lineterminator="\n",
                               extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()})


def patches_job(fig_cfg: dict, hardneg_cfg: dict, *, splits: str | os.PathLike, models: dict[int, str],
                features_dir: str | os.PathLike, coords_dir: str | os.PathLike, slides_dir: str | os.PathLike,
                classes: list[str], png: str | os.PathLike, pdf: str | os.PathLike | None, tsv: str | os.PathLike,
                seed: int = 0, name: str = "patches") -> dict:
    """The workflow's ``patches`` figure: mine with every fold model of ``seed``, read the top
    ``n_patches`` hard negatives and ``n_contrast`` positive top-attention patches from the slides, draw the
    grid, and list every mined instance in the TSV (``shown`` marks the drawn ones)."""
    from hardmil.report.figures import patch_grid, save_figure

    hard, contrast = mined_instances(models, splits, features_dir, classes,
                                     fp_threshold=hardneg_cfg.get("fp_threshold", 0.5),
                                     min_bags=hardneg_cfg.get("min_bags", 0), seed=seed)
    if not hard:
        raise InputError(splits, f"the {len(models)} fold models of {hardneg_cfg.get('from')!r} mined no hard "
                                 "negative: no negative training bag reached fp_threshold (set the hardneg "
                                 "variant's min_bags to mine the most positive-looking ones)")
    n_hard, n_con = fig_cfg.get("n_patches", 16), fig_cfg.get("n_contrast", 8)
    shown_hard, shown_con = hard[:n_hard], contrast[:n_con]
    kw = {"coords_dir": coords_dir, "slides_dir": slides_dir}
    sections = [(f"Hard negatives (Li et al. eq. 3) mined from negative ({classes[0]}) training slides: the "
                 f"{len(shown_hard)} highest-attention of {len(hard)}",
                 read_patch_images(shown_hard, **kw), [patch_label(r) for r in shown_hard])]
    if shown_con:
        sections.append((f"For contrast: the top-attention patch of {len(shown_con)} positive ({classes[-1]}) "
                         "training slides and its share inside the true tumour mask",
                         read_patch_images(shown_con, **kw), [patch_label(r, True) for r in shown_con]))
    n_mined_slides = len({r["slide"] for r in hard})
    fig = patch_grid(
        [], sections=sections, columns=fig_cfg.get("columns", 8),
        title=fig_cfg.get("title") or f"Mined hard-negative patches (Li et al. Fig. 3 counterpart): {name}",
        footnote=fig_cfg.get("footnote") or (
            f"Stage-1 model: {hardneg_cfg.get('from')} (every fold model of seed {seed}, protocol "
            f"{fig_cfg.get('protocol', 'paper')}), each mining its own training slides: negative slides with "
            f"P(not {classes[0]}) >= {hardneg_cfg.get('fp_threshold', 0.5)} are false positives"
            + (f", topped up to the {hardneg_cfg['min_bags']} most positive-looking negative slides per fold "
               "(a documented deviation: these models rarely misclassify their training slides)"
               if hardneg_cfg.get("min_bags") else "")
            + f"; {len(hard)} hard-negative patches from {n_mined_slides} slides, whose P(not {classes[0]}) was at "
            f"most {max(r['bag_prob_not_negative'] for r in hard):.3f}. Under each patch: slide, patch "
            "index, the attention weight (softmax over the slide's patches) of the fold model that mined it."))
    save_figure(fig, png, pdf)
    for r in hard + contrast:
        r.setdefault("tumour_fraction", float("nan"))
        r["shown"] = int(r in shown_hard or r in shown_con)
    write_patch_tsv(tsv, [{"group": "hard_negative", **r} for r in hard]
                    + [{"group": "positive_contrast", **r} for r in contrast])
    return {"n_hard": len(hard), "n_contrast": len(contrast), "n_slides": n_mined_slides}
