"""The bag store (hardmil.data.store), lazy bags and BagSet (hardmil.data.bagset): what every stage reads."""

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hardmil.data.bags import Bag, write_features
from hardmil.data.bagset import BagSet, choose_placement, feature_stats
from hardmil.data.store import BagStore, FileBags, build_store, load_bags, open_bags, store_is_current
from hardmil.utils import InputError

REPO = Path(__file__).resolve().parents[1]

CLASSES = ["neg", "pos"]


def _cohort(root, n=6, dim=5, seed=0, pt=()):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for i in range(n):
        slide = f"s{i}"
        x = rng.normal(size=(3 + i, dim)).astype(np.float32)
        c = rng.integers(0, 10_000, size=(3 + i, 2)).astype(np.int64)
        if slide in pt:
            torch.save({"features": torch.from_numpy(x)}, root / f"{slide}.pt")
            c = None
        else:
            write_features(root / f"{slide}.h5", x, c)
        data[slide] = (x, c)
    return data


def test_store_bags_equal_their_source_files_h5_and_pt(tmp_path):
    data = _cohort(tmp_path / "f", pt=("s2",))
    index = build_store(sorted(data), tmp_path / "f", tmp_path / "store")
    assert index["rows"] == sum(len(x) for x, _ in data.values()) and index["dim"] == 5
    store = open_bags(tmp_path / "store")
    assert isinstance(store, BagStore)
    for slide, (x, c) in data.items():
        np.testing.assert_array_equal(store.features(slide), x)
        if c is None:
            assert store.coords(slide) is None
        else:
            np.testing.assert_array_equal(store.coords(slide), c)
    assert isinstance(open_bags(tmp_path / "store" / "index.json"), BagStore)
    assert isinstance(open_bags(tmp_path / "f"), FileBags)


def test_float16_store_is_half_the_size_and_close(tmp_path):
    data = _cohort(tmp_path / "f")
    build_store(sorted(data), tmp_path / "f", tmp_path / "s32")
    build_store(sorted(data), tmp_path / "f", tmp_path / "s16", dtype="float16")
    s16 = BagStore(tmp_path / "s16")
    assert s16.dtype == np.float16
    np.testing.assert_allclose(s16.features("s1").astype(np.float32), data["s1"][0], rtol=1e-3, atol=1e-3)
    a = (tmp_path / "s32" / "features.npy").stat().st_size
    b = (tmp_path / "s16" / "features.npy").stat().st_size
    assert b < 0.6 * a


def test_changed_source_rebuilds_unchanged_does_not(tmp_path):
    data = _cohort(tmp_path / "f")
    slides = sorted(data)
    build_store(slides, tmp_path / "f", tmp_path / "store")
    mtime = (tmp_path / "store" / "features.npy").stat().st_mtime_ns
    assert store_is_current(tmp_path / "store", slides, tmp_path / "f", "float32")
    time.sleep(0.01)
    build_store(slides, tmp_path / "f", tmp_path / "store")  # unchanged: kept
    assert (tmp_path / "store" / "features.npy").stat().st_mtime_ns == mtime
    new = np.full((4, 5), 7.0, np.float32)
    write_features(tmp_path / "f" / "s3.h5", new)
    store = BagStore(tmp_path / "store")
    with pytest.raises(InputError, match=r"s3\.h5: changed or removed since the bag store"):
        store.check_fresh()
    assert not store_is_current(tmp_path / "store", slides, tmp_path / "f", "float32")
    build_store(slides, tmp_path / "f", tmp_path / "store")
    np.testing.assert_array_equal(BagStore(tmp_path / "store").features("s3"), new)


@pytest.mark.parametrize("breakage, message", [
    (lambda d: write_features(d / "s4.h5", np.full((3, 5), np.nan, np.float32)), r"s4\.h5: 3 instance\(s\) have NaN"),
    (lambda d: (d / "s4.h5").write_bytes(b"not an h5 file"), r"s4\.h5: cannot read features"),
    (lambda d: os.remove(d / "s4.h5"), r"s4\.h5: features file does not exist"),
])
def test_bad_sources_are_named_when_the_store_is_built(tmp_path, breakage, message):
    data = _cohort(tmp_path / "f")
    breakage(tmp_path / "f")
    with pytest.raises(InputError, match=message):
        build_store(sorted(data), tmp_path / "f", tmp_path / "store")
    assert not (tmp_path / "store" / "index.json").exists()


