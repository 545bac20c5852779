"""Instance-level diagnostics per epoch, for datasets whose instances are labelled (``source: simulated``).

MHIM-v2 (Tang et al.) masks the instances its teacher scores highest. Whether that helps depends on what the
mask removes: if a positive bag's witnesses are fewer than the masked share, the high-score mask can take every
one of them out of the student's view. On the controlled benchmark (:mod:`hardmil.data.simulated`) every
instance's kind is known, so after each epoch :class:`InstanceDiagnostics` measures, on the positive bags of the
fold's *selection set* (protocol ``clean``: the validation share of the development bags):

* ``witness_share_masked``: the share of a bag's witnesses (salient or subtle) in the high-score mask as the model
  would mask the bag at this step: the model's own :meth:`~hardmil.models.mhim.MHIM.teacher_scores` (teacher
  dropout as in training) and :meth:`~hardmil.models.mhim.MHIM.high_mask` (``mask_high`` after its schedule,
  RHSM draws included), averaged over bags; ``bags_all_witnesses_masked``: the share of bags that lose every
  witness to it;
* ``teacher_loc_auc``: the localisation AUC of the teacher's instance scores (the scores the mask is taken from:
  attention for v1, the class-aware instance probability for v2);
* ``student_loc_auc``: the same for the model at inference (for MHIM the student on every instance; for any other
  model with attention, its attention), as the claims report scores it (``hardmil.report.claims``).

A bag's localisation AUC is the ROC AUC of its instance scores against its witness labels (witnesses = salient or
subtle; negatives and hard negatives are the non-witnesses); the column is the mean over the positive bags
(bags made only of witnesses have no AUC and are left out). Models without a teacher leave the mask and teacher
columns empty.

Why the selection set and not the training bags: it is drawn from the same development distribution as the
training bags (so the masked share is what the mask does to bags like those it trains on), it is never trained
on (so the localisation is not inflated by fitting the very bags it is scored on), and it is a quarter of the
training set's size, which keeps the cost per epoch small (one teacher and one student forward per positive bag).

The diagnostics run inside :func:`torch.random.fork_rng`, so they consume none of the training's random numbers:
a run with diagnostics trains exactly as one without. They are closed with the epoch and saved in the training
checkpoint (:class:`EpochStates`), so a resumed run writes the same file as an uninterrupted one.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from hardmil.data.bagset import BagSet
from hardmil.data.simulated import SALIENT, SUBTLE
from hardmil.infer import autocast, infer
from hardmil.utils import InputError, write_tsv

COLUMNS = ("epoch", "n_bags", "mask_high", "witnesses_mean", "witness_share_masked", "bags_all_witnesses_masked",
           "teacher_loc_auc", "student_loc_auc", "n_bags_auc")


def localisation_auc(scores: np.ndarray, witness: np.ndarray) -> float:
    """ROC AUC of one bag's instance ``scores`` against its boolean ``witness`` labels (NaN with one class only):
    the Mann-Whitney statistic from mid-ranks (ties count one half), scikit-learn's ``roc_auc_score`` without its
    per-call overhead (it runs twice per bag and epoch)."""
    from scipy.stats import rankdata

    witness = np.asarray(witness, dtype=bool)
    n_pos = int(witness.sum())
    n_neg = len(witness) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[witness].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


class InstanceDiagnostics:
    """Per-epoch witness masking and localisation of ``model`` on the positive bags (label index 1) of ``bags``;
    ``truth``: ``{slide: kind [N]}`` (:func:`hardmil.data.simulated.read_truth`) for each of them."""

    def __init__(self, model: torch.nn.Module, bags: BagSet, truth: dict[str, np.ndarray], *, amp: bool = False,
                 source: str | os.PathLike = "truth"):
        positive = [i for i, y in enumerate(bags.labels.tolist()) if y == 1]
        self.model, self.bags, self.amp = model, bags.subset(positive), amp
        self.witness = []
        for i, slide in enumerate(self.bags.ids):
            if slide not in truth:
                raise InputError(source, f"no ground truth for bag {slide}")
            kind = np.asarray(truth[slide])
            if len(kind) != self.bags.sizes[i]:
                raise InputError(source, f"bag {slide}: {len(kind)} ground-truth labels for {self.bags.sizes[i]} "
                                         "instances")
            self.witness.append((kind == SALIENT) | (kind == SUBTLE))
        self.rows: list[dict] = []

    @torch.no_grad()
    def measure(self) -> dict:
        """The diagnostics of the model as it is now (one row without ``epoch``)."""
        m = self.model
        training = m.training
        has_teacher = hasattr(m, "teacher_scores") and hasattr(m, "high_mask")
        student = [r.attention for r in infer(m, self.bags, amp=self.amp, keep=("attention",))]
        share, lost, teacher_auc = [], [], []
        if has_teacher:
            for i, x, _ in self.bags.iterate():
                w = torch.from_numpy(self.witness[i])
                with autocast(self.bags.device, self.amp):
                    score, _ = m.teacher_scores(x)
                masked = torch.zeros(len(w), dtype=torch.bool)
                masked[m.high_mask(score, m._head_scores).cpu()] = True
                hit = int((masked & w).sum())
                share.append(hit / max(int(w.sum()), 1))
                lost.append(float(hit == int(w.sum())))
                teacher_auc.append(localisation_auc(score.float().cpu().numpy(), self.witness[i]))
        m.train(training)
        student_auc = [float("nan") if a is None else localisation_auc(a[: len(w)], w)
                       for a, w in zip(student, self.witness, strict=True)]
        nan = float("nan")
        return {"n_bags": len(self.witness), "mask_high": m.high_ratio() if has_teacher else nan,
                "witnesses_mean": float(np.mean([w.sum() for w in self.witness])) if self.witness else nan,
                "witness_share_masked": _mean(share) if has_teacher else nan,
                "bags_all_witnesses_masked": _mean(lost) if has_teacher else nan,
                "teacher_loc_auc": _mean(teacher_auc) if has_teacher else nan,
                "student_loc_auc": _mean(student_auc),
                "n_bags_auc": sum(math.isfinite(v) for v in student_auc)}

    def close_epoch(self, epoch: int) -> None:
        devices = [self.bags.device] if self.bags.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the training's random numbers stay untouched
            self.rows.append({"epoch": epoch, **self.measure()})

    def state_dict(self) -> dict:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [dict(r) for r in state["rows"]]

    def write(self, path: str | os.PathLike) -> None:
        """``instance_diagnostics.tsv`` (atomically)."""
        write_tsv(path, self.rows, list(COLUMNS))


class EpochStates:
    """Several per-epoch objects (``close_epoch`` / ``state_dict`` / ``load_state_dict``) as the training loop's
    one ``extra_state``, closed in order and saved together in the checkpoint."""

    def __init__(self, **parts):
        self.parts = parts

    def close_epoch(self, epoch: int) -> None:
        for part in self.parts.values():
            part.close_epoch(epoch)

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state[name])
