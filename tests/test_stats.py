"""Paired Δ with confidence intervals (hardmil.eval.stats): known answers and coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from hardmil.eval.stats import metric_value, paired_delta, resolved_label


def _binormal(rng, n_pos, n_neg, mu_base, mu_method, rho=0.6):
    """Scores of two correlated 'models' whose population AUCs are Phi(mu / sqrt(2))."""
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    e1 = rng.standard_normal(len(y))
    e2 = rng.standard_normal(len(y))
    base = mu_base * y + e1
    method = mu_method * y + rho * e1 + math.sqrt(1 - rho**2) * e2
    return y, method, base


@pytest.mark.parametrize("metric", ["auc", "balanced_accuracy"])
def test_identical_predictions_give_zero_width_interval(metric):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    probs = rng.dirichlet([1, 1], 60)
    r = paired_delta(y, probs, probs.copy(), metric, n_boot=300)
    assert r["delta"] == 0 and r["lo"] == 0 and r["hi"] == 0
    assert not r["excludes_zero"] and resolved_label(r) == "not resolved"
    assert r["n"] == 60 and r["method"] == "bootstrap" and r["metric"] == metric


def test_identical_risks_c_index_zero():
    rng = np.random.default_rng(2)
    time = rng.exponential(10, 80).round(1)  # ties in time
    event = rng.random(80) < 0.6
    risk = np.round(rng.standard_normal(80), 1)  # ties in risk
    r = paired_delta((time, event), risk, risk.copy(), "c_index", n_boot=200)
    assert (r["delta"], r["lo"], r["hi"]) == (0, 0, 0)


def test_metrics_match_reference_implementations():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 50)
    score = np.round(rng.random(50), 1)  # many ties
    assert metric_value(y, score, "auc") == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    probs = np.c_[1 - score, score]
    assert metric_value(y, probs, "auc") == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert metric_value(y, probs, "balanced_accuracy") == pytest.approx(
        balanced_accuracy_score(y, probs.argmax(1)), abs=1e-12)
    y3 = rng.integers(0, 3, 90)
    p3 = rng.dirichlet([1, 1, 1], 90)
    assert metric_value(y3, p3, "auc") == pytest.approx(
        roc_auc_score(y3, p3, multi_class="ovr", average="macro"), abs=1e-12)
    assert metric_value(y3, p3, "balanced_accuracy") == pytest.approx(
        balanced_accuracy_score(y3, p3.argmax(1)), abs=1e-12)


def test_c_index_matches_scikit_survival():
    sksurv = pytest.importorskip("sksurv.metrics")
    rng = np.random.default_rng(4)
    time = rng.integers(1, 15, 70).astype(float)  # many tied times
    event = rng.random(70) < 0.5
    risk = np.round(rng.standard_normal(70), 1)
    expected = sksurv.concordance_index_censored(event, time, risk, tied_tol=1e-8)[0]
    assert metric_value({"time": time, "event": event}, risk, "c_index") == pytest.approx(expected, abs=1e-12)


def test_c_index_by_hand():
    # times 1(event) 2(event) 3(censored); risks 3, 1, 2: pairs (1,2) concordant, (1,3) concordant,
    # (2,3) discordant -> 2/3
    assert metric_value(([1, 2, 3], [1, 1, 0]), [3.0, 1.0, 2.0], "c_index") == pytest.approx(2 / 3)


def test_constructed_gain_recovered_at_nominal_rate():
    """A known population ΔAUC lies in the 95 % interval in about 95 % of simulated test sets."""
    rng = np.random.default_rng(5)
    mu_b, mu_m = 1.0, 1.5
    true = norm.cdf(mu_m / math.sqrt(2)) - norm.cdf(mu_b / math.sqrt(2))  # ~0.094
    sims, covered, excl, deltas = 300, 0, 0, []
    for k in range(sims):
        y, sm, sb = _binormal(rng, 50, 50, mu_b, mu_m)
        r = paired_delta(y, sm, sb, "auc", n_boot=400, seed=k)
        covered += r["lo"] <= true <= r["hi"]
        excl += r["excludes_zero"]
        deltas.append(r["delta"])
    assert abs(np.mean(deltas) - true) < 0.01
    assert 0.90 <= covered / sims <= 0.985, covered / sims
    assert excl / sims > 0.5  # the gain is large enough to be resolved most of the time


def test_no_gain_resolved_at_about_the_false_positive_rate():
    rng = np.random.default_rng(6)
    sims, excl = 150, 0
    for k in range(sims):
        y, sm, sb = _binormal(rng, 60, 60, 1.0, 1.0)
        excl += paired_delta(y, sm, sb, "auc", n_boot=400, seed=k)["excludes_zero"]
    assert excl / sims <= 0.12


def test_groups_average_per_group_differences_and_share_bags_across_seeds():
    rng = np.random.default_rng(7)
    n = 40
    y = np.r_[np.ones(20, int), np.zeros(20, int)]
    ids = np.array([f"s{i}" for i in range(n)])
    rows_y, rows_m, rows_b, groups, clusters, expected = [], [], [], [], [], []
    for seed in range(2):
        fold_of = rng.permutation(np.arange(n) % 4)
        for fold in range(4):
            sel = np.flatnonzero(fold_of == fold)
            sm, sb = rng.random(len(sel)) + 0.3 * y[sel], rng.random(len(sel))
            rows_y.append(y[sel])
            rows_m.append(sm)
            rows_b.append(sb)
            groups += [f"{seed}/{fold}"] * len(sel)
            clusters += list(ids[sel])
            expected.append(metric_value(y[sel], sm) - metric_value(y[sel], sb))
    r = paired_delta(np.concatenate(rows_y), np.concatenate(rows_m), np.concatenate(rows_b), groups=groups,
                     clusters=clusters, n_boot=300)
    assert r["delta"] == pytest.approx(np.nanmean(expected))
    assert r["n"] == n and r["n_groups"] == 8
    assert r["lo"] <= r["delta"] <= r["hi"]
    # the per-repetition form (one list entry per group) gives the same point estimate
    r2 = paired_delta(rows_y, rows_m, rows_b, n_boot=300)
    assert r2["delta"] == pytest.approx(r["delta"]) and r2["n_groups"] == 8


def test_swapping_method_and_baseline_mirrors_the_interval():
    rng = np.random.default_rng(8)
    y, sm, sb = _binormal(rng, 30, 30, 0.8, 1.2)
    a = paired_delta(y, sm, sb, n_boot=500, seed=3)
    b = paired_delta(y, sb, sm, n_boot=500, seed=3)
    assert a["delta"] == pytest.approx(-b["delta"])
    assert a["lo"] == pytest.approx(-b["hi"]) and a["hi"] == pytest.approx(-b["lo"])


def test_corrected_t_known_answer():
    y = [np.array([0, 1, 0, 1])] * 3
    base = [np.array([0.1, 0.9, 0.2, 0.8])] * 3  # AUC 1 in every group
    meth = [np.array([0.5, 0.4, 0.1, 0.9]), np.array([0.1, 0.9, 0.2, 0.8]), np.array([0.9, 0.1, 0.8, 0.2])]
    # per-group ΔAUC: 0.75 - 1, 0, 0 - 1 -> d = [-0.25, 0, -1]
    r = paired_delta(y, meth, base, procedure="corrected_t", test_train_ratio=0.25)
    d = np.array([-0.25, 0.0, -1.0])
    from scipy.stats import t

    half = t.ppf(0.975, 2) * math.sqrt((1 / 3 + 0.25) * d.var(ddof=1))
    assert r["delta"] == pytest.approx(d.mean())
    assert (r["lo"], r["hi"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert r["method"] == "corrected_t" and not r["excludes_zero"]


def test_bad_input_is_named():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="metric"):
        paired_delta(y, s, s, "precision")
    with pytest.raises(ValueError, match="two strata"):
        paired_delta(y, s, s, clusters=["a", "a", "b", "c"], groups=[0, 1, 0, 1])
    with pytest.raises(ValueError, match="same bag twice"):
        paired_delta(y, s, s, clusters=["a", "a", "b", "c"], strata=[0, 0, 0, 0])
    with pytest.raises(ValueError, match="same rows"):
        paired_delta(y, s, s[:3])
    with pytest.raises(ValueError, match="test_train_ratio"):
        paired_delta(y, s, s, procedure="corrected_t")


def test_input_forms():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 40)
    p = rng.dirichlet([1, 1], 40)
    q = rng.dirichlet([1, 1], 40)
    flat = paired_delta(y, p, q, n_boot=200)
    nested = paired_delta(y.tolist(), p.tolist(), q.tolist(), n_boot=200)  # plain lists are one flat sample
    assert nested["n_groups"] == 1 and nested["delta"] == pytest.approx(flat["delta"])
    assert (nested["lo"], nested["hi"]) == pytest.approx((flat["lo"], flat["hi"]))
    t = rng.exponential(5, 40)
    e = rng.random(40) < 0.7
    r1, r2 = rng.standard_normal(40), rng.standard_normal(40)
    structured = np.zeros(40, dtype=[("event", bool), ("time", float)])
    structured["event"], structured["time"] = e, t
    a = paired_delta(structured, r1, r2, "c_index", n_boot=200)
    b = paired_delta({"time": t, "event": e}, r1, r2, "c_index", n_boot=200)
    c = paired_delta([(t[:20], e[:20]), (t[20:], e[20:])], [r1[:20], r1[20:]], [r2[:20], r2[20:]], "c_index",
                     n_boot=200)
    assert a["delta"] == pytest.approx(b["delta"]) and c["n_groups"] == 2
    assert c["delta"] == pytest.approx(np.mean([metric_value((t[s], e[s]), r1[s], "c_index")
                                                - metric_value((t[s], e[s]), r2[s], "c_index")
                                                for s in (slice(0, 20), slice(20, 40))]))


def test_threshold_metrics_match_scikit_learn():
    """accuracy / f1 / macro_f1 (unit weights) equal scikit-learn's, for decisions, probabilities and C = 3."""
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 40)
    p = rng.random(40)
    decisions = (p >= 0.37).astype(float)  # a run's own threshold, applied before the comparison
    assert metric_value(y, decisions, "accuracy") == pytest.approx(accuracy_score(y, decisions))
    assert metric_value(y, decisions, "f1") == pytest.approx(f1_score(y, decisions))
    assert metric_value(y, decisions, "macro_f1") == pytest.approx(f1_score(y, decisions, average="macro"))
    assert metric_value(y, np.zeros(40), "f1") == 0.0  # nothing predicted positive: zero_division=0
    y3 = rng.integers(0, 3, 60)
    p3 = rng.dirichlet([1, 1, 1], 60)
    pred = p3.argmax(1)
    assert metric_value(y3, p3, "accuracy") == pytest.approx(accuracy_score(y3, pred))
    assert metric_value(y3, p3, "f1") == pytest.approx(f1_score(y3, pred, labels=[0, 1, 2], average="macro",
                                                                 zero_division=0))
    p3[:, 2] = 0  # class 2 never predicted; it still occurs among the labels
    assert metric_value(y3, p3, "macro_f1") == pytest.approx(f1_score(y3, p3.argmax(1), average="macro",
                                                                       zero_division=0))


