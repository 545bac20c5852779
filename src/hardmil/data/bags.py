"""Bags on disk and in memory.

Features files (docs/architecture.md#features-files): h5 with ``features`` float32 [N, D] and optionally
``coords`` int64 [N, 2] (TRIDENT and CLAM both write this layout), or a ``.pt`` tensor [N, D] as CLAM's
``pt_files`` hold.
Every problem raises :class:`~hardmil.utils.InputError` naming the file.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hardmil import __version__
from hardmil.utils import InputError, atomic_path

FEATURE_SUFFIXES = (".h5", ".pt")
MANIFEST_COLUMNS = ("slide", "case", "label")


@dataclass
class Bag:
    """One slide (or case) as the models see it: ``features [N, D]``, optional ``coords [N, 2]``."""

    slide: str
    case: str
    label: int
    features: np.ndarray
    coords: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.features.shape[0])


def write_features(path: str | os.PathLike, features: np.ndarray, coords: np.ndarray | None = None,
                   **attrs) -> None:
    """Write a features h5 atomically, with the provenance attributes of docs/architecture.md#features-files."""
    import h5py

    features = np.asarray(features, dtype=np.float32)
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=features)
            if coords is not None:
                f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64))
            f.attrs["hardmil_version"] = __version__
            for key, value in attrs.items():
                f.attrs[key] = value


def read_features(path: str | os.PathLike, expected_dim: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``(features [N, D] float32, coords [N, 2] | None)`` from an h5 or ``.pt`` file and check it."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "features file does not exist")
    coords = None
    try:
        if path.suffix == ".pt":
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = obj.get("features")
            feats = np.asarray(obj.float().numpy() if hasattr(obj, "numpy") else obj, dtype=np.float32)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                if "features" not in f:
                    raise InputError(path, f"no 'features' dataset (found: {sorted(f.keys())})")
                feats = np.asarray(f["features"][()], dtype=np.float32)
                if "coords" in f:
                    coords = np.asarray(f["coords"][()], dtype=np.int64)
    except InputError:
        raise
    except Exception as err:  # unreadable, truncated, not an h5 ...
        raise InputError(path, f"cannot read features: {type(err).__name__}: {err}") from err
    if feats.ndim == 3 and feats.shape[0] == 1:  # CLAM sometimes stores [1, N, D]
        feats = feats[0]
    if feats.ndim != 2:
        raise InputError(path, f"features must be 2-D [N, D], got shape {feats.shape}")
    if feats.shape[0] == 0:
        raise InputError(path, "bag has no instances")
    if expected_dim is not None and feats.shape[1] != expected_dim:
        raise InputError(path, f"feature dimension {feats.shape[1]} != {expected_dim} of the other bags")
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).any(axis=1).sum())
        raise InputError(path, f"{bad} instance(s) have NaN or infinite features")
    if coords is not None and coords.shape != (feats.shape[0], 2):
        raise InputError(path, f"coords shape {coords.shape} does not match features {feats.shape}")
    return feats, coords


def features_path(features_dir: str | os.PathLike, slide: str) -> Path:
    """The features file of ``slide``: ``{slide}.h5`` or, failing that, ``{slide}.pt``."""
    base = Path(features_dir)
    for suffix in FEATURE_SUFFIXES:
        candidate = base / f"{slide}{suffix}"
        if candidate.exists():
            return candidate
    return base / f"{slide}.h5"


def read_manifest_rows(path: str | os.PathLike, columns: tuple[str, ...] = MANIFEST_COLUMNS) -> list[dict]:
    """The rows of a manifest TSV that must exist, have rows and have ``columns``."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "manifest does not exist")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        raise InputError(path, "manifest has no rows")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise InputError(path, f"manifest lacks column(s) {missing}")
    return rows


def read_manifest(path: str | os.PathLike, classes: list[str]) -> list[dict]:
    """Read a manifest TSV (columns slide, case, label, ...) and check labels against ``classes``."""
    rows = read_manifest_rows(path)
    seen: set[str] = set()
    for i, row in enumerate(rows, start=2):
        if row["label"] not in classes:
            raise InputError(path, f"line {i}: label {row['label']!r} of {row['slide']} is not one of {classes}")
        if row["slide"] in seen:
            raise InputError(path, f"line {i}: slide {row['slide']} appears twice")
        seen.add(row["slide"])
    return rows


def check_features_exist(rows: list[dict], features_dir: str | os.PathLike, manifest: str) -> None:
    """Fail, naming the manifest and the first missing files, if any listed slide has no features."""
    missing = [r["slide"] for r in rows if not features_path(features_dir, r["slide"]).exists()]
    if missing:
        raise InputError(manifest, f"{len(missing)} slide(s) listed here have no features file in "
                                   f"{features_dir}: {', '.join(missing[:5])}")


def load_bags(rows: list[dict], features_dir: str | os.PathLike, classes: list[str]) -> list[Bag]:
    """Load the bags of ``rows`` (manifest or splits rows); all must share one feature dimension."""
    bags: list[Bag] = []
    dim = None
    for row in rows:
        feats, coords = read_features(features_path(features_dir, row["slide"]), expected_dim=dim)
        dim = feats.shape[1]
        bags.append(Bag(row["slide"], row.get("case", row["slide"]), classes.index(row["label"]), feats, coords))
    return bags
