"""R2T-MIL: AB-MIL on instances re-embedded by a regional transformer (Tang et al., CVPR 2024).

Paper: Tang, Zhou, Zhang, Wang, Liu, Ye. Feature Re-Embedding: Towards Foundation Model-Level Performance in
Computational Pathology. CVPR 2024.
Reference code: https://github.com/DearCaat/RRT-MIL (``modules/rrt.py``, ``modules/rmsa.py``,
``modules/datten.py``; no licence, read for behaviour only) and its copy in MHIM-MIL ``modules/rrt.py``.

Shapes: ``x`` (batch_size, bag_size, in_dim); ``mask`` (batch_size, bag_size).

Reference semantics kept (defaults of RRT-MIL ``main.py`` and of MHIM-MIL's ``rrtmil``):
* ``Linear(D, 512) + ReLU + Dropout(0.25)``; re-embedding = ``n_layers - 1`` R-MSA layers then one CR-MSA
  layer, each pre-norm with a residual and no FFN; a final LayerNorm; AB-MIL pooling
  (``512 -> 128 -> 1``, ReLU, no bias) and ``Linear(512, C)``.
* Regions: the N instances, in their order, fill a square of side ``ceil(sqrt(N))`` rounded up to a multiple
  of ``region_num`` (8), zero-padded at the end; the square is cut into 8 x 8 blocks of side
  ``side / 8``; attention runs inside each block; the padding is sliced off afterwards.
* R-MSA: 8 heads x 64, qkv bias, plain softmax, EPEG (a depthwise ``Conv2d(heads, heads, (15, 1))`` on the
  attention logits along the query axis, added before the softmax), output projection + Dropout(0.1).
* CR-MSA (always 8 regions, no EPEG): per region, ``k = 3`` representatives ``R = softmax_p(x phi) x`` with a
  learned ``phi`` [512, k]; multi-head attention across regions (k as batch); back to instances as
  ``sum_n softmax_n(x phi) * minmax_p(x phi) * R'_n``.
* Xavier-normal Linear / Conv2d weights and zero biases.

Not permutation invariant: regions are runs of the instance order (the documented exception, tested).
Deliberate deviations: with ``mask`` each bag runs on its real instances only (the reference has no mask and
mixes regions of different bags in CR-MSA when batch > 1); ``all_shortcut`` is off as in MHIM's benchmark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hardmil.models.base import MILModel, MILOutput, instance_projection


@dataclass(frozen=True)
class R2TConfig:
    in_dim: int = 1024
    n_classes: int = 2
    hidden_dim: int = 512  # RRTMIL mlp_dim
    dropout: float = 0.25
    heads: int = 8  # --n_heads / rrt_n_heads
    n_layers: int = 2  # --n_trans_layers: n_layers - 1 R-MSA layers + 1 CR-MSA layer
    region_num: int = 8  # --region_num
    trans_dropout: float = 0.1  # --trans_drop_out
    epeg: bool = True
    epeg_k: int = 15  # --epeg_k
    crmsa: bool = True
    crmsa_k: int = 3  # --crmsa_k
    crmsa_heads: int = 8
    crmsa_regions: int = 8  # the reference builds CR-MSA with the TransLayer default of 8 regions
    all_shortcut: bool = False
    attn_dim: int = 128


class RegionAttention(nn.Module):
    """Multi-head softmax self-attention over the tokens of each region ([regions, P, C])."""

    def __init__(self, dim: int, heads: int, dropout: float, epeg_k: int | None):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.epeg = (nn.Conv2d(heads, heads, (epeg_k, 1), padding=(epeg_k // 2, 0), groups=heads)
                     if epeg_k else None)

    def forward(self, x: Tensor) -> Tensor:
        r, p, c = x.shape
        q, k, v = self.qkv(x).reshape(r, p, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        logits = (q * self.scale) @ k.transpose(-1, -2)
        if self.epeg is not None:
            logits = logits + self.epeg(logits)
        out = torch.softmax(logits, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(r, p, c))


def to_regions(x: Tensor, region_num: int) -> tuple[Tensor, int, int]:
    """[N, C] -> ([region_num**2, P, C], side, N): row-major square, zero-padded, cut into square blocks."""
    n, c = x.shape
    side = math.ceil(math.ceil(math.sqrt(n)) / region_num) * region_num
    rs = side // region_num
    x = torch.cat([x, x.new_zeros(side * side - n, c)])
    blocks = x.reshape(region_num, rs, region_num, rs, c).permute(0, 2, 1, 3, 4)
    return blocks.reshape(region_num * region_num, rs * rs, c), side, n


def from_regions(blocks: Tensor, region_num: int, side: int, n: int) -> Tensor:
    rs = side // region_num
    x = blocks.reshape(region_num, region_num, rs, rs, -1).permute(0, 2, 1, 3, 4)
    return x.reshape(side * side, -1)[:n]


class RMSA(nn.Module):
    def __init__(self, cfg: R2TConfig):
        super().__init__()
        self.region_num = cfg.region_num
        self.attn = RegionAttention(cfg.hidden_dim, cfg.heads, cfg.trans_dropout, cfg.epeg_k if cfg.epeg else None)

    def forward(self, x: Tensor) -> Tensor:
        blocks, side, n = to_regions(x, self.region_num)
        return from_regions(self.attn(blocks), self.region_num, side, n)


class CRMSA(nn.Module):
    def __init__(self, cfg: R2TConfig):
        super().__init__()
        self.region_num = cfg.crmsa_regions
        self.phi = nn.Parameter(torch.empty(cfg.hidden_dim, cfg.crmsa_k))
        nn.init.kaiming_uniform_(self.phi, a=math.sqrt(5))
        self.attn = RegionAttention(cfg.hidden_dim, cfg.crmsa_heads, cfg.trans_dropout, None)

    def forward(self, x: Tensor) -> Tensor:
        blocks, side, n = to_regions(x, self.region_num)  # [W, P, C]
        logits = torch.einsum("wpc,ck->wkp", blocks, self.phi)
        combine = torch.softmax(logits, dim=-1)
        dispatch = torch.softmax(logits, dim=1)
        lo, hi = logits.amin(-1, keepdim=True), logits.amax(-1, keepdim=True)
        minmax = (logits - lo) / (hi - lo + 1e-8)
        reps = torch.einsum("wkp,wpc->kwc", combine, blocks)  # k representatives per region
        reps = self.attn(reps)  # attention across regions, k as batch
        out = torch.einsum("wkp,kwc->wpc", dispatch * minmax, reps)
        return from_regions(out, self.region_num, side, n)


class R2TMIL(MILModel):
    config_class = R2TConfig

    def __init__(self, cfg: R2TConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.feature = instance_projection(cfg.in_dim, d, cfg.dropout)
        blocks: list[nn.Module] = [RMSA(cfg) for _ in range(cfg.n_layers - 1)]
        if cfg.crmsa:
            blocks.append(CRMSA(cfg))
        self.blocks = nn.ModuleList(blocks)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in blocks)
        self.norm = nn.LayerNorm(d)
        self.attention = nn.Sequential(nn.Linear(d, cfg.attn_dim, bias=False), nn.ReLU(),
                                       nn.Linear(cfg.attn_dim, 1, bias=False))
        self.classifier = nn.Linear(d, cfg.n_classes)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def reembed(self, h: Tensor) -> Tensor:
        """[N, 512] -> [N, 512] re-embedded instances of one bag."""
        shortcut = h
        for norm, block in zip(self.norms, self.blocks, strict=True):
            h = h + block(norm(h))
        if self.cfg.all_shortcut:
            h = h + shortcut
        return self.norm(h)

    def forward(self, x: Tensor, mask: Tensor | None = None, label: Tensor | None = None,
                coords: Tensor | None = None) -> MILOutput:
        h = self.feature(x)
        logits, attn_out, emb = [], torch.zeros(h.shape[:2], device=h.device, dtype=h.dtype), []
        for b in range(len(h)):
            idx = torch.arange(h.shape[1], device=h.device) if mask is None else mask[b].nonzero().squeeze(1)
            r = self.reembed(h[b, idx])
            a = torch.softmax(self.attention(r).squeeze(-1), dim=0)
            z = a @ r
            attn_out[b, idx] = a
            emb.append(z)
            logits.append(self.classifier(z))
        return MILOutput(logits=torch.stack(logits), attention=attn_out, embedding=torch.stack(emb))
