"""The bag store: every stage reads bags through this module, lazily, one bag at a time.

Two sources with one interface (:class:`BagSource`):

* :class:`BagStore`, the packed store of one dataset/encoder, built once by the workflow's ``bag_store`` rule
  (:func:`build_store`): ``features.npy`` (one contiguous ``[rows, D]`` array, float32 or float16),
  ``coords.npy`` (``[rows, 2]`` int64, ``-1`` where a source has no coords), ``stats.npy`` (per slide: the
  float64 mean and sum of squared deviations of its features, so a fold's standardisation statistics are a
  merge of its slides' moments, no pass over the features) and ``index.json`` (slide -> first row, row count,
  source file with its size and mtime, and a SHA-1 checksum of the slide's stored bytes). Both arrays are
  opened memory-mapped, so a job touches only the pages of the bags it reads, and concurrent jobs on one node
  share the operating system's page cache instead of each holding a private copy of the cohort.
* :class:`FileBags`, the per-file fallback: a features folder (TRIDENT / CLAM h5, or ``.pt``) read one file
  per request, for features that were never packed (external evaluation folders, ad-hoc use).

Validation (dimension, NaN/Inf, empty bags, coords shape) happens once, when the store is built, with errors
naming the source file; a store whose sources changed after it was built is refused with a message that names
the changed file (:meth:`BagStore.check_fresh`). A store whose own bytes changed after the build (an edited or
damaged ``features.npy``) is refused naming the slide: each bag's checksum is verified the first time a process
reads it (:meth:`BagStore.verify`; cost: see :func:`_bag_digest`).

Memory: a bag read from a store is a view of the memory map (no copy until it is converted for the model);
:class:`~hardmil.data.bagset.BagSet` converts and standardises one bag per step. Building streams one source
file at a time: peak memory is one bag.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hardmil.data.bags import Bag, features_path, read_feature_shape, read_features
from hardmil.utils import DISK_FULL, InputError, is_disk_full, write_text

STORE_VERSION = 2  # 2: per-bag checksums
STORE_DTYPES = ("float32", "float16")
INDEX = "index.json"
FEATURES = "features.npy"
COORDS = "coords.npy"
STATS = "stats.npy"
STORE_FILES = (INDEX, FEATURES, COORDS, STATS)


class BagSource:
    """What every stage needs from bags: ``features(slide)`` ``[N, D]``, ``coords(slide)`` ``[N, 2] | None``,
    ``dim`` and ``dtype``. ``reads`` counts ``features`` calls (tests check that bags are read lazily)."""

    dim: int
    dtype: np.dtype
    reads: int = 0

    def features(self, slide: str) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def coords(self, slide: str) -> np.ndarray | None:  # pragma: no cover - interface
        raise NotImplementedError

    def n_rows(self, slide: str) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def path(self, slide: str) -> Path:  # pragma: no cover - interface
        """The file to name in an error about ``slide``."""
        raise NotImplementedError

    def slide_stats(self, slide: str) -> tuple[int, np.ndarray, np.ndarray] | None:
        """``(rows, mean, sum of squared deviations)`` of the slide's features in float64, if precomputed."""
        return None


def _bag_digest(feats: np.ndarray, coords: np.ndarray, stats: np.ndarray) -> str:
    """SHA-1 of one bag's stored bytes (its features rows, coords rows and moments): a checksum against damage
    and edits, not a security measure. Measured with ``bench/scale.py --verify`` on this project's 2-core
    machine (under load): SHA-1 hashes ~1.4 GB/s (CPU SHA instructions), BLAKE2b 0.45, SHA-256 0.9, so a
    10^5-patch 1024-d float32 bag (410 MB) takes ~0.3 s (page cache warm), ~3x the training step's own float32
    copy of the bag (0.11 s). Too much for every read of every epoch, so a store verifies each bag once per
    process (:meth:`BagStore.verify`): a job pays one pass over its bags' bytes, whatever its epochs."""
    h = hashlib.sha1(usedforsecurity=False)
    for part in (feats, coords, stats):
        h.update(memoryview(np.ascontiguousarray(part)).cast("B"))
    return h.hexdigest()


