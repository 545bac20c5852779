"""A plain ViT image encoder whose parameters carry timm's names, so UNI's checkpoint loads without timm.

Model: the Vision Transformer of Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale", ICLR 2021, with the LayerScale of Touvron et al., "Going deeper with Image Transformers"
(CaiT), ICCV 2021. Its configuration here is UNI's (Chen et al., "Towards a general-purpose foundation model for
computational pathology", Nat. Med. 2024; github.com/mahmoodlab/UNI): ViT-L/16 at 224 px, 24 blocks of width 1024
with 16 heads, MLP ratio 4, LayerScale initialised at 1e-5, a class token, no register tokens, and the final-norm
class token as the 1024-d patch feature (timm ``num_classes=0``, ``global_pool='token'``).

Reference for parameter names and numerics: ``timm/models/vision_transformer.py``, ``timm/layers/patch_embed.py``
and ``timm/layers/pos_embed.py`` (huggingface/pytorch-image-models, read at timm 1.0.31). The module below is
written for this project; ``state_dict()`` keys and shapes equal those of
``timm.create_model('vit_large_patch16_224', init_values=1e-5, num_classes=0, dynamic_img_size=True)``
(checked against ``tests/data/timm_vit_large_patch16_224_uni.tsv``), so a UNI ``pytorch_model.bin`` loads with
``strict=True``. ``bench/vit_vs_timm.py`` (run once outside CI, with real timm 1.0.31 on CPU) found a max abs
difference of 0.0 between timm's outputs and ours at 224, 96, 256 and 160x224 px with random weights, and wrote
``tests/data/timm_vit_tiny_reference.pt`` (a tiny ViT with timm's outputs) that the tests compare against.

Inputs other than the training size work as with timm's ``dynamic_img_size=True``: the patch-grid part of the
position embedding is resampled to the input's grid (bicubic, antialiased, ``align_corners=False``, in float32),
the class token's entry is kept as is, and the sides must be multiples of the patch size.

Deliberate deviations from timm's VisionTransformer: only what UNI uses is built (no dropout / drop-path, no
register tokens, no pooling variants, no classifier head, no gradient checkpointing); attention is always
``F.scaled_dot_product_attention`` (timm's default "fused" path); random initialisation is a simple truncated normal
(std 0.02) for weights and zeros for biases instead of timm's JAX-style schemes, which only matters for tests,
since the real weights come from the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches -> ``[B, H/p, W/p, D]`` (timm's ``patch_embed.proj``)."""

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}x{w} px: both sides must be multiples of the patch size {self.patch_size}")
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm's ``attn.qkv`` / ``attn.proj``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class LayerScale(nn.Module):
    """Per-channel residual scale (CaiT); parameter ``gamma`` as in timm."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)), then x + ls2(mlp(norm2 x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, init_values: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def resample_grid_embedding(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int],
                            prefix: int = 1) -> torch.Tensor:
    """Position embedding ``[1, prefix + old_h*old_w, D]`` -> ``[1, prefix + new_h*new_w, D]``.

    The prefix (class token) entries are kept; the grid is resized bicubically with antialiasing in float32."""
    if tuple(old) == tuple(new):
        return pos
    head, grid = pos[:, :prefix], pos[:, prefix:]
    dim = grid.shape[-1]
    img = grid.float().reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=tuple(new), mode="bicubic", align_corners=False, antialias=True)
    grid = img.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], dim).to(pos.dtype)
    return torch.cat([head, grid], dim=1)


class VisionTransformer(nn.Module):
    """ViT with a class token and LayerScale; ``forward`` returns the normalised class token ``[B, dim]``.

    Defaults are UNI's ViT-L/16 (303 M parameters). Smaller ``dim`` / ``depth`` / ``heads`` build the same module
    at test scale."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, dim: int = 1024, depth: int = 24, heads: int = 16,
                 mlp_ratio: float = 4.0, init_values: float = 1e-5, eps: float = 1e-6):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.embed_dim = dim
        self.num_prefix_tokens = 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, init_values, eps) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.pos_embed.is_meta:
            return
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> all tokens after the final norm ``[B, 1 + H/p * W/p, dim]``."""
        x = self.patch_embed(x)
        b, gh, gw, d = x.shape
        pos = resample_grid_embedding(self.pos_embed, self.grid, (gh, gw), self.num_prefix_tokens)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, gh * gw, d)], dim=1) + pos
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[:, 0]


def uni_vit_large(**overrides) -> VisionTransformer:
    """UNI's architecture (timm ``vit_large_patch16_224``, ``init_values=1e-5``, ``num_classes=0``)."""
    return VisionTransformer(**{"img_size": 224, "patch_size": 16, "dim": 1024, "depth": 24, "heads": 16,
                                "mlp_ratio": 4.0, "init_values": 1e-5, **overrides})
