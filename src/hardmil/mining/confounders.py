"""IBMIL stage 2: the confounder dictionary of one fold = k-means centres of the bag embeddings that the
fold's trained aggregator gives its training bags (Lin et al., CVPR 2023)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from hardmil.checkpoint import load_model
from hardmil.data.bags import load_bags
from hardmil.data.bagset import BagSet
from hardmil.data.splits import read_splits
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


def build_confounders(*, model_path: str | os.PathLike, splits: str | os.PathLike,
                      features_dir: str | os.PathLike, classes: list[str], fold: int, seed: int, clusters: int,
                      out_dir: str | os.PathLike) -> np.ndarray:
    """Write ``confounders.npy`` [K, H] and ``summary.json`` into ``out_dir``."""
    from sklearn.cluster import KMeans

    rows = read_splits(splits, fold)["train"]
    if rows and "event" in rows[0]:  # survival splits: the training cases' bags
        train = load_case_bags(rows, features_dir)
    else:
        train = load_bags(rows, features_dir, classes)
    model, saved = load_model(model_path)
    mean, std = saved["feature_mean"], saved["feature_std"]
    emb = bag_embeddings(model, train, mean, std)
    k = min(clusters, len(emb))
    centres = KMeans(n_clusters=k, n_init=10, random_state=seed * 1000 + fold).fit(emb).cluster_centers_
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "confounders.npy", suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, centres.astype(np.float32))
    write_json(out / "summary.json", {"clusters": k, "n_train_bags": len(train), "embedding_dim": emb.shape[1],
                                      "aggregator": str(model_path), "fold": fold, "seed": seed})
    log.info("fold %d: %d confounders from %d training bags of %s", fold, k, len(train), model_path)
    return centres
