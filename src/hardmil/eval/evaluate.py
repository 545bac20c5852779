"""Metrics and per-bag prediction rows of a trained model on a :class:`~hardmil.data.bagset.BagSet`
(test folds and external cohorts share this)."""

from __future__ import annotations

import numpy as np

from hardmil.eval.metrics import classification_metrics
from hardmil.eval.survival import hazards_and_survival, survival_metrics
from hardmil.infer import predict_logits


def evaluate(net, data, *, amp: bool = False, classes: list[str] | None, threshold: float | None = None,
             alpha: float = 0.0, fold: int | None = None, epoch: int | None = None) -> tuple[dict, list[dict]]:
    """(metrics, predictions.tsv rows) of ``net`` on ``data``.

    Classification: one row per slide with per-class probabilities. Survival: one row per case with
    time, event, time bin, risk and the per-bin hazards and survival."""
    logits = predict_logits(net, data, amp)
    bags = data.bags
    rows = []
    if data.survival:
        times, events, bins = data.times.numpy(), data.events.numpy(), data.labels.numpy()
        metrics = survival_metrics(times, events, bins, logits, alpha)
        hazards, surv = hazards_and_survival(logits)
        risk = -surv.sum(axis=1)
        for i, b in enumerate(bags):
            rows.append({"case": b.case, "slides": ";".join(b.extra["slides"]), "time": b.extra["time"],
                         "event": b.extra["event"], "time_bin": int(bins[i]), "risk": float(risk[i]),
                         **{f"hazard_{k}": float(h) for k, h in enumerate(hazards[i])},
                         **{f"survival_{k}": float(v) for k, v in enumerate(surv[i])}, "fold": fold, "epoch": epoch})
        return metrics, rows
    probs = _softmax(logits)
    metrics = classification_metrics(data.labels.numpy(), probs, threshold)
    for i, b in enumerate(bags):
        rows.append({"slide": b.slide, "case": b.case, "label": classes[b.label], "label_index": int(b.label),
                     **{f"prob_{c}": float(probs[i, k]) for k, c in enumerate(classes)},
                     "fold": fold, "epoch": epoch})
    return metrics, rows


def _softmax(logits: np.ndarray) -> np.ndarray:
    import torch

    return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