def _check_index(path: Path, index: object) -> None:
    """The index's structure, so that a damaged ``index.json`` is refused by name, not met as a KeyError."""
    def bad(problem: str):
        return InputError(path, f"bag store index is damaged ({problem}); rebuild the store")

    if not isinstance(index, dict):
        raise bad("not a JSON object")
    if index.get("version") != STORE_VERSION:
        raise InputError(path, f"bag store version {index.get('version')} != {STORE_VERSION}; rebuild it "
                               "(snakemake -R bag_store)")
    for key in ("rows", "dim", "max_bag"):
        if type(index.get(key)) is not int or index[key] < 0:
            raise bad(f"{key!r} is not a count")
    if not isinstance(index.get("slides"), dict) or not index["slides"]:
        raise bad("'slides' is not a non-empty object")
    for slide, e in index["slides"].items():
        if not isinstance(e, dict) or any(type(e.get(k)) is not int or e[k] < 0 for k in ("start", "count")) \
                or e["start"] + e["count"] > index["rows"] or not isinstance(e.get("digest"), str) \
                or not isinstance(e.get("source"), str) or not isinstance(e.get("has_coords"), bool) \
                or not isinstance(e.get("fingerprint"), dict):
            raise bad(f"entry of slide {slide!r}")


def _fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class BagStore(BagSource):
    """A packed store opened memory-mapped (read only)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        index_path = self.root / INDEX
        if not index_path.exists():
            raise InputError(index_path, "bag store index does not exist (build it with the bag_store rule)")
        try:
            self.index = json.loads(index_path.read_text())
            self._features = np.load(self.root / FEATURES, mmap_mode="r")
            self._coords = np.load(self.root / COORDS, mmap_mode="r")
            self._stats = np.load(self.root / STATS, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise InputError(self.root, f"cannot open bag store: {type(err).__name__}: {err}") from err
        _check_index(index_path, self.index)
        if self._features.shape != (self.index["rows"], self.index["dim"]):
            raise InputError(self.root / FEATURES, f"shape {self._features.shape} does not match its index "
                                                   f"({self.index['rows']}, {self.index['dim']}); rebuild it")
        expected = {COORDS: (self.index["rows"], 2), STATS: (len(self.index["slides"]), 2, self.index["dim"])}
        for name, array in ((COORDS, self._coords), (STATS, self._stats)):
            if array.shape != expected[name]:
                raise InputError(self.root / name, f"shape {array.shape} does not match its index "
                                                   f"{expected[name]}; rebuild the store")
        self.slides: dict[str, dict] = self.index["slides"]
        self._verified: set[str] = set()
        self._row_of = {slide: k for k, slide in enumerate(self.slides)}
        self.dim = int(self.index["dim"])
        self.dtype = self._features.dtype
        self.reads = 0

    def _entry(self, slide: str) -> dict:
        try:
            return self.slides[slide]
        except KeyError:
            raise InputError(self.root / INDEX, f"slide {slide!r} is not in this bag store "
                                                f"({len(self.slides)} slides)") from None

    def verify(self, slide: str) -> dict:
        """``slide``'s index entry once its stored bytes (features, coords, moments) match the checksum the
        build recorded; checked once per store object and slide. A mismatch is an :class:`InputError`."""
        e = self._entry(slide)
        if slide not in self._verified:
            rows = slice(e["start"], e["start"] + e["count"])
            digest = _bag_digest(self._features[rows], self._coords[rows], self._stats[self._row_of[slide]])
            if digest != e["digest"]:
                raise InputError(self.root / FEATURES, f"slide {slide}: the stored bytes no longer match the "
                                                       "checksum recorded when the bag store was built (edited or "
                                                       "damaged); rebuild the store")
            self._verified.add(slide)
        return e

    def features(self, slide: str) -> np.ndarray:
        e = self.verify(slide)
        self.reads += 1
        return self._features[e["start"]: e["start"] + e["count"]]

    def coords(self, slide: str) -> np.ndarray | None:
        e = self.verify(slide)
        return np.array(self._coords[e["start"]: e["start"] + e["count"]]) if e["has_coords"] else None

    def n_rows(self, slide: str) -> int:
        return int(self._entry(slide)["count"])

    def path(self, slide: str) -> Path:
        return Path(self._entry(slide)["source"])

    def slide_stats(self, slide: str) -> tuple[int, np.ndarray, np.ndarray]:
        e = self.verify(slide)
        stats = self._stats[self._row_of[slide]]
        return int(e["count"]), np.asarray(stats[0]), np.asarray(stats[1])

    def check_fresh(self, slides=None) -> None:
        """Refuse the store if a source file of ``slides`` (default: all) changed since it was built."""
        for slide in self.slides if slides is None else slides:
            e = self._entry(slide)
            src = Path(e["source"])
            if not src.exists() or _fingerprint(src) != e["fingerprint"]:
                raise InputError(src, f"changed or removed since the bag store {self.root} was built; rebuild "
                                      "the store (snakemake reruns the bag_store rule when its inputs change; "
                                      "force it with -R bag_store)")


class FileBags(BagSource):
    """One features file per slide in ``features_dir``, read on request (the fallback for unpacked features)."""

    def __init__(self, features_dir: str | os.PathLike, dim: int | None = None):
        self.root = Path(features_dir)
        self.dim = dim
        self.dtype = np.dtype(np.float32)
        self.reads = 0
        self._coords: dict[str, np.ndarray | None] = {}
        self._rows: dict[str, int] = {}

    def path(self, slide: str) -> Path:
        return features_path(self.root, slide)

    def _read(self, slide: str) -> tuple[np.ndarray, np.ndarray | None]:
        feats, coords = read_features(self.path(slide), expected_dim=self.dim)
        self.dim = feats.shape[1]
        self._rows[slide] = len(feats)
        return feats, coords

    def features(self, slide: str) -> np.ndarray:
        self.reads += 1
        feats, coords = self._read(slide)
        self._coords[slide] = coords
        return feats

    def coords(self, slide: str) -> np.ndarray | None:
        if slide not in self._coords:
            self._coords[slide] = self._read(slide)[1]
        return self._coords[slide]

    def n_rows(self, slide: str) -> int:
        if slide not in self._rows:
            self._rows[slide] = read_feature_shape(self.path(slide))[0]
        return self._rows[slide]


def open_bags(path: str | os.PathLike) -> BagSource:
    """A :class:`BagStore` if ``path`` is a store folder (holds ``index.json``) or its ``index.json``, else
    :class:`FileBags` of the features folder ``path``."""
    path = Path(path)
    if path.name == INDEX:
        return BagStore(path.parent)
    if (path / INDEX).exists():
        return BagStore(path)
    return FileBags(path)


def as_source(source) -> BagSource:
    """``source`` itself if it is a :class:`BagSource`, else :func:`open_bags` of the path."""
    return source if isinstance(source, BagSource) else open_bags(source)


def load_bags(rows: list[dict], source, classes: list[str]) -> list[Bag]:
    """Lazy bags of ``rows`` (manifest or splits rows) from ``source`` (a :class:`~hardmil.data.store.BagSource`,
    or a features folder / store folder path). Nothing is read here."""
    source = as_source(source)
    return [Bag.lazy(row["slide"], row.get("case", row["slide"]), classes.index(row["label"]), source)
            for row in rows]


# The per-job memory model, measured with bench/scale.py (1 thread, 1024-d features; peak RssAnon of a training
# fold): AB-MIL and MHIM-v2(AB-MIL) 381-400 MB with 8,000-instance bags (33 MB), 1,000-1,041 MB with 50,000
# (205 MB): ~270 MB + 3.8 x the largest bag. TransMIL's Nystrom layers (bench/models.py: 1.35 GB at 8,000,
# 2.7 GB at 20,000 instances) take ~35-40 x the bag. Requested with a margin of ~1.6x. A model whose step memory
# does not follow the bag's bytes (2DMamba's scan grid) adds its own estimate (MILModel.step_memory_mb), with a
# margin of STEP_MARGIN.
JOB_BASE_MB = 500
JOB_BAG_FACTOR = 6
MODEL_BAG_FACTOR = {"transmil": 40, "r2tmil": 40}  # self-attention over the bag
STEP_MARGIN = 1.5
JOB_DEFAULT_MB = 4000  # when the store does not exist yet (a dry run)


def job_memory_request(index: str | os.PathLike, models, configured: int | str = "auto", attempt: int = 1,
                       step_mb: Callable[[int], float] | None = None) -> int:
    """What a job asks the scheduler for (MB): ``HARDMIL_SLURM_MEM_MB`` when set (the cluster's override), else
    ``configured`` (``train.mem_mb``) or, with ``auto``, :func:`job_memory_mb`; times ``attempt`` (a retry gets
    more)."""
    override = os.environ.get("HARDMIL_SLURM_MEM_MB")
    if override:
        return int(override) * attempt
    if configured != "auto":
        return int(configured) * attempt
    return job_memory_mb(index, models, step_mb) * attempt


def job_memory_mb(index: str | os.PathLike, models: tuple[str, ...] | list[str] = (),
                  step_mb: Callable[[int], float] | None = None) -> int:
    """Memory to request (MB) for a job reading the store whose ``index.json`` is ``index`` with ``models``
    (a method's model and, for a framework such as MHIM, the model it wraps); ``step_mb(n)``, when given, is the
    model's own estimate for a bag of ``n`` instances (``MILModel.step_memory_mb``), added with ``STEP_MARGIN``."""
    try:
        meta = json.loads(Path(index).read_text())
    except (OSError, ValueError):
        return JOB_DEFAULT_MB
    bag_mb = meta["max_bag"] * meta["dim"] * 4 / 1e6
    factor = max([JOB_BAG_FACTOR] + [MODEL_BAG_FACTOR.get(m, JOB_BAG_FACTOR) for m in models])
    extra = STEP_MARGIN * step_mb(meta["max_bag"]) if step_mb is not None else 0.0
    return int(JOB_BASE_MB + factor * bag_mb + extra)


def _check_dimensions(shapes: dict[str, tuple[int, int]], paths: dict[str, Path]) -> int:
    """The feature dimension most sources share; an error listing the files that differ, if any do."""
    counts = Counter(s[1] for s in shapes.values())
    dim, n = counts.most_common(1)[0]
    odd = [s for s, shape in shapes.items() if shape[1] != dim]
    if odd:
        listed = ", ".join(f"{paths[s].name} ({shapes[s][1]})" for s in odd[:10])
        raise InputError(paths[odd[0]], f"feature dimension {shapes[odd[0]][1]} != {dim}, the dimension of "
                                        f"{n} of {len(shapes)} bags; {len(odd)} file(s) differ: {listed}")
    return dim


def store_is_current(out_dir: str | os.PathLike, slides: list[str], features_dir: str | os.PathLike,
                     dtype: str) -> bool:
    """True if ``out_dir`` holds a complete store of exactly ``slides`` whose sources are unchanged."""
    out = Path(out_dir)
    if not all((out / f).exists() for f in STORE_FILES):
        return False
    try:
        index = json.loads((out / INDEX).read_text())
        _check_index(out / INDEX, index)
    except (OSError, ValueError):  # InputError is a ValueError
        return False
    if index.get("version") != STORE_VERSION or index.get("dtype") != dtype or list(index["slides"]) != slides:
        return False
    for slide in slides:
        src = features_path(features_dir, slide)
        e = index["slides"][slide]
        if str(src) != e["source"] or not src.exists() or _fingerprint(src) != e["fingerprint"]:
            return False
    try:  # the store's own bytes: a damaged store is rebuilt, not kept
        store = BagStore(out)
        for slide in slides:
            store.verify(slide)
    except InputError:
        return False
    return True


def build_store(slides: list[str], features_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                dtype: str = "float32", progress: bool = False, force: bool = False) -> dict:
    """Pack the features files of ``slides`` into a store in ``out_dir``; returns its index.

    Kept as it is (not rewritten) when it already holds exactly these slides from unchanged sources, unless
    ``force``. Two streaming passes: shapes first (h5 metadata), then one file at a time into the memory map.
    Written into a temporary folder beside ``out_dir`` and moved into place file by file, ``index.json`` last,
    so an interrupted build never leaves an index that points at a partial array."""
    from tqdm import tqdm

    if dtype not in STORE_DTYPES:
        raise ValueError(f"store dtype must be one of {STORE_DTYPES}, got {dtype!r}")
    if not slides:
        raise ValueError("a bag store needs at least one slide")
    out = Path(out_dir)
    if not force and store_is_current(out, slides, features_dir, dtype):
        return json.loads((out / INDEX).read_text())
    paths = {s: features_path(features_dir, s) for s in slides}
    missing = [s for s, p in paths.items() if not p.exists()]
    if missing:
        raise InputError(paths[missing[0]], f"features file does not exist ({len(missing)} slide(s) have none: "
                                            f"{', '.join(missing[:5])})")
    shapes = {s: read_feature_shape(p) for s, p in paths.items()}
    dim = _check_dimensions(shapes, paths)
    rows = sum(n for n, _ in shapes.values())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{out}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        feats_mm = _new_map(tmp / FEATURES, np.dtype(dtype), (rows, dim))
        coords_mm = _new_map(tmp / COORDS, np.int64, (rows, 2))
        stats_mm = _new_map(tmp / STATS, np.float64, (len(slides), 2, dim))
        entries, start = {}, 0
        for k, slide in enumerate(tqdm(slides, desc="bag store", unit="bag", disable=not progress)):
            src = paths[slide]
            feats, coords = read_features(src, expected_dim=dim)
            n = len(feats)
            if dtype == "float16" and np.abs(feats).max() > np.finfo(np.float16).max:
                raise InputError(src, "features exceed the float16 range (65504); use store dtype float32")
            feats_mm[start: start + n] = feats
            stats_mm[k] = _bag_moments(feats_mm[start: start + n])  # of the stored values (float16: rounded)
            coords_mm[start: start + n] = -1 if coords is None else coords
            entries[slide] = {"start": start, "count": n, "has_coords": coords is not None, "source": str(src),
                              "fingerprint": _fingerprint(src),
                              "digest": _bag_digest(feats_mm[start: start + n], coords_mm[start: start + n],
                                                    stats_mm[k])}
            start += n
        for mm in (feats_mm, coords_mm, stats_mm):
            mm.flush()
        del feats_mm, coords_mm, stats_mm
        index = {"version": STORE_VERSION, "dim": dim, "dtype": dtype, "rows": rows, "slides": entries,
                 "features_dir": str(features_dir), "max_bag": max(n for n, _ in shapes.values())}
        write_text(tmp / INDEX, json.dumps(index, indent=1) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        (out / INDEX).unlink(missing_ok=True)  # no index while the arrays are swapped
        for name in (FEATURES, COORDS, STATS, INDEX):
            mode = 0o666 & ~_umask()
            os.chmod(tmp / name, mode)
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return index


def _new_map(path: Path, dtype, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` memory map with its blocks allocated now: on a full disk this is an :class:`InputError`
    naming the file, where writing into a sparse map would kill the job with SIGBUS."""
    try:
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # else: no fallocate here, map as before
                raise
        finally:
            os.close(fd)
    except OSError as err:
        if is_disk_full(err):
            raise InputError(path, DISK_FULL) from None
        raise
    return mm


def merge_moments(acc, part):
    """Chan et al.'s pairwise merge of ``(n, mean, M2)`` (float64; M2 = sum of squared deviations)."""
    if acc is None:
        return part
    n, mean, m2 = acc
    k, mu, dev = part
    total = n + k
    delta = mu - mean
    return total, mean + delta * (k / total), m2 + dev + delta ** 2 * (n * k / total)


def _bag_moments(feats: np.ndarray, chunk_rows: int = 65536) -> np.ndarray:
    """``[mean, sum of squared deviations]`` (float64, ``[2, D]``) of one bag, chunk by chunk."""
    acc = None
    for a in range(0, len(feats), chunk_rows):
        x = np.asarray(feats[a: a + chunk_rows], dtype=np.float64)
        mu = x.mean(axis=0)
        acc = merge_moments(acc, (len(x), mu, ((x - mu) ** 2).sum(axis=0)))
    return np.stack([acc[1], acc[2]])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
