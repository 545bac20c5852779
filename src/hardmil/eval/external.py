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

from hardmil.checkpoint import load_model
from hardmil.data.bags import read_manifest
from hardmil.data.bagset import BagSet
from hardmil.data.store import as_source, load_bags
from hardmil.data.survival import load_case_bags, read_survival_manifest, set_bins
from hardmil.eval.evaluate import evaluate
from hardmil.infer import resolve_device
from hardmil.utils import InputError, write_json, write_tsv

log = logging.getLogger(__name__)


def evaluate_external(*, model_path: str | os.PathLike, manifest: str | os.PathLike,
                      features_dir: str | os.PathLike, out_dir: str | os.PathLike, task: str = "classification",
                      classes: list[str] | None = None, device: str = "auto", threads: int = 1) -> dict:
    """Evaluate ``model_path`` on every bag of the external dataset (``manifest`` + ``features_dir``)."""
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, threads))
    net, saved = load_model(model_path)
    trained_task = saved.get("task", "classification")
    if trained_task != task:
        raise InputError(manifest, f"external dataset is a {task} task but {model_path} was trained for {trained_task}")
    if task == "classification" and list(saved["classes"]) != list(classes or []):
        raise InputError(manifest, f"classes {classes} differ from the training classes {saved['classes']} "
                                   f"of {model_path}")
    in_dim = saved["model_config"]["in_dim"]
    source = as_source(features_dir)
    if task == "survival":
        rows, _ = read_survival_manifest(manifest)
        bags = load_case_bags(rows, source)
        set_bins(bags, saved["bin_edges"])
    else:
        rows = read_manifest(manifest, saved["classes"])
        bags = load_bags(rows, source, saved["classes"])
    dim = source.dim if source.dim is not None else bags[0].features.shape[1]
    if dim != in_dim:
        raise InputError(features_dir, f"feature dimension {dim} != {in_dim} of the model trained in {model_path}")
    source.dim = dim
    dev = resolve_device(device)
    data = BagSet(bags, saved["feature_mean"], saved["feature_std"], device=dev)
    metrics, pred_rows = evaluate(net, data, amp=dev.type == "cuda", classes=saved["classes"],
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
