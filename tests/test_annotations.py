"""CAMELYON16 ASAP XML annotations -> patch labels, checked by hand and against the synthetic slides' masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hardmil.report.figures import patch_labels, patch_tumour_fraction
from hardmil.utils import InputError
from hardmil.wsi.annotations import (
    annotation_mask,
    annotation_patch_labels,
    patch_tumour_share,
    read_asap_xml,
    write_asap_xml,
)
from hardmil.wsi.synthetic import MASK_DS, tissue_mask, tumour_mask

HAND = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="2" X="1000" Y="1000" />
        <Coordinate Order="0" X="0" Y="0" />
        <Coordinate Order="1" X="1000,0" Y="0" />
        <Coordinate Order="3" X="0" Y="1000" />
      </Coordinates>
    </Annotation>
    <Annotation Name="hole" Type="Polygon" PartOfGroup="_2" Color="#64FE2E">
      <Coordinates>
        <Coordinate Order="0" X="400" Y="400" /><Coordinate Order="1" X="600" Y="400" />
        <Coordinate Order="2" X="600" Y="600" /><Coordinate Order="3" X="400" Y="600" />
      </Coordinates>
    </Annotation>
    <Annotation Name="second tumour" Type="Spline" PartOfGroup="Tumor" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="2000" Y="0" /><Coordinate Order="1" X="2200" Y="0" />
        <Coordinate Order="2" X="2200" Y="200" /><Coordinate Order="3" X="2000" Y="200" />
      </Coordinates>
    </Annotation>
    <Annotation Name="a dot" Type="Dot" PartOfGroup="_0"><Coordinates>
        <Coordinate Order="0" X="5000" Y="5000" /></Coordinates></Annotation>
    <Annotation Name="other group" Type="Polygon" PartOfGroup="Lymphocytes"><Coordinates>
        <Coordinate Order="0" X="3000" Y="3000" /><Coordinate Order="1" X="4000" Y="3000" />
        <Coordinate Order="2" X="4000" Y="4000" /></Coordinates></Annotation>
  </Annotations>
  <AnnotationGroups>
    <Group Name="_0" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>
    <Group Name="_2" PartOfGroup="None" Color="#00FF00"><Attributes /></Group>
  </AnnotationGroups>
</ASAP_Annotations>
"""


def test_hand_written_file_centre_and_fraction_rules(tmp_path):
    path = tmp_path / "tumor_001.xml"
    path.write_text(HAND)
    ann = read_asap_xml(path)
    assert len(ann.tumour) == 2 and len(ann.exclusion) == 1  # the dot and the other group are ignored
    assert ann.tumour[0].tolist() == [[0, 0], [1000, 0], [1000, 1000], [0, 1000]]  # sorted by Order, "1000,0"
    coords = np.array([[0, 0], [300, 300], [450, 450], [350, 350], [950, 950], [1100, 100], [2050, 50],
                       [3500, 3500]])
    centre = annotation_patch_labels(ann, coords, 100)
    # centres: (50,50) in; (350,350) in; (500,500) excluded; (400,400) on the hole's corner -> ambiguous, skip;
    # (1000,1000) on the outline -> skip; (1150,150) out; (2100,100) in the spline; (3550,3550) other group -> out
    assert centre[[0, 1, 2, 5, 6, 7]].tolist() == [1, 1, 0, 0, 1, 0]
    share = patch_tumour_share(ann, coords, 100, samples=10)
    assert share[0] == 1 and share[2] == 0 and share[5] == 0 and share[7] == 0
    assert share[3] == pytest.approx(0.75)  # a quarter of (350..450)^2 lies in the hole
    assert share[4] == pytest.approx(0.25)  # (950..1050)^2: a quarter inside the square
    frac = annotation_patch_labels(ann, coords, 100, rule="fraction", min_fraction=0.5, samples=10)
    assert frac.tolist() == [1, 1, 0, 1, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="rule"):
        annotation_patch_labels(ann, coords, 100, rule="corner")


