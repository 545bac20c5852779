"""One-off check of hardmil.features.vit against real timm; writes the two fixtures of tests/test_vit.py.

Not part of CI (timm does not import in the project's environment). Run it in a scratch environment where timm
does, e.g. ``python -m venv /tmp/v && /tmp/v/bin/pip install torchvision timm`` (pip then picks the torch that
matches its torchvision wheel), from the repository root:

    /tmp/v/bin/python bench/vit_vs_timm.py [--fixtures tests/data] [--sizes 224 96 256 160x224]

1. timm's UNI model (``vit_large_patch16_224``, ``init_values=1e-5``, ``num_classes=0``, ``dynamic_img_size=True``)
   with random weights, every parameter redrawn so that LayerScale, biases and the class token all matter;
   its state dict is loaded strictly into ours and both run on the same inputs: max abs difference per size.
2. With ``--fixtures``: timm's key list and shapes (``timm_vit_large_patch16_224_uni.tsv``) and a tiny ViT with the
   same options, its weights, inputs and timm's outputs (``timm_vit_tiny_reference.pt``).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import timm
import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer

HERE = Path(__file__).resolve().parent
UNI_KW = {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True}


def ours():
    """hardmil.features.vit loaded from its file (the package's other imports are not needed here)."""
    spec = importlib.util.spec_from_file_location("vit", HERE.parent / "src" / "hardmil" / "features" / "vit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def redraw(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.5 + 0.5 * torch.rand_like(p) if name.endswith("gamma") else scale * torch.randn_like(p))
    return model.eval()


def versions() -> str:
    return f"timm {timm.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", type=Path, help="write the test fixtures into this folder")
    ap.add_argument("--sizes", nargs="+", default=["224", "96", "256", "160x224"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vit = ours()
    torch.manual_seed(0)
    ref = redraw(timm.create_model("vit_large_patch16_224", **UNI_KW), 0.02)
    mine = vit.uni_vit_large().eval()
    mine.load_state_dict(ref.state_dict(), strict=True)
    print(f"{versions()}; state dict keys in timm's order: {list(mine.state_dict()) == list(ref.state_dict())}")
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x")) if "x" in size else (int(size), int(size))
        x = torch.randn(4, 3, h, w)
        with torch.inference_mode():
            a, t0 = ref(x), time.perf_counter()
            b = mine(x)
        print(f"{h}x{w} px: max abs difference {(a - b).abs().max().item():.3e} (max abs output "
              f"{a.abs().max().item():.2f}; ours {4 / (time.perf_counter() - t0):.2f} patches/s)")
    if not args.fixtures:
        return
    args.fixtures.mkdir(parents=True, exist_ok=True)
    with open(args.fixtures / "timm_vit_large_patch16_224_uni.tsv", "w") as f:
        f.write(f"# {versions()}: timm.create_model('vit_large_patch16_224', img_size=224, patch_size=16, "
                "init_values=1e-5, num_classes=0, dynamic_img_size=True).state_dict(); key<TAB>shape\n"
                "# written by bench/vit_vs_timm.py --fixtures in a scratch venv outside the repo (pip install "
                "torchvision timm, which pulls the matching torch wheel; run on CPU)\n")
        f.writelines(f"{k}\t{'x'.join(map(str, v.shape))}\n" for k, v in ref.state_dict().items())
    torch.manual_seed(0)
    tiny = redraw(VisionTransformer(img_size=64, patch_size=16, embed_dim=16, depth=2, num_heads=2, init_values=1e-5,
                                    num_classes=0, dynamic_img_size=True), 0.3)
    inputs = {f"{h}x{w}": torch.randn(1, 3, h, w).half() for h, w in ((64, 64), (32, 32), (48, 80), (80, 80))}
    with torch.inference_mode():
        outputs = {k: tiny(x.float()) for k, x in inputs.items()}
    torch.save({"provenance": f"{versions()}: timm.models.vision_transformer.VisionTransformer(img_size=64, "
                "patch_size=16, embed_dim=16, depth=2, num_heads=2, init_values=1e-5, num_classes=0, "
                "dynamic_img_size=True), parameters redrawn (seed 0), eval-mode outputs of the float16 inputs "
                "cast to float32; written by bench/vit_vs_timm.py outside the repo",
                "state_dict": {k: v.clone() for k, v in tiny.state_dict().items()}, "inputs": inputs,
                "outputs": outputs}, args.fixtures / "timm_vit_tiny_reference.pt")
    print(f"fixtures written to {args.fixtures}")


if __name__ == "__main__":
    main()
