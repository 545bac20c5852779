"""TransMIL: correlated MIL with Nystrom self-attention and a pyramid position encoding (Shao et al., 2021).

Paper: Shao, Bian, Chen, Wang, Zhang, Ji, Zhang. TransMIL: Transformer based Correlated Multiple Instance
Learning for Whole Slide Image Classification. NeurIPS 2021.
Reference code: https://github.com/szc19990412/TransMIL (no licence; read for behaviour only) with
Nystrom attention as in https://github.com/lucidrains/nystrom-attention, and the MHIM-MIL benchmark's
``modules/transmil.py``.

Shapes: ``x`` (batch_size, bag_size, in_dim); ``mask`` (batch_size, bag_size).

Reference semantics kept: ``Linear(D, 512) + ReLU`` (+ Dropout 0.25 as in MHIM's benchmark); the N
instances are padded to the next square by repeating the first instances; a class token; two Nystrom
self-attention layers (pre-norm, residual; 8 heads x 64, 256 landmarks, 6 Moore-Penrose iterations,
depthwise residual convolution of kernel 33 on the values, dropout 0.1); PPEG (depthwise 7x7 + 5x5 + 3x3
convolutions of the square grid plus identity) between them; LayerNorm; the class token -> ``Linear(512, C)``.

Not permutation invariant: PPEG convolves instances in their order on the square grid, and the square is
completed with the first instances (the documented exception, tested). With ``mask``, each bag is run on its
real instances only (one bag at a time), so a padded batch gives the same output as the bags alone.

Deliberate deviations: our own Nystrom implementation (landmarks are segment means after front zero-padding
to a multiple of the landmark count, as the reference). ``attention`` (the reference returns none) is the class
token's layer-1 attention row formed from the same Nystrom factors, mean over heads, clipped at 0 and normalised
over the real instances (heatmaps, hard-negative mining). MHIM's teacher scores instances from that row per head
(``out.extras``, so the layer is not run twice); v1 averages it over heads (the reference fuses heads by a top-k
vote). Without autograd, for large bags, the Nystrom layers run one head at a time (same output, an eighth of the
transient memory).

As the reference (tested against fixtures written from its code by ``bench/parity_mhim.py``): the Moore-Penrose
iteration starts from ``x^T / (max column sum * max row sum)`` with one maximum over all heads of a bag (the
reference takes it over the whole tensor; it runs one bag at a time); MHIM's class-aware score (v2) applies the
classifier without its bias (the reference adds ``b_0`` to every class, which cancels under the softmax).

Initialisation as the reference (MHIM-MIL's ``modules/transmil.py`` and its MHIM-internal ``selfattn``): every
Linear Xavier-normal with zero bias; with ``padding: input`` (the standalone model) also every convolution
Xavier-normal (zero bias) and the class token N(0, 1e-6); with ``padding: ppeg`` (``selfattn``) the convolutions keep
PyTorch's default and the class token N(0, 1).

Options that reproduce the reference's other variants:
* ``act``: the instance projection's activation, ``relu`` (default) or ``gelu`` (the reference's shipped training
  config ``act: gelu``, for every baseline and for MHIM).
* ``padding``: ``input`` (default) is the standalone TransMIL above; ``ppeg`` is the MHIM reference's internal
  ``selfattn`` baseline, the TransMIL its MHIM-v2 actually wraps: no square padding before layer 1 (the class
  token and the N instances only); PPEG pads the N instances to the next square by repeating the first ones, then
  with zeros to at least 7 x 7, convolves and keeps the first N. MHIM wraps this registered model with these
  options (``baseline_params``), never a forked copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardmil.models.base import Dropout, MILModel, MILOutput, init_xavier, instance_projection, param

PADDINGS = ("input", "ppeg")


@dataclass(frozen=True)
class TransMILConfig:
    in_dim: int = param(1024, ge=1)
    n_classes: int = param(2, ge=1)
    hidden_dim: int = param(512, ge=1)
    heads: int = param(8, ge=1)  # TransMIL TransLayer: heads=8, dim_head=dim//8
    landmarks: int = param(256, ge=1)  # num_landmarks = dim // 2
    pinv_iterations: int = param(6, ge=1)
    residual_kernel: int = param(33, ge=1)
    attn_dropout: float = param(0.1, ge=0, lt=1)
    dropout: float = param(0.25, ge=0, lt=1)  # embedding dropout (MHIM benchmark)
    act: str = "relu"  # instance projection: 'relu' or 'gelu' (the reference's training config: gelu)
    padding: str = "input"  # 'input': standalone TransMIL; 'ppeg': MHIM's internal selfattn baseline


def pinv_iterative(x: Tensor, iters: int) -> Tensor:
    """Moore-Penrose pseudo-inverse by the iterative scheme of the Nystromformer paper, for x [B, ..., m, m]. The
    start ``x^T / (max column sum * max row sum)`` takes one maximum over all matrices of a batch element (all
    heads), as the reference."""
    abs_x = x.abs()
    lead = (x.shape[0],) + (1,) * (x.dim() - 1)
    col = abs_x.sum(-1).reshape(x.shape[0], -1).amax(-1).reshape(lead)
    row = abs_x.sum(-2).reshape(x.shape[0], -1).amax(-1).reshape(lead)
    z = x.transpose(-1, -2) / (col * row)
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


class NystromAttention(nn.Module):
    split_heads_above = 2**22  # elements of one [heads, n, landmarks] factor (16 MB) above which no-grad splits

    def __init__(self, dim: int, heads: int, landmarks: int, iters: int, kernel: int, dropout: float):
        super().__init__()
        self.heads, self.landmarks, self.iters = heads, landmarks, iters
        self.dim_head = dim // heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), Dropout(dropout))
        self.res_conv = nn.Conv2d(heads, heads, (kernel, 1), padding=(kernel // 2, 0), groups=heads, bias=False)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
        """Scaled queries, keys and values [B, heads, pad + n, d] and the front padding."""
        b, n, _ = x.shape
        m = self.landmarks
        pad = (m - n % m) % m
        x = F.pad(x, (0, 0, pad, 0))  # zeros in front, as the reference
        q, k, v = (t.reshape(b, -1, self.heads, self.dim_head).transpose(1, 2) for t in self.to_qkv(x).chunk(3, -1))
        return q * self.dim_head**-0.5, k, v, pad

    def _landmarks(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Landmark queries and keys (segment means) and pinv(a2), for all heads (the pseudo-inverse's start
        takes one maximum over the heads)."""
        b, h, n, _ = q.shape
        m = self.landmarks
        q_l = q.reshape(b, h, m, n // m, -1).mean(3)
        k_l = k.reshape(b, h, m, n // m, -1).mean(3)
        return q_l, k_l, pinv_iterative(torch.softmax(q_l @ k_l.transpose(-1, -2), -1), self.iters)

    def _approximation(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(a1, pinv(a2), a3) of the Nystrom approximation of softmax(q k^T)."""
        q_l, k_l, a2_inv = self._landmarks(q, k)
        a1 = torch.softmax(q @ k_l.transpose(-1, -2), -1)
        a3 = torch.softmax(q_l @ k.transpose(-1, -2), -1)
        return a1, a2_inv, a3

    def _factors(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        """(a1, pinv(a2), a3, v, front padding) of the Nystrom approximation of softmax(q k^T) v."""
        q, k, v, pad = self._qkv(x)
        return *self._approximation(q, k), v, pad

    def forward(self, x: Tensor, row: int | None = None) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """The layer's output [B, n, dim]; with ``row``, also that token's attention over the n tokens
        [B, heads, n] (no gradient) and the values [B, heads, n, d], from the same factors.

        Without autograd (MHIM's teacher) and for large bags, the heads are computed one at a time, so the
        [n, landmarks] factors exist for one head at once: the same result with an eighth of the transient
        memory."""
        b, n, _ = x.shape
        q, k, v, pad = self._qkv(x)
        big = q.shape[2] * self.landmarks * self.heads > self.split_heads_above
        groups = [slice(i, i + 1) for i in range(self.heads)] if big and not torch.is_grad_enabled() else [slice(None)]
        outs, rows = [], []
        q_l, k_l, a2_all = self._landmarks(q, k)
        for g in groups:
            a1 = torch.softmax(q[:, g] @ k_l[:, g].transpose(-1, -2), -1)
            a3 = torch.softmax(q_l[:, g] @ k[:, g].transpose(-1, -2), -1)
            a2_inv = a2_all[:, g]
            conv = F.conv2d(v[:, g], self.res_conv.weight[g], padding=self.res_conv.padding, groups=a1.shape[1])
            outs.append(a1 @ (a2_inv @ (a3 @ v[:, g])) + conv)  # right to left: no [n, landmarks] product
            if row is not None:
                with torch.no_grad():
                    rows.append((a1[:, :, pad + row : pad + row + 1] @ a2_inv @ a3)[:, :, 0, pad:])
            del a1, a2_inv, a3
        out = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
        out = self.to_out(out.transpose(1, 2).reshape(b, -1, self.heads * self.dim_head))[:, -n:]
        if row is None:
            return out
        v = v[:, :, pad:]  # without autograd a copy, so the [n, 3 x dim] projection can be freed
        return out, torch.cat(rows, 1), v if torch.is_grad_enabled() else v.contiguous()

    def row_attention(self, x: Tensor, row: int) -> tuple[Tensor, Tensor]:
        """Token ``row``'s approximate attention over all tokens [B, heads, n] and the values [B, heads, n, d]."""
        n = x.shape[1]
        a1, a2_inv, a3, v, pad = self._factors(x)
        attn = (a1[:, :, pad + row : pad + row + 1] @ a2_inv @ a3)[:, :, 0, pad:]
        return attn[..., :n], v[:, :, pad:][:, :, :n]


class PPEG(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, x: Tensor, side: int) -> Tensor:
        cls, feats = x[:, :1], x[:, 1:]
        grid = feats.transpose(1, 2).reshape(x.shape[0], -1, side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)

    def forward_padded(self, x: Tensor) -> Tensor:
        """MHIM's selfattn PPEG on class token + N instances: the N instances padded to the next square by
        repeating the first ones, then with zeros to at least 7 x 7; convolved; the first N kept."""
        cls, feats = x[:, :1], x[:, 1:]
        b, n, d = feats.shape
        side = math.ceil(math.sqrt(n))
        grid = torch.cat([feats, feats[:, : side * side - n]], dim=1)
        if side < 7:
            grid = F.pad(grid, (0, 0, 0, 49 - side * side))
            side = 7
        grid = grid.transpose(1, 2).reshape(b, d, side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)[:, :n]], dim=1)


class TransMIL(MILModel):
    config_class = TransMILConfig

    def __init__(self, cfg: TransMILConfig):
        super().__init__()
        if cfg.padding not in PADDINGS or cfg.hidden_dim % cfg.heads:
            raise ValueError(f"transmil: padding must be one of {PADDINGS} (got {cfg.padding!r}) and hidden_dim "
                             f"({cfg.hidden_dim}) a multiple of heads ({cfg.heads})")
        self.cfg = cfg
        d = cfg.hidden_dim
        self.feature = instance_projection(cfg.in_dim, d, cfg.dropout, act=cfg.act)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(2))
        self.layers = nn.ModuleList(
            NystromAttention(d, cfg.heads, cfg.landmarks, cfg.pinv_iterations, cfg.residual_kernel, cfg.attn_dropout)
            for _ in range(2))
        self.ppeg = PPEG(d)
        self.norm = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, cfg.n_classes)
        init_xavier(self)
        if cfg.padding == "input":  # the standalone reference also initialises the convolutions and the token
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_normal_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            nn.init.normal_(self.cls_token, std=1e-6)

    def _tokens(self, h: Tensor) -> tuple[Tensor, int]:
        """Class token + instances padded to a square by repeating the first instances; the square's side."""
        n = h.shape[1]
        side = math.ceil(math.sqrt(n))
        h = torch.cat([h, h[:, : side * side - n]], dim=1)
        return torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1), side

    def _bag_embedding(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Bag embedding [B, dim]; the class token's layer-1 attention over the N instances [B, heads, N] (no
        gradient) and the layer-1 values of the N instances [B, heads, N, d]."""
        n = h.shape[1]
        if self.cfg.padding == "input":
            x, side = self._tokens(h)
            y, attn, v = self.layers[0](self.norms[0](x), row=0)
            x = self.ppeg(x + y, side)
        else:  # MHIM's selfattn: no padding before layer 1, PPEG pads for its convolution only
            x = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
            y, attn, v = self.layers[0](self.norms[0](x), row=0)
            x = self.ppeg.forward_padded(x + y)
        x = x + self.layers[1](self.norms[1](x))
        return self.norm(x)[:, 0], attn[:, :, 1 : n + 1], v[:, :, 1 : n + 1]

    def embed(self, x: Tensor) -> Tensor:
        return self.feature(x)

    def instance_scores(self, h: Tensor, out: MILOutput, version: str) -> Tensor:
        """MHIM's instance assessment of one bag h [1, N, H] from the class token's layer-1 attention, as
        ``head`` left it in ``out.extras`` (the teacher's forward is not repeated): v1 its mean over heads; v2
        the class-aware probability of the per-head attention-weighted values, concatenated over heads, through
        the layer's output projection and the classifier without its bias (max over classes)."""
        if "cls_attention" not in out.extras:
            raise ValueError("TransMIL.instance_scores needs the output of head() on the same bag, without a mask")
        attn, v = out.extras["cls_attention"], out.extras["cls_values"]
        if version == "v1":
            return attn[0].mean(0)
        f = (attn[..., None] * v).transpose(1, 2).reshape(1, h.shape[1], -1)
        # the classifier without its bias, as the reference (its b_0 on every class cancels under the softmax)
        logits = F.linear(self.layers[0].to_out(f), self.classifier.weight)
        return torch.softmax(logits, dim=-1)[0].amax(-1)

    def forward(self, x: Tensor, mask: Tensor | None = None, label: Tensor | None = None,
                coords: Tensor | None = None) -> MILOutput:
        return self.head(self.embed(x), mask, label)

    def head(self, h: Tensor, mask: Tensor | None = None, label: Tensor | None = None) -> MILOutput:
        """Everything after the instance embedding (the hook MHIM runs). ``attention``: the class token's
        layer-1 attention row, mean over heads, clipped at 0 and normalised over the real instances."""
        if mask is None:
            z, attn, v = self._bag_embedding(h)
            return MILOutput(logits=self.classifier(z), embedding=z, attention=_normalised(attn.mean(1)),
                             extras={"cls_attention": attn, "cls_values": v})
        zs, attention = [], torch.zeros(mask.shape, device=h.device, dtype=h.dtype)
        for b in range(len(h)):  # each bag on its real instances only
            z, attn, _ = self._bag_embedding(h[b : b + 1, mask[b]])
            zs.append(z)
            attention[b, mask[b]] = _normalised(attn.mean(1))[0].to(h.dtype)
        z = torch.cat(zs)
        return MILOutput(logits=self.classifier(z), embedding=z, attention=attention)


def _normalised(a: Tensor) -> Tensor:
    """Non-negative weights summing to 1 over the last dimension (the Nystrom row can dip below 0)."""
    a = a.clamp_min(0)
    return a / a.sum(-1, keepdim=True).clamp_min(1e-12)
