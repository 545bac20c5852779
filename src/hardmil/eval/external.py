"""Cross-source evaluation (Tang et al. MHIM-v2 Table 5): a fold's trained model tested on another dataset.

The model of one cross-validation fold (``model.pt`` of the run folder) is applied, without any
retraining or re-calibration, to every bag of an external dataset: the features are z-scored with the
*training fold's* statistics stored in ``model.pt``, a binary task uses the Youden threshold chosen on
that fold's selection set, and a survival task bins the external times with the training fold's edges
(the bins only enter the reported NLL; the C-index uses the raw times). The paper tests TCGA-trained
models on CPTAC this way: CPTAC-NSCLC (AUC) and CPTAC-LUAD (C-index).

Writes ``predictions.tsv`` and ``metrics.json`` (same columns and keys as a run folder,
docs/architecture.md#run-folders).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from hardmil.data.bags import load_bags, read_manifest
from hardmil.data.survival import load_case_bags, read_survival_manifest, set_bins
from hardmil.train.loop import Tensors, resolve_device
from hardmil.train.run import evaluate, load_checkpoint, write_tsv
from hardmil.utils import InputError, write_json

log = logging.getLogger(__name__)


def evaluate_external(*, model_path: str | os.PathLike, manifest: str | os.PathLike,
                      features_dir: str | os.PathLike, out_dir: str | os.PathLike, task: str = "classification",
                      classes: list[str] | None = None, device: str = "auto", threads: int = 1) -> dict:
    """Evaluate ``model_path`` on every bag of the external dataset (``manifest`` + ``features_dir``)."""
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, threads))
    try:
        net, saved = load_checkpoint(model_path)
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        raise InputError(model_path, f"cannot load the trained model: {err}") from err
    trained_task = saved.get("task", "classification")
    if trained_task != task:
        raise InputError(manifest, f"external dataset is a {task} task but {model_path} was trained for {trained_task}")
    if task == "classification" and list(saved["classes"]) != list(classes or []):
        raise InputError(manifest, f"classes {classes} differ from the training classes {saved['classes']} "
                                   f"of {model_path}")
    in_dim = saved["model_config"]["in_dim"]
    if task == "survival":
        rows, _ = read_survival_manifest(manifest)
        bags = load_case_bags(rows, features_dir, expected_dim=in_dim)
        set_bins(bags, saved["bin_edges"])
    else:
        rows = read_manifest(manifest, saved["classes"])
        bags = load_bags(rows, features_dir, saved["classes"])
        if bags[0].features.shape[1] != in_dim:
            raise InputError(features_dir, f"feature dimension {bags[0].features.shape[1]} != {in_dim} of the "
                                           f"model trained in {model_path}")
    dev = resolve_device(device)
    data = Tensors.from_bags(bags, saved["feature_mean"], saved["feature_std"], pin=dev.type == "cuda")
    net.to(dev)
    metrics, pred_rows = evaluate(net, data, bags, dev, dev.type == "cuda", classes=saved["classes"],
                                  threshold=saved.get("threshold"), alpha=saved.get("nll_alpha", 0.0),
                                  epoch=saved["epoch"])
    out = Path(out_dir)
    write_tsv(out / "predictions.tsv", pred_rows)
    summary = {**metrics, "model": str(model_path), "selected_epoch": saved["epoch"],
               "threshold": saved.get("threshold"), "n_test": len(bags), "external_manifest": str(manifest),
               "timing": {"wall_seconds": time.perf_counter() - t0}}
    write_json(out / "metrics.json", summary)
    key = "c_index" if task == "survival" else "auc"
    log.info("external %s: %s %.3f on %d bags", out, key, metrics[key], len(bags))
    return summary
