"""Encoder registry and feature extraction: dimensions, strict weight loading, offline CLIP, errors, determinism."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from hardmil.data.bags import read_features
from hardmil.features.encoders import ENCODERS, build_encoder
from hardmil.features.extract import extract_slide, feature_shard, pick_device, prepare
from hardmil.utils import InputError
from hardmil.wsi.cohort import patch_shard, read_report
from hardmil.wsi.patching import PatchParams, patch_slide

from .conftest import write_manifest
from .wsi_fixtures import EFFNET, pyramid, wheel_member


def torchvision_resnet50_state_dict(seed: int = 0) -> dict:
    """Random tensors under torchvision's resnet50 key names and shapes (written out here, not from our trunk)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(name, c_out, c_in, k):
        sd[f"{name}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * (2 / (c_in * k * k)) ** 0.5

    def bn(name, c):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = 1 + 0.1 * torch.rand(c, generator=g)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(0)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    c_in = 64
    for layer, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            conv(f"{p}.conv1", width, c_in, 1)
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", width, width, 3)
            bn(f"{p}.bn2", width)
            conv(f"{p}.conv3", width * 4, width, 1)
            bn(f"{p}.bn3", width * 4)
            if b == 0:
                conv(f"{p}.downsample.0", width * 4, c_in, 1)
                bn(f"{p}.downsample.1", width * 4)
            c_in = width * 4
    sd["fc.weight"] = torch.randn(1000, 2048, generator=g) * 0.01
    sd["fc.bias"] = torch.zeros(1000)
    return sd


def test_registry_is_explicit():
    assert set(ENCODERS) == {"resnet50_trunc", "plip", "uni", "efficientnet_lite0", "random"}
    with pytest.raises(ValueError, match="unknown encoder 'vgg'"):
        build_encoder("vgg")


def test_resnet50_trunc_loads_a_torchvision_state_dict_strictly(tmp_path):
    sd = torchvision_resnet50_state_dict()
    torch.save(sd, tmp_path / "resnet50.pth")
    enc = build_encoder("resnet50_trunc", weights=tmp_path / "resnet50.pth", input_size=64)
    left = [k for k in sd if k.startswith(("layer4.", "fc."))]
    assert enc.extra["left_over_keys"] == len(left) > 0
    with torch.inference_mode():
        out = enc.model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1024) == (2, enc.embed_dim)
    del sd["layer3.5.bn3.running_var"]  # a missing trunk key is an error naming the file
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(InputError, match="broken.pth: not a torchvision ResNet-50"):
        build_encoder("resnet50_trunc", weights=tmp_path / "broken.pth")


def test_efficientnet_lite0_dims_and_strict_keys(tmp_path):
    from hardmil.features.efficientnet_lite import EfficientNetLite0

    torch.save(EfficientNetLite0().state_dict(), tmp_path / "e.pth")
    enc = build_encoder("efficientnet_lite0", weights=tmp_path / "e.pth", input_size=64)
    with torch.inference_mode():
        assert enc.model(torch.randn(3, 3, 64, 64)).shape == (3, 1280)
    torch.save(torchvision_resnet50_state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(InputError, match="wrong.pth: not an EfficientNet-Lite0"):
        build_encoder("efficientnet_lite0", weights=tmp_path / "wrong.pth")


def test_real_efficientnet_lite0_weights_from_the_wheel(tmp_path):
    path = wheel_member(EFFNET, tmp_path / "efficientnet_lite0.pth")
    enc = build_encoder("efficientnet_lite0", weights=path, input_size=96)
    assert enc.weights_sha256.startswith("57934424")  # the file name carries its hash prefix
    with torch.inference_mode():
        white = enc.model(torch.full((1, 3, 96, 96), 1.0))
        noise = enc.model(torch.randn(1, 3, 96, 96))
    assert white.shape == (1, 1280) and not torch.allclose(white, noise)


@pytest.mark.parametrize("model", ["resnet50_trunc", "efficientnet_lite0", "uni", "plip"])
def test_missing_weights_is_a_clear_error_never_a_download(model, tmp_path):
    with pytest.raises(InputError, match="nothing is downloaded"):
        build_encoder(model, weights=tmp_path / "nope.pth")
    with pytest.raises(InputError, match="never downloaded"):
        build_encoder(model)


def test_tiny_clip_loads_offline(tmp_path):
    transformers = pytest.importorskip("transformers")  # installed by the dev extra, so this runs in CI
    cfg = transformers.CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "vocab_size": 99},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg).eval()
    model.save_pretrained(tmp_path / "clip")
    enc = build_encoder("plip", weights=tmp_path / "clip", input_size=32)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        out = enc.model(x)
        ref = model.vision_model(pixel_values=x).pooler_output
        ref = model.visual_projection(ref)
    assert out.shape == (2, 16) == (2, enc.embed_dim)
    torch.testing.assert_close(out, ref)
    assert enc.preprocessing.interpolation == "bicubic"


