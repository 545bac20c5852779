"""Mine hard negatives with a fold's stage-1 model and write its generated bags (the ``hardneg`` rule)."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from hardmil.checkpoint import load_model
from hardmil.data.splits import read_splits
from hardmil.data.store import load_bags
from hardmil.mining.hardneg import (
    HardNegConfig,
    generate,
    mine,
    random_pool,
    rng_for,
    score_bags,
    write_generated,
    write_records,
)
from hardmil.utils import write_json

log = logging.getLogger(__name__)


def generate_fold(*, model_path: str | os.PathLike, splits: str | os.PathLike, features_dir: str | os.PathLike,
                  classes: list[str], fold: int, seed: int, variant: str, cfg: dict,
                  out_dir: str | os.PathLike) -> dict:
    """Write ``bags.h5``, ``mined.tsv`` (the false-positive bags and their eq. 3 instances) and
    ``summary.json`` into ``out_dir``."""
    hn = HardNegConfig(**cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = load_bags(read_splits(splits, fold)["train"], features_dir, classes)
    model, saved = load_model(model_path)
    mean, std = saved["feature_mean"], saved["feature_std"]
    probs, weights = score_bags(model, train, mean, std)
    hard, records = mine(probs, weights, train, hn.fp_threshold, hn.min_bags)
    rng = rng_for(seed, fold, variant)
    pool = hard if hn.pool == "hard" else random_pool(train, len(hard), rng)
    sizes = [len(b) for b in train]
    bags = generate(pool, hn, sizes, rng, seed=seed * 1000 + fold)
    n_neg = sum(b.label == 0 for b in train)
    summary = {"variant": variant, **dataclasses.asdict(hn), "n_train_bags": len(train), "n_negative_bags": n_neg,
               "n_false_positive_bags": sum(r["reason"] == "false_positive" for r in records),
               "n_mined_bags": len(records), "n_hard_negatives": len(hard), "n_pool": len(pool),
               "n_generated_bags": len(bags), "generated_sizes": [len(b) for b in bags],
               "train_size_mean": float(np.mean(sizes)), "train_size_std": float(np.std(sizes)),
               "stage1_model": str(model_path)}
    attrs = {k: v for k, v in summary.items() if not isinstance(v, list)}
    write_generated(out / "bags.h5", pool, bags, attrs)
    write_records(out / "mined.tsv", records)
    write_json(out / "summary.json", summary)
    if not bags:
        log.warning("fold %d: no false-positive training bags (of %d negatives): no bags generated", fold, n_neg)
    log.info("fold %d: %d false-positive bags (%d mined), %d hard negatives, %d %s bags from the %s pool", fold,
             summary["n_false_positive_bags"], len(records), len(hard), len(bags), hn.generator, hn.pool)
    return summary
