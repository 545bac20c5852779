import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hardmil.eval.metrics import auc, classification_metrics, threshold_metrics, youden_threshold


def test_threshold_metrics_hand_computed():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.6])
    # threshold 0.5 -> predictions 1,1,0,1,0,0,0,1: TP=3 FN=1 FP=1 TN=3
    m = threshold_metrics(y, s, 0.5)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(0.75)
    assert m["fpr"] == pytest.approx(1 / 4)


def test_threshold_is_inclusive_and_no_positive_predictions():
    y = np.array([0, 1])
    assert threshold_metrics(y, np.array([0.2, 0.5]), 0.5)["recall"] == 1.0
    m = threshold_metrics(y, np.array([0.2, 0.4]), 0.5)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["fpr"] == 0.0


def test_youden_threshold_hand_case():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.35, 0.6, 0.4, 0.8, 0.9])
    # candidates: >=0.9: J=1/3; >=0.8: 2/3; >=0.6: 2/3-1/3; >=0.4: 1-1/3=2/3; >=0.35: 1-2/3; ...
    # max J = 2/3 reached first (highest threshold) at 0.8
    assert youden_threshold(y, s) == pytest.approx(0.8)
    y2 = np.array([0, 0, 1, 1])
    assert youden_threshold(y2, np.array([0.1, 0.2, 0.7, 0.9])) == pytest.approx(0.7)  # perfect split


def test_youden_needs_two_classes():
    with pytest.raises(ValueError, match="both classes"):
        youden_threshold(np.array([1, 1]), np.array([0.1, 0.2]))


def test_auc_binary_hand_and_multiclass_vs_sklearn():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    # pairs (pos, neg): (0.35 vs 0.1) ok, (0.35 vs 0.4) wrong, (0.8 vs both) ok -> 3/4
    assert auc(y, probs) == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    y3 = np.array([0, 1, 2] * 5)
    p3 = rng.dirichlet(np.ones(3), size=15)
    assert auc(y3, p3) == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr", average="macro"))


def test_classification_metrics_argmax_and_multiclass():
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    m = classification_metrics(y, probs, threshold=0.5)
    # argmax predictions 0,2,2,1: per-class recall 1, 0, 0.5 -> balanced accuracy 0.5
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    # C > 2: no threshold; accuracy at argmax and macro precision / recall / F1 over the three classes
    # (class 0: P 1, R 1; class 1: P 0, R 0; class 2: P 1/2, R 1/2), no FPR
    assert m["accuracy"] == m["accuracy_argmax"]
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert "fpr" not in m
    assert m["accuracy_argmax"] == pytest.approx(0.5)