def test_bad_files_are_named(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(InputError, match="bad.xml.*not well-formed"):
        read_asap_xml(bad)
    other = tmp_path / "other.xml"
    other.write_text("<Annotations/>")
    with pytest.raises(InputError, match="other.xml.*not an ASAP annotation file"):
        read_asap_xml(other)
    nan = tmp_path / "nan.xml"
    nan.write_text(HAND.replace('X="600" Y="400"', 'X="six" Y="400"'))
    with pytest.raises(InputError, match="nan.xml.*'hole'.*'six' is not a number"):
        read_asap_xml(nan)
    with pytest.raises(InputError, match="does not exist"):
        read_asap_xml(tmp_path / "missing.xml")


def _mask_polygons(mask: np.ndarray, ds: int, k: int = 8) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Outer outlines and holes of a binary mask as level-0 polygons, traced on the mask upsampled k-fold so
    they follow the pixel edges to 1/(2k) of a mask pixel (as an annotator outlines a region)."""
    big = cv2.resize(mask.astype(np.uint8), None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    tumour, holes = [], []
    for c, h in zip(contours, hierarchy[0], strict=True):
        if len(c) < 3:
            continue
        poly = (c[:, 0, :].astype(float) + 0.5) / k * ds
        (holes if h[3] >= 0 else tumour).append(poly)
    return tumour, holes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_from_an_asap_file_match_the_synthetic_slides_known_mask(tmp_path, seed):
    rng = np.random.default_rng(seed)
    tissue = tissue_mask(rng, (160, 240), 2)
    truth = tumour_mask(rng, tissue, 0.3, 2)  # the generator's own tumour mask, at MASK_DS
    assert truth.sum() > 100
    tumour, holes = _mask_polygons(truth, MASK_DS)
    path = tmp_path / f"synthetic_{seed}.xml"
    write_asap_xml(path, tumour, holes)
    ann = read_asap_xml(path)
    assert len(ann.tumour) == len(tumour) and len(ann.exclusion) == len(holes)
    # the rasterised annotation reproduces the mask
    back = annotation_mask(ann, truth.shape, MASK_DS)
    assert (back == truth).mean() > 0.999 and (back & truth).sum() / (back | truth).sum() > 0.99
    # patch labels (>= 50 % tumour) on a grid of 128-pixel patches (overlap 50 %) agree with the mask's labels
    patch = 128
    h, w = truth.shape[0] * MASK_DS, truth.shape[1] * MASK_DS
    ys, xs = np.mgrid[0:h - patch + 1:patch // 2, 0:w - patch + 1:patch // 2]
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    from_mask = patch_labels(coords, patch, MASK_DS, truth)
    from_xml = annotation_patch_labels(ann, coords, patch, rule="fraction", min_fraction=0.5, samples=16)
    assert from_mask.sum() > 20
    assert (from_xml == from_mask).mean() > 0.995  # measured: 1.0 for seeds 0-2
    share_mask = patch_tumour_fraction(coords, patch, MASK_DS, truth)
    share_xml = patch_tumour_share(ann, coords, patch, samples=16)
    assert np.abs(share_xml - share_mask).max() < 0.15 and np.abs(share_xml - share_mask).mean() < 0.01
    clear = (share_mask < 0.3) | (share_mask > 0.7)  # away from the 50 % threshold the labels agree exactly
    assert np.array_equal(from_xml[clear], from_mask[clear])
    # the centre rule agrees with the centre pixel of the mask
    centre = annotation_patch_labels(ann, coords, patch)
    pix = truth[(coords[:, 1] + patch // 2) // MASK_DS, (coords[:, 0] + patch // 2) // MASK_DS]
    assert (centre == pix).mean() > 0.97


def test_heatmap_localisation_reads_an_asap_file_when_a_slide_has_no_mask(tmp_path):
    """Fig. 7 on slides without a mask (real CAMELYON): the same AUC and tumour count from an ASAP file of the
    slide's outline as from its mask."""
    import dataclasses

    import torch

    from hardmil.models import build_model
    from hardmil.report.heatmaps import heatmap_rows, slide_test_folds
    from hardmil.wsi.synthetic import read_truth

    from .test_heatmaps import CLASSES as classes
    from .test_heatmaps import mean_rgb_cohort

    mean_rgb_cohort(tmp_path, n_slides=4, tumour_fraction=(0.3, 0.45), seed=5, texture_seeds=(6, 6))
    slides = tmp_path / "slides"
    from hardmil.checkpoint import save as save_checkpoint

    torch.manual_seed(0)
    net = build_model("abmil", in_dim=3, hidden_dim=8, attn_dim=4)  # untrained: any scores will do
    model_pt = tmp_path / "model.pt"
    save_checkpoint(model_pt, {"model": "abmil", "model_config": dataclasses.asdict(net.cfg),
                               "state_dict": net.state_dict(), "feature_mean": np.zeros(3, np.float32),
                               "feature_std": np.ones(3, np.float32)})
    folds = slide_test_folds(tmp_path / "splits.tsv")
    positives = sorted(s for s, v in folds.items() if v["label"] == "tumour")
    assert positives
    kw = {"models": {"abmil": {0: str(model_pt), 1: str(model_pt)}}, "labels": {"abmil": "AB-MIL"},
          "features_dir": tmp_path / "features", "coords_dir": tmp_path / "patches", "classes": classes}
    _, with_mask = heatmap_rows(positives, folds, slides_dir=slides, **kw)
    # the same slides without their masks, and an annotations folder with an ASAP file per slide instead
    bare, ann_dir = tmp_path / "bare", tmp_path / "annotations"
    bare.mkdir()
    for s in positives:
        (bare / f"{s}.tiff").symlink_to(slides / f"{s}.tiff")
        truth, ds = read_truth(slides, s)
        write_asap_xml(ann_dir / f"{s}.xml", *_mask_polygons(truth, ds))
    drawn, with_xml = heatmap_rows(positives, folds, slides_dir=bare, annotations_dir=ann_dir, **kw)
    assert len(with_xml) == len(with_mask) > 0
    for a, b in zip(with_mask, with_xml, strict=True):
        assert a["map"] == b["map"] and a["slide"] == b["slide"]
        assert abs(int(a["tumour_patches"]) - int(b["tumour_patches"])) <= 1
        if a["auc"] != "nan" or b["auc"] != "nan":
            assert abs(float(a["auc"]) - float(b["auc"])) < 0.02, (a, b)
    assert sum(np.isfinite(float(r["auc"])) for r in with_xml) >= 2  # at least one slide with tumour patches
    assert all(d["mask"] is not None and d["mask"].any() for d in drawn)  # the outline is drawn
    _, without = heatmap_rows(positives, folds, slides_dir=bare, **kw)  # no mask, no annotation: no AUC
    assert all(r["auc"] == "nan" and r["tumour_patches"] == "" for r in without)


def test_heatmap_figure_annotations_key_must_be_a_folder(tmp_path):
    """`figures.<f>.annotations` names a folder of {slide}.xml outlines; a wrong path fails before any work."""
    from hardmil.report.heatmaps import heatmap_job

    with pytest.raises(InputError, match=r"nope: figures.fig7.annotations: not a folder"):
        heatmap_job({"annotations": str(tmp_path / "nope"), "methods": {"abmil": "AB-MIL"}},
                    splits=tmp_path / "splits.tsv", models={}, features_dir=tmp_path, coords_dir=tmp_path,
                    slides_dir=tmp_path, classes=["normal", "tumor"], png=tmp_path / "f.png", pdf=None,
                    tsv=tmp_path / "f.tsv", name="fig7")
