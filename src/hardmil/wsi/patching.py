"""A patch grid at a target magnification, written as a TRIDENT-layout coords h5, plus a QC thumbnail.

Follows TRIDENT (mahmoodlab/TRIDENT, ``WSIPatcher`` / ``extract_tissue_coords``): the level-0 magnification
comes from the MPP (see :mod:`hardmil.wsi.slide`); a 256-px patch at 20x spans ``256 * mag0 / 20`` level-0
pixels (512 on a 40x slide); a pyramid level whose downsample matches that factor (10 % tolerance) is read
directly, otherwise the finest level below it is read and resized; the grid starts at the slide origin
(global, row-major) with step ``patch_size - overlap`` at the target magnification.

Deviation: TRIDENT keeps a patch that touches the tissue polygons; here a patch is kept when at least
``min_tissue`` of its area is tissue in the segmentation mask (CLAM-like, 0.25 by default) and lies fully
inside the slide, so no patch is mostly glass or padding.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hardmil import __version__
from hardmil.utils import InputError, atomic_path
from hardmil.wsi.slide import Slide, open_slide
from hardmil.wsi.tissue import Tissue, TissueParams, segment_tissue


@dataclass(frozen=True)
class PatchParams:
    magnification: float = 20.0
    patch_size: int = 256
    overlap: int = 0
    min_tissue: float = 0.25


@dataclass(frozen=True)
class ReadPlan:
    """How to read one patch: ``read_size`` px at ``level``, resized to ``patch_size``."""

    level0_magnification: float
    downsample: float         # level-0 pixels per target pixel
    patch_size_level0: int
    level: int
    read_size: int
    step_level0: int


def read_plan(slide: Slide, params: PatchParams) -> ReadPlan:
    mag0 = slide.magnification
    if params.magnification > mag0 * 1.001:
        raise InputError(slide.path, f"target magnification {params.magnification:g}x is above the slide's "
                                     f"{mag0:g}x; patches would be upsampled")
    if not 0 <= params.overlap < params.patch_size:
        raise ValueError(f"overlap {params.overlap} must be in [0, patch_size)")
    ds = mag0 / params.magnification
    ps0 = round(params.patch_size * ds)
    level = 0
    for i, d in enumerate(slide.level_downsamples):  # an exactly matching level (10 % tolerance) is read as is
        if abs(d - ds) <= 0.1 * ds:
            level = i
            break
    else:
        level = slide.best_level(ds)
    read_size = round(ps0 / slide.level_downsamples[level])
    step0 = round((params.patch_size - params.overlap) * ds)
    return ReadPlan(mag0, ds, ps0, level, read_size, step0)


def grid_coords(tissue: Tissue, dims: tuple[int, int], plan: ReadPlan, min_tissue: float) -> np.ndarray:
    """Level-0 top-left corners of grid patches covering >= ``min_tissue`` of tissue, row-major."""
    w0, h0 = dims
    xs = np.arange(0, w0 - plan.patch_size_level0 + 1, plan.step_level0)
    ys = np.arange(0, h0 - plan.patch_size_level0 + 1, plan.step_level0)
    if len(xs) == 0 or len(ys) == 0:
        return np.zeros((0, 2), np.int64)
    integral = np.pad(tissue.mask.astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    mh, mw = tissue.mask.shape

    def edges(v, limit):
        return np.clip(np.round(v / tissue.downsample).astype(np.int64), 0, limit)

    x0, x1 = edges(xs, mw), edges(xs + plan.patch_size_level0, mw)
    y0, y1 = edges(ys, mh), edges(ys + plan.patch_size_level0, mh)
    x1 = np.maximum(x1, np.minimum(x0 + 1, mw))
    y1 = np.maximum(y1, np.minimum(y0 + 1, mh))
    s = (integral[y1][:, x1] - integral[y0][:, x1] - integral[y1][:, x0] + integral[y0][:, x0])
    area = np.maximum((y1 - y0)[:, None] * (x1 - x0)[None, :], 1)
    keep_y, keep_x = np.nonzero(s / area >= min_tissue)
    return np.stack([xs[keep_x], ys[keep_y]], axis=1).astype(np.int64)


def qc_thumbnail(tissue: Tissue, coords: np.ndarray, plan: ReadPlan, max_side: int = 1024) -> np.ndarray:
    """The segmentation image with tissue contours (green), holes (blue) and kept patches (red boxes)."""
    import cv2

    img = tissue.image.copy()
    thick = max(1, round(max(img.shape[:2]) / 500))
    cv2.drawContours(img, tissue.contours, -1, (0, 160, 0), thick)
    for holes in tissue.holes:
        cv2.drawContours(img, holes, -1, (0, 0, 255), thick)
    size = plan.patch_size_level0 / tissue.downsample
    for x, y in coords:
        p0 = (int(x / tissue.downsample), int(y / tissue.downsample))
        cv2.rectangle(img, p0, (int(p0[0] + size), int(p0[1] + size)), (220, 0, 0), 1)
    scale = max_side / max(img.shape[:2])
    if scale < 1:
        img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)),
                         interpolation=cv2.INTER_AREA)
    return img


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(buf.tobytes())


def write_coords(path: str | os.PathLike, coords: np.ndarray, attrs: dict) -> None:
    import h5py

    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
            for key, value in attrs.items():
                ds.attrs[key] = value


def read_coords(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """``(coords [N, 2] int64, attrs)`` of a coords h5; anything unreadable raises InputError."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputError(path, "coords file does not exist")
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                raise InputError(path, f"no 'coords' dataset (found: {sorted(f.keys())})")
            coords = np.asarray(f["coords"][()], np.int64)
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f["coords"].attrs.items()}
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"cannot read coords: {type(err).__name__}: {err}") from err
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputError(path, f"coords must be [N, 2], got {coords.shape}")
    for key in ("patch_size", "patch_size_level0", "read_level", "read_size"):
        if key not in attrs:
            raise InputError(path, f"coords attribute {key!r} missing (not written by hardmil patching?)")
    return coords, attrs


