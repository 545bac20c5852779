"""Mean-MIL and max-MIL: the simplest pooling baselines of the MHIM-MIL tables.

Reference code: ``modules/mean_max.py`` of https://github.com/DearCaat/MHIM-MIL (``meanmil`` / ``maxmil``; read
for behaviour only): ``Linear(D, 512) + ReLU + Dropout(0.25) + Linear(512, C)`` applied to every instance,
then the mean (Mean-MIL) or the per-class max (Max-MIL) of the instance logits over the bag.

Shapes: ``x`` (batch_size, bag_size, in_dim); ``mask`` (batch_size, bag_size).

Reference semantics (the default, ``pool: instance_logits``): both models classify every instance and pool
the logits. For Mean-MIL this equals classifying the mean embedding (the classifier is linear); for Max-MIL it
does not: the bag logit of class c is the max over instances of that class's logit.

Switches and deliberate deviations:
* ``act``: ``relu`` (default) or ``gelu`` for the instance projection; the reference's training configs
  (``feat_cls.yaml``, ``feat_surv.yaml``) pass ``act: gelu``.
* ``pool: embedding`` (Max-MIL only differs) takes the per-dimension max of the instance embeddings and then
  classifies it: this project's earlier Max-MIL, offered for ablation.
* ``pool: instance_score`` (Max-MIL, two classes only) is the standard-MIL form of mi-Net: each instance gets one
  score ``s = logit_1 - logit_0``, the bag's positive logit is ``max s`` and its negative logit 0. A bag's positive
  probability then never falls when an instance is added, so no instance can be evidence *for* the negative
  class. The reference's per-class max does not have this property: the negative class's max over instances
  lets one instance vote "negative" (it fails the poison unit tests, docs/mil_tests.md). Not a reference option.
* Padding is excluded from the pooling through ``mask``.
* ``embedding`` in the output is the pooled instance embedding (mean or per-dimension max), so that embedding
  consumers (IBMIL's confounders) work; with ``pool: instance_logits`` it is not what the logits were pooled
  from for Max-MIL.
No attention exists, so ``attention`` is None and these models cannot drive hard-negative mining.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hardmil.models.base import MILModel, MILOutput, init_xavier, instance_projection, param


@dataclass(frozen=True)
class MeanMaxConfig:
    in_dim: int = param(1024, ge=1)
    n_classes: int = param(2, ge=2)
    hidden_dim: int = param(512, ge=1)
    dropout: float = param(0.25, ge=0, lt=1)
    act: str = "relu"  # instance projection: 'relu' or 'gelu' (the reference's training config: gelu)
    pooling: str = "mean"  # 'mean' or 'max'
    pool: str = "instance_logits"  # 'instance_logits' (reference), 'embedding' (pool, then classify), 'instance_score'


def _pool(t: Tensor, mask: Tensor | None, how: str) -> Tensor:
    """Mean or max of ``t`` [B, N, F] over real instances -> [B, F]."""
    if how == "mean":
        if mask is None:
            return t.mean(dim=1)
        m = mask.unsqueeze(-1).to(t.dtype)
        return (t * m).sum(1) / m.sum(1).clamp_min(1)
    return (t if mask is None else t.masked_fill(~mask.unsqueeze(-1), float("-inf"))).amax(dim=1)


class MeanMIL(MILModel):
    config_class = MeanMaxConfig

    def __init__(self, cfg: MeanMaxConfig):
        super().__init__()
        if cfg.pooling not in ("mean", "max"):
            raise ValueError(f"pooling must be 'mean' or 'max', got {cfg.pooling!r}")
        if cfg.pool not in ("instance_logits", "embedding", "instance_score"):
            raise ValueError(f"pool must be 'instance_logits', 'embedding' or 'instance_score', got {cfg.pool!r}")
        if cfg.pool == "instance_score" and (cfg.pooling != "max" or cfg.n_classes != 2):
            raise ValueError("pool 'instance_score' is the two-class max-MIL of the standard MIL assumption: it needs "
                             f"pooling 'max' and n_classes 2, got {cfg.pooling!r} and {cfg.n_classes}")
        self.cfg = cfg
        self.feature = instance_projection(cfg.in_dim, cfg.hidden_dim, cfg.dropout, act=cfg.act)
        self.classifier = nn.Linear(cfg.hidden_dim, cfg.n_classes)
        init_xavier(self)

    def forward(self, x: Tensor, mask: Tensor | None = None, label: Tensor | None = None,
                coords: Tensor | None = None) -> MILOutput:
        h = self.feature(x)
        inst = self.classifier(h)
        z = _pool(h, mask, self.cfg.pooling)
        if self.cfg.pool == "instance_score":
            top = _pool(inst[..., 1:] - inst[..., :1], mask, "max")
            logits = torch.cat([torch.zeros_like(top), top], dim=-1)
        elif self.cfg.pool == "instance_logits":
            logits = _pool(inst, mask, self.cfg.pooling)
        else:
            logits = self.classifier(z)
        return MILOutput(logits=logits, embedding=z, instance_logits=inst)


@dataclass(frozen=True)
class MaxConfig(MeanMaxConfig):
    pooling: str = "max"


class MaxMIL(MeanMIL):
    config_class = MaxConfig
