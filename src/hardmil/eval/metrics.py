"""Classification metrics with scikit-learn (docs/architecture.md#evaluation-protocols-and-metrics).

* AUC: binary ROC AUC on P(class 1); macro one-vs-rest for C > 2.
* accuracy / precision / recall / F1 / FPR at a decision threshold on P(class 1) (binary only). The
  threshold is Youden's J optimum on the protocol's selection set (paper: the test fold itself;
  clean: the validation split) and then applied to the test fold.
* balanced accuracy and macro-F1 at argmax (any C).
* C > 2 (multi-class subtyping): no threshold exists, so ``accuracy`` is plain accuracy at argmax and
  ``precision`` / ``recall`` / ``f1`` are their macro averages over classes at argmax (MHIM-MIL's
  ``metrics_base`` also reports macro precision / recall / F1); ``fpr`` is not reported. The training loop
  selects the epoch on the macro one-vs-rest AUC for every C (the MHIM-MIL reference uses macro accuracy
  for C > 2).
"""

from __future__ import annotations

import numpy as np


def youden_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """Threshold maximising TPR - FPR; a sample is positive when ``score >= threshold``.

    Ties in J go to the highest threshold (the first one ``roc_curve`` reports).
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        raise ValueError("Youden threshold needs both classes in the selection set")
    fpr, tpr, thr = roc_curve(y, score)
    finite = np.isfinite(thr)
    j = np.where(finite, tpr - fpr, -np.inf)
    best = np.flatnonzero(j >= j.max() - 1e-12)  # float noise must not break ties
    return float(thr[int(best[0])])


def threshold_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and false-positive rate of ``score >= threshold``."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

    y = np.asarray(y).astype(int)
    pred = (np.asarray(score) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "fpr": float(fp / (fp + tn)) if (fp + tn) else float("nan"),
    }


def auc(y: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC: binary on ``probs[:, 1]``; macro one-vs-rest for more classes."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    probs = np.asarray(probs)
    n_classes = probs.shape[1]
    if len(np.unique(y)) < 2:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    return float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=list(range(n_classes))))


def classification_metrics(y: np.ndarray, probs: np.ndarray, threshold: float | None) -> dict[str, float]:
    """All metrics of one evaluation; ``threshold`` applies to binary tasks only."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    y = np.asarray(y).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    out = {
        "auc": auc(y, probs),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "accuracy_argmax": float((pred == y).mean()),
    }
    if probs.shape[1] == 2 and threshold is not None:
        out.update(threshold_metrics(y, probs[:, 1], threshold))
    elif probs.shape[1] > 2:
        from sklearn.metrics import precision_score, recall_score

        labels = list(range(probs.shape[1]))
        out.update({"accuracy": out["accuracy_argmax"],
                    "precision": float(precision_score(y, pred, labels=labels, average="macro", zero_division=0)),
                    "recall": float(recall_score(y, pred, labels=labels, average="macro", zero_division=0)),
                    "f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0))})
    return out
