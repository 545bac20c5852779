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
logits. Loss: ``0.5 * CE(bag) + 0.5 * CE(max-instance)``.

Open question settled by the reference: the prediction (metrics, thresholds) is the bag-stream logits alone,
as MHIM-MIL's ``dsmil`` evaluates it; the max-instance stream only trains.

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

from hardmil.models.base import MILModel, MILOutput, init_xavier, instance_projection, masked_softmax


@dataclass(frozen=True)
class DSMILConfig:
    in_dim: int = 1024
    n_classes: int = 2
    hidden_dim: int = 512
    query_dim: int = 128  # dsmil-wsi BClassifier q: 128
    dropout: float = 0.25  # embedding dropout (MHIM benchmark)
    dropout_v: float = 0.0  # dsmil-wsi dropout_v
    max_loss_weight: float = 0.5  # dsmil-wsi: 0.5 * bag + 0.5 * max


class DSMIL(MILModel):
    config_class = DSMILConfig

    def __init__(self, cfg: DSMILConfig):
        super().__init__()
        self.cfg = cfg
        self.feature = instance_projection(cfg.in_dim, cfg.hidden_dim, cfg.dropout)
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
        shown = attn[torch.arange(len(h)), logits.argmax(1)]
        out = MILOutput(logits=logits, attention=shown, embedding=bag_feat.flatten(1), instance_logits=inst)
        if label is not None and self.training:
            w = self.cfg.max_loss_weight
            out.aux_losses["max_instance"] = w * F.cross_entropy(max_logits.float(), label)
            out.bag_loss_weight = 1.0 - w
        return out
