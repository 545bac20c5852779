"""Mean-MIL and max-MIL: the simplest pooling baselines of the MHIM-MIL tables.

Reference code: ``modules/mean_max.py`` of https://github.com/DearCaat/MHIM-MIL (``meanmil`` / ``maxmil``):
``Linear(D, 512) + ReLU + Dropout(0.25)``, then mean or max over instances, then ``Linear(512, C)``.

Shapes: ``x`` (batch_size, bag_size, in_dim); ``mask`` (batch_size, bag_size).

Deliberate deviations: max-MIL here takes the per-dimension max of the instance embeddings before the
classifier (the embedding-level max pooling of the reference); padding is excluded through ``mask``.
No attention exists, so ``attention`` is None and these models cannot drive hard-negative mining.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from hardmil.models.base import MILModel, MILOutput, init_xavier, instance_projection


@dataclass(frozen=True)
class MeanMaxConfig:
    in_dim: int = 1024
    n_classes: int = 2
    hidden_dim: int = 512
    dropout: float = 0.25
    pooling: str = "mean"  # 'mean' or 'max'


class MeanMIL(MILModel):
    config_class = MeanMaxConfig

    def __init__(self, cfg: MeanMaxConfig):
        super().__init__()
        if cfg.pooling not in ("mean", "max"):
            raise ValueError(f"pooling must be 'mean' or 'max', got {cfg.pooling!r}")
        self.cfg = cfg
        self.feature = instance_projection(cfg.in_dim, cfg.hidden_dim, cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_dim, cfg.n_classes)
        init_xavier(self)

    def forward(self, x: Tensor, mask: Tensor | None = None, label: Tensor | None = None,
                coords: Tensor | None = None) -> MILOutput:
        h = self.feature(x)
        if self.cfg.pooling == "mean":
            if mask is None:
                z = h.mean(dim=1)
            else:
                m = mask.unsqueeze(-1).to(h.dtype)
                z = (h * m).sum(1) / m.sum(1).clamp_min(1)
        else:
            z = (h if mask is None else h.masked_fill(~mask.unsqueeze(-1), float("-inf"))).amax(dim=1)
        return MILOutput(logits=self.classifier(z), embedding=z, instance_logits=self.classifier(h))


@dataclass(frozen=True)
class MaxConfig(MeanMaxConfig):
    pooling: str = "max"


class MaxMIL(MeanMIL):
    config_class = MaxConfig
