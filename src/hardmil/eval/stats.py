"""Paired comparisons of two methods on identical test bags: Δ (method - baseline) with a confidence interval.

Procedure (default, ``procedure="bootstrap"``): a paired, stratified cluster bootstrap over test bags of the
out-of-fold predictions, with percentile intervals.

* The evaluation units (``groups``, e.g. one per seed x fold) are those the tables average over: the point
  estimate is ``Δ = mean_g [metric(method, g) - metric(baseline, g)]``, so it equals the difference of the
  table's two mean columns.
* One bootstrap replicate draws test bags (``clusters``: a slide or case id) with replacement, separately
  within each stratum (``strata``; by default the class, or for survival the event indicator, so every
  replicate keeps the cohort's class balance). A drawn bag enters every group it belongs to (every seed)
  with its multiplicity, and the method's and the baseline's predictions of that bag enter together: the
  pairing cancels the variation the two methods share (which bags are hard), which an unpaired comparison
  of two intervals would count twice.
* The interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the replicates' Δ; it
  "resolves" the comparison when it excludes 0.

What it assumes, and when it fails: the test bags are an i.i.d. sample of the cohort's population and the
trained models are held fixed, so the interval answers "would these trained models still differ on other
test bags from the same population?". Training randomness enters only through averaging over the seeds
in ``groups``; the variance from drawing another training set is not in the interval (the corrected
resampled t-test, below, is the procedure that includes it). With few test bags (< ~30 per class) the
percentile interval is too narrow (the bootstrap distribution of AUC is discrete and skewed) and a
replicate may miss a class inside a fold (that fold then drops out of that replicate's mean); many tied
scores make AUC and C-index replicates cluster on few values. Identical predictions give Δ = 0 in every
replicate, hence a zero-width interval.

Alternative (``procedure="corrected_t"``): the corrected resampled t-test of Nadeau & Bengio (2003, Machine
Learning 52:239) over the per-group differences ``d_g``: ``se^2 = (1 / J + n_test / n_train) s_d^2`` with
``J`` groups and a t distribution with ``J - 1`` degrees of freedom. It accounts for training-set variance,
but with 4-5 folds x few seeds it has few degrees of freedom, and its correction is a heuristic for
overlapping training sets.

Metrics (``metric``): ``auc`` (binary on P(class 1), macro one-vs-rest for C > 2; ties count 1/2, as
scikit-learn), ``balanced_accuracy`` (mean recall over the classes present, at argmax of the per-class
probabilities, or ``score >= 0.5`` for a 1-D score), ``accuracy`` (the share of bags whose prediction, by
the same rule, is right), ``f1`` (F1 of class 1 for two classes; macro over every class for C > 2, as
:func:`hardmil.eval.metrics.classification_metrics`), ``macro_f1`` (macro F1 over the classes that occur
among the labels or the predictions, as scikit-learn's ``f1_score(average="macro")``), and ``c_index``
(Harrell's, as scikit-survival's ``concordance_index_censored``: a pair is comparable when the earlier time
is an event, or when the times tie and only one is an event; risk ties within 1e-8 count 1/2). The
threshold metrics compare decisions, not scores: pass the two methods' 0/1 decisions as 1-D scores to
compare them at each run's own threshold (the tables do so with the Youden threshold every binary run
stores; :mod:`hardmil.report.tables`). With bootstrap multiplicities ``w`` each metric is its weighted form
(a pair of bags weighs ``w_i w_j``), which equals the metric on the resampled list of bags.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

METRICS = ("auc", "balanced_accuracy", "accuracy", "f1", "macro_f1", "c_index")
THRESHOLD_METRICS = ("accuracy", "f1")  # at a decision threshold for two classes (the tables: each run's own)
PROCEDURES = ("bootstrap", "corrected_t")
_CHUNK_ELEMENTS = 4_000_000  # bootstrap weights held at once (replicates x rows)


def _survival(y) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) from a mapping / structured array with ``time`` and ``event`` fields, or a (time, event) pair."""
    if isinstance(y, Mapping):
        time, event = y["time"], y["event"]
    elif isinstance(y, np.ndarray) and y.dtype.names:
        names = y.dtype.names
        if "time" not in names or "event" not in names:
            raise ValueError(f"survival labels: a structured array needs fields 'time' and 'event', not {names}")
        time, event = y["time"], y["event"]
    elif isinstance(y, tuple | list) and len(y) == 2:
        time, event = y
    else:
        raise ValueError("survival labels: give {'time': .., 'event': ..}, a structured array with those fields, "
                         "or a (time, event) tuple")
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    if time.shape != event.shape or time.ndim != 1:
        raise ValueError(f"survival labels: time {time.shape} and event {event.shape} must be equal-length 1-D arrays")
    return time, event


