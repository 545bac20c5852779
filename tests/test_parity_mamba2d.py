"""2DMamba against the MHIM-MIL reference (issue 25, item 5), pinned by tests/data/parity/mamba2d.pt.

``bench/parity_mamba2d.py`` (run by hand, with the reference checkout) gave the reference ``MambaMIL_2D``
(``--pscan`` on, ``--cuda_pscan`` off, eval, CPU) the deterministic weights of ``tests/parity_weights.py`` and
stored its logits on a 26-patch bag with holes on an 8 x 7 dataset grid, the same with its ``pscan_2d`` replaced by
a brute-force loop of the CUDA kernel's recurrence, and ``pscan_2d`` on random inputs of three grid shapes.

Tolerances: float32 forwards of the same operations in a different order, ~1e-7 measured, so 1e-5 on logits of
order 0.1-1; each switch flipped back moves the logits by 0.02-0.26, so a miss is asserted at 1e-3.
"""

from __future__ import annotations

import pytest
import torch

from hardmil.models import build_model
from hardmil.models.mamba2d import scan_2d, scan_2d_pscan

from .test_parity_baselines import fixture, ours

DEFAULTS = {"grid_extent": "bag", "pool": "patches", "scan": "kernel"}


def logits(fx: dict, **switches) -> torch.Tensor:
    with torch.no_grad():
        return ours(fx, **switches).eval()(fx["x"][None], coords=fx["coords"][None]).logits


def test_reference_switches_reproduce_the_reference_forward():
    fx = fixture("mamba2d")
    assert {k: fx["params"][k] for k in DEFAULTS} == {"grid_extent": "dataset", "pool": "grid", "scan": "pscan"}
    assert torch.allclose(logits(fx), fx["logits"], atol=1e-5)


@pytest.mark.parametrize("switch", sorted(DEFAULTS))
def test_each_switch_flipped_back_misses_the_reference(switch):
    fx = fixture("mamba2d")
    got = logits(fx, **{switch: DEFAULTS[switch]})
    assert (got - fx["logits"]).abs().max() > 1e-3, switch


def test_kernel_scan_in_the_reference_pipeline():
    """The default scan (the CUDA kernel's recurrence) is what the reference computes once its ``pscan_2d`` is
    replaced by a cell-by-cell loop of that recurrence; the defaults of all three switches miss the reference."""
    fx = fixture("mamba2d")
    kernel = logits(fx, scan="kernel")
    assert torch.allclose(kernel, fx["logits_kernel"], atol=1e-5)
    assert (kernel - fx["logits"]).abs().max() > 1e-3
    assert (logits(fx, **DEFAULTS) - fx["logits"]).abs().max() > 1e-3


def test_pscan_matches_the_reference_scan_and_the_kernel_recurrence_does_not():
    for case in fixture("mamba2d")["scans"]:
        decay, inp, ref = case["decay"], case["input"], case["pscan_2d"]
        assert torch.allclose(scan_2d_pscan(decay, inp), ref, atol=1e-5), tuple(decay.shape)
        assert (scan_2d(decay, inp) - ref).abs().max() > 0.1, tuple(decay.shape)


def test_pscan_on_small_grids_and_its_gradient():
    """Grids of at most two rows are exact in the reference's scan; autograd differentiates the forward (the
    reference's hand-written backward does not, a declared deviation)."""
    torch.manual_seed(0)
    for h, w in ((1, 5), (2, 3), (2, 4)):
        a, b = torch.rand(h, w, 3), torch.randn(h, w, 3)
        assert torch.allclose(scan_2d_pscan(a, b), scan_2d(a, b), atol=1e-6)
    a = torch.rand(5, 4, 2, dtype=torch.float64).requires_grad_()
    b = torch.randn(5, 4, 2, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(scan_2d_pscan, (a, b))


def test_dataset_grid_places_patches_at_their_absolute_cells_and_refuses_outside():
    m = build_model("mamba2d", in_dim=4, dim=16, d_state=4, patch_size=256, grid_extent="dataset", grid_w=6,
                    grid_h=5).eval()
    coords = torch.tensor([[[512 + 9, 256 + 9], [768 + 9, 256 + 9], [512 + 9, 768 + 9]]])
    x = torch.randn(1, 3, 4)
    shifted = coords + 256  # same shape, one cell further from the grid's origin: a different context
    assert not torch.allclose(m(x, coords=coords).logits, m(x, coords=shifted).logits, atol=1e-6)
    with pytest.raises(ValueError, match="outside the dataset grid of grid_w=6 x grid_h=5"):
        m(x, coords=coords + torch.tensor([6 * 256, 0]))
    with pytest.raises(ValueError, match="grid_extent 'dataset' needs grid 'patch' and the grid's size"):
        build_model("mamba2d", in_dim=4, grid_extent="dataset")
    with pytest.raises(ValueError, match="scan must be one of 'kernel', 'pscan'"):
        build_model("mamba2d", in_dim=4, scan="cuda")


def test_reference_setting_trains_and_ignores_patch_order():
    fx = fixture("mamba2d")
    m = ours(fx)
    x, coords = fx["x"][None], fx["coords"][None]
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.eval()
        assert torch.allclose(m(x, coords=coords).logits, m(x[:, perm], coords=coords[:, perm]).logits, atol=1e-6)
    m.train()
    m(x, coords=coords).logits.sum().backward()
    grads = {k: p.grad for k, p in m.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["pad_token"].abs().sum() > 0  # pad cells feed the scan and the pooling
