"""Batched feature extraction: patches read from the slide at the coords of the patching step -> features h5.

A DataLoader reads and resizes patches (OpenSlide handle opened lazily in each worker); the encoder runs in
inference mode, on CUDA with bf16 autocast, channels-last and pinned host memory, on CPU in float32. Each
slide's features h5 (docs/architecture.md#features-files: ``features`` float32 [N, D], ``coords``; attributes
encoder, weights_sha256, preprocessing, package version, the coords attributes) is written atomically; finished
slides are skipped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hardmil.data.bags import write_features
from hardmil.features.encoders import Encoder
from hardmil.utils import InputError
from hardmil.wsi.patching import read_coords

log = logging.getLogger(__name__)

CV2_INTERP = {"bilinear": 1, "bicubic": 2, "area": 3}  # cv2.INTER_LINEAR / INTER_CUBIC / INTER_AREA


class PatchDataset(torch.utils.data.Dataset):
    """Patch ``i`` of a coords file as uint8 [3, S, S] at the encoder's input size."""

    def __init__(self, slide_path: str | os.PathLike, coords: np.ndarray, attrs: dict, input_size: int,
                 interpolation: str):
        self.slide_path = str(slide_path)
        self.coords = coords
        self.level = int(attrs["read_level"])
        self.read_size = int(attrs["read_size"])
        self.patch_size = int(attrs["patch_size"])
        self.input_size = int(input_size)
        self.interpolation = interpolation
        self._slide = None

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> torch.Tensor:
        import cv2

        from hardmil.wsi.slide import open_slide

        if self._slide is None:
            self._slide = open_slide(self.slide_path)
        x, y = self.coords[i]
        img = self._slide.read(x, y, self.level, (self.read_size, self.read_size))
        if self.read_size != self.patch_size:  # e.g. 512 px of a 40x slide -> 256 px at 20x
            img = cv2.resize(img, (self.patch_size, self.patch_size), interpolation=cv2.INTER_AREA)
        if self.input_size != self.patch_size:
            interp = cv2.INTER_AREA if self.input_size < self.patch_size and self.interpolation == "area" \
                else CV2_INTERP[self.interpolation]
            img = cv2.resize(img, (self.input_size, self.input_size), interpolation=interp)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.inference_mode()
def embed_batches(encoder: Encoder, loader, device: torch.device, desc: str = "patches") -> np.ndarray:
    mean = torch.tensor(encoder.preprocessing.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.preprocessing.std, device=device).view(1, 3, 1, 1)
    cuda = device.type == "cuda"
    out = []
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        x = batch.to(device, non_blocking=cuda).float().div_(255.0).sub_(mean).div_(std)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            feats = encoder.model(x)
        out.append(feats.float().cpu().numpy())
    return np.concatenate(out, axis=0) if out else np.zeros((0, encoder.embed_dim), np.float32)


def prepare(encoder: Encoder, device: torch.device) -> Encoder:
    encoder.model.to(device)
    if device.type == "cuda":
        encoder.model.to(memory_format=torch.channels_last)
    return encoder


def features_done(path: str | os.PathLike, encoder: Encoder) -> bool:
    """True when ``path`` is a readable features file of this encoder and these weights."""
    import h5py

    path = Path(path)
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            return (f.attrs.get("encoder") == encoder.name and f.attrs.get("weights_sha256") == encoder.weights_sha256
                    and f.attrs.get("preprocessing") == encoder.preprocessing.describe()
                    and f["features"].shape[0] == f["coords"].shape[0])
    except Exception:
        return False


def extract_slide(slide_path: str | os.PathLike, coords_path: str | os.PathLike, out_path: str | os.PathLike,
                  encoder: Encoder, device: torch.device, batch_size: int = 64, num_workers: int = 0) -> dict:
    """Embed every patch of ``coords_path`` and write ``out_path``; returns a summary."""
    coords, attrs = read_coords(coords_path)
    if len(coords) == 0:
        raise InputError(coords_path, "no patches to embed")
    ds = PatchDataset(slide_path, coords, attrs, encoder.preprocessing.input_size, encoder.preprocessing.interpolation)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                                         pin_memory=device.type == "cuda", persistent_workers=False)
    feats = embed_batches(encoder, loader, device, desc=Path(slide_path).name)
    if not np.isfinite(feats).all():
        raise InputError(slide_path, "encoder produced NaN/inf features (corrupt patch pixels?)")
    write_features(out_path, feats, coords=coords, encoder=encoder.name, weights_sha256=encoder.weights_sha256,
                   preprocessing=encoder.preprocessing.describe(), coords_attrs=json.dumps(attrs, default=str),
                   slide_path=str(slide_path), random_encoder=encoder.weights_sha256 == "random",
                   encoder_extra=json.dumps(encoder.extra, default=str))
    return {"n_patches": len(coords), "dim": int(feats.shape[1])}


def feature_shard(patch_report: str | os.PathLike, manifest: str | os.PathLike, slides_dir: str | os.PathLike,
                  coords_dir: str | os.PathLike, out_dir: str | os.PathLike, report: str | os.PathLike,
                  encoder_cfg: dict, on_error: str = "fail", device: str = "auto", threads: int | None = None) -> list:
    """Embed the slides of one shard (those its patching report lists as done) with the configured encoder."""
    from hardmil.features.encoders import build_encoder
    from hardmil.wsi.cohort import OK, read_report, read_slide_manifest, run_shard
    from hardmil.wsi.slide import find_slide

    if threads:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    cfg = dict(encoder_cfg)
    batch_size, workers = int(cfg.pop("batch_size", 64)), int(cfg.pop("num_workers", 0))
    for key in ("threads", "mem_mb", "runtime"):
        cfg.pop(key, None)
    encoder = prepare(build_encoder(**cfg), dev)
    log.info("encoder %s (%d-d, weights %s, %s) on %s", encoder.name, encoder.embed_dim, encoder.weights_sha256[:16],
             json.dumps(encoder.extra, default=str), dev)
    by_slide = {r["slide"]: r for r in read_slide_manifest(manifest)}
    patched = read_report(patch_report)
    skip = {r["slide"] for r in patched if r["status"] not in OK}
    rows = [by_slide[r["slide"]] for r in patched]
    out_dir = Path(out_dir)

    def work(row):
        path = find_slide(slides_dir, row["slide"], row.get("filename") or None)
        return extract_slide(path, Path(coords_dir) / f"{row['slide']}.h5", out_dir / f"{row['slide']}.h5",
                             encoder, dev, batch_size, workers)

    return run_shard(rows, work, lambda row: features_done(out_dir / f"{row['slide']}.h5", encoder), report,
                     on_error, desc=f"features {encoder.name}", skip=skip)
