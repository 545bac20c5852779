"""IBMIL stage 2: the confounder dictionary of one fold = k-means centres of the bag embeddings that the
fold's trained aggregator gives its training bags (Lin et al., CVPR 2023).

As the IBMIL reference (its clustering script, faiss k-means): the embeddings are L2-normalised, clustered by
Lloyd's k-means with k random embeddings as the initial centres, 20 iterations, a fixed seed, and each
confounder is the mean of its cluster's embeddings in the *raw* (un-normalised) space. Deviation: scikit-learn's
k-means instead of faiss (the same algorithm; the random initial centres differ, so on data without a clear
cluster structure the dictionary is not identical to the one faiss would give), and a cluster left empty is an
error instead of faiss's split of a large one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from hardmil.checkpoint import load_model
from hardmil.data.bagset import BagSet
from hardmil.data.splits import read_splits
from hardmil.data.store import load_bags
from hardmil.data.survival import load_case_bags
from hardmil.infer import infer
from hardmil.utils import atomic_path, write_json

log = logging.getLogger(__name__)


def bag_embeddings(model, bags, mean, std) -> np.ndarray:
    """Bag embeddings ``[n, H]`` through the shared inference path."""
    out = []
    for r in infer(model, BagSet(bags, mean, std), keep=("embedding",)):
        if r.embedding is None:
            raise ValueError(f"model {type(model).__name__} gives no bag embedding; it cannot build confounders")
        out.append(r.embedding)
    return np.stack(out)


def confounder_centres(emb: np.ndarray, k: int, seed: int, iterations: int = 20) -> np.ndarray:
    """IBMIL's dictionary: k-means (``iterations`` Lloyd steps, ``k`` random embeddings as the initial centres,
    ``seed``) on the L2-normalised embeddings [M, H]; each centre is its cluster's mean *raw* embedding [k, H]."""
    from sklearn.cluster import KMeans

    emb = np.asarray(emb, dtype=np.float32)
    if not 1 <= k <= len(np.unique(emb, axis=0)):
        raise ValueError(f"k-means with {k} clusters needs at least {k} distinct bag embeddings, "
                         f"got {len(np.unique(emb, axis=0))}")
    unit = emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-10)
    km = KMeans(n_clusters=k, init="random", n_init=1, max_iter=iterations, tol=0.0, random_state=seed)
    labels = km.fit_predict(unit.astype(np.float64))
    if len(np.unique(labels)) < k:
        raise ValueError(f"k-means left {k - len(np.unique(labels))} of {k} clusters empty")
    return np.stack([emb[labels == c].mean(axis=0) for c in range(k)])


def build_confounders(*, model_path: str | os.PathLike, splits: str | os.PathLike,
                      features_dir: str | os.PathLike, classes: list[str], fold: int, seed: int, clusters: int,
                      out_dir: str | os.PathLike) -> np.ndarray:
    """Write ``confounders.npy`` [K, H] and ``summary.json`` into ``out_dir``."""
    rows = read_splits(splits, fold)["train"]
    if rows and "event" in rows[0]:  # survival splits: the training cases' bags
        train = load_case_bags(rows, features_dir)
    else:
        train = load_bags(rows, features_dir, classes)
    model, saved = load_model(model_path)
    mean, std = saved["feature_mean"], saved["feature_std"]
    emb = bag_embeddings(model, train, mean, std)
    k = min(clusters, len(np.unique(emb, axis=0)))
    centres = confounder_centres(emb, k, seed * 1000 + fold)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "confounders.npy", suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, centres.astype(np.float32))
    write_json(out / "summary.json", {"clusters": k, "n_train_bags": len(train), "embedding_dim": emb.shape[1],
                                      "aggregator": str(model_path), "fold": fold, "seed": seed})
    log.info("fold %d: %d confounders from %d training bags of %s", fold, k, len(train), model_path)
    return centres
