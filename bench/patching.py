"""Patching time for a 20000 x 15000 (40x) slide and patches per second of each encoder available here.

    python bench/patching.py [--keep DIR] [--patches 64] [--input-size 224]

The slide is a synthetic Aperio-style pyramid (levels 1/4/16) written once with hardmil.wsi.synthetic; tissue is
segmented and a 20x 256-px grid laid (512 px read at level 0 and resized). Encoders are timed on real patches of
that slide with random or local weights: resnet50_trunc (random torchvision-shaped weights), efficientnet_lite0
(random weights; same cost as the real ones), random, uni (ViT-L/16 with random weights through timm when it
imports, else hardmil.features.vit; --uni-patches patches); plip only when transformers and its weights are here.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hardmil.features.encoders import build_encoder
from hardmil.features.extract import PatchDataset, embed_batches, pick_device, prepare
from hardmil.wsi.patching import PatchParams, patch_slide, read_coords
from hardmil.wsi.synthetic import write_aperio_tiff
from hardmil.wsi.tissue import TissueParams


def big_slide(path: Path) -> Path:
    h, w = 15000, 20000
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), 242, np.uint8)
    low = np.zeros((h // 100, w // 100), bool)
    yy, xx = np.mgrid[0 : h // 100, 0 : w // 100]
    for cx, cy, r in ((60, 50, 35), (140, 90, 40), (100, 120, 20)):
        low |= (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    mask = np.kron(low, np.ones((100, 100), bool))
    tex = rng.integers(0, 60, size=(512, 512, 3), dtype=np.uint8) + np.array([170, 60, 140], np.uint8)
    for y in range(0, h, 512):
        for x in range(0, w, 512):
            m = mask[y : y + 512, x : x + 512]
            if m.any():
                img[y : y + 512, x : x + 512][m] = tex[: m.shape[0], : m.shape[1]][m]
    write_aperio_tiff(path, img, 0.25, 40)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--patches", type=int, default=64)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--uni-patches", type=int, default=8,
                    help="patches for uni (ViT-L/16: about 2 s each on a CPU); 0 = skip uni")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    slide = work / "big.tiff"
    if not slide.exists():
        t = time.perf_counter()
        big_slide(slide)
        print(f"wrote 20000x15000 slide in {time.perf_counter() - t:.1f} s ({slide.stat().st_size / 2**20:.0f} MiB)")
    t = time.perf_counter()
    info = patch_slide(slide, work / "big.h5", work / "big.png", PatchParams(), TissueParams())
    print(f"patching (segmentation + 20x grid + QC png): {time.perf_counter() - t:.2f} s, {info['n_patches']} patches, "
          f"read level {info['read_level']} at {info['read_size']} px")
    coords, attrs = read_coords(work / "big.h5")
    sub = coords[: args.patches]
    dev = pick_device()
    torch.manual_seed(0)
    candidates = {"random": {}}
    from hardmil.features.efficientnet_lite import EfficientNetLite0
    from hardmil.features.resnet_trunc import ResNet50Trunc

    torch.save(EfficientNetLite0().state_dict(), work / "effnet.pth")
    torch.save(ResNet50Trunc().state_dict(), work / "resnet.pth")
    candidates["efficientnet_lite0"] = {"weights": work / "effnet.pth"}
    candidates["resnet50_trunc"] = {"weights": work / "resnet.pth"}
    if args.uni_patches:
        from hardmil.features.vit import uni_vit_large

        if not (work / "uni.bin").exists():
            torch.save(uni_vit_large().state_dict(), work / "uni.bin")  # 1.2 GB, kept with --keep
        candidates["uni"] = {"weights": work / "uni.bin"}
    ds_read = PatchDataset(slide, sub, attrs, args.input_size, "bilinear")
    t = time.perf_counter()
    for i in range(len(ds_read)):
        ds_read[i]
    print(f"patch reading (512 px -> 256 -> {args.input_size}): {len(sub) / (time.perf_counter() - t):.1f} patches/s")
    for name, kw in candidates.items():
        enc = prepare(build_encoder(name, input_size=args.input_size, **kw), dev)
        some = sub[: args.uni_patches] if name == "uni" and dev.type == "cpu" else sub
        loader = torch.utils.data.DataLoader(PatchDataset(slide, some, attrs, args.input_size, "bilinear"),
                                             batch_size=32, pin_memory=dev.type == "cuda")
        embed_batches(enc, [next(iter(loader))[:2]], dev)  # warm-up
        t = time.perf_counter()
        embed_batches(enc, loader, dev)
        print(f"{name:20s} {len(some) / (time.perf_counter() - t):8.2f} patches/s on {dev} at {args.input_size} px"
              f" ({len(some)} patches, {torch.get_num_threads()} threads) {enc.extra or ''}")
    print("plip: not timed (needs transformers and its weights)")


if __name__ == "__main__":
    main()
