"""``hardmil predict``: a trained fold model (a run's ``model.pt``) applied to new bags.

Input: a features folder (TRIDENT / CLAM h5 or ``.pt``), or a bag store, and optionally a manifest naming the
slides (default: every features file of the folder / every slide of the store). Output: a predictions TSV (one
row per slide: per-class probabilities, the predicted class, with the fold's Youden threshold for two classes)
and, with ``attention``, an h5 holding each slide's attention weights and coordinates (``/{slide}/attention``,
``/{slide}/coords``) for heatmaps in other tools. Features are standardised with the training fold's statistics
stored in ``model.pt``; bags are read one at a time through the shared inference path.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from hardmil.checkpoint import load_model
from hardmil.data.bags import FEATURE_SUFFIXES, Bag, read_manifest_rows
from hardmil.data.bagset import BagSet
from hardmil.data.store import BagStore, open_bags
from hardmil.infer import infer, resolve_device
from hardmil.utils import InputError, atomic_path, check_distinct_paths, write_tsv

log = logging.getLogger(__name__)


def slides_of(source, manifest: str | os.PathLike | None) -> list[str]:
    if manifest:
        return [r["slide"] for r in read_manifest_rows(manifest, ("slide",))]
    if isinstance(source, BagStore):
        return list(source.slides)
    names = sorted({p.stem for p in Path(source.root).iterdir() if p.suffix in FEATURE_SUFFIXES})
    if not names:
        raise InputError(source.root, f"no features files ({', '.join(FEATURE_SUFFIXES)}) here")
    return names


def predict_bags(*, model_path: str | os.PathLike, features: str | os.PathLike, out: str | os.PathLike,
                 manifest: str | os.PathLike | None = None, attention: str | os.PathLike | None = None,
                 device: str = "auto") -> list[dict]:
    """Write the predictions TSV ``out`` (and the attention h5 ``attention``); returns the rows. An output path
    that is an input (or inside the features folder) or the other output is refused before anything is read."""
    check_distinct_paths({"--model": model_path, "--features": features, "--manifest": manifest},
                         {"--out": out, "--attention": attention})
    net, saved = load_model(model_path)
    if saved.get("task", "classification") != "classification":
        raise InputError(model_path, "hardmil predict handles classification models (survival: evaluate_external)")
    source = open_bags(features)
    names = slides_of(source, manifest)
    in_dim = saved["model_config"]["in_dim"]
    bags = [Bag.lazy(s, s, 0, source) for s in names]
    data = BagSet(bags, saved["feature_mean"], saved["feature_std"], device=resolve_device(device))
    if source.dim is not None and source.dim != in_dim:
        raise InputError(features, f"feature dimension {source.dim} != {in_dim} of the model {model_path}")
    classes, threshold = saved["classes"], saved.get("threshold")
    rows, maps = [], {}
    keep = ("attention",) if attention else ()
    for r in infer(net, data, keep=keep):
        probs = torch.softmax(torch.from_numpy(r.logits), -1).numpy()
        k = int(probs[1] >= threshold) if threshold is not None and len(classes) == 2 else int(np.argmax(probs))
        rows.append({"slide": names[r.index], **{f"prob_{c}": float(probs[j]) for j, c in enumerate(classes)},
                     "predicted": classes[k], "instances": data.sizes[r.index]})
        if attention and r.attention is not None:
            maps[names[r.index]] = r.attention
    write_tsv(out, rows)
    if attention:
        _write_attention(attention, maps, source)
    log.info("%s: %d slides predicted with %s", out, len(rows), model_path)
    return rows


def _write_attention(path, maps: dict[str, np.ndarray], source) -> None:
    import h5py

    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        for slide, att in maps.items():
            g = f.create_group(slide)
            g["attention"] = att.astype(np.float32)
            coords = source.coords(slide)
            if coords is not None:
                g["coords"] = coords
