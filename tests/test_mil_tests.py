"""The MIL-assumption unit tests (hardmil.data.mil_tests, hardmil.report.mil_tests; docs/mil_tests.md)."""

import json

import numpy as np
import pytest
import torch

from hardmil.data.bags import Bag
from hardmil.data.bagset import BagSet
from hardmil.data.mil_tests import (
    BACKGROUND,
    CONCEPT_A,
    CONCEPT_B,
    POISON,
    TestModel,
    generate_test_bags,
    make_mil_test,
)
from hardmil.data.simulated import read_truth
from hardmil.models import build_model
from hardmil.report.claims import _auc
from hardmil.report.mil_tests import mil_test_records, summarise, verdict
from hardmil.train.loop import TrainConfig, train
from hardmil.utils import InputError, write_tsv


def _counts(bags, pool, label, kind):
    return [int((b.kind == kind).sum()) for b in bags if b.pool == pool and b.label == label]


def test_standard_places_the_poison_as_the_paper():
    bags = generate_test_bags(TestModel(test="standard", n_train=40, n_test=40, seed=3))
    assert all(c > 0 for c in _counts(bags, "train", 0, POISON))  # every negative development bag
    assert not any(_counts(bags, "train", 1, POISON))  # never a positive development bag
    assert all(c > 0 for c in _counts(bags, "test", 1, POISON))  # every positive test bag
    assert not any(_counts(bags, "test", 0, POISON))  # never a negative test bag
    for b in bags:  # the MIL label: positive iff concept A is present
        assert b.label == int((b.kind == CONCEPT_A).any())


def test_threshold_and_frequency_labels_are_two_concept_presence():
    for test in ("threshold", "frequency"):
        bags = generate_test_bags(TestModel(test=test, n_train=40, n_test=40, seed=1))
        for b in bags:
            both = (b.kind == CONCEPT_A).any() and (b.kind == CONCEPT_B).any()
            assert b.label == int(both)
            assert b.label or (b.kind == CONCEPT_A).any() or (b.kind == CONCEPT_B).any()  # negatives: one concept
    freq = generate_test_bags(TestModel(test="frequency", n_train=40, n_test=40, test_frequency=5, seed=1))
    one = {(b.pool, int(((b.kind == CONCEPT_A) | (b.kind == CONCEPT_B)).sum())) for b in freq if b.label == 0}
    assert one == {("train", 1), ("test", 5)}
    assert not any((b.kind == POISON).any() for b in freq)
    thr = generate_test_bags(TestModel(test="threshold", n_train=40, n_test=40, seed=1))
    assert all(c > 0 for c in _counts(thr, "train", 0, POISON)) and not any(_counts(thr, "test", 0, POISON))
    assert all(c > 0 for c in _counts(thr, "test", 1, POISON)) and not any(_counts(thr, "train", 1, POISON))


def test_generator_is_seeded_and_checks_its_model(tmp_path):
    a, b = (generate_test_bags(TestModel(seed=4, n_train=8, n_test=8)) for _ in range(2))
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.features, y.features) and np.array_equal(x.kind, y.kind)
    with pytest.raises(ValueError, match="test must be one of"):
        TestModel(test="collective")
    with pytest.raises(ValueError, match="bag_size low"):
        TestModel(bag_size=(3, 5), witnesses=(1, 3))
    with pytest.raises(ValueError, match="unknown key"):
        TestModel.from_config({"tests": "standard"})
    rows = make_mil_test(TestModel(n_train=20, n_test=8), classes=["negative", "positive"],
                         features_dir=tmp_path / "f", manifest=tmp_path / "m.tsv", truth=tmp_path / "t.h5",
                         summary=tmp_path / "s.json", splits={("clean", 0): tmp_path / "split.tsv"})
    truth = read_truth(tmp_path / "t.h5")
    assert set(truth) == {r["slide"] for r in rows} and (tmp_path / "split.tsv").exists()
    assert {int(k) for t in truth.values() for k in np.unique(t)} <= {BACKGROUND, CONCEPT_A, POISON}


