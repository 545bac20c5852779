"""Write the 2DMamba parity fixture tests/data/parity/mamba2d.pt from the MHIM-MIL reference (run by hand).

    .venv/bin/python bench/parity_mamba2d.py --reference /path/to/MHIM-MIL --out tests/data/parity

The reference (DearCaat/MHIM-MIL, no licence) is imported from the checkout you pass and never copied:
``modules/mambamil_2d.py`` with ``modules/mamba/mamba_simple.py`` and ``pscan.py``, loaded without running
``modules/__init__.py`` (it imports every model); they need only torch and numpy. The reference model is built as
MHIM-MIL trains it on a GPU without the optional extension (``--pscan`` on, ``--cuda_pscan`` off, trainable pad
token, no positional embedding, one layer, ``mamba_2d_patch_size`` 1 on the cell indices its data loader makes of
the CLAM coordinates), on the CPU, in eval mode, with the deterministic weights of ``tests/parity_weights.py``
(mapped key by key). The bag: 26 patches of a 32-d feature on an 8 x 7 dataset grid (a power-of-two width and a
height that is not one, so the pure-PyTorch scan's quirks in both passes show), with holes, not touching the top
row or the left column (so the bag's own cropped grid differs from the dataset grid), in shuffled order.

Stored (plain tensors, ``torch.load(weights_only=True)``): the bag (features, level-0 pixel coordinates with a
256-pixel patch footprint and a region offset, as CLAM writes them), the reference's logits (``logits``: its
``pscan_2d``), the reference's logits with ``pscan_2d`` replaced by a brute-force cell-by-cell loop of the 2-D
recurrence of 2DMamba's CUDA kernel (``logits_kernel``: the project's default scan in the reference's pipeline),
and ``pscan_2d`` itself on random decays and inputs of three grid shapes (``scans``). ``tests/test_parity_mamba2d.py``
compares them with this project's ``mamba2d``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.parity_baselines import _rename, load_mapped  # noqa: E402
from hardmil.models import build_model  # noqa: E402
from tests.parity_weights import fill_weights  # noqa: E402

D, SEED, PATCH, OFFSET = 32, 91, 256, (37, 101)
GRID_W, GRID_H = 8, 7
KEYS = {"feature.0": "_fc1.0", "pad_token": "layers.pad_token", "block_norms.0": "layers.layers.0.norm",
        "mixers.0.conv": "layers.layers.0.mixer.conv1d", "mixers.0.norms.0": "layers.layers.0.mixer.dt_layernorm",
        "mixers.0.norms.1": "layers.layers.0.mixer.B_layernorm",
        "mixers.0.norms.2": "layers.layers.0.mixer.C_layernorm", "mixers.0": "layers.layers.0.mixer",
        "norm": "norm", "attention": "attention", "classifier": "classifier"}


def reference_modules(root: Path) -> types.SimpleNamespace:
    pkg = types.ModuleType("modules")
    pkg.__path__ = [str(root / "modules")]
    sys.modules["modules"] = pkg
    sys.path.insert(0, str(root))
    try:
        return types.SimpleNamespace(model=importlib.import_module("modules.mambamil_2d"),
                                     simple=importlib.import_module("modules.mamba.mamba_simple"),
                                     pscan=importlib.import_module("modules.mamba.pscan"))
    finally:
        sys.path.remove(str(root))


def kernel_recurrence(decay: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """[B, H, W, ...]: g along each row, then h down each column, one cell at a time (2DMamba's CUDA kernel)."""
    _, rows, cols = decay.shape[:3]
    g, h = torch.zeros_like(inp), torch.zeros_like(inp)
    for i in range(rows):
        for j in range(cols):
            g[:, i, j] = inp[:, i, j] + (decay[:, i, j] * g[:, i, j - 1] if j else 0)
    for i in range(rows):
        for j in range(cols):
            h[:, i, j] = g[:, i, j] + (decay[:, i, j] * h[:, i - 1, j] if i else 0)
    return h


def bag_cells() -> np.ndarray:
    """26 (x, y) cells of the 8 x 7 grid, none in row 0 or column 0, holes inside, shuffled."""
    rng = np.random.Generator(np.random.PCG64(SEED))
    cells = np.array([(x, y) for y in range(1, GRID_H) for x in range(1, GRID_W)])
    keep = rng.choice(len(cells), 26, replace=False)
    return cells[keep]


def mamba2d_fixture(ref: types.SimpleNamespace) -> dict:
    params = {"in_dim": D, "n_classes": 3, "dim": 128, "d_state": 8, "patch_size": PATCH,
              "grid_extent": "dataset", "grid_w": GRID_W, "grid_h": GRID_H, "pool": "grid", "scan": "pscan"}
    ours = build_model("mamba2d", **params)
    checksum = fill_weights(ours, SEED)
    theirs = ref.model.MambaMIL_2D(
        in_dim=D, n_classes=3, mambamil_dim=128, mambamil_layer=1, mambamil_state_dim=8, pscan=True,
        cuda_pscan=False, mamba_2d_max_w=GRID_W, mamba_2d_max_h=GRID_H, mamba_2d_pad_token="trainable",
        mamba_2d_patch_size=1, pos_emb_type=None, drop_out=0.25, pos_emb_dropout=0.0)
    load_mapped(theirs, ours, {k: _rename(k, KEYS) for k in ours.state_dict()})
    theirs.eval()
    cells = bag_cells()
    coords = torch.from_numpy(cells * PATCH + np.array(OFFSET)).long()
    # the reference's data loader: [[width, height] of the slide in cells] + each patch's cell
    pos = torch.from_numpy(np.concatenate([[[GRID_W, GRID_H]], cells])).long()[None]
    x = torch.from_numpy(np.random.Generator(np.random.PCG64([SEED, 1])).standard_normal((len(cells), D))).float()
    with torch.no_grad():
        logits = theirs(x[None], pos)
        pscan_2d = ref.simple.pscan_2d
        ref.simple.pscan_2d = kernel_recurrence
        try:
            logits_kernel = theirs(x[None], pos)
        finally:
            ref.simple.pscan_2d = pscan_2d
    scans = []
    for k, (h, w) in enumerate(((7, 8), (6, 5), (13, 4))):
        rng = np.random.Generator(np.random.PCG64([SEED, 2, k]))
        decay = torch.from_numpy(rng.uniform(0.3, 1.0, (1, h, w, 2, 3))).float()
        inp = torch.from_numpy(rng.standard_normal((1, h, w, 2, 3))).float()
        scans.append({"decay": decay[0], "input": inp[0], "pscan_2d": ref.pscan.pscan_2d(decay, inp)[0]})
    return {"model": "mamba2d", "params": params, "seed": SEED, "checksum": checksum, "x": x, "coords": coords,
            "logits": logits, "logits_kernel": logits_kernel, "scans": scans}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", type=Path, required=True, help="checkout of DearCaat/MHIM-MIL")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "parity")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    fx = mamba2d_fixture(reference_modules(args.reference.resolve()))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "mamba2d.pt"
    torch.save(fx, path)
    print(f"{path}: {path.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
