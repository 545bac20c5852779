"""UNI without timm: our ViT's parameter names against timm's (a committed key list), strict loading through the
encoder registry, numerics against a plain re-derivation, other input sizes, and bad checkpoints."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hardmil.features import vit
from hardmil.features.encoders import build_encoder
from hardmil.utils import InputError

TIMM_KEYS = Path(__file__).parent / "data" / "timm_vit_large_patch16_224_uni.tsv"
TIMM_TINY = Path(__file__).parent / "data" / "timm_vit_tiny_reference.pt"  # weights, inputs, timm's outputs
SMALL = {"img_size": 64, "patch_size": 16, "dim": 32, "depth": 2, "heads": 4}


def timm_keys() -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in TIMM_KEYS.read_text().splitlines() if not line.startswith("#")]
    return {k: tuple(int(n) for n in shape.split("x")) for k, shape in rows}


@pytest.fixture
def small_uni(monkeypatch):
    """build_uni builds this reduced ViT instead of the 303 M-parameter ViT-L (same module, same key pattern)."""
    monkeypatch.setattr(vit, "uni_vit_large", lambda: vit.VisionTransformer(**SMALL))
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError, whatever is installed


def random_weights(path: Path, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = vit.VisionTransformer(**SMALL)
    with torch.no_grad():  # LayerScale 1e-5 would hide the blocks: give every parameter a visible value
        for name, p in model.named_parameters():
            p.copy_(0.5 + 0.5 * torch.rand_like(p) if name.endswith("gamma") else 0.2 * torch.randn_like(p))
    sd = model.state_dict()
    torch.save(sd, path)
    return sd


def test_full_vit_l_has_timms_keys_and_shapes_in_timms_order():
    with torch.device("meta"):
        model = vit.uni_vit_large()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours.items()) == list(timm_keys().items())
    assert len(ours) == 342 and sum(math.prod(s) for s in ours.values()) == 303_350_784  # UNI: ~303 M


def test_a_state_dict_with_timms_names_loads_strictly_through_the_registry(tmp_path, monkeypatch):
    """Full size: tensors made from the committed timm key list alone (float16, which the loader casts)."""
    monkeypatch.setitem(sys.modules, "timm", None)
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=g).half() for k, shape in timm_keys().items()}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    enc = build_encoder("uni", weights=tmp_path / "pytorch_model.bin")
    assert enc.embed_dim == 1024 and enc.extra["implementation"].startswith("hardmil.features.vit")
    loaded = enc.model.state_dict()
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], sd[k].float()) for k in sd)
    assert not any(p.is_meta or p.requires_grad for p in enc.model.parameters())


def test_outputs_equal_timms_recorded_outputs_at_the_training_size_and_others():
    """Recorded once with real timm (provenance inside the file): a tiny ViT with UNI's options, at 64 px (its
    training size) and at 32, 48x80, 80 px, where the position embedding is resampled."""
    ref = torch.load(TIMM_TINY, weights_only=True)
    assert ref["provenance"].startswith("timm 1.0.31")
    model = vit.VisionTransformer(img_size=64, patch_size=16, dim=16, depth=2, heads=2).eval()
    model.load_state_dict(ref["state_dict"], strict=True)
    assert set(ref["inputs"]) == {"64x64", "32x32", "48x80", "80x80"}
    with torch.inference_mode():
        for size, x in ref["inputs"].items():
            assert torch.allclose(model(x.float()), ref["outputs"][size], atol=1e-5, rtol=0), size


def test_registry_features_equal_a_plain_rederivation_and_are_deterministic(tmp_path, small_uni):
    sd = random_weights(tmp_path / "uni.bin")
    enc = build_encoder("uni", weights=tmp_path / "uni.bin", input_size=64)
    assert enc.embed_dim == SMALL["dim"] and "timm not used" in enc.extra["implementation"]
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        out = enc.model(x)
        again = build_encoder("uni", weights=tmp_path / "uni.bin", input_size=64).model(x)
    assert out.shape == (3, SMALL["dim"]) and torch.equal(out, again)
    # the transformer spelled out with matmul/softmax from the state dict (pre-norm blocks, LayerScale, CLS out)
    p, d, h = SMALL["patch_size"], SMALL["dim"], SMALL["heads"]
    tok = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    z = torch.cat([sd["cls_token"].expand(3, 1, d), tok], 1) + sd["pos_embed"]
    for i in range(SMALL["depth"]):
        w = {k.split(".", 2)[2]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        y = F.layer_norm(z, (d,), w["norm1.weight"], w["norm1.bias"], eps=1e-6) @ w["attn.qkv.weight"].T
        q, k, v = (y + w["attn.qkv.bias"]).split(d, dim=-1)
        heads = [torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(d // h), -1) @ vh
                 for qh, kh, vh in zip(*(t.split(d // h, -1) for t in (q, k, v)), strict=True)]
        z = z + w["ls1.gamma"] * (torch.cat(heads, -1) @ w["attn.proj.weight"].T + w["attn.proj.bias"])
        y = F.layer_norm(z, (d,), w["norm2.weight"], w["norm2.bias"], eps=1e-6)
        y = F.gelu(y @ w["mlp.fc1.weight"].T + w["mlp.fc1.bias"]) @ w["mlp.fc2.weight"].T + w["mlp.fc2.bias"]
        z = z + w["ls2.gamma"] * y
    ref = F.layer_norm(z, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)[:, 0]
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_uni_features_of_a_slide_record_the_implementation(tmp_path, small_uni):
    from hardmil.features.extract import extract_slide, pick_device
    from hardmil.wsi.patching import PatchParams, patch_slide
    from hardmil.wsi.tissue import TissueParams

    from .wsi_fixtures import pyramid

    random_weights(tmp_path / "uni.bin")
    slide = pyramid(tmp_path / "s.tiff", 40, h=1024, w=1536)
    patch_slide(slide, tmp_path / "c.h5", None, PatchParams(), TissueParams())
    enc = build_encoder("uni", weights=tmp_path / "uni.bin", input_size=32)
    info = extract_slide(slide, tmp_path / "c.h5", tmp_path / "f.h5", enc, pick_device("cpu"), batch_size=4)
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["features"].shape == (info["n_patches"], SMALL["dim"]) and info["n_patches"] > 0
        assert json.loads(f.attrs["encoder_extra"])["implementation"].startswith("hardmil.features.vit (timm not")
        assert f.attrs["encoder"] == "uni" and np.isfinite(f["features"][:]).all()


def test_other_input_sizes_resample_the_position_embedding(tmp_path, small_uni):
    random_weights(tmp_path / "uni.bin")
    model = build_encoder("uni", weights=tmp_path / "uni.bin", input_size=96).model
    with torch.inference_mode():
        for hw in ((96, 96), (32, 32), (48, 80)):
            out = model(torch.randn(2, 3, *hw))
            assert out.shape == (2, SMALL["dim"]) and torch.isfinite(out).all()
        with pytest.raises(ValueError, match="multiples of the patch size 16"):
            model(torch.randn(1, 3, 72, 64))
    with pytest.raises(InputError, match="encoders.uni.input_size: 100 px is not a multiple"):
        build_encoder("uni", weights=tmp_path / "uni.bin", input_size=100)


def test_position_embedding_resampling():
    pos = torch.randn(1, 1 + 4 * 4, 8)
    assert vit.resample_grid_embedding(pos, (4, 4), (4, 4)) is pos
    out = vit.resample_grid_embedding(pos, (4, 4), (7, 5))
    assert out.shape == (1, 1 + 7 * 5, 8) and torch.equal(out[:, :1], pos[:, :1])  # class token entry kept
    flat = torch.cat([pos[:, :1], torch.full((1, 16, 8), 0.3)], 1)  # a constant grid stays constant
    assert torch.allclose(vit.resample_grid_embedding(flat, (4, 4), (6, 6))[:, 1:], torch.tensor(0.3), atol=1e-6)
    ramp = torch.arange(16.0).view(1, 16, 1)  # row-major grid: values grow along each row, then down the rows
    grid = vit.resample_grid_embedding(torch.cat([torch.zeros(1, 1, 1), ramp], 1), (4, 4), (8, 8))[0, 1:, 0]
    grid = grid.view(8, 8)
    assert (grid[:, -1] > grid[:, 0]).all() and (grid[-1] > grid[0]).all()


def test_bad_uni_checkpoints_name_the_file(tmp_path, small_uni):
    sd = random_weights(tmp_path / "uni.bin")
    for name, broken in (("missing.bin", {k: v for k, v in sd.items() if k != "blocks.1.ls2.gamma"}),
                         ("extra.bin", {**sd, "head.weight": torch.zeros(2, SMALL["dim"])}),
                         ("shape.bin", {**sd, "pos_embed": sd["pos_embed"][:, :-1]})):
        torch.save(broken, tmp_path / name)
        with pytest.raises(InputError, match=rf"{name}: not a UNI \(vit_large_patch16_224\) state dict"):
            build_encoder("uni", weights=tmp_path / name)
    (tmp_path / "garbage.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="garbage.bin: cannot read weights"):
        build_encoder("uni", weights=tmp_path / "garbage.bin")
    with pytest.raises(ImportError, match="implementation timm: timm does not import"):
        build_encoder("uni", weights=tmp_path / "uni.bin", implementation="timm")
