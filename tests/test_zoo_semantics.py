"""Reference semantics pinned per model (issue: model zoo)."""

import math

import pytest
import torch

from hardmil.models import build_model
from hardmil.models.clam import smooth_top1_svm


def test_smooth_top1_svm_hand_value():
    logits = torch.tensor([[2.0, 0.5]])
    # tau = alpha = 1, y = 0: logsumexp(2 + 0, 0.5 + 1) - 2
    expected = math.log(math.exp(2.0) + math.exp(1.5)) - 2.0
    assert smooth_top1_svm(logits, torch.tensor([0])).item() == pytest.approx(expected)


def test_clam_samples_k_top_and_k_bottom_instances():
    m = build_model("clam_sb", in_dim=4, k_sample=3)
    attn = torch.tensor([0.05, 0.3, 0.01, 0.2, 0.02, 0.25, 0.17])
    valid = torch.ones(7, dtype=torch.bool)
    top, bottom = m.sample_instances(attn, valid)
    assert sorted(top.tolist()) == [1, 3, 5] and sorted(bottom.tolist()) == [0, 2, 4]
    valid[2] = False  # padding is never sampled
    _, bottom = m.sample_instances(attn, valid)
    assert sorted(bottom.tolist()) == [0, 4, 6]


def test_clam_instance_loss_targets_and_bag_weight():
    torch.manual_seed(0)
    m = build_model("clam_sb", in_dim=4, k_sample=2, inst_loss="ce")
    seen = []
    clf = m.instance_classifiers[1]
    clf.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    out = m.train()(torch.randn(1, 9, 4), label=torch.tensor([1]))
    assert seen == [4]  # k top + k bottom instances through the true class's instance classifier
    assert out.bag_loss_weight == 0.7 and "instance" in out.aux_losses
    sub = build_model("clam_mb", in_dim=4, k_sample=2, subtyping=True, n_classes=3)
    counts = []
    for c in sub.instance_classifiers:
        c.register_forward_hook(lambda mod, inp, out: counts.append(inp[0].shape[0]))
    sub.train()(torch.randn(1, 9, 4), label=torch.tensor([0]))
    assert counts == [4, 2, 2]  # in-class: 2k; out-of-class: k top instances labelled 0


def test_dsmil_critical_instance_is_argmax_of_instance_classifier():
    torch.manual_seed(0)
    m = build_model("dsmil", in_dim=8).eval()
    x = torch.randn(1, 12, 8)
    out = m(x)
    crit = m.critical_instances(out.instance_logits, None)
    assert torch.equal(crit[0], out.instance_logits[0].argmax(0))
    # the bag stream attends relative to the critical instance: moving it changes nothing after permutation
    perm = torch.randperm(12)
    assert torch.allclose(m(x[:, perm]).logits, out.logits, atol=1e-6)


def test_dsmil_losses_half_and_half():
    m = build_model("dsmil", in_dim=8).train()
    out = m(torch.randn(1, 6, 8), label=torch.tensor([1]))
    assert out.bag_loss_weight == 0.5 and set(out.aux_losses) == {"max_instance"}


def test_mean_and_max_pooling():
    m = build_model("meanmil", in_dim=3, dropout=0.0).eval()
    x = torch.randn(1, 4, 3)
    assert torch.allclose(m(x).embedding, m.feature(x).mean(1))
    mx = build_model("maxmil", in_dim=3, dropout=0.0).eval()
    assert torch.allclose(mx(x).embedding, mx.feature(x).amax(1))


def test_transmil_is_not_permutation_invariant_but_deterministic():
    torch.manual_seed(0)
    m = build_model("transmil", in_dim=8, landmarks=4).eval()
    x = torch.randn(1, 10, 8)
    perm = torch.arange(9, -1, -1)
    assert torch.equal(m(x).logits, m(x).logits)
    assert not torch.allclose(m(x).logits, m(x[:, perm]).logits, atol=1e-6)  # PPEG sees the order


