"""Li et al. (MICCAI 2019) hard-negative mining and bag generation, sec. 3.0.2-3.0.3.

1. Run the stage-1 model on the fold's training bags; the *false-positive bags* are negative bags (class 0)
   whose probability of not being negative is >= ``fp_threshold`` (0.5: the argmax for two classes).
2. Eq. (3): in each false-positive bag, the hard negatives are the instances with attention weight
   ``w >= mean(w) + std(w)`` (population std over the bag).
3. Generate negative bags from the pooled hard negatives:
   * ``sb``: one bag holding every hard negative;
   * ``mb``: ``n_bags`` bags, each a uniform random sample of the pool;
   * ``fmb``: k-means (scikit-learn) of the pool into ``clusters`` groups; each bag draws cluster j with
     probability N_j / sum(N) and takes an instance of it not yet in the bag.
   MB and FMB bag sizes are Gaussian with the mean and std of the training bag sizes, rounded and clipped
   to their min and max (the paper specifies this for FMB; we use it for MB too so the two differ only in
   how instances are chosen).
4. ``pool='random'`` replaces the hard negatives by as many instances drawn uniformly from all instances of
   the negative training bags: the referee's falsification control.

Note on FMB: drawing cluster j with probability N_j / N and then a uniform member of it gives every pooled
instance probability 1/N, the same as uniform sampling; FMB differs from MB only through sampling without
replacement inside a cluster (bags spread over clusters a little more evenly). The table shows whether that
matters.
"""

from __future__ import annotations

import csv
import logging
import os
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from hardmil.data.bags import Bag
from hardmil.data.generated import read_generated  # noqa: F401  (re-exported: the reader of write_generated)
from hardmil.utils import atomic_path

log = logging.getLogger(__name__)

GENERATORS = ("sb", "mb", "fmb")
POOLS = ("hard", "random")


@dataclass(frozen=True)
class HardNegConfig:
    generator: str = "fmb"
    pool: str = "hard"
    n_bags: int = 10  # MB / FMB: number of generated bags (not given in the paper)
    clusters: int = 5  # FMB: c (not given in the paper)
    fp_threshold: float = 0.5
    # Deviation, off by default: if fewer than min_bags negative training bags are false positives, the
    # negative bags with the highest P(not negative) fill up to min_bags (a model that fits its training
    # set has no false-positive training bags, and eq. 3 then has nothing to mine).
    min_bags: int = 0

    def __post_init__(self):
        if self.generator not in GENERATORS:
            raise ValueError(f"unknown generator {self.generator!r}; valid: {GENERATORS}")
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; valid: {POOLS}")


@dataclass
class Pool:
    """Instances to build bags from: raw features and where each came from."""

    features: np.ndarray
    slides: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.slides)


def select_hard(weights: np.ndarray) -> np.ndarray:
    """Eq. (3): indices of instances with weight >= mean + std of their bag (population std)."""
    w = np.asarray(weights, dtype=np.float64)
    return np.flatnonzero(w >= w.mean() + w.std() - 1e-12)


def score_bags(model, bags: list[Bag], mean: np.ndarray | None, std: np.ndarray | None, device: str = "cpu"):
    """(probabilities [n, C], attention weights per bag) from the model in eval mode (the shared inference path)."""
    from hardmil.data.bagset import BagSet
    from hardmil.infer import infer

    probs, weights = [], []
    for r in infer(model, BagSet(bags, mean, std, device=device), keep=("attention",)):
        if r.attention is None:
            raise ValueError(f"model {type(model).__name__} exposes no attention; it cannot mine hard negatives")
        probs.append(torch.softmax(torch.from_numpy(r.logits), -1).numpy())
        weights.append(r.attention)
    return np.stack(probs), weights


