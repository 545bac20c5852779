"""DSMIL: dual-stream MIL with a critical instance (Li, Li, Eliceiri, CVPR 2021).

Paper: Dual-stream Multiple Instance Learning Network for Whole Slide Image Classification with
Self-supervised Contrastive Learning. CVPR 2021.
Reference code: https://github.com/binli123/dsmil-wsi (MIT), as run by the MHIM-MIL benchmark
(``modules/dsmil.py``).

Shapes: ``x`` (batch_size, bag_size, in_dim); ``mask`` (batch_size, bag_size); ``label`` (batch_size,).

Stream 1 (max pooling): an instance classifier ``Linear(512, C)`` scores every instance; its per-class max
is the instance-stream prediction, and the arg-max instance of each class is that class's *critical
instance*. Stream 2: queries ``q = Linear(512,128)+ReLU+Linear(128,128)+Tanh`` of every instance are compared
with the critical instances' queries, ``A = softmax_N(Q q_crit^T / sqrt(128))``; values
``v = Dropout+Linear(512,512)+ReLU``; ``B = A^T V`` is classified by a ``Conv1d(C, C, 512)`` into the bag
logits. Loss: ``0.5 * CE(bag) + 0.5 * CE(max-instance)``. Survival: ``0.5 * NLL(bag) + 0.5 * NLL(max-instance)``,
both the censored discrete-time survival loss, as the MHIM-MIL reference (which passes ``[time bin,
censorship]`` to the instance stream's loss): with ``survival_task`` (set by the training loop) the max-instance
logits go to ``aux_logits`` and the loop scores them with the task's own loss, censoring included.

Open question settled by the reference: the prediction (metrics, thresholds) is the bag-stream logits alone,
as MHIM-MIL's ``dsmil`` evaluates it; the max-instance stream only trains. ``prediction: mean`` is the DSMIL that
the reference's MHIM wraps (its internal ``dsmil`` baseline, and ``mhim_pure``, which trains the teacher): the
prediction is ``0.5 * bag + 0.5 * max-instance`` logits, in training (one loss on them, no separate max-instance
loss) and in evaluation (``engines/common_mil.py``). ``config/paper.yaml`` selects it for the MHIM(DSMIL) rows and
their teacher (``dsmil_mhim``).

Switch: ``act`` ``relu`` (default) or ``gelu`` for the instance projection; the reference's training configs
(``feat_cls.yaml``, ``feat_surv.yaml``) pass ``act: gelu``, which ``config/paper.yaml`` selects.

Loss weights: ``max_loss_weight`` 0.5 (dsmil-wsi's and the MHIM-MIL v1 code's). The MHIM-MIL v2 code weighs the
max-instance loss of its standalone ``dsmil`` by ``aux_alpha``, which its shipped configs leave at 0, so its instance
classifier never trains (it only picks the critical instance, without gradient); ``max_loss_weight: 0`` reproduces
that, but ``config/paper.yaml`` keeps 0.5 (declared, issue 25).

Deliberate deviations: softmax cross-entropy over C classes instead of the original's per-class BCE (the
MHIM benchmark's choice, so C > 2 works); padding is excluded from the max, the critical instance and the
attention through ``mask``. ``attention`` in the output is the column of ``A`` of the predicted class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardmil.models.base import MILModel, MILOutput, init_xavier, instance_projection, masked_softmax, param


@dataclass(frozen=True)
class DSMILConfig:
    in_dim: int = param(1024, ge=1)
    n_classes: int = param(2, ge=2)
    hidden_dim: int = param(512, ge=1)
    query_dim: int = param(128, ge=1)  # dsmil-wsi BClassifier q: 128
    dropout: float = param(0.25, ge=0, lt=1)  # embedding dropout (MHIM benchmark)
    act: str = "relu"  # instance projection: 'relu' or 'gelu' (the reference's training config: gelu)
    dropout_v: float = param(0.0, ge=0, lt=1)  # dsmil-wsi dropout_v
    max_loss_weight: float = param(0.5, ge=0, le=1)  # dsmil-wsi: 0.5 * bag + 0.5 * max
    # 'bag': the bag stream predicts, trained 0.5 CE(bag) + 0.5 CE(max-instance); 'mean': 0.5 bag + 0.5 max-instance
    # logits predict and are trained with one loss (the reference's MHIM-internal DSMIL, also its teacher)
    prediction: str = "bag"


class DSMIL(MILModel):
    config_class = DSMILConfig
    survival_task = False  # set by the training loop: the label is a time bin (see the module docstring)

    def __init__(self, cfg: DSMILConfig):
        super().__init__()
        if cfg.prediction not in ("bag", "mean"):
            raise ValueError(f"prediction must be 'bag' or 'mean', got {cfg.prediction!r}")
        self.cfg = cfg
        self.feature = instance_projection(cfg.in_dim, cfg.hidden_dim, cfg.dropout, act=cfg.act)
        self.instance_classifier = nn.Linear(cfg.hidden_dim, cfg.n_classes)
        self.q = nn.Sequential(nn.Linear(cfg.hidden_dim, cfg.query_dim), nn.ReLU(),
                               nn.Linear(cfg.query_dim, cfg.query_dim), nn.Tanh())
        self.v = nn.Sequential(nn.Dropout(cfg.dropout_v), nn.Linear(cfg.hidden_dim, cfg.hidden_dim), nn.ReLU())
        self.fcc = nn.Conv1d(cfg.n_classes, cfg.n_classes, kernel_size=cfg.hidden_dim)
        init_xavier(self)

    def critical_instances(self, inst_logits: Tensor, mask: Tensor | None) -> Tensor:
        """Index [B, C] of each class's highest-scoring real instance."""
        if mask is not None:
            inst_logits = inst_logits.masked_fill(~mask[..., None], float("-inf"))
        return inst_logits.argmax(dim=1)

    def embed(self, x: Tensor) -> Tensor:
        return self.feature(x)

    def instance_scores(self, h: Tensor, out: MILOutput, version: str) -> Tensor:
        """MHIM's instance assessment of one bag: v2 = max over classes of the instance-classifier logits
        (the reference's DSMIL score); v1 = the bag stream's attention of the predicted class."""
        return out.instance_logits[0].amax(-1) if version == "v2" else out.attention[0]

    @property
    def embedding_groups(self) -> int:
        """The bag embedding is C rows of hidden_dim (MHIM's consistency is taken per row)."""
        return self.cfg.n_classes

    def forward(self, x: Tensor, mask: Tensor | None = None, label: Tensor | None = None,
                coords: Tensor | None = None) -> MILOutput:
        return self.head(self.embed(x), mask, label)

    def head(self, h: Tensor, mask: Tensor | None = None, label: Tensor | None = None) -> MILOutput:
        """Everything after the instance embedding ``h`` [B, N, H] (the hook MHIM runs)."""
        inst = self.instance_classifier(h)  # [B, N, C]
        crit = self.critical_instances(inst, mask)  # [B, C]
        max_logits = torch.gather(inst, 1, crit[:, None, :]).squeeze(1)  # per-class max over instances
        q_all = self.q(h)  # [B, N, Q]
        q_crit = torch.gather(q_all, 1, crit[..., None].expand(-1, -1, q_all.shape[-1]))  # [B, C, Q]
        scores = q_all @ q_crit.transpose(1, 2) / math.sqrt(self.cfg.query_dim)  # [B, N, C]
        attn = masked_softmax(scores.transpose(1, 2), None if mask is None else mask[:, None, :])  # [B, C, N]
        bag_feat = attn @ self.v(h)  # [B, C, H]
        logits = self.fcc(bag_feat).squeeze(-1)  # [B, C]
        if self.cfg.prediction == "mean":  # one prediction, one loss on it (the training loop's)
            logits = 0.5 * logits + 0.5 * max_logits
        shown = attn[torch.arange(len(h)), logits.argmax(1)]
        out = MILOutput(logits=logits, attention=shown, embedding=bag_feat.flatten(1), instance_logits=inst)
        if label is not None and self.training and self.cfg.prediction == "bag":
            w = self.cfg.max_loss_weight
            if self.survival_task:  # the loop scores the instance stream with the censored survival loss
                out.aux_logits["max_instance"] = (w, max_logits)
            else:
                out.aux_losses["max_instance"] = w * F.cross_entropy(max_logits.float(), label)
            out.bag_loss_weight = 1.0 - w
        return out
