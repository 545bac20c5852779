"""Li et al. (MICCAI 2019): eq. (2) adaptive weighting, eq. (3) selection, SB / MB / FMB generation."""

import json

import numpy as np
import pytest
import torch

from hardmil.data.bags import Bag, read_manifest
from hardmil.data.splits import make_splits, write_splits
from hardmil.mining.hardneg import (
    HardNegConfig,
    Pool,
    bag_sizes,
    generate,
    mine,
    random_pool,
    read_generated,
    rng_for,
    select_hard,
    write_generated,
)
from hardmil.mining.run import generate_fold
from hardmil.models import build_model
from hardmil.train.run import run_fold, training_bags

from .conftest import make_cohort


def test_eq2_weighting_hand_built_bag():
    m = build_model("li2019", in_dim=4)
    w = torch.tensor([[0.5, 0.3, 0.1, 0.1]])  # mean 0.25: the last two are pseudo-negatives
    assert torch.allclose(m.adaptive_weights(w, None), torch.tensor([[0.5, 0.3, 0.2, 0.2]]))
    d = build_model("li2019", in_dim=4, lambda_mode="divide")
    assert torch.allclose(d.adaptive_weights(w, None), torch.tensor([[0.5, 0.3, 0.05, 0.05]]))
    # with padding, the mean is over real instances only: mean(0.6, 0.4) = 0.5 -> only 0.4 is scaled
    wp = torch.tensor([[0.6, 0.4, 0.0]])
    mask = torch.tensor([[True, True, False]])
    assert torch.allclose(m.adaptive_weights(wp, mask), torch.tensor([[0.6, 0.8, 0.0]]))


def test_eq1_eq2_forward_matches_hand_computation():
    torch.manual_seed(0)
    m = build_model("li2019", in_dim=6).eval()
    x = torch.randn(1, 5, 6)
    out = m(x)
    h = m.embed(x)
    s = m.attn_v.weight @ (m.attn_u(h) / (1 + m.attn_u(h).abs()))[0].T  # v^T softsign(U g)
    w = torch.softmax(s[0], 0)
    assert torch.allclose(out.attention[0], w, atol=1e-6)
    eff = torch.where(w < w.mean(), 2 * w, w)
    assert torch.allclose(out.embedding[0], (eff[:, None] * h[0]).sum(0), atol=1e-5)
    assert torch.allclose(m.effective_weights[0], eff, atol=1e-6)
    plain = build_model("li2019", in_dim=6, adaptive=False).eval()
    plain.load_state_dict(m.state_dict())
    assert torch.allclose(plain(x).embedding[0], (w[:, None] * h[0]).sum(0), atol=1e-5)


def test_li2019_padding_and_permutation():
    torch.manual_seed(0)
    m = build_model("li2019", in_dim=6).eval()
    x = torch.randn(1, 5, 6)
    padded = torch.cat([x, torch.randn(1, 2, 6)], 1)
    mask = torch.tensor([[True] * 5 + [False] * 2])
    assert torch.allclose(m(x).logits, m(padded, mask).logits, atol=1e-6)
    perm = torch.randperm(5)
    assert torch.allclose(m(x).logits, m(x[:, perm]).logits, atol=1e-6)
    with pytest.raises(ValueError, match="lambda_mode"):
        build_model("li2019", in_dim=6, lambda_mode="square")


def test_eq3_selection():
    # mean 0.25, population std 0.15 -> threshold 0.40, inclusive
    assert select_hard(np.array([0.4, 0.4, 0.1, 0.1])).tolist() == [0, 1]
    # mean 0.25, std 0.2598 -> only the 0.7
    assert select_hard(np.array([0.1, 0.1, 0.1, 0.7])).tolist() == [3]
    assert select_hard(np.full(4, 0.25)).tolist() == [0, 1, 2, 3]  # std 0: every weight equals the mean


def _bag(slide, label, n, offset=0.0):
    return Bag(slide, slide, label, np.arange(n * 2, dtype=np.float32).reshape(n, 2) + offset)


def test_mine_false_positives_and_top_up():
    bags = [_bag("p", 1, 4), _bag("n1", 0, 4), _bag("n2", 0, 4), _bag("n3", 0, 4)]
    probs = np.array([[0.1, 0.9], [0.3, 0.7], [0.8, 0.2], [0.6, 0.4]])
    w = [np.array([0.4, 0.4, 0.1, 0.1])] * 4
    pool, rec = mine(probs, w, bags)
    assert [r["slide"] for r in rec] == ["n1"]  # the positive bag is never mined
    assert pool.slides == ["n1", "n1"] and pool.indices == [0, 1]
    assert np.array_equal(pool.features, bags[1].features[[0, 1]])
    pool, rec = mine(probs, w, bags, min_bags=3)
    assert [(r["slide"], r["reason"]) for r in rec] == [("n1", "false_positive"), ("n3", "hardest_negative"),
                                                        ("n2", "hardest_negative")]
    assert len(pool) == 6


def _clustered_pool(sizes=(10, 30, 60), seed=0):
    rng = np.random.default_rng(seed)
    feats = np.concatenate([rng.normal(loc=20 * j, scale=0.1, size=(n, 3)) for j, n in enumerate(sizes)])
    truth = np.repeat(np.arange(len(sizes)), sizes)
    return Pool(feats, [f"s{i}" for i in range(len(feats))], list(range(len(feats)))), truth


