"""DTFD-MIL: double-tier feature distillation (Zhang et al., CVPR 2022).

Paper: Zhang, Meng, Liu, Grinsztajn, Coupland, Zheng. DTFD-MIL: Double-Tier Feature Distillation Multiple
Instance Learning for Histopathology Whole Slide Image Classification. CVPR 2022.
Reference code: https://github.com/hrzhang1123/DTFD-MIL (MIT; read for behaviour, not copied),
``Main_DTFD_MIL.py`` with ``Model/Attention.py`` and ``Model/network.py``.

Shapes: ``x`` (batch_size, bag_size, in_dim); ``mask`` (batch_size, bag_size); ``label`` (batch_size,).

Reference semantics kept: ``Linear(D, 512, bias=False) + ReLU``; the bag's instances are shuffled and split
into ``groups = 4`` pseudo-bags (``np.array_split``-style sizes); tier 1 = gated attention (512 -> 128) and
``Linear(512, C)`` per pseudo-bag, trained with the bag label (the tier-1 loss); distillation ``AFS`` passes
each pseudo-bag's attention-pooled feature to tier 2, ``MaxS`` / ``MaxMinS`` pass its ``k`` (and ``k``
lowest) instances ranked by the tier-1 classifier's instance probability of the last class, with
``k = total_instance // groups`` (4 // 4 = 1); tier 2 = gated attention + ``Linear(512, C)`` over the
distilled features, trained with the bag label. Exactly ``groups x distilled`` vectors reach tier 2 (4 for
AFS and MaxS, 8 for MaxMinS).

Reference training step (the default, ``tier1_step: reference``): the reference steps tier 1's Adam on the
tier-1 loss *before* the tier-2 backward, so tier 1 (reduction, tier-1 attention and classifier) learns from
the tier-1 loss only and tier 2 from the tier-2 loss only; it clips the gradients of the reduction, the
tier-1 attention and the tier-1 classifier separately (norm 5 each, ``clip: separate``) and tier 2 as one
group. MaxS / MaxMinS rank instances by the tier-1 classifier's weights alone, without its bias
(``get_cam_1d``; ``rank_with_bias: false``). Survival (``survival_task``, set by the training loop: the label
is a time bin, not a class): no tier-1 loss, as the MHIM-MIL reference's DTFD; the tier-2 loss trains both tiers.

Switches and deliberate deviations:
* ``tier1_step: joint`` (this project's earlier step) lets the tier-2 loss gradient reach tier 1 as well:
  tier-1 loss backward, clip tier 1, tier-2 loss backward through both tiers, clip tier 2; ``clip: joint``
  clips all tier-1 parameters as one group; ``rank_with_bias: true`` ranks with the classifier bias (the same
  order for 2 classes, a different one for 3 or more). Offered for ablation; the defaults reproduce the
  reference (tested against fixtures).
* One Adam over both tiers instead of the reference's two Adams with equal hyperparameters: Adam is
  per-parameter, and in the reference setting each parameter receives exactly its own tier's gradient, so
  the updates are the same (tested: the parameters after one step equal the reference's).
* Inference splits with a generator of fixed seed (``eval_seed``) so that evaluation is deterministic; the
  reference shuffles at random at test time too. DTFD is therefore *not* permutation invariant: which
  instances share a pseudo-bag depends on their order (the documented exception).
* With ``mask``, each bag is processed on its real instances only.
Parity fixtures cover one training step of each distillation (MaxMinS, MaxS, AFS). The original code's AFS step
fails on current PyTorch (its tier-2 backward runs through tier-1 attention weights that tier 1's Adam has just
changed in place); the fixture script runs it allowing that mutation, which does not change tier 2's gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardmil.models.base import MILModel, MILOutput, init_xavier, param


@dataclass(frozen=True)
class DTFDConfig:
    in_dim: int = param(1024, ge=1)
    n_classes: int = param(2, ge=2)
    hidden_dim: int = param(512, ge=1)  # DTFD mDim
    attn_dim: int = param(128, ge=1)  # Attention_Gated D
    groups: int = param(4, ge=1)  # --numGroup
    total_instance: int = param(4, ge=1)  # --total_instance -> instances per group = total_instance // groups
    distill: str = "AFS"  # --distill_type AFS | MaxS | MaxMinS
    grad_clip: float = param(5.0, gt=0)  # --grad_clipping
    dropout: float = param(0.0, ge=0, lt=1)  # Classifier_1fc droprate 0
    eval_seed: int = param(0, ge=0)
    tier1_step: str = "reference"  # 'reference': tier 1 learns from the tier-1 loss only; 'joint': from both
    clip: str = "separate"  # 'separate': reduction / attention / classifier clipped each; 'joint': as one group
    rank_with_bias: bool = False  # MaxS / MaxMinS ranking with the classifier bias (the reference: without)


class GatedAttention(nn.Module):
    def __init__(self, dim: int, attn_dim: int):
        super().__init__()
        self.v = nn.Linear(dim, attn_dim)
        self.u = nn.Linear(dim, attn_dim)
        self.w = nn.Linear(attn_dim, 1)

    def forward(self, h: Tensor) -> Tensor:
        return torch.softmax(self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1), dim=-1)


class DTFD(MILModel):
    config_class = DTFDConfig
    survival_task = False  # set by the training loop: the label is a time bin (see the module docstring)

    def __init__(self, cfg: DTFDConfig):
        super().__init__()
        if cfg.distill not in ("AFS", "MaxS", "MaxMinS"):
            raise ValueError(f"distill must be AFS, MaxS or MaxMinS, got {cfg.distill!r}")
        if cfg.tier1_step not in ("reference", "joint"):
            raise ValueError(f"tier1_step must be 'reference' or 'joint', got {cfg.tier1_step!r}")
        if cfg.clip not in ("separate", "joint"):
            raise ValueError(f"clip must be 'separate' or 'joint', got {cfg.clip!r}")
        self.cfg = cfg
        self.reduce = nn.Sequential(nn.Linear(cfg.in_dim, cfg.hidden_dim, bias=False), nn.ReLU())
        self.tier1_attention = GatedAttention(cfg.hidden_dim, cfg.attn_dim)
        self.tier1_classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_dim, cfg.n_classes))
        self.tier2_attention = GatedAttention(cfg.hidden_dim, cfg.attn_dim)
        self.tier2_classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_dim, cfg.n_classes))
        self.last_tier2_inputs: int = 0
        init_xavier(self)

    def tier1_groups(self) -> list[list[nn.Parameter]]:
        """Tier 1's clipping groups: reduction, attention, classifier (``clip: separate``) or all as one."""
        groups = [list(m.parameters()) for m in (self.reduce, self.tier1_attention, self.tier1_classifier)]
        return groups if self.cfg.clip == "separate" else [[p for g in groups for p in g]]

    def tier1_parameters(self):
        return [*self.reduce.parameters(), *self.tier1_attention.parameters(), *self.tier1_classifier.parameters()]

    def tier2_parameters(self):
        return [*self.tier2_attention.parameters(), *self.tier2_classifier.parameters()]

    def pseudo_bags(self, n: int, device) -> list[Tensor]:
        g = None if self.training else torch.Generator().manual_seed(self.cfg.eval_seed)
        order = torch.randperm(n, generator=g).to(device)
        return [chunk for chunk in torch.tensor_split(order, self.cfg.groups) if len(chunk)]

    def _one_bag(self, h: Tensor, detach_tier2: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """h [N, H] -> (tier-2 logits [C], tier-1 logits [G, C], distilled [G*k, H], attention [N])."""
        k = max(1, self.cfg.total_instance // self.cfg.groups)
        sub_logits, distilled = [], []
        attention = h.new_zeros(h.shape[0])
        groups = self.pseudo_bags(h.shape[0], h.device)
        for idx in groups:
            sub = h[idx]
            a = self.tier1_attention(sub)
            attention[idx] = a / len(groups)
            pooled = a @ sub
            sub_logits.append(self.tier1_classifier(pooled))
            if self.cfg.distill == "AFS":
                distilled.append(pooled[None])
                continue
            # instance probabilities from the tier-1 classifier on attention-weighted instances (get_cam_1d)
            fc = self.tier1_classifier[1]
            weighted = sub * a[:, None]
            cam = F.linear(weighted, fc.weight, fc.bias if self.cfg.rank_with_bias else None)
            inst_prob = torch.softmax(cam, dim=-1)[:, -1]
            order = inst_prob.argsort(descending=True)
            take = order[:k] if self.cfg.distill == "MaxS" else torch.cat([order[:k], order[-k:]])
            distilled.append(sub[take])
        distilled_t = torch.cat(distilled)
        if detach_tier2:
            # the reference's tier-2 backward runs after tier 1 has stepped: tier 1 gets no tier-2 gradient
            distilled_t = distilled_t.detach()
        a2 = self.tier2_attention(distilled_t)
        return self.tier2_classifier(a2 @ distilled_t), torch.stack(sub_logits), distilled_t, attention

    def forward(self, x: Tensor, mask: Tensor | None = None, label: Tensor | None = None,
                coords: Tensor | None = None) -> MILOutput:
        h = self.reduce(x)
        # reference step: with a tier-1 loss, tier 1 learns from it alone (its optimiser steps before the tier-2
        # backward); without one (survival) the tier-2 loss trains both tiers, as the MHIM-MIL reference's DTFD
        tier1_loss = label is not None and self.training and not self.survival_task
        detach = tier1_loss and self.cfg.tier1_step == "reference"
        results = [self._one_bag(h[b] if mask is None else h[b, mask[b]], detach) for b in range(len(h))]
        logits = torch.stack([r[0] for r in results])
        self.last_tier2_inputs = results[-1][2].shape[0]
        attention = None
        if mask is None:
            attention = torch.stack([r[3] for r in results])
        else:
            attention = h.new_zeros(mask.shape)
            for b, r in enumerate(results):
                attention[b, mask[b]] = r[3]
        out = MILOutput(logits=logits, attention=attention, embedding=logits.detach())
        if tier1_loss:
            tier1 = torch.cat([r[1] for r in results])
            tier1_labels = torch.cat([label[b].repeat(len(r[1])) for b, r in enumerate(results)])
            out.aux_losses["tier1"] = F.cross_entropy(tier1.float(), tier1_labels)
        return out

    def training_step(self, out: MILOutput, bag_loss: Tensor) -> Tensor:
        """Backward and clipping in the reference's way; the loop's optimiser then steps once.

        ``tier1_step: reference``: tier 2 reads detached features, so one backward of both losses gives tier 1
        exactly the tier-1 gradient and tier 2 exactly the tier-2 gradient; each group is clipped. ``joint``:
        tier-1 loss backward, clip tier 1, tier-2 loss backward (reaching tier 1 too), clip tier 2. Without a
        tier-1 loss (survival, or no label) the tier-2 loss trains both tiers (one backward, same clipping).
        """
        tier1 = out.aux_losses.get("tier1")
        joint = tier1 is not None and self.cfg.tier1_step == "joint"
        if joint:
            tier1.backward(retain_graph=True)
        else:
            (bag_loss if tier1 is None else tier1 + bag_loss).backward()
        for group in self.tier1_groups():
            nn.utils.clip_grad_norm_(group, self.cfg.grad_clip)
        if joint:
            bag_loss.backward()
        nn.utils.clip_grad_norm_(self.tier2_parameters(), self.cfg.grad_clip)
        return bag_loss.detach() + (0.0 if tier1 is None else tier1.detach())
