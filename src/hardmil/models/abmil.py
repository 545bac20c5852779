"""AB-MIL and gated AB-MIL, as benchmarked in the MHIM-MIL papers.

Paper: Ilse, Tomczak, Welling. Attention-based Deep Multiple Instance Learning. ICML 2018.
Reference code: https://github.com/AMLab-Amsterdam/AttentionDeepMIL (the original) and the
``abmil`` baseline of https://github.com/DearCaat/MHIM-MIL (``modules/abmil.py``), whose layer sizes
are used here: ``Linear(D, 512) + ReLU + Dropout(0.25)``; attention ``512 -> 128 -> 1`` with tanh
(gated: tanh branch times sigmoid branch); softmax over instances; ``Linear(512, C)``; cross-entropy.

Shapes: ``x`` bag features of shape (batch_size, bag_size, in_dim); ``mask`` (batch_size, bag_size),
True for real instances.

Deliberate deviations:
* Linear layers get Xavier-normal weights and zero biases (what MHIM-MIL applies to its models);
  the original AB-MIL used PyTorch defaults.
* Padding is supported through ``mask`` (padded instances get exactly zero attention); the references
  run one bag at a time and have no mask.
* The gated variant uses the same 128-d attention as the plain one (MHIM's ``AttentionGated`` hard-codes
  384, commented "384 uni", and fails to build from its ``gabmil`` name).

Options that reproduce the reference's other variants (tested against fixtures written from the reference code by
``bench/parity_mhim.py``):
* ``act``: the instance projection's activation, ``relu`` (default; the standalone module's default) or ``gelu``
  (what the reference's shipped training config ``act: gelu`` runs, for every baseline and for MHIM).
* ``attention_act`` / ``attention_bias``: the attention MLP. ``tanh`` with biases (default) is the standalone
  AB-MIL; ``relu`` without biases is the MHIM reference's internal ``attn`` baseline, the AB-MIL that its MHIM-v2
  actually wraps (``Linear(512, 128, bias=False) + ReLU + Linear(128, 1, bias=False)``). MHIM wraps this registered
  model with these options (``baseline_params``), never a forked copy.

MHIM's class-aware instance score (``instance_scores``, v2) is ``max_c softmax_c(a_i W h_i)``, without the
classifier bias, as the reference computes it (it adds ``b_0`` to every class, which cancels under the softmax).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hardmil.models.base import MILModel, MILOutput, init_xavier, instance_projection, masked_softmax, param

ATTENTION_ACTS = {"tanh": torch.tanh, "relu": torch.relu, "gelu": torch.nn.functional.gelu}


@dataclass(frozen=True)
class ABMILConfig:
    in_dim: int = param(1024, ge=1)  # R50-trunc / UNI features; set from the data
    n_classes: int = param(2, ge=1)
    hidden_dim: int = param(512, ge=1)  # MHIM-MIL modules/abmil.py: Linear(in, 512)
    attn_dim: int = param(128, ge=1)  # Ilse et al. L = 128
    dropout: float = param(0.25, ge=0, lt=1)  # MHIM-MIL: Dropout(0.25) after the projection
    gated: bool = False  # Ilse et al. gated attention
    act: str = "relu"  # instance projection: 'relu' or 'gelu' (the reference's training config: gelu)
    attention_act: str = "tanh"  # 'tanh' (Ilse et al.), 'relu' (MHIM's internal attn baseline) or 'gelu'
    attention_bias: bool = True  # False: MHIM's internal attn baseline (bias-free attention MLP)


class ABMIL(MILModel):
    config_class = ABMILConfig

    def __init__(self, cfg: ABMILConfig):
        super().__init__()
        if cfg.attention_act not in ATTENTION_ACTS:
            raise ValueError(f"attention_act must be one of {sorted(ATTENTION_ACTS)}, got {cfg.attention_act!r}")
        self.cfg = cfg
        self.feature = instance_projection(cfg.in_dim, cfg.hidden_dim, cfg.dropout, act=cfg.act)
        bias = cfg.attention_bias
        self.attn_v = nn.Linear(cfg.hidden_dim, cfg.attn_dim, bias=bias)
        self.attn_u = nn.Linear(cfg.hidden_dim, cfg.attn_dim, bias=bias) if cfg.gated else None
        self.attn_w = nn.Linear(cfg.attn_dim, 1, bias=bias)
        self._attention_act = ATTENTION_ACTS[cfg.attention_act]
        self.classifier = nn.Linear(cfg.hidden_dim, cfg.n_classes)
        init_xavier(self)

    # The three hooks frameworks (MHIM, Li et al.) build on.
    def embed(self, x: Tensor) -> Tensor:
        """Instance embeddings ``[B, N, hidden_dim]``."""
        return self.feature(x)

    def attention_scores(self, h: Tensor) -> Tensor:
        """Unnormalised attention ``[B, N]`` of instance embeddings ``h``."""
        a = self._attention_act(self.attn_v(h))
        if self.attn_u is not None:
            a = a * torch.sigmoid(self.attn_u(h))
        return self.attn_w(a).squeeze(-1)

    def classify(self, z: Tensor) -> Tensor:
        return self.classifier(z)

    def aggregate(self, h: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Bag embedding ``[B, hidden_dim]`` and softmax attention ``[B, N]`` of instance embeddings."""
        attn = masked_softmax(self.attention_scores(h), mask)
        return torch.einsum("bn,bnh->bh", attn, h), attn

    def head(self, h: Tensor, mask: Tensor | None = None, label: Tensor | None = None) -> MILOutput:
        """Everything after the instance embedding (the hook MHIM's student and teacher run)."""
        z, attn = self.aggregate(h, mask)
        return MILOutput(logits=self.classify(z), attention=attn, embedding=z,
                         instance_logits=self.classify(h))

    def instance_scores(self, h: Tensor, out: MILOutput, version: str) -> Tensor:
        """MHIM's instance assessment of one bag: attention (v1) or the class-aware instance probability
        ``max_c softmax_c(W (a_i h_i))`` (v2; without the classifier bias, as the reference)."""
        a = out.attention[0]
        if version == "v1":
            return a
        # the classifier is linear: W (a_i h_i) = a_i (W h_i + b - b), from head's instance logits
        return torch.softmax(a[:, None] * (out.instance_logits[0] - self.classifier.bias), dim=-1).amax(-1)

    def forward(self, x: Tensor, mask: Tensor | None = None, label: Tensor | None = None,
                coords: Tensor | None = None) -> MILOutput:
        return self.head(self.embed(x), mask, label)


@dataclass(frozen=True)
class GatedABMILConfig(ABMILConfig):
    gated: bool = True  # Ilse et al. gated attention: tanh(Vh) * sigmoid(Uh)


class GatedABMIL(ABMIL):
    """AB-MIL with Ilse et al.'s gated attention (``tanh(Vh) * sigmoid(Uh)``)."""

    config_class = GatedABMILConfig