def patch_slide(slide_path: str | os.PathLike, coords_path: str | os.PathLike, qc_path: str | os.PathLike | None,
                params: PatchParams, tissue_params: TissueParams, name: str | None = None) -> dict:
    """Segment one slide, lay the grid, write the coords h5 (and the QC PNG); return a summary."""
    with open_slide(slide_path) as slide:
        plan = read_plan(slide, params)
        mpp = slide.mpp or 10.0 / plan.level0_magnification
        tissue = segment_tissue(slide, tissue_params, mpp)
        coords = grid_coords(tissue, slide.dimensions, plan, params.min_tissue)
        if len(coords) == 0:
            raise InputError(slide_path, f"tissue found but no {params.patch_size}-px patch at "
                                         f"{params.magnification:g}x covers >= {params.min_tissue:.0%} tissue")
        w0, h0 = slide.dimensions
        attrs = {
            "patch_size": params.patch_size, "patch_size_level0": plan.patch_size_level0,
            "level0_magnification": plan.level0_magnification, "target_magnification": params.magnification,
            "overlap": params.overlap, "name": name or Path(slide_path).stem, "level0_width": w0,
            "level0_height": h0, "read_level": plan.level, "read_size": plan.read_size, "mpp": mpp,
            "min_tissue": params.min_tissue, "segmentation": json.dumps(asdict(tissue_params)),
            "slide_path": str(slide_path), "hardmil_version": __version__,
        }
        write_coords(coords_path, coords, attrs)
        if qc_path:
            write_png(qc_path, qc_thumbnail(tissue, coords, plan))
        tissue_mm2 = tissue.area_px * (mpp * tissue.downsample / 1000) ** 2
    return {"n_patches": len(coords), "tissue_mm2": round(tissue_mm2, 4), "read_level": plan.level,
            "read_size": plan.read_size}
