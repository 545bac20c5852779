"""MHIM Fig. 7 heatmaps end to end on a tiny synthetic slide cohort: real pyramidal slides with tumour masks
(hardmil.wsi.synthetic, made-up textures so no download), real tissue segmentation and patch grid, colour
features per patch, AB-MIL trained per fold with train.run, then the heatmap job."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import torch

from hardmil.data.bags import read_manifest, write_features
from hardmil.data.splits import make_splits, write_splits
from hardmil.models import build_model
from hardmil.report.heatmaps import choose_slides, heatmap_job, instance_maps, slide_test_folds
from hardmil.train.run import run_fold
from hardmil.utils import InputError
from hardmil.wsi.patching import PatchParams, patch_slide
from hardmil.wsi.slide import open_slide
from hardmil.wsi.synthetic import make_cohort
from hardmil.wsi.tissue import TissueParams

CLASSES = ["normal", "tumour"]
PATCH = 128


def _texture(path, rgb, seed):
    rng = np.random.default_rng(seed)
    img = np.clip(np.array(rgb)[None, None] + rng.normal(0, 18, (480, 480, 3)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return str(path)


def mean_rgb_cohort(root, *, n_slides, tumour_fraction, seed, texture_seeds=(0, 1)):
    """A synthetic slide cohort under ``root`` (slides with masks, patches, mean-colour "features", 2-fold
    splits); returns the manifest rows. Shared with tests/test_annotations.py."""
    import h5py

    normal = _texture(root / "normal.png", (225, 150, 200), texture_seeds[0])   # pale pink
    tumour = _texture(root / "tumour.png", (110, 40, 140), texture_seeds[1])    # dark purple
    slides = root / "slides"
    make_cohort(slides, root / "manifest.tsv", [normal], [tumour], {normal: 0.5, tumour: 0.5}, n_slides=n_slides,
                size=(1536, 1024), tumour_fraction=tumour_fraction, regions=(1, 2), patch_size=PATCH, seed=seed)
    rows = read_manifest(root / "manifest.tsv", CLASSES)
    for r in rows:
        coords_h5 = root / "patches" / f"{r['slide']}.h5"
        patch_slide(slides / f"{r['slide']}.tiff", coords_h5, None, PatchParams(patch_size=PATCH), TissueParams())
        with h5py.File(coords_h5) as f:
            coords = f["coords"][:]
        with open_slide(slides / f"{r['slide']}.tiff") as s:  # a mean-colour "encoder"
            mean_rgb = np.stack([s.read(int(x), int(y), 0, (PATCH, PATCH)).reshape(-1, 3).mean(0) for x, y in coords])
        write_features(root / "features" / f"{r['slide']}.h5", mean_rgb / 255, coords, encoder="mean_rgb")
    write_splits(root / "splits.tsv", make_splits(rows, 2, 0, "paper"))
    return rows


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig7")
    mean_rgb_cohort(root, n_slides=12, tumour_fraction=(0.15, 0.3), seed=3)
    models = {}
    for fold in (0, 1):
        out = root / "runs" / f"fold{fold}"
        run_fold(splits=root / "splits.tsv", features_dir=root / "features", classes=CLASSES, fold=fold,
                 protocol="paper", seed=0, model="abmil", model_params={"hidden_dim": 16, "attn_dim": 8},
                 train_cfg={"epochs": 120, "patience": 120, "lr": 0.01, "selection_metric": "loss"},
                 out_dir=out, progress=False)
        models[fold] = str(out / "model.pt")
    return root, models


def test_heatmap_job_end_to_end(cohort, tmp_path):
    root, models = cohort
    cfg = {"methods": {"abmil": "AB-MIL"}, "n_positive": 2, "protocol": "paper"}
    rows = heatmap_job(cfg, splits=root / "splits.tsv", models={"abmil": models}, features_dir=root / "features",
                       coords_dir=root / "patches", slides_dir=root / "slides", classes=CLASSES,
                       png=tmp_path / "h.png", pdf=tmp_path / "h.pdf", tsv=tmp_path / "h.tsv", name="h")
    assert (tmp_path / "h.png").stat().st_size > 10_000 and (tmp_path / "h.pdf").exists()
    with open(tmp_path / "h.tsv") as fh:
        table = list(csv.DictReader(fh, delimiter="\t"))
    assert len(table) == 4 and {r["map"] for r in table} == {"attention", "probability"}
    folds = slide_test_folds(root / "splits.tsv")
    positives = sorted(s for s, v in folds.items() if v["label"] == "tumour")[:2]
    assert [r["slide"] for r in table[::2]] == positives
    for r in table:
        assert int(r["fold"]) == folds[r["slide"]]["fold"]  # the model that never saw the slide
        assert int(r["tumour_patches"]) > 0
    # tumour patches differ from normal ones in colour: the trained model must rank them above chance
    aucs = [float(r["auc"]) for r in rows]
    assert np.mean(aucs) > 0.7, rows


def test_missing_fold_model_and_unknown_slide_are_named(cohort, tmp_path):
    root, models = cohort
    folds = slide_test_folds(root / "splits.tsv")
    with pytest.raises(InputError, match="in no test fold"):
        choose_slides(folds, CLASSES, ["nope"])
    with pytest.raises(InputError, match="positive test slides"):
        choose_slides(folds, CLASSES, None, n_positive=99)
    one = {"abmil": {0: models[0]}}
    slide = next(s for s, v in folds.items() if v["fold"] == 1 and v["label"] == "tumour")
    with pytest.raises(InputError, match="no trained abmil model for fold 1"):
        heatmap_job({"methods": {"abmil": "AB-MIL"}, "slides": [slide]}, splits=root / "splits.tsv", models=one,
                    features_dir=root / "features", coords_dir=root / "patches", slides_dir=root / "slides",
                    classes=CLASSES, png=tmp_path / "x.png", pdf=None, tsv=tmp_path / "x.tsv")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.tsv").exists()


@pytest.mark.parametrize("name", ["abmil", "mhim"])
def test_probability_map_is_the_positive_class_of_mhims_class_aware_score(name):
    """max(p, 1 - p) of the map equals the models' instance_scores(v2) hook (MHIM-v2's definition)."""
    torch.manual_seed(0)
    params = {"teacher_init": "none"} if name == "mhim" else {}
    net = build_model(name, in_dim=6, n_classes=2, **params).eval()
    x = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    maps, bag = instance_maps(net, x, np.zeros(6, np.float32), np.ones(6, np.float32))
    base = getattr(net, "student", net)
    with torch.no_grad():
        h = base.embed(torch.from_numpy(x)[None])
        hook = base.instance_scores(h, base.head(h), "v2").numpy()
        torch.testing.assert_close(torch.from_numpy(maps["attention"]), net(torch.from_numpy(x)[None]).attention[0])
    np.testing.assert_allclose(np.maximum(maps["probability"], 1 - maps["probability"]), hook, rtol=1e-5)
    assert 0 <= bag <= 1 and maps["attention"].sum() == pytest.approx(1, abs=1e-5)


# --- Li et al. Fig. 3 on slides: the mined hard-negative patches (hardmil.report.patches) -------------------
def test_patch_grid_of_mined_hard_negatives(cohort, tmp_path):
    from hardmil.checkpoint import load_model
    from hardmil.data.splits import read_splits
    from hardmil.report.patches import patches_job
    from hardmil.wsi.patching import read_coords

    root, models = cohort
    hn = {"from": "abmil", "fp_threshold": 0.5, "min_bags": 2}
    summary = patches_job({"n_patches": 6, "n_contrast": 3}, hn, splits=root / "splits.tsv", models=models,
                          features_dir=root / "features", coords_dir=root / "patches", slides_dir=root / "slides",
                          classes=CLASSES, png=tmp_path / "p.png", pdf=tmp_path / "p.pdf", tsv=tmp_path / "p.tsv")
    assert (tmp_path / "p.png").stat().st_size > 10_000 and (tmp_path / "p.pdf").exists()
    with open(tmp_path / "p.tsv") as fh:
        table = list(csv.DictReader(fh, delimiter="\t"))
    hard = [r for r in table if r["group"] == "hard_negative"]
    contrast = [r for r in table if r["group"] == "positive_contrast"]
    assert len(hard) == summary["n_hard"] > 0 and sum(int(r["shown"]) for r in hard) == min(6, len(hard))
    assert [float(r["attention"]) for r in hard] == sorted((float(r["attention"]) for r in hard), reverse=True)
    for r in hard:
        fold = int(r["fold"])
        train = {s["slide"]: s["label"] for s in read_splits(root / "splits.tsv", fold)["train"]}
        assert train.get(r["slide"]) == "normal"  # a negative training slide of the fold model that mined it
        # Li et al. eq. 3, recomputed through the heatmap code path: weight >= mean + std of the slide
        net, saved = load_model(models[fold])
        mean, std = saved["feature_mean"], saved["feature_std"]
        feats = h5py_features(root / "features" / f"{r['slide']}.h5")
        att = instance_maps(net, feats, mean, std)[0]["attention"]
        i = int(r["index"])
        assert float(r["attention"]) == pytest.approx(att[i], abs=1e-4)
        assert att[i] >= att.mean() + att.std() - 1e-6
        if r["shown"] == "1":  # drawn patches carry the coords they were read at
            coords, _ = read_coords(root / "patches" / f"{r['slide']}.h5")
            assert (int(r["x"]), int(r["y"])) == tuple(coords[i]) and float(r["tumour_fraction"]) == 0.0
    # contrast: positive training slides; the colour model attends to the dark tumour patches
    assert contrast and all(r["label"] == "tumour" for r in contrast)
    shown = [float(r["tumour_fraction"]) for r in contrast if r["shown"] == "1"]
    assert len(shown) == 3 and all(0 <= f <= 1 for f in shown) and np.mean(shown) > 0.5, contrast


def h5py_features(path):
    import h5py

    with h5py.File(path) as f:
        return f["features"][:]


def test_patch_grid_names_a_missing_model_or_slide_and_writes_nothing(cohort, tmp_path):
    from hardmil.report.patches import mined_instances, patches_job

    root, models = cohort
    kw = dict(splits=root / "splits.tsv", features_dir=root / "features", coords_dir=root / "patches",
              classes=CLASSES, png=tmp_path / "p.png", pdf=None, tsv=tmp_path / "p.tsv")
    with pytest.raises(InputError, match="fold9.*missing trained model of fold 1"):
        patches_job({}, {"from": "abmil", "min_bags": 1}, models={0: models[0], 1: str(root / "fold9/model.pt")},
                    slides_dir=root / "slides", **kw)
    hard, _ = mined_instances(models, root / "splits.tsv", root / "features", CLASSES, min_bags=2)
    top = hard[0]["slide"]
    partial = tmp_path / "slides"
    partial.mkdir()
    for f in (root / "slides").iterdir():
        if not f.name.startswith(top + "."):
            (partial / f.name).symlink_to(f)
    with pytest.raises(InputError, match=f"no slide file for '{top}'"):
        patches_job({}, {"from": "abmil", "min_bags": 2}, models=models, slides_dir=partial, **kw)
    with pytest.raises(InputError, match="mined no hard negative"):  # min_bags 0 and no false positives
        patches_job({}, {"from": "abmil", "fp_threshold": 1.0, "min_bags": 0}, models=models,
                    slides_dir=root / "slides", **kw)
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "p.tsv").exists()
