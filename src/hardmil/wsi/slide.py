"""Opening a whole-slide image with OpenSlide (``openslide-python`` + the self-contained ``openslide-bin``).

Magnification follows TRIDENT (mahmoodlab/TRIDENT, ``WSI._fetch_magnification``): the microns per pixel of
level 0 are binned to a nominal objective (< 0.16 µm → 80x, < 0.2 → 60x, < 0.3 → 40x, < 0.6 → 20x,
< 1.2 → 10x, < 2.4 → 5x); without an MPP the scanner's objective power is used. Every failure to open or
read a slide raises :class:`~hardmil.utils.InputError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardmil.utils import InputError

MPP_BINS = ((0.16, 80.0), (0.2, 60.0), (0.3, 40.0), (0.6, 20.0), (1.2, 10.0), (2.4, 5.0))
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm")


def magnification_from_mpp(mpp: float) -> float:
    for limit, mag in MPP_BINS:
        if mpp < limit:
            return mag
    raise ValueError(f"MPP {mpp} is coarser than 5x (>= 2.4 µm/px)")


@dataclass
class Slide:
    """An open slide: geometry, resolution and region reads as uint8 RGB arrays."""

    path: Path
    handle: object  # openslide.OpenSlide

    @property
    def dimensions(self) -> tuple[int, int]:
        return tuple(self.handle.dimensions)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [tuple(d) for d in self.handle.level_dimensions]

    @property
    def level_downsamples(self) -> list[float]:
        return [float(d) for d in self.handle.level_downsamples]

    @property
    def mpp(self) -> float | None:
        props = self.handle.properties
        for key in ("openslide.mpp-x", "aperio.MPP"):
            try:
                value = float(props[key])
            except (KeyError, ValueError):
                continue
            if value > 0:
                return value
        return None

    @property
    def objective_power(self) -> float | None:
        try:
            value = float(self.handle.properties["openslide.objective-power"])
        except (KeyError, ValueError):
            return None
        return value if value > 0 else None

    @property
    def magnification(self) -> float:
        """Nominal magnification of level 0 (from MPP, else the objective power)."""
        if self.mpp is not None:
            try:
                return magnification_from_mpp(self.mpp)
            except ValueError as err:
                raise InputError(self.path, str(err)) from err
        if self.objective_power is not None:
            return self.objective_power
        raise InputError(self.path, "slide has neither an MPP nor an objective power: magnification unknown "
                                    "(write it into the file, e.g. Aperio 'MPP =' / TIFF resolution)")

    def read(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """``size`` (w, h) pixels of ``level`` whose top-left is level-0 ``(x, y)``, as RGB on white."""
        try:
            region = self.handle.read_region((int(x), int(y)), level, (int(size[0]), int(size[1])))
        except Exception as err:  # openslide.OpenSlideError on corrupt tiles
            raise InputError(self.path, f"cannot read region at ({x}, {y}) level {level}: {err}") from err
        rgba = np.asarray(region)
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        # premultiplied RGBA; transparent (outside the scanned area) becomes white glass
        rgb = rgba[..., :3].astype(np.float32) + 255.0 * (1.0 - alpha)
        return np.clip(rgb, 0, 255).astype(np.uint8)

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (plus 1 % tolerance)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.01:
                best = i
        return best

    def read_downsampled(self, downsample: float, strip: int = 2048) -> np.ndarray:
        """The whole slide at ``downsample`` relative to level 0, read in strips (bounded memory)."""
        import cv2

        level = self.best_level(downsample)
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        factor = ds / downsample  # output pixels per level pixel (<= 1)
        out_w, out_h = max(1, round(lw * factor)), max(1, round(lh * factor))
        rows = []
        y = 0
        while y < lh:
            h = min(strip, lh - y)
            block = self.read(0, round(y * ds), level, (lw, h))
            target_h = max(1, round((y + h) * factor) - round(y * factor))
            if factor != 1.0:
                block = cv2.resize(block, (out_w, target_h), interpolation=cv2.INTER_AREA)
            rows.append(block)
            y += h
        image = np.concatenate(rows, axis=0)
        return image[:out_h]

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_slide(path: str | os.PathLike) -> Slide:
    """Open ``path`` with OpenSlide; a missing, corrupt, truncated or unsupported file raises InputError."""
    import openslide

    path = Path(path)
    if not path.exists():
        raise InputError(path, "slide file does not exist")
    if path.stat().st_size == 0:
        raise InputError(path, "slide file is empty")
    try:
        handle = openslide.OpenSlide(str(path))
    except Exception as err:  # OpenSlideUnsupportedFormatError, OpenSlideError
        raise InputError(path, f"cannot open slide ({type(err).__name__}: {err})") from err
    slide = Slide(path, handle)
    try:  # a truncated file often opens but fails on its last tiles: probe the corners of level 0
        w, h = slide.dimensions
        if w < 1 or h < 1:
            raise InputError(path, f"slide has no pixels ({w}x{h})")
        for x, y in ((0, 0), (w - 1, h - 1), (w - 1, 0), (0, h - 1)):
            slide.read(x, y, 0, (1, 1))
    except InputError:
        slide.close()
        raise
    return slide


def find_slide(slides_dir: str | os.PathLike, slide: str, filename: str | None = None) -> Path:
    """The file of ``slide`` in ``slides_dir``: ``filename`` if given, else ``{slide}.<known suffix>``."""
    base = Path(slides_dir)
    if filename:
        return base / filename
    for suffix in SLIDE_SUFFIXES:
        candidate = base / f"{slide}{suffix}"
        if candidate.exists():
            return candidate
    raise InputError(base / slide, f"no slide file for {slide!r} in {base} (looked for {', '.join(SLIDE_SUFFIXES)})")