def test_verdicts_and_report(tmp_path):
    assert summarise([0.9, 0.85, 0.95])["verdict"] == "pass"
    assert summarise([0.1, 0.2, 0.15])["verdict"] == "fail"
    assert summarise([0.3, 0.7, 0.5])["verdict"] == "undecided"
    assert verdict(0.51, 0.9) == "pass" and verdict(0.1, 0.49) == "fail"
    jobs = {"t": {"m": []}}
    for seed in range(3):
        for fold in range(2):
            path = tmp_path / f"{seed}_{fold}.tsv"
            rows = [{"slide": f"b{fold}_{i}", "label_index": i % 2, "prob_pos": (i % 2) * 0.2 + 0.4}
                    for i in range(6)]  # positives 0.6, negatives 0.4: AUC 1
            write_tsv(path, rows)
            metrics = tmp_path / f"{seed}_{fold}.json"
            metrics.write_text(json.dumps({"selection": {"auc": 0.5 + 0.1 * seed}}))
            jobs["t"]["m"].append({"seed": seed, "fold": fold, "predictions": str(path), "metrics": str(metrics)})
    (rec,) = mil_test_records({"tests": {"t": "T"}, "rows": {"m": "M"}, "level": 0.95}, jobs, {"t": ["neg", "pos"]})
    assert rec["auc"] == 1.0 and rec["n_seeds"] == 3 and rec["n_bags"] == 12
    assert rec["val_auc"] == pytest.approx(0.6)  # the selection AUC, averaged over the 6 fold runs
    from hardmil.report.mil_tests import markdown

    assert "(0/3 < 0.5; val 0.60)" in markdown([rec], "T", "")
    metrics.write_text("{}")
    with pytest.raises(InputError, match="no selection AUC"):
        mil_test_records({"tests": {"t": "T"}, "rows": {"m": "M"}, "level": 0.95}, jobs, {"t": ["neg", "pos"]})


def _test_auc(name: str, seed: int, **params) -> float:
    """Train ``name`` on the standard poisoned test (80 training, 20 selection bags) and score its test bags."""
    model_def = TestModel(test="standard", n_train=100, n_test=100, seed=seed)
    bags = generate_test_bags(model_def)
    dev = [b for b in bags if b.pool == "train"]
    test = [b for b in bags if b.pool == "test"]

    def bagset(bs):
        return BagSet([Bag(b.slide, b.slide, b.label, b.features) for b in bs])

    torch.manual_seed(seed)
    model = build_model(name, in_dim=model_def.dim, **params)
    res = train(model, bagset(dev[:80]), bagset(dev[80:]),
                TrainConfig(epochs=15, patience=15, seed=seed, lr=2e-4, weight_decay=1e-5), progress=False)
    model.load_state_dict(res.best_state)
    model.eval()
    with torch.no_grad():
        p = [torch.softmax(model(torch.as_tensor(b.features)[None]).logits, -1)[0, 1].item() for b in test]
    return _auc([b.label for b in test], p)


def test_max_mil_passes_and_mean_mil_fails_the_poison_test():
    """The single-concept poisoned test separates a model that can only use positive evidence (max-MIL in its
    standard-MIL form: the bag score is the max of one score per instance) from one that can use the poison as
    negative evidence (mean-MIL): the first keeps a high test AUC, the second ranks the test bags upside down."""
    torch.set_num_threads(1)
    max_aucs = [_test_auc("maxmil", s, pool="instance_score") for s in range(3)]
    mean_aucs = [_test_auc("meanmil", s) for s in range(3)]
    assert summarise(max_aucs)["verdict"] == "pass", max_aucs
    assert summarise(mean_aucs)["verdict"] == "fail", mean_aucs
    assert min(max_aucs) > 0.5 > max(mean_aucs)


def test_instance_score_max_mil_cannot_use_negative_evidence():
    """Adding an instance never lowers the positive probability of max-MIL's standard-MIL form; the reference
    per-class max can (its negative logit is a max over instances too)."""
    torch.manual_seed(0)
    x = torch.randn(1, 12, 8)
    extra = torch.randn(1, 200, 8) * 3
    for pool, monotone in (("instance_score", True), ("instance_logits", False)):
        model = build_model("maxmil", in_dim=8, dropout=0.0, pool=pool).eval()
        with torch.no_grad():
            base = torch.softmax(model(x).logits, -1)[0, 1]
            more = torch.stack([torch.softmax(model(torch.cat([x, extra[:, i:i + 1]], 1)).logits, -1)[0, 1]
                                for i in range(extra.shape[1])])
        assert bool((more >= base - 1e-6).all()) is monotone, pool
    with pytest.raises(ValueError, match="instance_score"):
        build_model("meanmil", in_dim=8, pool="instance_score")
