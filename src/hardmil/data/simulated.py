"""A controlled MIL benchmark with instance ground truth: bags of real patch features, recombined.

The papers this project reproduces argue about instances: Li et al. (MICCAI 2019) that negative instances
which look positive (hard negatives) mislead an attention MIL model and that training on bags of mined hard
negatives fixes it; Tang et al. (MHIM-MIL, ICCV 2023; MHIM-v2) that attention locks onto a few salient
instances and that masking them makes the model learn the harder ones. Real cohorts cannot say whether
either mechanism works, because no one knows which instances are which. This module draws bags whose every
instance is labelled, from a declared model whose knobs are exactly those quantities.

Instance features come from a bank of real patch features (:func:`bank_from_slides`): the synthetic slide
cohort's patches (real H&E crops embedded by a real encoder), split by the cohort's true tumour masks into
*normal* patches (no tumour in the patch) and *tumour* patches (at least half tumour), projected on the
bank's leading principal components (``dim``) so that bags of thousands of instances stay small on disk
and cheap to train on. Every generated instance is a recombination of real bank patches plus noise, so its
geometry is that of real patches:

* ``base(B)``: a patch ``B[i]`` mixed with a second patch ``B[j]`` of the same bank,
  ``(1 - m) B[i] + m B[j]``, ``m ~ U(0, mix)``, plus Gaussian noise with per-dimension standard deviation
  ``noise`` times that of the normal bank;
* **negative instance**: ``base(normal)``;
* **salient witness** (far from the negatives): ``base(tumour)``;
* **subtle witness** (near the negatives): ``n + s (t - n)`` with ``n = base(normal)``,
  ``t = base(tumour)``, ``s ~ U(subtle)``, a normal patch moved part of the way towards a tumour patch;
* **hard negative** (a negative instance that looks positive): the same construction with
  ``h ~ U(hard)``, a smaller step towards tumour than any subtle witness takes, so a model that learns where
  the witnesses begin can tell them apart, and one that only learns "towards tumour" cannot.

Bags (``n_train`` development bags and ``n_test`` test bags, a share ``positive_fraction`` positive):

* size ``n ~ log-uniform(bag_size)`` instances;
* a positive bag holds ``max(1, round(r n))`` witnesses, ``r ~ log-uniform(witness_rate)``; a negative
  bag none (the label is "has at least one witness", the standard MIL assumption);
* each witness is salient with probability ``salient_train`` in development bags and ``salient_test`` in
  test bags, else subtle: ``salient_train > salient_test`` is the *shortcut* (salient witnesses common in
  training positives, rare in test positives) that masking salient instances is supposed to break;
* every non-witness instance, in positive and negative bags alike, is a hard negative with probability
  ``hard_rate`` (so hard negatives carry no label information);
* ``coords``: a random placement on a square grid of 256-pixel cells (the layout of real patch coordinates;
  the models used here ignore them).

Splits (:func:`simulated_splits`): the development pool and the test pool are each cut into the same
number of stratified folds; fold ``k`` trains (and, protocol ``clean``, selects on a stratified validation
share) on the development bags outside development fold ``k`` and tests on test fold ``k``. Every test bag is
tested once per seed and every test bag comes from the test distribution, which the project's ordinary
case-level k-fold over one pool could not guarantee; so the source writes its own splits.

Everything is drawn from one ``numpy`` generator seeded by ``seed``: the same bank and model give the same
bags, bit for bit.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hardmil.utils import InputError, atomic_path, write_json

log = logging.getLogger(__name__)

NEGATIVE, SALIENT, SUBTLE, HARD = 0, 1, 2, 3  # instance kinds in the truth file
KINDS = {NEGATIVE: "negative", SALIENT: "salient witness", SUBTLE: "subtle witness", HARD: "hard negative"}
CELL = 256  # pixels between neighbouring grid coordinates
MANIFEST_FIELDS = ("slide", "case", "label", "pool", "instances", "witnesses", "salient", "subtle",
                   "hard_negatives")


@dataclass(frozen=True)
class Bank:
    """Real patch features by kind (rows), in one feature space."""

    normal: np.ndarray
    tumour: np.ndarray
    info: dict

    def __post_init__(self):
        for name in ("normal", "tumour"):
            arr = getattr(self, name)
            if arr.ndim != 2 or len(arr) < 2:
                raise ValueError(f"bank: {name} patches must be a [N >= 2, D] array, got shape {arr.shape}")
        if self.normal.shape[1] != self.tumour.shape[1]:
            raise ValueError(f"bank: normal and tumour features differ in dimension "
                             f"({self.normal.shape[1]} vs {self.tumour.shape[1]})")


def dataclass_from_config(cls, cfg: dict, what: str):
    """``cls(**cfg)`` with lists as tuples; an unknown key is an error naming ``what`` and the valid keys."""
    known = set(cls.__dataclass_fields__)
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {sorted(unknown)}; valid: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})


@dataclass(frozen=True)
class BagModel:
    """The declared generative model (see the module docstring); ranges are ``[low, high]``."""

    n_train: int = 200
    n_test: int = 200
    positive_fraction: float = 0.5
    bag_size: tuple[int, int] = (200, 2000)
    witness_rate: tuple[float, float] = (0.005, 0.05)
    salient_train: float = 0.5
    salient_test: float = 0.5
    subtle: tuple[float, float] = (0.35, 0.6)
    hard_rate: float = 0.0
    hard: tuple[float, float] = (0.15, 0.3)
    mix: float = 0.5
    noise: float = 0.3
    seed: int = 0

    def __post_init__(self):
        def rng_ok(name, lo_min, hi_max, cast=float):
            lo, hi = getattr(self, name)
            if not (lo_min <= cast(lo) <= cast(hi) <= hi_max):
                raise ValueError(f"simulated: {name} must be [low, high] with {lo_min} <= low <= high <= "
                                 f"{hi_max}, got {[lo, hi]}")

        if self.n_train < 4 or self.n_test < 4:
            raise ValueError(f"simulated: n_train and n_test must be >= 4, got {self.n_train}, {self.n_test}")
        if not 0 < self.positive_fraction < 1:
            raise ValueError(f"simulated: positive_fraction must be in (0, 1), got {self.positive_fraction}")
        rng_ok("bag_size", 1, 10**6, int)
        rng_ok("witness_rate", 1e-6, 1.0)
        rng_ok("subtle", 0.0, 1.0)
        rng_ok("hard", 0.0, 1.0)
        for name in ("salient_train", "salient_test", "hard_rate", "mix"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"simulated: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.noise < 0:
            raise ValueError(f"simulated: noise must be >= 0, got {self.noise}")
        if self.hard_rate > 0 and self.hard[1] >= self.subtle[0]:
            log.warning("simulated: hard negatives (step up to %.2f) overlap subtle witnesses (from %.2f): "
                        "some negatives are then indistinguishable from witnesses", self.hard[1], self.subtle[0])

    @classmethod
    def from_config(cls, cfg: dict) -> BagModel:
        return dataclass_from_config(cls, cfg, "simulated")


@dataclass
class SimBag:
    slide: str
    label: int
    pool: str
    features: np.ndarray
    coords: np.ndarray
    kind: np.ndarray  # int8 per instance: NEGATIVE / SALIENT / SUBTLE / HARD

    @property
    def witness(self) -> np.ndarray:
        return (self.kind == SALIENT) | (self.kind == SUBTLE)


# --- the bank ---------------------------------------------------------------------------------------------

def project_bank(normal: np.ndarray, tumour: np.ndarray, dim: int, info: dict | None = None) -> Bank:
    """Centre both sets on their pooled mean and keep the ``dim`` leading principal components (0 = all)."""
    x = np.concatenate([normal, tumour]).astype(np.float64)
    mean = x.mean(axis=0)
    info = dict(info or {})
    if dim and dim < x.shape[1]:
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        basis = vt[:dim].T
        info["explained_variance"] = float((s[:dim] ** 2).sum() / (s ** 2).sum())
    else:
        basis = np.eye(x.shape[1])
        info["explained_variance"] = 1.0
    proj = lambda a: ((a - mean) @ basis).astype(np.float32)  # noqa: E731
    info.update(dim=int(basis.shape[1]), source_dim=int(x.shape[1]), n_normal=len(normal), n_tumour=len(tumour))
    return Bank(proj(normal), proj(tumour), info)


def bank_from_slides(manifest: str | os.PathLike, features_dir: str | os.PathLike, slides_dir: str | os.PathLike,
                     patch_size: int, dim: int = 64, tumour_min: float = 0.5) -> Bank:
    """The bank of a slide cohort with true tumour masks (the synthetic slide cohort): patches with no tumour
    are *normal*, patches at least ``tumour_min`` tumour are *tumour*, the rest (tumour borders) are left out."""
    from hardmil.data.bags import features_path, read_features, read_manifest_rows
    from hardmil.wsi.annotations import patch_tumour_fraction
    from hardmil.wsi.synthetic import read_truth

    normal, tumour = [], []
    rows = read_manifest_rows(manifest)
    for r in rows:
        path = features_path(features_dir, r["slide"])
        feats, coords = read_features(path)
        if coords is None:
            raise InputError(path, "bank slides need patch coordinates ('coords') to find their tumour patches")
        mask, ds = read_truth(slides_dir, r["slide"])
        frac = patch_tumour_fraction(coords, patch_size, ds, mask)
        normal.append(feats[frac == 0])
        tumour.append(feats[frac >= tumour_min])
    normal_x, tumour_x = np.concatenate(normal), np.concatenate(tumour)
    if len(normal_x) < 2 or len(tumour_x) < 2:
        raise InputError(manifest, f"bank needs at least 2 normal and 2 tumour patches, found {len(normal_x)} and "
                                   f"{len(tumour_x)} (raise the cohort's tumour_fraction or n_slides)")
    log.info("bank: %d normal and %d tumour patches from %d slides", len(normal_x), len(tumour_x), len(rows))
    return project_bank(normal_x, tumour_x, dim, {"slides": len(rows), "tumour_min": tumour_min})


# --- the bags -----------------------------------------------------------------------------------------------

def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)


class _Sampler:
    """Draws instances of each kind from the bank (see the module docstring)."""

    def __init__(self, bank: Bank, model: BagModel, rng: np.random.Generator):
        self.bank, self.m, self.rng = bank, model, rng
        self.sigma = bank.normal.std(axis=0) * model.noise

    def base(self, arr: np.ndarray, n: int) -> np.ndarray:
        i = self.rng.integers(0, len(arr), n)
        j = self.rng.integers(0, len(arr), n)
        m = self.rng.uniform(0.0, self.m.mix, (n, 1))
        return (1 - m) * arr[i] + m * arr[j] + self.rng.normal(0.0, 1.0, (n, arr.shape[1])) * self.sigma

    def towards_tumour(self, n: int, step: tuple[float, float]) -> np.ndarray:
        a, b = self.base(self.bank.normal, n), self.base(self.bank.tumour, n)
        s = self.rng.uniform(step[0], step[1], (n, 1))
        return a + s * (b - a)

    def draw(self, kind: np.ndarray) -> np.ndarray:
        out = np.empty((len(kind), self.bank.normal.shape[1]), dtype=np.float64)
        for k, make in ((NEGATIVE, lambda n: self.base(self.bank.normal, n)),
                        (SALIENT, lambda n: self.base(self.bank.tumour, n)),
                        (SUBTLE, lambda n: self.towards_tumour(n, self.m.subtle)),
                        (HARD, lambda n: self.towards_tumour(n, self.m.hard))):
            idx = np.flatnonzero(kind == k)
            if len(idx):
                out[idx] = make(len(idx))
        return out.astype(np.float32)


def pool_labels(rng: np.random.Generator, n_bags: int, positive_fraction: float) -> np.ndarray:
    """A shuffled 0/1 label per bag of a pool, ``round(n_bags * positive_fraction)`` of them positive."""
    n_pos = round(n_bags * positive_fraction)
    labels = np.array([1] * n_pos + [0] * (n_bags - n_pos))
    rng.shuffle(labels)
    return labels


def grid_coords(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct random cells of the smallest square grid that holds them, in pixels ([n, 2] int64)."""
    side = int(np.ceil(np.sqrt(n)))
    cells = rng.permutation(side * side)[:n]
    return np.stack([cells % side, cells // side], axis=1).astype(np.int64) * CELL


def generate_bags(bank: Bank, model: BagModel, cohort: str = "sim") -> list[SimBag]:
    """Draw the development bags (pool ``train``), then the test bags (pool ``test``)."""
    rng = np.random.default_rng(model.seed)
    sampler = _Sampler(bank, model, rng)
    bags = []
    for pool, n_bags, p_salient in (("train", model.n_train, model.salient_train),
                                    ("test", model.n_test, model.salient_test)):
        for i, label in enumerate(pool_labels(rng, n_bags, model.positive_fraction)):
            n = max(1, round(_log_uniform(rng, *model.bag_size)))
            kind = np.full(n, NEGATIVE, dtype=np.int8)
            if label:
                k = min(n, max(1, round(_log_uniform(rng, *model.witness_rate) * n)))
                kind[:k] = np.where(rng.random(k) < p_salient, SALIENT, SUBTLE)
            rest = kind == NEGATIVE
            kind[rest] = np.where(rng.random(int(rest.sum())) < model.hard_rate, HARD, NEGATIVE)
            kind = kind[rng.permutation(n)]
            coords = grid_coords(rng, n)
            bags.append(SimBag(f"{cohort}_{pool}_{i:04d}", int(label), pool, sampler.draw(kind), coords, kind))
    return bags


def bag_summary(bag: SimBag) -> dict:
    return {"slide": bag.slide, "case": bag.slide, "label_index": bag.label, "pool": bag.pool,
            "instances": len(bag.kind), "witnesses": int(bag.witness.sum()),
            "salient": int((bag.kind == SALIENT).sum()), "subtle": int((bag.kind == SUBTLE).sum()),
            "hard_negatives": int((bag.kind == HARD).sum())}


# --- files ----------------------------------------------------------------------------------------------------

def write_truth(path: str | os.PathLike, bags: list[SimBag], codes: dict[int, str] = KINDS) -> None:
    """One h5: a dataset ``kind`` (int8 per instance, ``codes`` in attribute ``codes``) per bag, in file order."""
    import h5py

    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.attrs["codes"] = ";".join(f"{k}={v}" for k, v in codes.items())
        for b in bags:
            f.create_dataset(b.slide, data=b.kind)


def read_truth(path: str | os.PathLike, slides: list[str] | None = None) -> dict[str, np.ndarray]:
    """``{slide: kind [N] int8}`` of a truth file (all slides, or ``slides``, each of which must be there)."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputError(path, "ground-truth file does not exist")
    try:
        with h5py.File(path, "r") as f:
            names = list(f.keys()) if slides is None else slides
            missing = [s for s in names if s not in f]
            if missing:
                raise InputError(path, f"no ground truth for {len(missing)} bag(s): {', '.join(missing[:5])}")
            return {s: np.asarray(f[s][()], dtype=np.int8) for s in names}
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"cannot read ground truth: {type(err).__name__}: {err}") from err


def write_manifest(path: str | os.PathLike, bags: list[SimBag], classes: list[str]) -> list[dict]:
    rows = [{**bag_summary(b), "label": classes[b.label]} for b in bags]
    with atomic_path(path, suffix=".tsv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(MANIFEST_FIELDS), delimiter="\t", lineterminator="\n",
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return rows


def simulated_splits(rows: list[dict], folds: int, seed: int, protocol: str, val_fraction: float = 0.2
                     ) -> list[dict]:
    """Splits rows (the project's long format) for manifest ``rows`` with a ``pool`` column (see the module
    docstring). Development bags of development fold ``k`` are not in fold ``k``'s rows at all."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    from hardmil.data.splits import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {PROTOCOLS}")
    pools = {p: [r for r in rows if r["pool"] == p] for p in ("train", "test")}
    parts = {}
    for pool, prs in pools.items():
        labels = np.array([r["label"] for r in prs])
        if len(set(labels)) < 2 or min(np.unique(labels, return_counts=True)[1]) < folds:
            raise ValueError(f"simulated: the {pool} pool's class counts are too small for {folds} folds")
        skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        parts[pool] = [idx for _, idx in skf.split(np.zeros(len(prs)), labels)]
    out = []
    for k in range(folds):
        train = [pools["train"][i] for j in range(folds) if j != k for i in parts["train"][j]]
        roles = [(r, "train") for r in train]
        if protocol == "clean":
            tr, va = train_test_split(train, test_size=val_fraction, stratify=[r["label"] for r in train],
                                      random_state=seed * 1000 + k)
            roles = [(r, "train") for r in tr] + [(r, "val") for r in va]
        roles += [(pools["test"][i], "test") for i in parts["test"][k]]
        out += [{"slide": r["slide"], "case": r["case"], "label": r["label"], "fold": k, "role": role}
                for r, role in roles]
    return out


def make_simulated(bank: Bank, model: BagModel, *, classes: list[str], features_dir: str | os.PathLike,
                   manifest: str | os.PathLike, truth: str | os.PathLike, summary: str | os.PathLike,
                   splits: dict[tuple[str, int], str] | None = None, folds: int = 4, val_fraction: float = 0.2,
                   cohort: str = "sim", provenance: dict | None = None) -> list[dict]:
    """Generate the cohort and write its features (one h5 per bag, TRIDENT layout), manifest, ground truth,
    summary JSON and, for each ``(protocol, seed)`` in ``splits``, the splits file at that path."""
    from hardmil.data.bags import write_features
    from hardmil.data.splits import write_splits

    if len(classes) != 2:
        raise ValueError(f"simulated: needs exactly two classes (negative, positive), got {classes}")
    bags = generate_bags(bank, model, cohort)
    Path(features_dir).mkdir(parents=True, exist_ok=True)
    for b in bags:
        write_features(Path(features_dir) / f"{b.slide}.h5", b.features, b.coords, source="simulated",
                       cohort=cohort, label=classes[b.label], pool=b.pool)
    rows = write_manifest(manifest, bags, classes)
    write_truth(truth, bags)
    for (protocol, seed), path in (splits or {}).items():
        write_splits(path, simulated_splits(rows, folds, seed, protocol, val_fraction))
    stats = {}
    for pool in ("train", "test"):
        pos = [b for b in bags if b.pool == pool and b.label]
        w = np.concatenate([b.kind[b.witness] for b in pos])
        stats[pool] = {"bags": sum(b.pool == pool for b in bags), "positive": len(pos),
                       "mean_instances": float(np.mean([len(b.kind) for b in bags if b.pool == pool])),
                       "mean_witness_rate": float(np.mean([b.witness.mean() for b in pos])),
                       "salient_share": float((w == SALIENT).mean()),
                       "positives_without_salient": float(np.mean([not (b.kind == SALIENT).any() for b in pos])),
                       "hard_negative_rate": float(np.mean([(b.kind == HARD).mean() for b in bags
                                                            if b.pool == pool]))}
    write_json(summary, {"model": asdict(model), "bank": bank.info, "classes": classes, "pools": stats,
                         "provenance": provenance or {}})
    log.info("simulated %s: %d bags; %s", cohort, len(bags), stats)
    return rows
