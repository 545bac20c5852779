"""The controlled benchmark's generator (hardmil.data.simulated): labels, witness rates, the shortcut shift,
hard negatives, geometry, determinism, the bank from a slide cohort with masks, files and splits."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from hardmil.data.bags import read_features, write_features
from hardmil.data.simulated import (
    HARD,
    NEGATIVE,
    SALIENT,
    SUBTLE,
    BagModel,
    Bank,
    bank_from_slides,
    generate_bags,
    make_simulated,
    project_bank,
    read_truth,
    simulated_splits,
)
from hardmil.data.splits import read_splits

DIM = 12


@pytest.fixture(scope="module")
def bank():
    """Two clouds 4 standard deviations apart along feature 0 (the generator only needs a bank)."""
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(300, DIM)).astype(np.float32)
    tumour = rng.normal(size=(120, DIM)).astype(np.float32)
    tumour[:, 0] += 4.0
    return Bank(normal, tumour, {"kind": "test"})


def by_pool(bags, pool):
    return [b for b in bags if b.pool == pool]


def test_labels_are_witness_presence_and_rates_follow_the_model(bank):
    m = BagModel(n_train=60, n_test=40, bag_size=(1000, 1000), witness_rate=(0.01, 0.01), seed=3)
    bags = generate_bags(bank, m)
    assert len(by_pool(bags, "train")) == 60 and len(by_pool(bags, "test")) == 40
    for b in bags:
        assert len(b.kind) == 1000 and b.features.shape == (1000, DIM) and b.coords.shape == (1000, 2)
        assert b.label == int(b.witness.any())
        assert b.witness.sum() == (10 if b.label else 0)
        assert len({tuple(c) for c in b.coords}) == 1000  # one instance per grid cell
    assert sum(b.label for b in by_pool(bags, "train")) == 30  # positive_fraction 0.5 per pool


def test_sparse_witnesses_below_one_percent_and_large_bags(bank):
    m = BagModel(n_train=20, n_test=20, bag_size=(2000, 4000), witness_rate=(0.001, 0.005), seed=1)
    pos = [b for b in generate_bags(bank, m) if b.label]
    sizes = np.array([len(b.kind) for b in pos])
    rates = np.array([b.witness.mean() for b in pos])
    assert sizes.min() >= 2000 and sizes.max() <= 4000 and sizes.std() > 0
    assert (rates < 0.01).all() and (rates >= 0.001 - 1 / 2000).all()
    assert all(b.witness.sum() >= 1 for b in pos)


def test_shortcut_shift_salient_common_in_training_rare_in_test(bank):
    m = BagModel(n_train=80, n_test=80, bag_size=(300, 300), witness_rate=(0.05, 0.05), salient_train=0.9,
                 salient_test=0.1, seed=5)
    bags = generate_bags(bank, m)
    for pool, share in (("train", 0.9), ("test", 0.1)):
        kinds = np.concatenate([b.kind[b.witness] for b in by_pool(bags, pool) if b.label])
        assert abs((kinds == SALIENT).mean() - share) < 0.05, pool
    # the shortcut bites: many test positives have no salient witness at all, almost no training positive
    none = {p: np.mean([not (b.kind == SALIENT).any() for b in by_pool(bags, p) if b.label]) for p in ("train", "test")}
    assert none["train"] < 0.05 and none["test"] > 0.1


def test_hard_negatives_in_both_classes_at_their_rate_and_absent_by_default(bank):
    m = BagModel(n_train=40, n_test=40, bag_size=(500, 500), hard_rate=0.1, seed=2)
    bags = generate_bags(bank, m)
    for label in (0, 1):
        rate = np.mean([(b.kind == HARD).sum() / (~b.witness).sum() for b in bags if b.label == label])
        assert abs(rate - 0.1) < 0.01
    assert not any((b.kind == HARD).any() for b in generate_bags(bank, BagModel(n_train=8, n_test=8, seed=2)))


def test_geometry_negatives_hard_subtle_salient_in_order_towards_tumour(bank):
    """Projected on the normal -> tumour axis: negatives < hard negatives < subtle < salient witnesses, and
    subtle witnesses are nearer the negatives than the salient ones are."""
    m = BagModel(n_train=30, n_test=30, bag_size=(400, 400), witness_rate=(0.05, 0.05), hard_rate=0.1, seed=4)
    bags = generate_bags(bank, m)
    feats = np.concatenate([b.features for b in bags])
    kind = np.concatenate([b.kind for b in bags])
    axis = bank.tumour.mean(0) - bank.normal.mean(0)
    proj = feats @ axis / np.linalg.norm(axis)
    means = [proj[kind == k].mean() for k in (NEGATIVE, HARD, SUBTLE, SALIENT)]
    assert means == sorted(means) and means[3] - means[0] > 3.0
    neg_centre = feats[kind == NEGATIVE].mean(0)
    dist = {k: np.linalg.norm(feats[kind == k] - neg_centre, axis=1).mean() for k in (SUBTLE, SALIENT)}
    assert dist[SUBTLE] < dist[SALIENT]
    # recombined, not copied: no instance equals a bank patch
    assert not np.isin(feats[:50, 0], bank.normal[:, 0]).any()


def test_deterministic_for_a_seed_and_different_across_seeds(bank):
    m = BagModel(n_train=6, n_test=6, bag_size=(50, 80), seed=9)
    a, b = generate_bags(bank, m), generate_bags(bank, m)
    same = lambda x, y: x.features.shape == y.features.shape and np.allclose(x.features, y.features)  # noqa: E731
    assert all(same(x, y) and np.array_equal(x.kind, y.kind) for x, y in zip(a, b, strict=True))
    c = generate_bags(bank, BagModel(n_train=6, n_test=6, bag_size=(50, 80), seed=10))
    assert not all(same(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("cfg, message", [
    ({"witness_rate": [0.1, 0.01]}, "witness_rate must be"),
    ({"salient_test": 1.5}, "salient_test must be in"),
    ({"n_test": 2}, "n_train and n_test must be >= 4"),
    ({"colour": 1}, r"unknown key\(s\) \['colour'\]"),
])
def test_bad_model_names_its_key(cfg, message):
    with pytest.raises(ValueError, match=message):
        BagModel.from_config(cfg)


def test_splits_test_only_test_pool_once_per_seed_and_train_only_development(bank):
    m = BagModel(n_train=40, n_test=32, bag_size=(20, 30), seed=0)
    bags = generate_bags(bank, m)
    rows = [{"slide": b.slide, "case": b.slide, "label": "pos" if b.label else "neg", "pool": b.pool} for b in bags]
    pool = {r["slide"]: r["pool"] for r in rows}
    for protocol in ("paper", "clean"):
        splits = simulated_splits(rows, 4, seed=1, protocol=protocol)
        tested = [r["slide"] for r in splits if r["role"] == "test"]
        assert sorted(tested) == sorted(s for s, p in pool.items() if p == "test")  # each test bag exactly once
        assert all(pool[r["slide"]] == "train" for r in splits if r["role"] in ("train", "val"))
        for k in range(4):
            fold = [r for r in splits if r["fold"] == k]
            dev = [r for r in fold if r["role"] in ("train", "val")]
            assert len(dev) == 30  # development fold k is left out of fold k
            assert {r["label"] for r in fold if r["role"] == "test"} == {"neg", "pos"}
            assert ({r["role"] for r in fold} == {"train", "val", "test"}) == (protocol == "clean")
    assert simulated_splits(rows, 4, 1, "clean") == simulated_splits(rows, 4, 1, "clean")
    assert simulated_splits(rows, 4, 1, "clean") != simulated_splits(rows, 4, 2, "clean")


def test_make_simulated_writes_readable_features_truth_manifest_splits(bank, tmp_path):
    m = BagModel(n_train=16, n_test=16, bag_size=(30, 60), witness_rate=(0.05, 0.1), hard_rate=0.05, seed=0)
    splits = {("clean", 0): tmp_path / "clean0.tsv", ("paper", 0): tmp_path / "paper0.tsv"}
    rows = make_simulated(bank, m, classes=["negative", "positive"], features_dir=tmp_path / "f",
                          manifest=tmp_path / "m.tsv", truth=tmp_path / "t.h5", summary=tmp_path / "s.json",
                          splits=splits, folds=4, cohort="simx")
    truth = read_truth(tmp_path / "t.h5")
    assert len(rows) == 32 and set(truth) == {r["slide"] for r in rows}
    with open(tmp_path / "m.tsv", newline="") as fh:
        manifest = list(csv.DictReader(fh, delimiter="\t"))
    for r in manifest:
        feats, coords = read_features(tmp_path / "f" / f"{r['slide']}.h5", expected_dim=DIM)
        kind = truth[r["slide"]]
        assert len(feats) == len(kind) == int(r["instances"]) and coords is not None
        assert int(r["witnesses"]) == int(((kind == SALIENT) | (kind == SUBTLE)).sum())
        assert (r["label"] == "positive") == (int(r["witnesses"]) > 0)
    assert len(read_splits(splits[("clean", 0)], 0)["val"]) > 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["model"]["seed"] == 0 and summary["pools"]["test"]["bags"] == 16
    from hardmil.utils import InputError

    with pytest.raises(InputError, match="no ground truth for 1 bag"):
        read_truth(tmp_path / "t.h5", ["nope"])


def test_project_bank_keeps_the_leading_components():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 30)) * np.linspace(5, 0.1, 30)
    b = project_bank(x[:150], x[150:], 4)
    assert b.normal.shape == (150, 4) and b.tumour.shape == (50, 4)
    assert 0.3 < b.info["explained_variance"] < project_bank(x[:150], x[150:], 8).info["explained_variance"] < 1
    full = project_bank(x[:150], x[150:], 0)
    assert full.normal.shape == (150, 30) and full.info["explained_variance"] == 1.0


def test_bank_from_slides_splits_patches_by_the_true_mask(tmp_path):
    """A slide cohort in the synthetic cohort's layout: tumour patches are those mostly inside the mask."""
    import cv2

    slides, feats_dir = tmp_path / "slides", tmp_path / "feats"
    slides.mkdir()
    (slides / "provenance.json").write_text(json.dumps({"mask_downsample": 16}))
    rows = []
    for i, label in enumerate(["tumour", "normal"]):
        mask = np.zeros((64, 64), np.uint8)  # 1024 x 1024 level-0 pixels, 4 x 4 patches of 256
        if label == "tumour":
            mask[:32, :32] = 255  # the top-left 2 x 2 patches are tumour
            mask[32:36, 32:64] = 255  # a quarter of two more patches: left out as borders
        cv2.imwrite(str(slides / f"s{i}.mask.png"), mask)
        coords = np.array([(x, y) for y in range(0, 1024, 256) for x in range(0, 1024, 256)])
        feats = np.zeros((16, 3), np.float32)
        feats[:, 0] = np.arange(16) + 100 * i
        write_features(feats_dir / f"s{i}.h5", feats, coords)
        rows.append(f"s{i}\ts{i}\t{label}")
    (tmp_path / "m.tsv").write_text("slide\tcase\tlabel\n" + "\n".join(rows) + "\n")
    b = bank_from_slides(tmp_path / "m.tsv", feats_dir, slides, patch_size=256, dim=0)
    assert b.info["n_tumour"] == 4 and b.info["n_normal"] == 16 + 10
    assert b.tumour.shape == (4, 3)
