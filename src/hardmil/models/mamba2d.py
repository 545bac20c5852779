"""2DMamba-style MIL: a 2-D selective state-space scan over the patch grid (Zhang et al., CVPR 2025).

Paper: Zhang, Nguyen, Kabir, ..., Prasanna. 2DMamba: Efficient State Space Model for Image Representation
with Applications on Giga-Pixel Whole Slide Image Classification. CVPR 2025.
Reference code: https://github.com/AtlasAnalyticsLab/2DMamba (``2DMambaMIL/models/MambaMIL_2D.py``) and its
copy in MHIM-MIL (``modules/mambamil_2d.py``, ``modules/mamba/mamba_simple.py``, ``pscan.py``); read for
behaviour only.

Shapes: ``x`` (batch_size, bag_size, in_dim); ``coords`` (batch_size, bag_size, 2) level-0 (x, y) of each
patch; ``mask`` (batch_size, bag_size).

Reference semantics kept (MHIM-MIL defaults): ``Linear(D, 128) + GELU + Dropout(0.25)``; patches are placed
on their grid cell, empty cells hold a trainable pad token (``U[0, 1)`` init); one residual block
``x + mixer(RMSNorm(x))``; the mixer: ``in_proj`` 128 -> 2 x 256 (x, z), a causal depthwise Conv1d (kernel 4)
over the row-major flattened grid, SiLU, ``x_proj`` -> (dt [8], B [16], C [16]) with RMSNorm on each (MHIM
passes ``inner_layernorms``), ``delta = softplus(dt_proj(dt))``, ``A = -exp(A_log)`` with ``A[d, n] = n + 1``,
``D = 1``; the 2-D recurrence of the CUDA kernel,

    g[i, j] = exp(delta A)[i, j] * g[i, j-1] + (delta B x)[i, j]          (along each row)
    h[i, j] = exp(delta A)[i, j] * h[i-1, j] + g[i, j]                    (down each column)
    y[i, j] = <h[i, j], C[i, j]> + D x[i, j];   out = out_proj(y * SiLU(z)),

then LayerNorm, tanh attention pooling (128 -> 128 -> 1) and ``Linear(128, C)``; every Linear
Xavier-normal with zero bias (dt_proj included, as the reference does).

Deliberate deviations (defaults; each has a switch to the reference's behaviour, below):
* ``scan: kernel``: the scan is the 2-D recurrence above (what the CUDA kernel, the reference's ``--cuda_pscan``
  path and the paper compute), written as two plain loops (rows, then columns) differentiated by autograd. The
  reference as configured (``--pscan`` on, ``--cuda_pscan`` off) runs its pure-PyTorch ``pscan_2d`` instead, which
  does not compute that recurrence (its column pass carries the state across blocks with the row pass's leftover
  decay products; :func:`scan_2d_pscan`); on the fixture's random 7 x 8 grid the two states differ by up to 4.5.
* ``grid_extent: bag``: grid cells as the reference: cell = coord // patch_size (level-0 patch footprint;
  ``patch_size: 0`` infers it as the most common spacing of horizontally adjacent patches, since the bag carries
  coordinates only), which works for CLAM-style coordinates where each tissue region is tiled from its own origin.
  The grid is that cell grid cropped to the bag's bounding box instead of the reference's one dataset-wide
  ``max_w x max_h`` grid hard-coded per dataset (so the scan does not start in empty padding above and left of the
  tissue). ``grid: gcd`` (this project's earlier rule) uses the greatest common divisor of the offsets as the step,
  which fails on such coordinates (a step of a few pixels and a huge grid).
* ``pool: patches``: attention pools over real patches only (the reference also gives weight to pad cells).
* ``max_grid_cells`` (ours) guards against coordinates that are not a patch grid; its default 350,000 admits
  every dataset grid of the reference (NSCLC 385 x 216, CAMELYON 432 x 432, BRCA 413 x 821).
* Bags without coordinates are an error (the reference fails with a TypeError).
Permutation: permuting patches *together with* their coordinates leaves the output unchanged (tested).

The reference's forward by switches (issue 25, item 5; pinned by ``tests/test_parity_mamba2d.py``, fixture written
from the reference by ``bench/parity_mamba2d.py``): ``grid_extent: dataset`` with ``grid_w``, ``grid_h`` (the
reference's ``mamba_2d_max_w`` x ``mamba_2d_max_h`` of ``options.py``: CAMELYON 432 x 432, NSCLC / LUAD / LUSC
385 x 216, BRCA 413 x 821, BLCA 381 x 275, PANDA 384 x 216) places each patch at its absolute cell
coord // patch_size of that one grid, pad token elsewhere (a patch outside it is an error; the reference fails with
an IndexError); ``pool: grid`` pools over every cell, pad cells included; ``scan: pscan`` computes what ``pscan_2d``
computes. With all three the logits match the reference's within 1e-7; each one set back misses them by 0.02-0.26.
What still differs with all three on:
* Gradients: autograd of the ``pscan_2d`` forward. The reference's hand-written backward of ``pscan_2d`` is not the
  derivative of its forward, so its pure-PyTorch training follows the gradients of another function; this one is
  not reproduced.
* The reference's sequential CPU path (``--pscan`` off, ``selective_scan_seq_2d``: the left and the upper state
  both decayed and summed, on a square grid of side sqrt(L)) is not offered.
* The reference's attention MLP is ``dim -> 128 -> 1`` whatever ``dim``; ours ``dim -> dim -> 1`` (equal at the
  default 128). Its ``zero`` pad token and ``linear`` positional embedding (both off in MHIM-MIL's runs) are not
  offered.
* Cells: the reference divides by the patch footprint its h5 attributes give (``patch_size x downsample``); ours by
  ``patch_size`` or the inferred spacing, the same for CLAM coordinates of one footprint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardmil.models.base import MILModel, MILOutput, param


@dataclass(frozen=True)
class Mamba2DConfig:
    in_dim: int = param(1024, ge=1)
    n_classes: int = param(2, ge=2)
    dim: int = param(128, ge=1)  # --mambamil_dim
    layers: int = param(1, ge=1)  # --mambamil_layer
    d_state: int = param(16, ge=1)  # --mambamil_state_dim
    expand: int = param(2, ge=1)
    d_conv: int = param(4, ge=1)
    dropout: float = param(0.25, ge=0, lt=1)
    inner_norms: bool = True  # MHIM passes inner_layernorms=mambamil_state_dim (truthy)
    # Guard (ours): the scan materialises [H, W, 256, 16] states, 0.17-0.28 MB per grid cell in training
    # (SCAN_CELL_MB).
    max_grid_cells: int = param(350_000, ge=1)
    grid: str = "patch"  # 'patch': cell = coord // patch_size (reference); 'gcd': step = gcd of the offsets
    patch_size: int = param(0, ge=0)  # level-0 patch footprint in pixels; 0: inferred from the coordinates
    # 'bag': the bag's cells cropped to their bounding box; 'dataset': the reference's one grid_w x grid_h grid
    # (mamba_2d_max_w x mamba_2d_max_h), patches at their absolute cells
    grid_extent: str = "bag"
    grid_w: int = param(0, ge=0)  # columns of the 'dataset' grid (reference: 432 CAMELYON, 385 NSCLC, 413 BRCA)
    grid_h: int = param(0, ge=0)  # rows of the 'dataset' grid (reference: 432 CAMELYON, 216 NSCLC, 821 BRCA)
    pool: str = "patches"  # attention pooling over 'patches' (real ones) or every 'grid' cell (reference)
    scan: str = "kernel"  # 'kernel': the CUDA kernel's 2-D recurrence; 'pscan': the reference's pure-PyTorch pscan_2d


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _scan_along(decay: Tensor, inp: Tensor, dim: int) -> Tensor:
    """``s[t] = decay[t] * s[t-1] + inp[t]`` along ``dim`` (from zero).

    ``unbind`` (not indexing) keeps the backward linear in the length: the gradient of an index is a full-size
    scatter per step.
    """
    steps, s = [], torch.zeros_like(inp.select(dim, 0))
    for a, b in zip(decay.unbind(dim), inp.unbind(dim), strict=True):
        s = a * s + b
        steps.append(s)
    return torch.stack(steps, dim=dim)


def scan_2d(decay: Tensor, inp: Tensor) -> Tensor:
    """The 2-D recurrence on [H, W, ...] tensors: along rows, then down columns, same decay (the CUDA kernel)."""
    return _scan_along(decay, _scan_along(decay, inp, 1), 0)


def scan_2d_pscan(decay: Tensor, inp: Tensor) -> Tensor:
    """What the MHIM-MIL reference's pure-PyTorch ``pscan_2d`` computes, on [H, W, ...] tensors (``scan: pscan``).

    Its row pass is the exact row recurrence ``g``. Its column pass is a tree scan whose carries between blocks use
    the wrong factor: down each column, row ``i``'s state is the exact scan of ``g`` over the aligned block of
    ``L = lowbit(i + 1)`` rows ending at ``i`` (from zero), plus, unless the block starts at row 0, the state of the
    row above the block times ``coef[i, j]`` where the recurrence has the block's product of decays down the
    column. ``coef`` is what the row pass leaves in the decay buffer the column pass reads: the row's running
    product ``prod_{t <= j} decay[i, t]``, except in the last column of a power-of-two width ``W >= 2``, which
    holds the product of the last ``max(1, W // 4)`` columns. Rows ``i`` with ``i + 1`` a power of two (one block
    from row 0) are therefore exact, and so is every grid of at most two rows. Derived from the reference's
    behaviour (checked on every grid up to 19 x 19 and on larger ones, to 1e-14 in float64); written here as a
    stream of aligned blocks merged like a binary counter, differentiated by autograd.
    """
    width = decay.shape[1]
    g = _scan_along(decay, inp, 1)
    coef = torch.cumprod(decay, dim=1)
    if width > 1 and width & (width - 1) == 0:
        last = decay[:, width - max(1, width // 4):].prod(dim=1, keepdim=True)
        coef = torch.cat([coef[:, :-1], last], dim=1)
    blocks: list[tuple[Tensor, Tensor]] = []  # (decay product, scan) of the aligned blocks completed so far
    rows: list[Tensor] = []
    for i, (a, s, c) in enumerate(zip(decay.unbind(0), g.unbind(0), coef.unbind(0), strict=True)):
        size = 1
        while (i + 1) % (2 * size) == 0:  # merge with the equally long block just above
            above_a, above_s = blocks.pop()
            a, s, size = a * above_a, a * above_s + s, 2 * size
        blocks.append((a, s))
        start = i + 1 - size
        rows.append(s if start == 0 else s + c * rows[start - 1])
    return torch.stack(rows, dim=0)


class Mixer2D(nn.Module):
    def __init__(self, cfg: Mamba2DConfig):
        super().__init__()
        di, ds = cfg.expand * cfg.dim, cfg.d_state
        self.dt_rank = math.ceil(cfg.dim / 16)
        self.in_proj = nn.Linear(cfg.dim, 2 * di, bias=False)
        self.conv = nn.Conv1d(di, di, cfg.d_conv, groups=di, padding=cfg.d_conv - 1)
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * ds, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di)
        self.norms = nn.ModuleList(RMSNorm(n) for n in (self.dt_rank, ds, ds)) if cfg.inner_norms else None
        self.A_log = nn.Parameter(torch.log(torch.arange(1, ds + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, cfg.dim, bias=False)
        self.ds = ds
        self.scan = scan_2d_pscan if cfg.scan == "pscan" else scan_2d

    def forward(self, grid: Tensor) -> Tensor:
        h, w, _ = grid.shape
        x, z = self.in_proj(grid).chunk(2, dim=-1)
        seq = x.reshape(h * w, -1).T[None]
        x = F.silu(self.conv(seq)[..., : h * w][0].T.reshape(h, w, -1))
        dt, b, c = self.x_proj(x).split([self.dt_rank, self.ds, self.ds], dim=-1)
        if self.norms is not None:
            dt, b, c = (norm(t) for norm, t in zip(self.norms, (dt, b, c), strict=True))
        delta = F.softplus(self.dt_proj(dt))  # [H, W, di]
        decay = torch.exp(delta[..., None] * -torch.exp(self.A_log))  # [H, W, di, ds]
        state = self.scan(decay, delta[..., None] * b[:, :, None, :] * x[..., None])
        y = (state * c[:, :, None, :]).sum(-1) + self.D * x
        return self.out_proj(y * F.silu(z))


def patch_spacing(coords: Tensor) -> int:
    """The level-0 patch footprint of a bag: the most common gap between horizontally adjacent patches of the
    same row (vertically adjacent ones if no row has two patches; 1 for a single patch)."""
    c = coords.cpu().numpy()
    for along, across in ((0, 1), (1, 0)):
        order = np.lexsort((c[:, along], c[:, across]))
        s = c[order]
        gaps = np.diff(s[:, along])[np.diff(s[:, across]) == 0]
        gaps = gaps[gaps > 0]
        if len(gaps):
            values, counts = np.unique(gaps, return_counts=True)
            return int(values[counts.argmax()])
    return 1


def grid_cells(coords: Tensor, patch_size: int = 0, rule: str = "patch") -> tuple[Tensor, Tensor, int, int]:
    """(row, col, H, W) of each patch on the bag's own grid (cropped to its bounding box).

    ``rule='patch'``: cell = coord // patch_size (``patch_size`` 0: :func:`patch_spacing`), as the reference.
    ``rule='gcd'``: the step is the greatest common divisor of all offsets from the top-left patch.
    """
    if rule == "gcd":
        offsets = coords - coords.min(dim=0).values
        step = int(np.gcd.reduce(offsets.flatten().cpu().numpy())) or 1
        cells = offsets // step
    else:
        cells = coords // (patch_size or patch_spacing(coords))
        cells = cells - cells.min(dim=0).values
    row, col = cells[:, 1], cells[:, 0]
    return row, col, int(row.max()) + 1, int(col.max()) + 1


def dataset_cells(coords: Tensor, patch_size: int, grid_w: int, grid_h: int) -> tuple[Tensor, Tensor, int, int]:
    """(row, col, grid_h, grid_w): each patch at its absolute cell coord // patch_size on the reference's one
    dataset-wide grid (``grid_extent: dataset``); a patch outside it is an error."""
    cells = coords // (patch_size or patch_spacing(coords))
    row, col = cells[:, 1], cells[:, 0]
    outside = (row < 0) | (row >= grid_h) | (col < 0) | (col >= grid_w)
    if bool(outside.any()):
        k = int(outside.nonzero()[0, 0])
        raise ValueError(f"patch at {coords[k].tolist()} is cell (x {int(col[k])}, y {int(row[k])}), outside the "
                         f"dataset grid of grid_w={grid_w} x grid_h={grid_h} cells ({int(outside.sum())} such "
                         "patches): raise grid_w / grid_h or check patch_size")
    return row, col, grid_h, grid_w


# Host memory of one training step per grid cell (pad cells included) at the defaults (dim 128, d_state 16),
# measured by bench/mamba2d_memory.py on CPU (1 thread; least squares over 32^2-128^2 grids): the kernel scan
# 0.165 MB, pscan 0.282 MB (it keeps more intermediates for autograd). It grows with dim x expand x d_state.
SCAN_CELL_MB = {"kernel": 0.165, "pscan": 0.282}
# grid_extent 'bag' scans the bag's bounding box, not known before the job reads the coordinates: taken as this
# many cells per patch (tissue fills about half of its bounding box in CLAM / TRIDENT tilings).
BAG_GRID_FILL = 2


class Mamba2DMIL(MILModel):
    config_class = Mamba2DConfig
    needs_coords = True

    @staticmethod
    def step_memory_mb(cfg: Mamba2DConfig, n_instances: int) -> float:
        """The scan's memory for a bag of ``n_instances``: every cell of the dataset grid (``grid_extent:
        dataset``), else ``BAG_GRID_FILL`` cells per patch; scaled from the measured default width."""
        cells = cfg.grid_w * cfg.grid_h if cfg.grid_extent == "dataset" else BAG_GRID_FILL * n_instances
        width = (cfg.dim * cfg.expand * cfg.d_state * cfg.layers) / (128 * 2 * 16)
        return SCAN_CELL_MB[cfg.scan] * cells * width

    def __init__(self, cfg: Mamba2DConfig):
        super().__init__()
        for key, allowed in (("grid", ("patch", "gcd")), ("grid_extent", ("bag", "dataset")),
                             ("pool", ("patches", "grid")), ("scan", ("kernel", "pscan"))):
            if getattr(cfg, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(map(repr, allowed))}, got {getattr(cfg, key)!r}")
        if cfg.grid_extent == "dataset" and (cfg.grid != "patch" or not cfg.grid_w or not cfg.grid_h):
            raise ValueError("grid_extent 'dataset' needs grid 'patch' and the grid's size grid_w, grid_h > 0 "
                             f"(got grid {cfg.grid!r}, grid_w {cfg.grid_w}, grid_h {cfg.grid_h})")
        self.cfg = cfg
        self.feature = nn.Sequential(nn.Linear(cfg.in_dim, cfg.dim), nn.GELU(), nn.Dropout(cfg.dropout))
        self.pad_token = nn.Parameter(torch.rand(cfg.dim))
        self.block_norms = nn.ModuleList(RMSNorm(cfg.dim) for _ in range(cfg.layers))
        self.mixers = nn.ModuleList(Mixer2D(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.attention = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.Tanh(), nn.Linear(cfg.dim, 1))
        self.classifier = nn.Linear(cfg.dim, cfg.n_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _bag(self, h: Tensor, coords: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        if cfg.grid_extent == "dataset":
            row, col, hh, ww = dataset_cells(coords, cfg.patch_size, cfg.grid_w, cfg.grid_h)
        else:
            row, col, hh, ww = grid_cells(coords, cfg.patch_size, cfg.grid)
        if hh * ww > cfg.max_grid_cells:
            raise ValueError(f"patch grid of {hh} x {ww} cells exceeds max_grid_cells={cfg.max_grid_cells} "
                             f"({len(coords)} patches): are the coords a regular patch grid?")
        grid = self.pad_token.to(h.dtype).expand(hh, ww, -1).clone()  # h's dtype: bf16 under CUDA autocast
        grid[row, col] = h  # a duplicate cell keeps the last patch, as the reference
        for norm, mixer in zip(self.block_norms, self.mixers, strict=True):
            grid = grid + mixer(norm(grid))
        if cfg.pool == "grid":  # every cell, pad cells included, as the reference
            cells = self.norm(grid)
            a = torch.softmax(self.attention(cells).flatten(), dim=0)
            return a @ cells.flatten(0, 1), a.view(hh, ww)[row, col]
        tokens = self.norm(grid[row, col])
        a = torch.softmax(self.attention(tokens).squeeze(-1), dim=0)
        return a @ tokens, a

    def forward(self, x: Tensor, mask: Tensor | None = None, label: Tensor | None = None,
                coords: Tensor | None = None) -> MILOutput:
        if coords is None:
            raise ValueError("2DMamba-style MIL needs patch coordinates ('coords' in the features h5); "
                             "this bag has none")
        h = self.feature(x)
        attn = h.new_zeros(h.shape[:2])
        emb = []
        for b in range(len(h)):
            idx = torch.arange(h.shape[1], device=h.device) if mask is None else mask[b].nonzero().squeeze(1)
            z, a = self._bag(h[b, idx], coords[b, idx])
            attn[b, idx] = a
            emb.append(z)
        z = torch.stack(emb)
        return MILOutput(logits=self.classifier(z), attention=attn, embedding=z)
