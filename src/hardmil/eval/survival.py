"""Discrete-time survival: hazards, the negative log-likelihood and the C-index
(docs/architecture.md#evaluation-protocols-and-metrics).

A model's ``n_classes`` logits are one per time bin; ``hazard_k = sigmoid(logit_k)`` is the probability
of the event in bin ``k`` given survival to its start, ``S_k = prod_{j<=k} (1 - hazard_j)`` and the risk
is ``-sum_k S_k`` (higher = earlier death), as in the MHIM-MIL reference (``engines``, survival branch).

Loss: the discrete-time likelihood of Zadeh & Schmid (2020, "Bias in cross-entropy-based training of deep
survival networks"), in the form MCAT / PORPOISE / MHIM-MIL use (``NLLSurvLoss``). With ``S_pad = [1, S]``
and bin ``y``:

* uncensored (event observed in bin ``y``): ``-(log S_pad[y] + log hazard_y)``;
* censored in bin ``y`` (alive at least to the end of bin ``y``): ``-log S_pad[y + 1]``;
* ``loss = (1 - alpha) * (censored + uncensored) + alpha * uncensored``, averaged over the batch, with
  probabilities clamped at ``eps = 1e-7``. MHIM-MIL trains with ``alpha = 0`` (our default); MCAT uses 0.4.

Note the reference treats a censored case in bin ``y`` as surviving the whole bin (``S_pad[y + 1]``),
so the censoring time is rounded up to the bin's end; we keep that convention.

C-index: Harrell's, ``sksurv.metrics.concordance_index_censored(event, time, risk)`` (ties in risk
count 1/2, ``tied_tol = 1e-8``), as the reference computes it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

EPS = 1e-7


def nll_survival_loss(logits: Tensor, bins: Tensor, events: Tensor, alpha: float = 0.0, eps: float = EPS) -> Tensor:
    """Mean discrete-time NLL of ``logits [B, K]`` for time bins ``bins [B]`` and ``events [B]`` (1 = death)."""
    hazards = torch.sigmoid(logits.float())
    surv = torch.cumprod(1 - hazards, dim=1)
    s_pad = torch.cat([torch.ones_like(surv[:, :1]), surv], dim=1)
    y = bins.long().view(-1, 1)
    observed = events.float().view(-1, 1)
    s_before = s_pad.gather(1, y).clamp_min(eps)
    h_at = hazards.gather(1, y).clamp_min(eps)
    s_after = s_pad.gather(1, y + 1).clamp_min(eps)
    uncensored = -observed * (torch.log(s_before) + torch.log(h_at))
    censored = -(1 - observed) * torch.log(s_after)
    return ((1 - alpha) * (censored + uncensored) + alpha * uncensored).mean()


def hazards_and_survival(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(hazards, survival)`` per bin, each ``[B, K]``, from logits ``[B, K]``."""
    hazards = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    return hazards, np.cumprod(1.0 - hazards, axis=1)


def risk_scores(logits: np.ndarray) -> np.ndarray:
    """``-sum_k S_k``: higher means an earlier expected event."""
    return -hazards_and_survival(logits)[1].sum(axis=1)


def c_index(times: np.ndarray, events: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index (scikit-survival); NaN when no pair is comparable (e.g. no event)."""
    from sksurv.metrics import concordance_index_censored

    events = np.asarray(events).astype(bool)
    if not events.any():
        return float("nan")
    try:
        return float(concordance_index_censored(events, np.asarray(times, dtype=float),
                                                np.asarray(risk, dtype=float), tied_tol=1e-8)[0])
    except ValueError:  # NoComparablePairException: no admissible pair
        return float("nan")


def survival_metrics(times: np.ndarray, events: np.ndarray, bins: np.ndarray, logits: np.ndarray,
                     alpha: float = 0.0) -> dict[str, float]:
    """C-index, the mean NLL, and the numbers of cases and events of one evaluation."""
    nll = nll_survival_loss(torch.as_tensor(np.asarray(logits, dtype=np.float32)), torch.as_tensor(bins),
                            torch.as_tensor(events), alpha).item()
    return {"c_index": c_index(times, events, risk_scores(logits)), "nll": float(nll),
            "n_cases": int(len(times)), "n_events": int(np.asarray(events).sum())}