def test_dimension_error_names_the_odd_file_not_the_first(tmp_path):
    data = _cohort(tmp_path / "f")
    write_features(tmp_path / "f" / "s0.h5", np.ones((3, 8), np.float32))  # read first, but the odd one
    with pytest.raises(InputError, match=r"s0\.h5: feature dimension 8 != 5, the dimension of 5 of 6 bags; "
                                         r"1 file\(s\) differ: s0\.h5 \(8\)"):
        build_store(sorted(data), tmp_path / "f", tmp_path / "store")


def test_bags_are_read_when_a_step_needs_them(tmp_path):
    data = _cohort(tmp_path / "f")
    build_store(sorted(data), tmp_path / "f", tmp_path / "store")
    store = BagStore(tmp_path / "store")
    rows = [{"slide": s, "case": s, "label": CLASSES[i % 2]} for i, s in enumerate(sorted(data))]
    bags = load_bags(rows, store, CLASSES)
    assert store.reads == 0 and [len(b) for b in bags] == [len(data[s][0]) for s in sorted(data)]
    bs = BagSet(bags)
    assert store.reads == 0  # building the set reads no features
    seen = [i for i, x, c in bs.iterate([2, 0])]
    assert seen == [2, 0] and store.reads == 2  # one read per bag per pass
    for _ in bs.iterate():
        pass
    assert store.reads == 2 + len(data)


def test_streamed_statistics_match_the_concatenation(tmp_path):
    rng = np.random.default_rng(1)
    bags = [Bag(f"b{i}", f"b{i}", 0, (rng.normal(size=(50 + 7 * i, 9)) * (1 + i) + 3).astype(np.float32))
            for i in range(5)]
    mean, std = feature_stats(bags, chunk_rows=16)
    x = np.concatenate([b.features for b in bags]).astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-6)
    const = [Bag("c", "c", 0, np.ones((4, 3), np.float32))]
    assert feature_stats(const)[1].tolist() == [1.0, 1.0, 1.0]  # std 0 -> 1


def test_stream_and_resident_give_identical_inputs_to_upfront_standardisation(tmp_path):
    data = _cohort(tmp_path / "f")
    build_store(sorted(data), tmp_path / "f", tmp_path / "store")
    rows = [{"slide": s, "case": s, "label": "neg"} for s in sorted(data)]
    bags = load_bags(rows, tmp_path / "store", CLASSES)
    mean, std = feature_stats(bags)
    for placement in ("stream", "resident"):
        bs = BagSet(bags, mean, std, placement=placement)
        assert bs.placement == placement
        for i, x, c in bs.iterate():
            expected = (data[bags[i].slide][0] - mean) / std  # what the in-memory path fed the models
            np.testing.assert_array_equal(x[0].numpy(), expected)
            np.testing.assert_array_equal(c[0].numpy(), data[bags[i].slide][1])


def test_placement_dispatch_with_a_fake_memory_budget():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_placement("auto", cpu, 10, 10**9) == "stream"  # CPU streams from the memory map
    assert choose_placement("auto", cuda, 10**9, 2 * 10**9) == "resident"  # fits the budget
    assert choose_placement("auto", cuda, 3 * 10**9, 2 * 10**9) == "stream"  # does not
    assert choose_placement("resident", cpu, 10**12, None) == "resident"  # an explicit choice wins
    with pytest.raises(ValueError, match="placement must be one of"):
        choose_placement("gpu", cpu, 1, 1)


def test_survival_case_bags_read_their_slides_from_the_store(tmp_path):
    from hardmil.data.survival import load_case_bags

    data = _cohort(tmp_path / "f", n=4)
    build_store(sorted(data), tmp_path / "f", tmp_path / "store")
    rows = [{"slide": "s0", "case": "A", "time": 3, "event": 1}, {"slide": "s1", "case": "A", "time": 3, "event": 1},
            {"slide": "s2", "case": "B", "time": 5, "event": 0}]
    a, b = load_case_bags(rows, tmp_path / "store")
    np.testing.assert_array_equal(a.features, np.concatenate([data["s0"][0], data["s1"][0]]))
    assert len(a) == len(data["s0"][0]) + len(data["s1"][0]) and a.coords.shape == (len(a), 2)
    np.testing.assert_array_equal(b.features, data["s2"][0])