def test_nystrom_pinv_inverts_a_softmax_matrix():
    from hardmil.models.transmil import pinv_iterative

    a = torch.softmax(torch.randn(6, 6, dtype=torch.float64), -1)
    z = pinv_iterative(a, 20)
    assert torch.allclose(a @ z @ a, a, atol=1e-6)


@pytest.mark.parametrize("distill, expected", [("AFS", 4), ("MaxS", 4), ("MaxMinS", 8)])
def test_dtfd_tier2_receives_groups_times_distilled(distill, expected):
    m = build_model("dtfd", in_dim=8, distill=distill).train()
    m(torch.randn(1, 50, 8), label=torch.tensor([1]))
    assert m.last_tier2_inputs == expected  # not the whole bag (torchmil's "maxmin" sends 2N)


def test_dtfd_pseudo_bags_partition_the_bag_and_eval_is_deterministic():
    m = build_model("dtfd", in_dim=8).eval()
    parts = m.pseudo_bags(10, "cpu")
    assert len(parts) == 4 and sorted(torch.cat(parts).tolist()) == list(range(10))
    assert [len(p) for p in parts] == [3, 3, 2, 2]
    x = torch.randn(1, 10, 8)
    assert torch.equal(m(x).logits, m(x).logits)
    assert not torch.allclose(m(x).logits, m(x[:, torch.arange(9, -1, -1)]).logits)


def test_dtfd_training_step_clips_each_tier():
    m = build_model("dtfd", in_dim=8, grad_clip=1e-3).train()
    out = m(100 * torch.randn(1, 30, 8), label=torch.tensor([1]))
    loss = m.training_step(out, torch.nn.functional.cross_entropy(out.logits, torch.tensor([1])))
    assert loss.item() > 0
    tier2 = torch.sqrt(sum((p.grad**2).sum() for p in m.tier2_parameters()))
    assert tier2.item() <= 1e-3 + 1e-9


def test_ibmil_needs_and_uses_its_confounders():
    torch.manual_seed(0)
    m = build_model("ibmil", in_dim=8, n_confounders=3).eval()
    x = torch.randn(1, 6, 8)
    with pytest.raises(ValueError, match="confounder dictionary of its fold"):
        m(x)
    with pytest.raises(ValueError, match="shape"):
        m.set_confounders(torch.zeros(4, 512))
    m.set_confounders(torch.randn(3, 512))
    a = m(x).logits
    m.set_confounders(torch.randn(3, 512))
    assert not torch.allclose(a, m(x).logits)  # the dictionary enters the prediction
    assert "confounders" in m.state_dict()  # saved with the weights


def test_r2t_regions_round_trip_and_shape():
    from hardmil.models.r2t import from_regions, to_regions

    x = torch.arange(70 * 3, dtype=torch.float32).reshape(70, 3)
    blocks, side, n = to_regions(x, 4)
    assert side == 12 and blocks.shape == (16, 9, 3)  # ceil(sqrt(70)) = 9 -> 12, regions of 3 x 3
    assert torch.equal(blocks[0, :3], x[:3]) and torch.equal(blocks[0, 3:6], x[12:15])  # row-major blocks
    assert torch.equal(from_regions(blocks, 4, side, n), x)


def test_r2t_region_attention_is_local():
    """R-MSA alone: an instance only sees instances of its own region."""
    from hardmil.models.r2t import RMSA, R2TConfig

    torch.manual_seed(0)
    layer = RMSA(R2TConfig(hidden_dim=16, heads=2, region_num=2, trans_dropout=0.0)).eval()
    x = torch.randn(16, 16)  # 4 x 4 square, four 2 x 2 regions; instance 0's region is {0, 1, 4, 5}
    y = x.clone()
    y[15] += 10  # another region
    assert torch.allclose(layer(x)[0], layer(y)[0])
    y[5] += 10  # same region
    assert not torch.allclose(layer(x)[0], layer(y)[0])