def test_sb_and_mb():
    pool, _ = _clustered_pool()
    rng = np.random.default_rng(0)
    sb = generate(pool, HardNegConfig(generator="sb"), [20, 30], rng)
    assert len(sb) == 1 and sorted(sb[0].tolist()) == list(range(100))
    mb = generate(pool, HardNegConfig(generator="mb", n_bags=7), [20, 25, 30, 40], rng)
    assert len(mb) == 7 and all(20 <= len(b) <= 40 and len(set(b.tolist())) == len(b) for b in mb)
    assert generate(Pool(np.zeros((0, 3))), HardNegConfig(generator="fmb"), [5], rng) == []


def test_fmb_sizes_in_bounds_and_cluster_shares():
    pool, truth = _clustered_pool()
    train_sizes = [21, 25, 30, 33, 40, 26, 38]
    cfg = HardNegConfig(generator="fmb", n_bags=400, clusters=3)
    bags = generate(pool, cfg, train_sizes, np.random.default_rng(1), seed=0)
    sizes = np.array([len(b) for b in bags])
    assert sizes.min() >= 21 and sizes.max() <= 40
    assert abs(sizes.mean() - np.mean(train_sizes)) < 1.0
    drawn = truth[np.concatenate(bags)]
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    expected = np.array([0.1, 0.3, 0.6])
    se = np.sqrt(expected * (1 - expected) / len(drawn))
    assert np.all(np.abs(shares - expected) < 4 * se), shares
    # without replacement inside a cluster: the 10-instance cluster never repeats an instance in a bag
    # unless the bag drew it more than 10 times
    for b in bags[:50]:
        small = [i for i in b.tolist() if truth[i] == 0]
        assert len(set(small)) == min(len(small), 10)


def test_bag_sizes_clip():
    s = bag_sizes([10, 10, 10, 50], 1000, np.random.default_rng(0))
    assert s.min() == 10 and s.max() == 50


def test_same_seed_same_bags_and_round_trip(tmp_path):
    pool, _ = _clustered_pool()
    cfg = HardNegConfig(generator="fmb", n_bags=5, clusters=3)
    a = generate(pool, cfg, [20, 30], rng_for(1, 2, "v"), seed=3)
    b = generate(pool, cfg, [20, 30], rng_for(1, 2, "v"), seed=3)
    c = generate(pool, cfg, [20, 30], rng_for(1, 3, "v"), seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=False))
    write_generated(tmp_path / "bags.h5", pool, a, {"generator": "fmb"})
    back = read_generated(tmp_path / "bags.h5", expected_dim=3)
    assert [len(g) for g in back] == [len(x) for x in a] and all(g.label == 0 for g in back)
    assert np.allclose(back[0].features, pool.features[a[0]])
    assert back[0].extra["sources"] == [pool.slides[i] for i in a[0]]


def test_random_pool_draws_only_negative_instances():
    bags = [_bag("p", 1, 5, 1000), _bag("n1", 0, 5), _bag("n2", 0, 5)]
    pool = random_pool(bags, 6, np.random.default_rng(0))
    assert len(pool) == 6 and set(pool.slides) <= {"n1", "n2"}
    assert len(set(zip(pool.slides, pool.indices, strict=True))) == 6


def test_stage1_mining_and_stage2_training_set(tmp_path):
    classes = ["neg", "pos"]
    feats, manifest = make_cohort(tmp_path, n_bags=16, dim=8)
    write_splits(tmp_path / "splits.tsv", make_splits(read_manifest(manifest, classes), 4, 0, "paper"))
    common = dict(splits=tmp_path / "splits.tsv", features_dir=feats, classes=classes, fold=0, protocol="paper",
                  seed=0, model="li2019", model_params={}, train_cfg={"epochs": 2}, progress=False)
    run_fold(out_dir=tmp_path / "stage1", **common)
    cfg = {"generator": "mb", "n_bags": 3, "min_bags": 2}
    s1 = generate_fold(model_path=tmp_path / "stage1/model.pt", splits=tmp_path / "splits.tsv", features_dir=feats,
                       classes=classes, fold=0, seed=0, variant="v", cfg=cfg, out_dir=tmp_path / "hn")
    s2 = generate_fold(model_path=tmp_path / "stage1/model.pt", splits=tmp_path / "splits.tsv", features_dir=feats,
                       classes=classes, fold=0, seed=0, variant="v", cfg=cfg, out_dir=tmp_path / "hn2")
    assert s1["n_mined_bags"] >= 2 and s1["n_generated_bags"] == 3 and s2 == {**s1, "variant": "v"}
    assert (tmp_path / "hn/bags.h5").read_bytes() == (tmp_path / "hn2/bags.h5").read_bytes()  # same seed
    m = run_fold(out_dir=tmp_path / "stage2", extra_bags=tmp_path / "hn/bags.h5", **common)
    assert m["n_train"] == 12 and m["n_train_generated"] == 3
    summary = json.loads((tmp_path / "hn/summary.json").read_text())
    assert summary["n_generated_bags"] == 3
    originals = [Bag("a", "a", 1, np.ones((2, 8))), Bag("b", "b", 0, np.ones((3, 8)))]
    generated = read_generated(tmp_path / "hn/bags.h5")
    assert training_bags({"train": originals}, generated) == originals + generated


def test_unknown_generator_or_pool_is_an_error():
    with pytest.raises(ValueError, match="unknown generator 'xb'"):
        HardNegConfig(generator="xb")
    with pytest.raises(ValueError, match="unknown pool 'easy'"):
        HardNegConfig(pool="easy")