def test_threshold_metric_bootstrap_equals_the_metric_on_resampled_bags():
    """A replicate's weighted accuracy / F1 is the metric on the list of bags it drew (multiplicities)."""
    from sklearn.metrics import f1_score

    from hardmil.eval import stats

    rng = np.random.default_rng(12)
    y = rng.integers(0, 2, 30)
    d = (rng.random(30) < 0.5).astype(float)
    counts = rng.multinomial(30, np.full(30, 1 / 30), size=3).astype(float)
    for k in range(3):
        idx = np.repeat(np.arange(30), counts[k].astype(int))
        assert stats._weighted_f1(y, d, counts[k:k + 1])[0] == pytest.approx(f1_score(y[idx], d[idx]))
        assert stats._weighted_accuracy(y, d, counts[k:k + 1])[0] == pytest.approx((y[idx] == d[idx]).mean())


def test_threshold_metric_gain_is_resolved_and_identical_decisions_are_not():
    rng = np.random.default_rng(13)
    y = np.r_[np.ones(150, int), np.zeros(150, int)]
    base = np.where(rng.random(300) < 0.7, y, 1 - y).astype(float)  # 70 % right
    better = np.where(rng.random(300) < 0.5, y, base).astype(float)  # fixes about half of the mistakes
    r = paired_delta(y, better, base, "accuracy", n_boot=500)
    assert r["delta"] > 0.08 and r["excludes_zero"]
    assert not paired_delta(y, base, base.copy(), "f1", n_boot=200)["excludes_zero"]
