import pytest
import torch

from hardmil.models import MODELS, MILOutput, build_model

# PPEG convolves the instance order; DTFD's pseudo-bags depend on it (both tested in test_zoo_semantics)
NOT_PERMUTATION_INVARIANT = {"transmil", "dtfd", "r2tmil"}


def grid_coords(b, n, step=256):
    """Level-0 coordinates of n patches on a regular grid (what TRIDENT/CLAM write), per bag."""
    side = int(n**0.5) + 1
    idx = torch.stack([torch.randperm(side * side)[:n] for _ in range(b)])
    return torch.stack([idx % side, idx // side], dim=-1) * step + 1000


def make(name, **params):
    """Build a model ready for forward; IBMIL gets a random confounder dictionary of its size."""
    m = build_model(name, **params)
    if name == "ibmil":
        m.set_confounders(torch.randn_like(m.confounders))
    if name == "mhim":
        m.init_teacher({"model": "abmil", "model_config": dict(m.student.cfg.__dict__),
                        "state_dict": m.student.state_dict()})
    return m


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"mhim"}))  # MHIM trains one bag at a time: test_mhim
def test_shapes_forward_backward(name):
    torch.manual_seed(0)
    m = make(name, in_dim=16, n_classes=3)
    x = torch.randn(3, 20, 16)
    y = torch.tensor([0, 1, 2])  # every class present, so every class-specific head gets a gradient
    out = m(x, label=y, coords=grid_coords(3, 20))
    assert isinstance(out, MILOutput)
    assert out.logits.shape == (3, 3)
    if out.attention is not None:
        assert out.attention.shape == (3, 20)
        assert torch.allclose(out.attention.sum(1), torch.ones(3))
    if out.instance_logits is not None:
        assert out.instance_logits.shape == (3, 20, 3)
    assert out.embedding.shape[0] == 3
    loss = out.bag_loss_weight * torch.nn.functional.cross_entropy(out.logits, y)
    loss = loss + sum(out.aux_losses.values())
    loss.backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None]
    assert not unused, unused
    assert m.eval()(x, coords=grid_coords(3, 20)).aux_losses == {}  # no label, no auxiliary losses


@pytest.mark.parametrize("name", sorted(set(MODELS) - NOT_PERMUTATION_INVARIANT))
def test_permutation_invariance(name):
    torch.manual_seed(0)
    m = make(name, in_dim=16).eval()
    x = torch.randn(1, 9, 16)
    c = grid_coords(1, 9)
    perm = torch.randperm(9)
    a, b = m(x, coords=c), m(x[:, perm], coords=c[:, perm])  # patches move with their coordinates
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    if a.attention is not None:
        assert torch.allclose(a.attention[:, perm], b.attention, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_padding_with_mask_equals_unpadded(name):
    torch.manual_seed(0)
    m = make(name, in_dim=16).eval()
    x = torch.randn(1, 5, 16)
    c = grid_coords(1, 5)
    padded = torch.cat([x, 100 * torch.randn(1, 3, 16)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    a, b = m(x, coords=c), m(padded, mask, coords=torch.cat([c, torch.zeros(1, 3, 2, dtype=torch.long)], 1))
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    if b.attention is not None:
        assert torch.all(b.attention[0, 5:] == 0)


def test_determinism_for_a_seed():
    torch.manual_seed(1)
    a = build_model("abmil", in_dim=8)
    torch.manual_seed(1)
    b = build_model("abmil", in_dim=8)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_reference_architecture_and_gating():
    m = build_model("abmil", in_dim=708)
    assert m.feature[0].in_features == 708 and m.feature[0].out_features == 512
    assert m.feature[2].p == 0.25
    assert m.attn_v.out_features == 128 and m.attn_u is None
    g = build_model("gabmil", in_dim=708)
    assert g.cfg.gated and g.attn_u is not None


def test_unknown_model_and_parameter():
    with pytest.raises(ValueError, match="valid:.*abmil"):
        build_model("nope")
    with pytest.raises(ValueError, match="no parameter"):
        build_model("abmil", bogus=1)