def test_store_moments_give_the_fold_statistics_without_reading_features(tmp_path):
    data = _cohort(tmp_path / "f", n=8, dim=6)
    build_store(sorted(data), tmp_path / "f", tmp_path / "store")
    store = BagStore(tmp_path / "store")
    rows = [{"slide": s, "case": s, "label": "neg"} for s in sorted(data)[:5]]
    mean, std = feature_stats(load_bags(rows, store, CLASSES))
    assert store.reads == 0  # the slides' moments from stats.npy, no pass over the features
    x = np.concatenate([data[r["slide"]][0] for r in rows]).astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-6)
    streamed = feature_stats([Bag(r["slide"], r["slide"], 0, data[r["slide"]][0]) for r in rows], chunk_rows=3)
    np.testing.assert_allclose(mean, streamed[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(std, streamed[1], rtol=1e-6)


def test_job_memory_follows_the_largest_bag_and_the_model(tmp_path, monkeypatch):
    from hardmil.data.store import JOB_DEFAULT_MB, job_memory_mb, job_memory_request

    data = _cohort(tmp_path / "f", n=4, dim=1000)
    build_store(sorted(data), tmp_path / "f", tmp_path / "store")
    index = tmp_path / "store" / "index.json"
    bag_mb = max(len(x) for x, _ in data.values()) * 1000 * 4 / 1e6
    assert job_memory_mb(index, ["abmil"]) == int(500 + 6 * bag_mb)
    assert job_memory_mb(index, ["mhim", "transmil"]) == int(500 + 40 * bag_mb)  # MHIM over TransMIL
    assert job_memory_mb(tmp_path / "none.json", ["abmil"]) == JOB_DEFAULT_MB  # a dry run: no store yet
    monkeypatch.delenv("HARDMIL_SLURM_MEM_MB", raising=False)
    assert job_memory_request(index, ["abmil"], "auto", attempt=2) == 2 * int(500 + 6 * bag_mb)
    assert job_memory_request(index, ["abmil"], 3000) == 3000
    # a model's own step estimate (2DMamba's scan grid) is added with its margin, whatever the bag's bytes
    from hardmil.models import MODELS, model_config
    from hardmil.models.mamba2d import SCAN_CELL_MB

    grid = model_config("mamba2d", grid_extent="dataset", grid_w=413, grid_h=821, scan="pscan")
    step = lambda n: MODELS["mamba2d"].step_memory_mb(grid, n)  # noqa: E731
    assert job_memory_mb(index, ["mamba2d"], step) == int(500 + 6 * bag_mb + 1.5 * 413 * 821 * SCAN_CELL_MB["pscan"])
    assert job_memory_mb(index, ["mamba2d"], step) > 140_000  # BRCA's grid: ~96 GB measured, not ~0.3 GB
    assert job_memory_request(index, ["mamba2d"], "auto", 1, step) == job_memory_mb(index, ["mamba2d"], step)
    monkeypatch.setenv("HARDMIL_SLURM_MEM_MB", "7000")
    assert job_memory_request(index, ["abmil"], 3000) == 7000


def test_the_2dmamba_step_estimate_covers_a_measured_step():
    """A real training step of a dataset-grid 2DMamba (fresh process, peak RSS growth over a 2 x 2 warm-up, as
    bench/mamba2d_memory.py measures) stays within the estimate the job requests; the estimate is not an
    over-request by more than 4x either."""
    import importlib.util

    from hardmil.data.store import STEP_MARGIN
    from hardmil.models import MODELS, model_config

    spec = importlib.util.spec_from_file_location("mamba2d_memory", REPO / "bench/mamba2d_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for scan in ("kernel", "pscan"):
        base, peak = bench.measure(64, scan, 500)
        cfg = model_config("mamba2d", grid_extent="dataset", grid_w=64, grid_h=64, scan=scan)
        requested = STEP_MARGIN * MODELS["mamba2d"].step_memory_mb(cfg, 500)
        assert peak - base <= requested <= 4 * (peak - base), (scan, peak - base, requested)
