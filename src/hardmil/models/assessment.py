"""Per-epoch statistics of the MHIM teacher's instance assessment (data for a Figure 8-style plot).

Tang et al. (MHIM-v2, Fig. 8) show which instances the teacher rates easy during training, by raw attention
(MHIM v1) and by class-aware instance probability (v2), and argue that the probability becomes more
discriminative on tumour slides and stays more uniform on normal slides. Without instance labels we log, per
epoch and bag label, numbers that express exactly that:

* ``score_entropy``: entropy of the bag's scores normalised to sum 1, divided by log N (1 = uniform);
* ``top_decile_mass``: share of the score mass held by the top 10 % of instances (concentration);
* ``attention_overlap``: |top 10 % by the score ∩ top 10 % by the teacher's attention| / |top 10 %|
  (1 for v1, where the score is the attention; how far v2's probability departs from attention).

An MHIM model owns one (``model.assessment``); :func:`hardmil.train.run.run_fold` writes its rows as
``teacher_assessment.tsv`` in the run folder. The rows travel in the training checkpoint
(:meth:`TeacherAssessment.state_dict`), so a resumed run writes every epoch.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

COLUMNS = ("epoch", "label", "n_bags", "score_entropy", "top_decile_mass", "attention_overlap")


class TeacherAssessment:
    def __init__(self, top: float = 0.1):
        self.top = top
        self._bags: dict[int, list[tuple[float, float, float]]] = defaultdict(list)
        self.rows: list[dict] = []

    @torch.no_grad()
    def add(self, score: torch.Tensor, attention: torch.Tensor | None, label: int) -> None:
        s = score.detach().float().flatten().clamp_min(0)
        n = s.numel()
        k = max(1, math.ceil(n * self.top))
        p = s / s.sum().clamp_min(1e-12)
        entropy = float(-(p * p.clamp_min(1e-12).log()).sum() / math.log(n)) if n > 1 else 1.0
        top_s = s.topk(k).indices
        mass = float(p[top_s].sum())
        overlap = float("nan")
        if attention is not None:
            a = attention.detach().float().flatten()[:n]
            overlap = len(set(top_s.tolist()) & set(a.topk(k).indices.tolist())) / k
        self._bags[int(label)].append((entropy, mass, overlap))

    def state_dict(self) -> dict:
        """The closed epochs' rows (plain data, checkpoint-safe); an epoch in progress is not resumable."""
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [dict(r) for r in state["rows"]]
        self._bags.clear()

    def close_epoch(self, epoch: int) -> None:
        for label in sorted(self._bags):
            vals = torch.tensor(self._bags[label], dtype=torch.float64)
            self.rows.append({"epoch": epoch, "label": label, "n_bags": len(vals),
                              **{c: float(v) for c, v in zip(COLUMNS[3:], vals.nanmean(0).tolist(), strict=True)}})
        self._bags.clear()
