"""CLAM-SB and CLAM-MB: gated attention with instance-level clustering (Lu et al., 2021).

Paper: Lu, Williamson, Chen, Chen, Barbieri, Mahmood. Data-efficient and weakly supervised computational
pathology on whole-slide images. Nature Biomedical Engineering 2021.
Reference code: https://github.com/mahmoodlab/CLAM (``models/model_clam.py``, GPL-3.0; read for behaviour,
not copied), as run by the MHIM-MIL benchmark (``modules/clam.py``).

Shapes: ``x`` (batch_size, bag_size, in_dim); ``mask`` (batch_size, bag_size); ``label`` (batch_size,).

Reference semantics kept: ``Linear(D, 512) + ReLU + Dropout(0.25)``; gated attention 512 -> 256 (tanh x
sigmoid) -> 1 branch (SB) or one branch per class (MB); bag classifier ``Linear(512, C)`` (SB) or one
``Linear(512, 1)`` per class on that class's pooled embedding (MB); per-class instance classifiers
``Linear(512, 2)``. Instance clustering: for the true class, the k = 8 most and k least attended instances
are pseudo-labelled 1 and 0; with ``subtyping`` the k most attended instances under every other class's
attention are pseudo-labelled 0, and the summed instance loss is divided by the number of classes. Instance
loss is the smooth top-1 SVM (Berrada et al., 2018; tau = alpha = 1) or cross-entropy. Total loss
``0.7 * bag CE + 0.3 * instance loss``. Survival: no instance loss and the bag (survival) loss unscaled
(weight 1, not 0.7) when the training loop sets ``survival_task`` (the label is a time bin, not a class), as the
MHIM-MIL reference, which passes ``[time bin, censorship]`` and so turns CLAM's instance loss off.

Switch: ``act`` ``relu`` (default, CLAM's own) or ``gelu`` for the instance projection; the MHIM-MIL reference's
training configs (``feat_cls.yaml``, ``feat_surv.yaml``) pass ``act: gelu``, which ``config/paper.yaml`` selects.

Deliberate deviations:
* The smooth top-1 SVM is written out as ``tau * logsumexp((s + alpha * [j != y]) / tau) - s_y``; the
  reference imports it from the ``topk`` package (which hard-codes ``.cuda()``, so the reference CLAM fails
  on CPU).
* Loss weights: ``bag_weight`` 0.7 (CLAM's own, and the MHIM-MIL v1 code's). The MHIM-MIL v2 code weighs the
  instance loss by ``aux_alpha``, which its shipped configs leave at 0 (CE only); ``bag_weight: 1.0`` reproduces
  that, but ``config/paper.yaml`` keeps CLAM's clustering loss (declared, issue 25).
* Bags with fewer than 2k instances use ``min(k, N)`` top and bottom instances (the reference errors).
* ``attention`` in the output is the softmax attention of the predicted class's branch (MB) or the single
  branch (SB); padded instances get zero weight and are never sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardmil.models.base import MILModel, MILOutput, init_xavier, instance_projection, masked_softmax, param


@dataclass(frozen=True)
class CLAMConfig:
    in_dim: int = param(1024, ge=1)
    n_classes: int = param(2, ge=2)
    hidden_dim: int = param(512, ge=1)  # CLAM size 'small' [1024, 512, 256]
    attn_dim: int = param(256, ge=1)
    dropout: float = param(0.25, ge=0, lt=1)  # CLAM --drop_out 0.25
    act: str = "relu"  # instance projection: 'relu' or 'gelu' (the reference's training config: gelu)
    k_sample: int = param(8, ge=1)  # CLAM --B 8
    bag_weight: float = param(0.7, ge=0, le=1)  # CLAM --bag_weight 0.7
    inst_loss: str = "svm"  # CLAM --inst_loss svm | ce
    subtyping: bool = False  # CLAM --subtyping (out-of-class instance loss)
    multi_branch: bool = False  # False: CLAM-SB; True: CLAM-MB


def smooth_top1_svm(logits: Tensor, target: Tensor, tau: float = 1.0, alpha: float = 1.0) -> Tensor:
    """Smooth top-1 multiclass SVM loss (Berrada et al., ICLR 2018), averaged over samples."""
    margin = alpha * (1.0 - F.one_hot(target, logits.shape[-1]).to(logits.dtype))
    smooth_max = tau * torch.logsumexp((logits + margin) / tau, dim=-1)
    return (smooth_max - logits.gather(-1, target[:, None]).squeeze(-1)).mean()


class CLAM(MILModel):
    config_class = CLAMConfig
    survival_task = False  # set by the training loop: the label is a time bin (see the module docstring)

    def __init__(self, cfg: CLAMConfig):
        super().__init__()
        if cfg.inst_loss not in ("svm", "ce"):
            raise ValueError(f"inst_loss must be 'svm' or 'ce', got {cfg.inst_loss!r}")
        self.cfg = cfg
        n_branch = cfg.n_classes if cfg.multi_branch else 1
        self.feature = instance_projection(cfg.in_dim, cfg.hidden_dim, cfg.dropout, act=cfg.act)
        self.attn_a = nn.Sequential(nn.Linear(cfg.hidden_dim, cfg.attn_dim), nn.Tanh(), nn.Dropout(cfg.dropout))
        self.attn_b = nn.Sequential(nn.Linear(cfg.hidden_dim, cfg.attn_dim), nn.Sigmoid(), nn.Dropout(cfg.dropout))
        self.attn_c = nn.Linear(cfg.attn_dim, n_branch)
        if cfg.multi_branch:
            self.bag_classifiers = nn.ModuleList(nn.Linear(cfg.hidden_dim, 1) for _ in range(cfg.n_classes))
        else:
            self.classifier = nn.Linear(cfg.hidden_dim, cfg.n_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(cfg.hidden_dim, 2) for _ in range(cfg.n_classes))
        init_xavier(self)

    def _inst_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return smooth_top1_svm(logits, target) if self.cfg.inst_loss == "svm" else F.cross_entropy(logits, target)

    def sample_instances(self, attn: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Indices of the k most and k least attended real instances of one bag (attn, valid: [N])."""
        k = min(self.cfg.k_sample, int(valid.sum()))
        top = attn.masked_fill(~valid, float("-inf")).topk(k).indices
        bottom = (-attn).masked_fill(~valid, float("-inf")).topk(k).indices
        return top, bottom

    def instance_loss(self, h: Tensor, attn: Tensor, valid: Tensor, label: int) -> Tensor:
        """Instance clustering loss of one bag; ``attn`` is [branches, N] softmax attention."""
        total = h.new_zeros(())
        for c, clf in enumerate(self.instance_classifiers):
            a = attn[c if self.cfg.multi_branch else 0]
            top, bottom = self.sample_instances(a, valid)
            if c == label:
                idx = torch.cat([top, bottom])
                target = torch.cat([torch.ones_like(top), torch.zeros_like(bottom)])
            elif self.cfg.subtyping:
                idx, target = top, torch.zeros_like(top)
            else:
                continue
            total = total + self._inst_loss(clf(h[idx]), target)
        return total / len(self.instance_classifiers) if self.cfg.subtyping else total

    def forward(self, x: Tensor, mask: Tensor | None = None, label: Tensor | None = None,
                coords: Tensor | None = None) -> MILOutput:
        h = self.feature(x)  # [B, N, H]
        scores = self.attn_c(self.attn_a(h) * self.attn_b(h)).transpose(1, 2)  # [B, branches, N]
        attn = masked_softmax(scores, None if mask is None else mask[:, None, :])
        pooled = attn @ h  # [B, branches, H]
        if self.cfg.multi_branch:
            logits = torch.cat([clf(pooled[:, c]) for c, clf in enumerate(self.bag_classifiers)], dim=1)
            shown = attn[torch.arange(len(x)), logits.argmax(1)]
        else:
            logits = self.classifier(pooled[:, 0])
            shown = attn[:, 0]
        out = MILOutput(logits=logits, attention=shown, embedding=pooled.flatten(1))
        if label is not None and self.training and not self.survival_task:
            valid = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if mask is None else mask
            inst = torch.stack([self.instance_loss(h[b], attn[b], valid[b], int(label[b])) for b in range(len(x))])
            out.aux_losses["instance"] = (1.0 - self.cfg.bag_weight) * inst.mean()
            out.bag_loss_weight = self.cfg.bag_weight
        return out


@dataclass(frozen=True)
class CLAMMBConfig(CLAMConfig):
    multi_branch: bool = True


class CLAMMB(CLAM):
    config_class = CLAMMBConfig