def test_r2t_not_permutation_invariant():
    torch.manual_seed(0)
    m = build_model("r2tmil", in_dim=8).eval()
    x = torch.randn(1, 80, 8)
    assert not torch.allclose(m(x).logits, m(x[:, torch.randperm(80)]).logits, atol=1e-6)


def test_scan_2d_matches_the_recurrence_by_hand():
    from hardmil.models.mamba2d import scan_2d

    torch.manual_seed(0)
    a, b = torch.rand(3, 4, 2), torch.randn(3, 4, 2)
    g = torch.zeros(3, 4, 2)
    h = torch.zeros(3, 4, 2)
    for i in range(3):
        for j in range(4):
            g[i, j] = a[i, j] * (g[i, j - 1] if j else 0) + b[i, j]
    for i in range(3):
        for j in range(4):
            h[i, j] = a[i, j] * (h[i - 1, j] if i else 0) + g[i, j]
    assert torch.allclose(scan_2d(a, b), h, atol=1e-6)


def test_mamba2d_grid_from_coordinates_and_missing_coords():
    from hardmil.models.mamba2d import grid_cells

    coords = torch.tensor([[1024, 512], [1536, 512], [1024, 768], [2048, 1024]])
    for row, col, h, w in (grid_cells(coords, 256), grid_cells(coords, rule="gcd")):
        assert row.tolist() == [0, 0, 1, 2] and col.tolist() == [0, 2, 0, 4] and (h, w) == (3, 5)
    m = build_model("mamba2d", in_dim=8)
    with pytest.raises(ValueError, match="needs patch coordinates"):
        m(torch.randn(1, 4, 8))
    # a patch's neighbours on the grid, not its position in the list, shape its context
    m.eval()
    x = torch.randn(1, 4, 8)
    moved = coords.clone()
    moved[3] = torch.tensor([1512, 756])
    assert not torch.allclose(m(x, coords=coords[None]).logits, m(x, coords=moved[None]).logits)


def test_mamba2d_grid_of_clam_style_coordinates():
    """Each tissue region tiled from its own origin (CLAM): cell = coord // patch size, as the reference; the
    gcd of the offsets would be 1 pixel here and the grid millions of cells."""
    from hardmil.models.mamba2d import grid_cells, patch_spacing

    a = torch.tensor([[100 + 256 * i, 37 + 256 * j] for i in range(3) for j in range(2)])
    b = torch.tensor([[5003 + 256 * i, 4001 + 256 * j] for i in range(2) for j in range(2)])
    coords = torch.cat([a, b])
    assert patch_spacing(coords) == 256
    row, col, h, w = grid_cells(coords)
    ref = coords // 256
    assert torch.equal(col, ref[:, 0] - ref[:, 0].min()) and torch.equal(row, ref[:, 1] - ref[:, 1].min())
    assert (h, w) == (int(ref[:, 1].max() - ref[:, 1].min()) + 1, int(ref[:, 0].max() - ref[:, 0].min()) + 1)
    assert len(set(zip(row.tolist(), col.tolist(), strict=True))) == len(coords)  # one patch per cell
    _, _, hg, wg = grid_cells(coords, rule="gcd")
    assert hg * wg > 1_000_000
    m = build_model("mamba2d", in_dim=4).eval()
    assert m(torch.randn(1, len(coords), 4), coords=coords[None]).logits.shape == (1, 2)
    # the reference's largest dataset grids are admitted by default
    assert m.cfg.max_grid_cells >= 432 * 432 and m.cfg.max_grid_cells >= 413 * 821


def test_mamba2d_refuses_an_irregular_grid():
    m = build_model("mamba2d", in_dim=4, max_grid_cells=100)
    coords = torch.tensor([[[0, 0], [1, 0], [997, 1003]]])  # gcd 1 -> a 1004 x 998 grid
    with pytest.raises(ValueError, match="exceeds max_grid_cells"):
        m(torch.randn(1, 3, 4), coords=coords)