def _is_per_repetition(y, scores, survival: bool) -> bool:
    """The per-repetition form: the scores are a list of numpy arrays, one per evaluation unit, and so are the
    labels (survival: one label set per unit)."""
    if not (isinstance(scores, list) and scores and all(isinstance(s, np.ndarray) for s in scores)):
        return False
    if not isinstance(y, list | tuple) or len(y) != len(scores):
        return False
    return survival or all(np.ndim(v) >= 1 for v in y)


def _concat(parts, survival: bool):
    if survival:
        pairs = [_survival(p) for p in parts]
        return {"time": np.concatenate([t for t, _ in pairs]), "event": np.concatenate([e for _, e in pairs])}
    return np.concatenate([np.asarray(p) for p in parts])


# --- weighted metrics: W is [B, n] (bootstrap multiplicities of the rows of one group) -------------------
def _ratio(num: np.ndarray, den: np.ndarray, empty: float = np.nan) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), empty)


def _weighted_auc_binary(pos: np.ndarray, score: np.ndarray, W: np.ndarray) -> np.ndarray:
    order = np.argsort(score, kind="stable")
    s = score[order]
    p = pos[order].astype(float)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    Ws = W[:, order]
    wp = np.add.reduceat(Ws * p, starts, axis=1)  # positive weight per score level, ascending
    wn = np.add.reduceat(Ws * (1.0 - p), starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn
    num = (wp * (below + 0.5 * wn)).sum(axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    return _ratio(num, den)


def _weighted_auc(y: np.ndarray, score: np.ndarray, W: np.ndarray) -> np.ndarray:
    if score.ndim == 1:
        return _weighted_auc_binary(y == 1, score, W)
    if score.shape[1] == 2:
        return _weighted_auc_binary(y == 1, score[:, 1], W)
    per_class = np.stack([_weighted_auc_binary(y == c, score[:, c], W) for c in range(score.shape[1])], axis=1)
    return per_class.mean(axis=1)  # NaN when a class is absent (as scikit-learn's macro AUC raises)


def _decisions(score: np.ndarray) -> np.ndarray:
    """Predicted class per row: ``score >= 0.5`` for a 1-D score (P(class 1), or a 0/1 decision), else argmax."""
    return (score >= 0.5).astype(int) if score.ndim == 1 else score.argmax(axis=1)


def _weighted_accuracy(y: np.ndarray, score: np.ndarray, W: np.ndarray) -> np.ndarray:
    return _ratio(W @ (_decisions(score) == y).astype(float), W.sum(axis=1))


def _f1_per_class(y: np.ndarray, pred: np.ndarray, W: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(F1 of class ``c`` per replicate, with 0 where it has no true or predicted member, as scikit-learn's
    ``zero_division=0``; whether the class occurs at all)."""
    tp = W @ ((pred == c) & (y == c)).astype(float)
    wrong = W @ ((pred == c) != (y == c)).astype(float)  # false positives + false negatives
    return _ratio(2 * tp, 2 * tp + wrong, 0.0), (tp + wrong) > 0


def _weighted_f1(y: np.ndarray, score: np.ndarray, W: np.ndarray) -> np.ndarray:
    pred = _decisions(score)
    if score.ndim == 1 or score.shape[1] == 2:
        return _f1_per_class(y, pred, W, 1)[0]
    return np.stack([_f1_per_class(y, pred, W, c)[0] for c in range(score.shape[1])], axis=1).mean(axis=1)


def _weighted_macro_f1(y: np.ndarray, score: np.ndarray, W: np.ndarray) -> np.ndarray:
    pred = _decisions(score)
    n_classes = 2 if score.ndim == 1 else score.shape[1]
    f1, occurs = zip(*(_f1_per_class(y, pred, W, c) for c in range(n_classes)), strict=True)
    f1, occurs = np.stack(f1, axis=1), np.stack(occurs, axis=1)
    return _ratio((f1 * occurs).sum(axis=1), occurs.sum(axis=1).astype(float))


def _weighted_balanced_accuracy(y: np.ndarray, score: np.ndarray, W: np.ndarray) -> np.ndarray:
    pred = _decisions(score)
    correct = (pred == y).astype(float)
    recalls = []
    for c in np.unique(y):
        in_c = (y == c).astype(float)
        total = W @ in_c
        recalls.append(_ratio(W @ (in_c * correct), total))
    return np.nanmean(np.stack(recalls, axis=1), axis=1) if recalls else np.full(W.shape[0], np.nan)


def _weighted_c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray, W: np.ndarray,
                      tied_tol: float = 1e-8) -> np.ndarray:
    ti, tj = time[:, None], time[None, :]
    comparable = event[:, None] & ((ti < tj) | ((ti == tj) & ~event[None, :]))
    diff = risk[:, None] - risk[None, :]
    credit = np.where(np.abs(diff) <= tied_tol, 0.5, (diff > 0).astype(float)) * comparable
    num = ((W @ credit) * W).sum(axis=1)
    den = ((W @ comparable.astype(float)) * W).sum(axis=1)
    return _ratio(num, den)


def _metric_fn(metric: str):
    return {"auc": _weighted_auc, "balanced_accuracy": _weighted_balanced_accuracy, "accuracy": _weighted_accuracy,
            "f1": _weighted_f1, "macro_f1": _weighted_macro_f1}[metric]


def _group_values(metric: str, y, score: np.ndarray, rows: np.ndarray, W: np.ndarray) -> np.ndarray:
    if metric == "c_index":
        return _weighted_c_index(y["time"][rows], y["event"][rows], score[rows], W)
    return _metric_fn(metric)(y[rows], score[rows], W)


def metric_value(y, score, metric: str = "auc") -> float:
    """The metric of one evaluation with every bag weighing 1 (the same code the bootstrap uses)."""
    survival = metric == "c_index"
    yy = dict(zip(("time", "event"), _survival(y), strict=True)) if survival else np.asarray(y)
    score = np.asarray(score, dtype=float)
    return float(_group_values(metric, yy, score, np.arange(len(score)), np.ones((1, len(score))))[0])


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_delta(y, score_method, score_base, metric: str = "auc", *, strata=None, groups=None, clusters=None,
                 n_boot: int = 2000, level: float = 0.95, seed: int = 0, procedure: str = "bootstrap",
                 test_train_ratio: float | None = None) -> dict:
    """Δ = metric(method) - metric(baseline) on identical test bags, with a ``level`` interval.

    ``y``: class labels ``[n]`` (classification) or, for ``metric="c_index"``, survival labels: a mapping or
    structured array with ``time`` and ``event`` fields, or a ``(time, event)`` tuple. ``score_method`` /
    ``score_base``: the two methods' out-of-fold predictions of the same rows, ``[n]`` (P(class 1), or a
    risk for the C-index) or ``[n, C]`` class probabilities. ``groups`` ``[n]``: the evaluation unit of each
    row (e.g. ``"seed0/fold3"``); the metric is computed per group and averaged (None: one group).
    ``clusters`` ``[n]``: the bag (slide or case) id of each row, the unit of resampling, shared by a bag's
    rows across seeds (None: every row its own bag). ``strata`` ``[n]``: resampling strata, constant within a
    cluster (None: the class, or the event indicator for survival).

    Per-repetition form: ``y``, the scores (and ``strata`` / ``clusters`` if given) may instead be lists with
    one entry per evaluation unit (the scores as numpy arrays); the list index is then the group.

    Returns ``{"delta", "lo", "hi", "excludes_zero", "n", "method", "metric"}`` (``n``: test bags;
    ``method``: the procedure, ``"bootstrap"`` or ``"corrected_t"``) plus ``value_method``, ``value_base``
    (the two means), ``n_groups``, ``level`` and ``n_boot`` (replicates with a finite Δ)."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: choose from {METRICS}")
    if procedure not in PROCEDURES:
        raise ValueError(f"procedure {procedure!r}: choose from {PROCEDURES}")
    if not 0 < level < 1:
        raise ValueError(f"level {level}: must lie in (0, 1)")
    survival = metric == "c_index"
    if _is_per_repetition(y, score_method, survival):
        if groups is not None:
            raise ValueError("per-repetition lists carry their groups; do not pass groups as well")
        if not (len(score_method) == len(score_base) == len(y)):
            raise ValueError("per-repetition lists: y and both scores need one entry per repetition")
        groups = np.concatenate([np.full(len(s), k) for k, s in enumerate(score_method)])
        y = _concat(y, survival)
        strata = None if strata is None else np.concatenate([np.asarray(s) for s in strata])
        clusters = None if clusters is None else np.concatenate(
            [np.asarray(c, dtype=object) for c in clusters])
        score_method, score_base = np.concatenate(score_method), np.concatenate(score_base)
    if survival:
        time, event = _survival(y)
        y = {"time": time, "event": event}
        labels_for_strata = event.astype(int)
    else:
        y = np.asarray(y).astype(int)
        labels_for_strata = y
    sm = np.asarray(score_method, dtype=float)
    sb = np.asarray(score_base, dtype=float)
    n = len(labels_for_strata)
    if sm.shape != sb.shape or sm.shape[0] != n:
        raise ValueError(f"scores {sm.shape} / {sb.shape} and labels ({n}) must describe the same rows")
    if survival and sm.ndim != 1:
        raise ValueError("c_index: scores must be 1-D risks (higher = earlier event)")
    if not (np.isfinite(sm).all() and np.isfinite(sb).all()):
        raise ValueError("scores contain NaN or infinite values")
    groups = np.zeros(n, dtype=int) if groups is None else np.asarray(groups)
    clusters = np.arange(n) if clusters is None else np.asarray(clusters)
    strata = labels_for_strata if strata is None else np.asarray(strata)
    if not (len(groups) == len(clusters) == len(strata) == n):
        raise ValueError("groups, clusters and strata must have one entry per row")
    group_ids, group_of = np.unique(groups.astype(str), return_inverse=True)
    group_rows = [np.flatnonzero(group_of == g) for g in range(len(group_ids))]
    cluster_ids, cluster_of = np.unique(clusters.astype(str), return_inverse=True)
    for g, rows in enumerate(group_rows):
        if len(np.unique(cluster_of[rows])) != len(rows):
            raise ValueError(f"group {group_ids[g]!r} holds the same bag twice; a bag is tested once per group")

    ones = np.ones((1, n))
    per_group = np.array([[_group_values(metric, y, s, rows, ones[:, rows])[0] for s in (sm, sb)]
                          for rows in group_rows])  # [G, 2]
    d_groups = per_group[:, 0] - per_group[:, 1]
    out = {"delta": _nanmean(d_groups), "value_method": _nanmean(per_group[:, 0]),
           "value_base": _nanmean(per_group[:, 1]),
           "n": len(cluster_ids), "n_groups": len(group_rows), "method": procedure, "metric": metric,
           "level": level}

    if procedure == "corrected_t":
        from scipy import stats as st

        if test_train_ratio is None or test_train_ratio < 0:
            raise ValueError("corrected_t needs test_train_ratio = n_test / n_train (>= 0)")
        d = d_groups[np.isfinite(d_groups)]
        if d.size < 2:
            lo = hi = float("nan")
        else:
            se = np.sqrt((1 / d.size + test_train_ratio) * d.var(ddof=1))
            half = st.t.ppf((1 + level) / 2, d.size - 1) * se
            lo, hi = float(d.mean() - half), float(d.mean() + half)
        out.update(lo=lo, hi=hi, n_boot=0)
    else:
        stratum_of_cluster: dict[int, object] = {}
        for c, s in zip(cluster_of, strata.tolist(), strict=True):
            if stratum_of_cluster.setdefault(int(c), s) != s:
                raise ValueError(f"bag {cluster_ids[c]!r} lies in two strata ({stratum_of_cluster[int(c)]!r}, {s!r})")
        by_stratum: dict[object, list[int]] = {}
        for c in range(len(cluster_ids)):
            by_stratum.setdefault(stratum_of_cluster[c], []).append(c)
        members = [np.array(v) for v in by_stratum.values()]
        rng = np.random.default_rng(seed)
        deltas = []
        chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // max(n, 1)))
        done = 0
        while done < n_boot:
            b = min(chunk, n_boot - done)
            counts = np.zeros((b, len(cluster_ids)))
            for m in members:
                counts[:, m] = rng.multinomial(len(m), np.full(len(m), 1 / len(m)), size=b)
            W = counts[:, cluster_of]
            d = np.stack([_group_values(metric, y, sm, rows, W[:, rows])
                          - _group_values(metric, y, sb, rows, W[:, rows]) for rows in group_rows], axis=1)
            finite = np.isfinite(d)
            n_finite = finite.sum(axis=1)
            mean = np.where(finite, d, 0.0).sum(axis=1) / np.maximum(n_finite, 1)
            deltas.append(np.where(n_finite > 0, mean, np.nan))  # a group without both classes drops out
            done += b
        boot = np.concatenate(deltas)
        lo, hi = _quantiles(boot, level)
        out.update(lo=lo, hi=hi, n_boot=int(np.isfinite(boot).sum()))
    out["excludes_zero"] = bool(np.isfinite(out["lo"]) and (out["lo"] > 0 or out["hi"] < 0))
    return out


def resolved_label(result: Mapping) -> str:
    """"resolved" when the interval excludes 0, "not resolved" when it does not, "NA" without an interval."""
    if not np.isfinite(result.get("lo", np.nan)):
        return "NA"
    return "resolved" if result["excludes_zero"] else "not resolved"