def test_same_input_same_features_and_provenance(tmp_path):
    slide = pyramid(tmp_path / "s.tiff", 40, h=1536, w=2048)
    patch_slide(slide, tmp_path / "c.h5", None, PatchParams(), _tissue())
    dev = pick_device("cpu")
    enc = prepare(build_encoder("random", input_size=32), dev)
    extract_slide(slide, tmp_path / "c.h5", tmp_path / "a.h5", enc, dev, batch_size=4)
    extract_slide(slide, tmp_path / "c.h5", tmp_path / "b.h5", prepare(build_encoder("random", input_size=32), dev),
                  dev, batch_size=7)
    fa, ca = read_features(tmp_path / "a.h5")
    fb, cb = read_features(tmp_path / "b.h5")
    assert fa.shape[1] == 64 and len(fa) > 3
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(ca, cb)
    with h5py.File(tmp_path / "a.h5") as f:
        assert f.attrs["encoder"] == "random" and f.attrs["weights_sha256"] == "random"
        assert bool(f.attrs["random_encoder"]) and '"input_size": 32' in f.attrs["preprocessing"]
        assert f.attrs["encoder_extra"] == '{"seed": 0}'


def _tissue():
    from hardmil.wsi.tissue import TissueParams

    return TissueParams()


def test_feature_shard_skips_failed_and_done_slides(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for s in ("a", "b"):
        pyramid(slides / f"{s}.tiff", 20, h=1024, w=1280)
    (slides / "c.svs").write_bytes(b"junk" * 50)
    write_manifest(tmp_path / "m.tsv", [{"slide": s, "case": s, "label": "x"} for s in "abc"])
    patch = {"magnification": 20, "patch_size": 256, "overlap": 0, "min_tissue": 0.25}
    patch_shard(tmp_path / "m.tsv", slides, tmp_path / "p", tmp_path / "p.tsv", 0, 1, patch, {}, on_error="skip")
    enc = {"model": "random", "input_size": 32, "batch_size": 8}
    rows = feature_shard(tmp_path / "p.tsv", tmp_path / "m.tsv", slides, tmp_path / "p", tmp_path / "f",
                         tmp_path / "f.tsv", enc, on_error="fail", device="cpu")
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[2]["detail"] == "failed upstream"
    again = feature_shard(tmp_path / "p.tsv", tmp_path / "m.tsv", slides, tmp_path / "p", tmp_path / "f",
                          tmp_path / "f.tsv", enc, on_error="fail", device="cpu")
    assert [r["status"] for r in again] == ["cached", "cached", "failed"]
    assert [r["status"] for r in read_report(tmp_path / "f.tsv")] == ["cached", "cached", "failed"]
    (tmp_path / "p" / "b.h5").write_bytes(b"broken h5")  # unreadable coords -> a clear error for that slide
    (tmp_path / "f" / "b.h5").unlink()
    with pytest.raises(InputError, match="b.h5: cannot read coords"):
        feature_shard(tmp_path / "p.tsv", tmp_path / "m.tsv", slides, tmp_path / "p", tmp_path / "f",
                      tmp_path / "f.tsv", enc, on_error="fail", device="cpu")


def test_missing_configured_weights_name_the_file_and_what_to_put_there(tmp_path):
    from hardmil.features.encoders import missing_weights
    from hardmil.utils import InputError

    path = tmp_path / "uni" / "pytorch_model.bin"
    with pytest.raises(InputError, match="never downloaded") as err:
        missing_weights(path, {"uni": "uni"})
    assert str(path) in str(err.value) and "MahmoodLab/UNI" in str(err.value)
    path.parent.mkdir()
    path.write_bytes(b"x")
    missing_weights(path, {"uni": "uni"})  # present: nothing to say