def mine(probs: np.ndarray, weights: list[np.ndarray], bags: list[Bag], fp_threshold: float = 0.5,
         min_bags: int = 0):
    """Return (pool of hard negatives, per-bag records of the mined bags).

    Mined bags are the false positives (negative bags with P(not negative) >= ``fp_threshold``), topped up
    to ``min_bags`` with the most positive-looking remaining negative bags (``reason`` says which).
    """
    negatives = sorted((i for i, b in enumerate(bags) if b.label == 0), key=lambda i: -(1.0 - probs[i][0]))
    chosen = [(i, "false_positive") for i in negatives if 1.0 - probs[i][0] >= fp_threshold]
    extra = [i for i in negatives if 1.0 - probs[i][0] < fp_threshold][: max(0, min_bags - len(chosen))]
    chosen += [(i, "hardest_negative") for i in extra]
    feats, slides, indices, records = [], [], [], []
    for i, reason in chosen:
        b, p, w = bags[i], probs[i], weights[i]
        hard = select_hard(w)
        feats.append(b.features[hard])
        slides += [b.slide] * len(hard)
        indices += hard.tolist()
        records.append({"slide": b.slide, "reason": reason, "prob_not_negative": float(1.0 - p[0]),
                        "n_instances": len(b),
                        "n_hard": len(hard), "hard_indices": ",".join(map(str, hard.tolist()))})
    dim = bags[0].features.shape[1]
    pool = Pool(np.concatenate(feats) if feats else np.zeros((0, dim), np.float32), slides, indices)
    return pool, records


def random_pool(bags: list[Bag], size: int, rng: np.random.Generator) -> Pool:
    """``size`` instances drawn uniformly, without replacement, from all instances of the negative bags
    (each bag read once)."""
    negatives = [b for b in bags if b.label == 0]
    counts = np.array([len(b) for b in negatives], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    pick = np.sort(rng.choice(int(starts[-1]), size=min(size, int(starts[-1])), replace=False))
    dim = negatives[0].features.shape[1] if negatives else bags[0].features.shape[1]
    feats, slides, indices = [np.zeros((0, dim), np.float32)], [], []
    owner = np.searchsorted(starts, pick, side="right") - 1
    for k in np.unique(owner):
        local = pick[owner == k] - starts[k]
        b = negatives[k]
        feats.append(np.asarray(b.features[local], dtype=np.float32))
        slides += [b.slide] * len(local)
        indices += local.tolist()
    return Pool(np.concatenate(feats), slides, indices)


def bag_sizes(train_sizes: list[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian sizes with the training bags' mean and std, rounded and clipped to their min and max."""
    s = np.asarray(train_sizes, dtype=np.float64)
    raw = rng.normal(s.mean(), s.std(), size=n)
    return np.clip(np.rint(raw), s.min(), s.max()).astype(int)


def generate(pool: Pool, cfg: HardNegConfig, train_sizes: list[int], rng: np.random.Generator,
             seed: int = 0) -> list[np.ndarray]:
    """Index arrays into ``pool``, one per generated bag."""
    m = len(pool)
    if m == 0:
        return []
    if cfg.generator == "sb":
        return [np.arange(m)]
    sizes = bag_sizes(train_sizes, cfg.n_bags, rng)
    if cfg.generator == "mb":
        return [rng.choice(m, size=k, replace=k > m) for k in sizes]
    from sklearn.cluster import KMeans

    c = min(cfg.clusters, m)
    labels = KMeans(n_clusters=c, n_init=10, random_state=seed).fit_predict(pool.features) if c > 1 else \
        np.zeros(m, dtype=int)
    members = [np.flatnonzero(labels == j) for j in range(c)]
    p = np.array([len(g) for g in members], dtype=np.float64) / m
    out = []
    for k in sizes:
        used: list[set[int]] = [set() for _ in range(c)]
        bag = []
        for j in rng.choice(c, size=k, p=p):
            free = [i for i in members[j] if i not in used[j]] or list(members[j])
            i = int(rng.choice(free))
            used[j].add(i)
            bag.append(i)
        out.append(np.asarray(bag, dtype=int))
    return out


def rng_for(seed: int, fold: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, fold, zlib.crc32(name.encode())])


def write_generated(path: str | os.PathLike, pool: Pool, bags: list[np.ndarray], attrs: dict | None = None) -> None:
    """bags.h5: ``features`` [sum N, D], ``offsets`` [n+1], ``source_slide`` / ``source_index`` per instance."""
    import h5py

    idx = np.concatenate(bags) if bags else np.zeros(0, dtype=int)
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in bags])]).astype(np.int64)
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f["features"] = pool.features[idx].astype(np.float32).reshape(len(idx), pool.features.shape[1])
            f["offsets"] = offsets
            f["source_slide"] = np.array([pool.slides[i] for i in idx], dtype=object).astype("S")
            f["source_index"] = np.array([pool.indices[i] for i in idx], dtype=np.int64)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v


def write_records(path: str | os.PathLike, records: list[dict]) -> None:
    cols = ["slide", "reason", "prob_not_negative", "n_instances", "n_hard", "hard_indices"]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, delimiter="\t", lineterminator="\n")
            w.writeheader()
            w.writerows(records)
