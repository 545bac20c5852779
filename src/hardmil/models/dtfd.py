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
AFS and MaxS, 8 for MaxMinS). Both tiers' gradients are clipped to norm 5 separately (``training_step``).

Deliberate deviations:
* One Adam over both tiers instead of the reference's two Adams: with equal hyperparameters Adam is
  per-parameter, so the updates are the same; the order "tier-1 loss backward, clip tier 1, tier-2 loss
  backward, clip tier 2, step" is kept. (The reference's tier-1 parameters also receive the tier-2 loss
  gradient, unclipped, exactly as here.)
* Inference splits with a generator of fixed seed (``eval_seed``) so that evaluation is deterministic; the
  reference shuffles at random at test time too. DTFD is therefore *not* permutation invariant: which
  instances share a pseudo-bag depends on their order (the documented exception).
* With ``mask``, each bag is processed on its real instances only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardmil.models.base import MILModel, MILOutput, init_xavier


@dataclass(frozen=True)
class DTFDConfig:
    in_dim: int = 1024
    n_classes: int = 2
    hidden_dim: int = 512  # DTFD mDim
    attn_dim: int = 128  # Attention_Gated D
    groups: int = 4  # --numGroup
    total_instance: int = 4  # --total_instance -> instances per group = 1
    distill: str = "AFS"  # --distill_type AFS | MaxS | MaxMinS
    grad_clip: float = 5.0  # --grad_clipping
    dropout: float = 0.0  # Classifier_1fc droprate 0
    eval_seed: int = 0


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

    def __init__(self, cfg: DTFDConfig):
        super().__init__()
        if cfg.distill not in ("AFS", "MaxS", "MaxMinS"):
            raise ValueError(f"distill must be AFS, MaxS or MaxMinS, got {cfg.distill!r}")
        self.cfg = cfg
        self.reduce = nn.Sequential(nn.Linear(cfg.in_dim, cfg.hidden_dim, bias=False), nn.ReLU())
        self.tier1_attention = GatedAttention(cfg.hidden_dim, cfg.attn_dim)
        self.tier1_classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_dim, cfg.n_classes))
        self.tier2_attention = GatedAttention(cfg.hidden_dim, cfg.attn_dim)
        self.tier2_classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_dim, cfg.n_classes))
        self.last_tier2_inputs: int = 0
        init_xavier(self)

    def tier1_parameters(self):
        return [*self.reduce.parameters(), *self.tier1_attention.parameters(), *self.tier1_classifier.parameters()]

    def tier2_parameters(self):
        return [*self.tier2_attention.parameters(), *self.tier2_classifier.parameters()]

    def pseudo_bags(self, n: int, device) -> list[Tensor]:
        g = None if self.training else torch.Generator().manual_seed(self.cfg.eval_seed)
        order = torch.randperm(n, generator=g).to(device)
        return [chunk for chunk in torch.tensor_split(order, self.cfg.groups) if len(chunk)]

    def _one_bag(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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
            inst_prob = torch.softmax(self.tier1_classifier(sub * a[:, None]), dim=-1)[:, -1]
            order = inst_prob.argsort(descending=True)
            take = order[:k] if self.cfg.distill == "MaxS" else torch.cat([order[:k], order[-k:]])
            distilled.append(sub[take])
        distilled_t = torch.cat(distilled)
        a2 = self.tier2_attention(distilled_t)
        return self.tier2_classifier(a2 @ distilled_t), torch.stack(sub_logits), distilled_t, attention

    def forward(self, x: Tensor, mask: Tensor | None = None, label: Tensor | None = None,
                coords: Tensor | None = None) -> MILOutput:
        h = self.reduce(x)
        results = [self._one_bag(h[b] if mask is None else h[b, mask[b]]) for b in range(len(h))]
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
        if label is not None and self.training:
            tier1 = torch.cat([r[1] for r in results])
            tier1_labels = torch.cat([label[b].repeat(len(r[1])) for b, r in enumerate(results)])
            out.aux_losses["tier1"] = F.cross_entropy(tier1.float(), tier1_labels)
        return out

    def training_step(self, out: MILOutput, bag_loss: Tensor) -> Tensor:
        """Backward in the reference's order: tier-1 loss, clip tier 1; tier-2 loss, clip tier 2."""
        out.aux_losses["tier1"].backward(retain_graph=True)
        nn.utils.clip_grad_norm_(self.tier1_parameters(), self.cfg.grad_clip)
        bag_loss.backward()
        nn.utils.clip_grad_norm_(self.tier2_parameters(), self.cfg.grad_clip)
        return bag_loss.detach() + out.aux_losses["tier1"].detach()
