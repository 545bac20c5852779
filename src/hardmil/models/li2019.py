"""Attention MIL with softsign attention and adaptive weighting (Li et al., eq. 1-2).

Paper: Li, Wu, Wiliem, Zhao, Zhang, Lovell. Deep Instance-Level Hard Negative Mining Model for
Histopathology Images. MICCAI 2019 (arXiv:1906.09681). No reference code was published; the attention
pooling follows Ilse et al. (https://github.com/AMLab-Amsterdam/AttentionDeepMIL), which the paper builds on.

Shapes: ``x`` bag features of shape (batch_size, bag_size, in_dim); ``mask`` (batch_size, bag_size).

Eq. (1): ``w_j = softmax_j(v^T softsign(U g_j))`` with ``softsign(a) = a / (1 + |a|)``.
Eq. (2): ``z = sum_{j not pn} w_j g_j + lambda * sum_{j in pn} w_j g_j`` where the pseudo-negatives ``pn``
are the instances whose weight is below the bag's mean weight, re-decided at every forward pass
("in each iteration ... thresholding on the average weights").

How we read "when lambda > 1, the weights of the pseudo negative instances will be reduced": eq. (2) as
printed *multiplies* the pseudo-negative terms by lambda = 2, which raises their share of the bag embedding.
We take the sentence to describe the effect of training with it: because below-average instances count
double, a positive bag whose embedding is diluted by negatives is penalised harder, and the attention learns
to push those weights further down ("this will increase the differences between the positive instance and
the negative instances"). ``lambda_mode='multiply'`` (default) is eq. (2) as printed; ``'divide'`` scales
pseudo-negatives by 1/lambda, the other literal reading of the sentence. The pseudo-negative split is not
differentiable and is taken from the detached weights.

Deliberate deviations:
* Input is a pre-extracted feature vector per instance, so the paper's CNN is replaced by
  ``Linear(in_dim, 512) + ReLU + Dropout(0.25)`` (the AB-MIL projection of the MHIM benchmark).
* The classifier is ``Linear(512, C)`` with softmax cross-entropy (the paper: "a CNN layer").
* Eq. (2) is applied at inference too (``adaptive_at_inference``), so a bag is scored by the function that
  was trained.
* ``attention`` in the output is the eq. (1) softmax weight used for mining (eq. 3); the eq. (2) effective
  weights are in ``effective_weights`` after each forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardmil.models.base import MILModel, MILOutput, init_xavier, instance_projection, masked_softmax


@dataclass(frozen=True)
class Li2019Config:
    in_dim: int = 1024
    n_classes: int = 2
    hidden_dim: int = 512  # M, the instance embedding size (our projection; see deviations)
    attn_dim: int = 128  # L of eq. (1) (Ilse et al.)
    dropout: float = 0.25
    lam: float = 2.0  # lambda of eq. (2): "empirically set to 2"
    lambda_mode: str = "multiply"  # 'multiply' (eq. 2 as printed) or 'divide' (1/lambda)
    adaptive: bool = True  # False gives plain softsign attention MIL (eq. 1 only)
    adaptive_at_inference: bool = True


class Li2019(MILModel):
    config_class = Li2019Config

    def __init__(self, cfg: Li2019Config):
        super().__init__()
        if cfg.lambda_mode not in ("multiply", "divide"):
            raise ValueError(f"lambda_mode must be 'multiply' or 'divide', got {cfg.lambda_mode!r}")
        self.cfg = cfg
        self.feature = instance_projection(cfg.in_dim, cfg.hidden_dim, cfg.dropout)
        self.attn_u = nn.Linear(cfg.hidden_dim, cfg.attn_dim, bias=False)
        self.attn_v = nn.Linear(cfg.attn_dim, 1, bias=False)
        self.classifier = nn.Linear(cfg.hidden_dim, cfg.n_classes)
        self.effective_weights: Tensor | None = None
        init_xavier(self)

    def embed(self, x: Tensor) -> Tensor:
        return self.feature(x)

    def attention_scores(self, h: Tensor) -> Tensor:
        return self.attn_v(F.softsign(self.attn_u(h))).squeeze(-1)

    def classify(self, z: Tensor) -> Tensor:
        return self.classifier(z)

    def adaptive_weights(self, w: Tensor, mask: Tensor | None) -> Tensor:
        """Eq. (2): scale the weights of instances below their bag's mean weight by lambda (or 1/lambda)."""
        valid = torch.ones_like(w, dtype=torch.bool) if mask is None else mask
        n = valid.sum(dim=1, keepdim=True).clamp_min(1)
        mean = (w.detach() * valid).sum(dim=1, keepdim=True) / n
        pseudo_negative = (w.detach() < mean) & valid
        factor = self.cfg.lam if self.cfg.lambda_mode == "multiply" else 1.0 / self.cfg.lam
        return torch.where(pseudo_negative, w * factor, w)

    def forward(self, x: Tensor, mask: Tensor | None = None, label: Tensor | None = None,
                coords: Tensor | None = None) -> MILOutput:
        h = self.embed(x)
        w = masked_softmax(self.attention_scores(h), mask)
        use = self.cfg.adaptive and (self.training or self.cfg.adaptive_at_inference)
        eff = self.adaptive_weights(w, mask) if use else w
        self.effective_weights = eff.detach()
        z = torch.einsum("bn,bnh->bh", eff, h)
        return MILOutput(logits=self.classify(z), attention=w, embedding=z, instance_logits=self.classify(h))
