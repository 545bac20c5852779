"""Bags on disk and in memory.

Features files (docs/architecture.md#features-files): h5 with ``features`` float32 [N, D] and optionally
``coords`` int64 [N, 2] (TRIDENT and CLAM both write this layout), or a ``.pt`` tensor [N, D] as CLAM's
``pt_files`` hold.
Every problem raises :class:`~hardmil.utils.InputError` naming the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from hardmil import __version__
from hardmil.utils import InputError, atomic_path, read_tsv

FEATURE_SUFFIXES = (".h5", ".pt")
MANIFEST_COLUMNS = ("slide", "case", "label")
# slide, case and dataset names become file and folder names: one safe path component each
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
SAFE_NAME_RULE = "allowed: letters, digits, '.', '_', '-'; not starting with '.'; at most 200 characters"


def check_name(name: str, what: str, path: str | os.PathLike, line: int | None = None) -> str:
    """``name`` if it is a single safe path component, else an :class:`InputError` naming ``path`` and ``line``."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        where = f"line {line}: " if line is not None else ""
        raise InputError(path, f"{where}{what} name {name!r} is not a single safe path component ({SAFE_NAME_RULE})")
    return name


def check_names(rows: list[dict], path: str | os.PathLike, columns: tuple[str, ...] = ("slide", "case"),
                first_line: int = 2) -> None:
    """:func:`check_name` on ``columns`` of every row of a TSV read with a header (first row = line 2)."""
    for i, row in enumerate(rows, start=first_line):
        for col in columns:
            if col in row:
                check_name(row[col], col, path, i)


class Bag:
    """One slide (or case) as the models see it: ``features [N, D]``, optional ``coords [N, 2]``.

    Either in memory (``Bag(slide, case, label, features, coords)``: generated bags, tests) or lazy
    (``Bag.lazy``): ``features`` is then read from a :class:`~hardmil.data.store.BagSource` each time it is
    asked for (a view of the store's memory map, or one file read), so a list of bags costs no feature memory.
    A lazy bag of several slides (a survival case) concatenates them, coords side by side."""

    def __init__(self, slide: str, case: str, label: int, features: np.ndarray | None = None,
                 coords: np.ndarray | None = None, extra: dict | None = None):
        self.slide, self.case, self.label = slide, case, label
        self._features, self._coords = features, coords
        self.extra = {} if extra is None else extra
        self.source = None
        self.slides: tuple[str, ...] = (slide,)

    @classmethod
    def lazy(cls, slide: str, case: str, label: int, source, slides: tuple[str, ...] | None = None,
             extra: dict | None = None) -> Bag:
        bag = cls(slide, case, label, None, None, extra)
        bag.source, bag.slides = source, tuple(slides or (slide,))
        return bag

    @property
    def features(self) -> np.ndarray:
        if self.source is None:
            return self._features
        parts = [self.source.features(s) for s in self.slides]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @property
    def coords(self) -> np.ndarray | None:
        if self.source is None:
            return self._coords
        parts = [self.source.coords(s) for s in self.slides]
        if any(c is None for c in parts):
            return None
        return parts[0] if len(parts) == 1 else place_side_by_side(parts)

    @property
    def path(self) -> Path | str:
        """The file to name in an error about this bag."""
        return self.source.path(self.slides[0]) if self.source is not None else self.slide

    def __len__(self) -> int:
        if self.source is None:
            return int(self._features.shape[0])
        return sum(self.source.n_rows(s) for s in self.slides)

    def __repr__(self) -> str:
        return f"Bag({self.slide!r}, case={self.case!r}, label={self.label}, slides={len(self.slides)})"


def place_side_by_side(coords: list[np.ndarray]) -> np.ndarray:
    """Coordinates of several slides of one case on one plane: each slide shifted along x past the previous
    one (two patch strides apart), so models that read coordinates see separate tissue regions."""
    out, offset = [], 0
    for c in coords:
        c = np.asarray(c, dtype=np.int64).copy()
        c[:, 0] += offset - c[:, 0].min()
        out.append(c)
        xs = np.unique(c[:, 0])
        stride = int(np.diff(xs).min()) if len(xs) > 1 else 1
        offset = int(c[:, 0].max()) + 2 * stride
    return np.concatenate(out)


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
                if "features" not in obj:
                    raise InputError(path, f"'.pt' dict has no 'features' key (keys: {sorted(map(str, obj))})")
                obj = obj["features"]
            feats = np.asarray(obj.float().numpy() if hasattr(obj, "numpy") else obj, dtype=np.float32)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                if "features" not in f:
                    raise InputError(path, f"no 'features' dataset (found: {sorted(f.keys())})")
                feats = np.asarray(f["features"][()], dtype=np.float32)
                if "coords" in f:
                    coords = np.asarray(f["coords"][()])
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
    if coords is not None:
        coords = _checked_coords(path, coords, feats.shape)
    return feats, coords


def _checked_coords(path: Path, coords: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``coords`` as int64 ``[N, 2]``: numbers, finite, in range (a NaN cast to int64 would become -2^63)."""
    if coords.shape != (shape[0], 2):
        raise InputError(path, f"coords shape {coords.shape} does not match features {shape}")
    if coords.dtype.kind not in "iuf":
        raise InputError(path, f"coords must be numbers, got dtype {coords.dtype}")
    if coords.dtype.kind == "f":
        if not np.isfinite(coords).all():
            bad = int((~np.isfinite(coords)).any(axis=1).sum())
            raise InputError(path, f"{bad} instance(s) have NaN or infinite coords")
        if (np.abs(coords) >= 2.0 ** 62).any():
            raise InputError(path, "coords out of range (2^62 pixels or more)")
    if coords.dtype.kind == "u" and coords.size and coords.max() >= 2 ** 62:
        raise InputError(path, "coords out of range (2^62 pixels or more)")
    return coords.astype(np.int64)


def read_feature_shape(path: str | os.PathLike) -> tuple[int, int]:
    """``(N, D)`` of a features file without reading its values (h5 metadata; a ``.pt`` file is loaded)."""
    path = Path(path)
    if path.suffix == ".pt":
        return read_features(path)[0].shape
    if not path.exists():
        raise InputError(path, "features file does not exist")
    try:
        import h5py

        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise InputError(path, f"no 'features' dataset (found: {sorted(f.keys())})")
            shape = f["features"].shape
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"cannot read features: {type(err).__name__}: {err}") from err
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise InputError(path, f"features must be 2-D [N, D], got shape {shape}")
    if shape[0] == 0:
        raise InputError(path, "bag has no instances")
    return int(shape[0]), int(shape[1])


def features_path(features_dir: str | os.PathLike, slide: str) -> Path:
    """The features file of ``slide``: ``{slide}.h5`` or ``{slide}.pt`` (the h5 path when neither exists); both
    present is an :class:`InputError` naming both, since either could be the one meant."""
    base = Path(features_dir)
    found = [base / f"{slide}{suffix}" for suffix in FEATURE_SUFFIXES if (base / f"{slide}{suffix}").exists()]
    if len(found) > 1:
        raise InputError(found[0], f"slide {slide} has features in two formats, {found[0]} and {found[1]}; "
                                   "keep one of them")
    return found[0] if found else base / f"{slide}.h5"


def read_manifest_rows(path: str | os.PathLike, columns: tuple[str, ...] = MANIFEST_COLUMNS) -> list[dict]:
    """The rows of a manifest TSV that must exist, have rows and have ``columns``."""
    rows = read_tsv(path, "manifest", columns)
    check_names(rows, path)
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
