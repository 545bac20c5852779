"""Train and evaluate one fold: the body of the workflow's ``train`` rule.

Writes the run folder (docs/architecture.md#run-folders): ``model.pt`` (best epoch's weights, the feature
standardisation and the model config), ``history.tsv``, ``predictions.tsv``, ``metrics.json`` and ``config.yaml``.

Tasks: ``classification`` (one bag per slide, any number of classes) and ``survival`` (one bag per case,
``time_bins`` logits = discrete hazards, :mod:`hardmil.data.survival` and :mod:`hardmil.eval.survival`).
What is reported for C > 2 classes: see :mod:`hardmil.eval.metrics`.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from hardmil import __version__
from hardmil.data.bags import features_path, load_bags
from hardmil.data.splits import read_splits
from hardmil.data.survival import bin_edges, load_case_bags, set_bins
from hardmil.eval.metrics import classification_metrics, youden_threshold
from hardmil.eval.survival import hazards_and_survival, survival_metrics
from hardmil.models import build_model
from hardmil.models.base import init_input_layer
from hardmil.train.loop import Tensors, TrainConfig, config_digest, predict, predict_logits, resolve_device, train
from hardmil.utils import InputError, atomic_path, git_commit, seed_everything, write_json, write_yaml

log = logging.getLogger(__name__)

RUN_FILES = ("model.pt", "history.tsv", "predictions.tsv", "metrics.json", "config.yaml")
TASKS = ("classification", "survival")


def standardisation(bags) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over all training instances (std 0 -> 1)."""
    x = np.concatenate([b.features for b in bags]).astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def write_tsv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
            w.writeheader()
            w.writerows(rows)


def load_checkpoint(path: str | os.PathLike):
    """(model in eval mode, the whole saved dict) from a run's ``model.pt``."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    net = build_model(saved["model"], **saved["model_config"])
    net.load_state_dict(saved["state_dict"])
    return net.eval(), saved


def load_trained(path: str | os.PathLike):
    """(model in eval mode, feature mean, feature std) from a run's ``model.pt``."""
    net, saved = load_checkpoint(path)
    return net, saved["feature_mean"], saved["feature_std"]


def evaluate(net, data: Tensors, bags: list, device, amp: bool, *, classes: list[str] | None,
             threshold: float | None = None, alpha: float = 0.0, fold: int | None = None,
             epoch: int | None = None) -> tuple[dict, list[dict]]:
    """(metrics, predictions.tsv rows) of ``net`` on ``bags`` (already as ``data``).

    Classification: one row per slide with per-class probabilities. Survival: one row per case with
    time, event, time bin, risk and the per-bin hazards and survival."""
    rows = []
    if data.survival:
        logits = predict_logits(net, data, device, amp)
        times, events, bins = data.times.numpy(), data.events.numpy(), data.labels.numpy()
        metrics = survival_metrics(times, events, bins, logits, alpha)
        hazards, surv = hazards_and_survival(logits)
        risk = -surv.sum(axis=1)
        for i, b in enumerate(bags):
            rows.append({"case": b.case, "slides": ";".join(b.extra["slides"]), "time": b.extra["time"],
                         "event": b.extra["event"], "time_bin": int(bins[i]), "risk": float(risk[i]),
                         **{f"hazard_{k}": float(h) for k, h in enumerate(hazards[i])},
                         **{f"survival_{k}": float(v) for k, v in enumerate(surv[i])}, "fold": fold, "epoch": epoch})
        return metrics, rows
    probs = predict(net, data, device, amp)
    metrics = classification_metrics(data.labels.numpy(), probs, threshold)
    for i, b in enumerate(bags):
        rows.append({"slide": b.slide, "case": b.case, "label": classes[b.label], "label_index": int(b.label),
                     **{f"prob_{c}": float(probs[i, k]) for k, c in enumerate(classes)},
                     "fold": fold, "epoch": epoch})
    return metrics, rows


def _survival_bags(roles: dict[str, list[dict]], features_dir, time_bins: int, source) -> tuple[dict, np.ndarray]:
    """Case bags per role, labelled with time bins from the training cases' uncensored times."""
    bags: dict[str, list] = {}
    dim = None
    for role, rows in roles.items():
        if rows:
            bags[role] = load_case_bags(rows, features_dir, expected_dim=dim)
            dim = bags[role][0].features.shape[1]
    train = bags["train"]
    try:
        edges = bin_edges([b.extra["time"] for b in train], [b.extra["event"] for b in train], time_bins)
    except ValueError as err:
        raise InputError(source, f"training cases: {err}") from err
    for role_bags in bags.values():
        set_bins(role_bags, edges)
    log.info("time-bin edges from %d training cases: %s", len(train), np.round(edges, 3).tolist())
    return bags, edges


def training_bags(bags: dict[str, list], generated: list) -> list:
    """The bags a fold trains on: its own training bags, then any generated (hard-negative) bags."""
    return list(bags["train"]) + list(generated)


def run_fold(*, splits: str | os.PathLike, features_dir: str | os.PathLike, classes: list[str], fold: int,
             protocol: str, seed: int, model: str, model_params: dict, train_cfg: dict, out_dir: str | os.PathLike,
             standardize: bool = True, threads: int = 1, progress: bool = True, on_epoch_end=None,
             extra_bags: str | os.PathLike | None = None, confounders: str | os.PathLike | None = None,
             teacher: str | os.PathLike | None = None, init_from: str | os.PathLike | None = None,
             provenance: dict | None = None,
             task: str = "classification", time_bins: int = 4) -> dict:
    """Train on the fold's training bags (plus ``extra_bags``, generated negative bags in an h5 written by
    :mod:`hardmil.mining.hardneg`), select on its selection set, evaluate once on its test bags.
    ``task='survival'``: case bags, ``time_bins`` discrete hazards, the splits carry time / event.
    ``confounders``: the fold's IBMIL dictionary (``.npy``, :mod:`hardmil.mining.confounders`);
    ``teacher``: the same fold's trained baseline ``model.pt`` that initialises an MHIM teacher;
    ``init_from``: the same fold's trained ``model.pt`` of the same model whose input layer initialises this one's."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, threads))
    roles = read_splits(splits, fold)
    select_role = "test" if protocol == "paper" else "val"
    if not roles[select_role]:
        raise ValueError(f"{splits}: fold {fold} has no {select_role} bags for protocol {protocol!r}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {TASKS}")
    edges = None
    if task == "survival":
        if extra_bags:
            raise ValueError("generated (hard-negative) bags are a classification method; not for survival")
        bags, edges = _survival_bags(roles, features_dir, time_bins, splits)
        n_outputs = time_bins
    else:
        # one pass over all bags so that every file is checked against the same feature dimension
        ordered = [(role, row) for role, rows in roles.items() for row in rows]
        loaded = load_bags([row for _, row in ordered], features_dir, classes)
        bags = {}
        for (role, _), bag in zip(ordered, loaded, strict=True):
            bags.setdefault(role, []).append(bag)
        n_outputs = len(classes)
    generated = []
    if extra_bags:
        from hardmil.mining.hardneg import read_generated

        generated = read_generated(extra_bags, expected_dim=bags["train"][0].features.shape[1])
    mean, std = standardisation(bags["train"]) if standardize else (None, None)
    cfg = TrainConfig(**{**train_cfg, "seed": seed * 1000 + fold})
    pin = resolve_device(cfg.device).type == "cuda"
    data = {role: Tensors.from_bags(b, mean, std, pin=pin) for role, b in bags.items() if role != "train"}
    data["train"] = Tensors.from_bags(training_bags(bags, generated), mean, std, pin=pin)

    seed_everything(cfg.seed)
    in_dim = data["train"].features[0].shape[1]
    params = {**model_params, "in_dim": in_dim, "n_classes": n_outputs}
    centres = None
    if confounders:
        centres = np.load(confounders)
        params["n_confounders"] = len(centres)
    net = build_model(model, **params)
    if net.needs_coords:
        missing = [bag.slide for role_bags in bags.values() for bag in role_bags if bag.coords is None]
        if missing:
            raise InputError(features_path(features_dir, missing[0]),
                             f"model {model!r} needs patch coordinates ('coords' dataset); {len(missing)} bag(s) "
                             "of this fold have none")
    if centres is not None:
        net.set_confounders(centres)
    if teacher:
        try:
            net.init_teacher(torch.load(teacher, map_location="cpu", weights_only=False))
        except (ValueError, RuntimeError, OSError) as err:
            raise InputError(teacher, f"cannot initialise the MHIM teacher: {err}") from err
    if init_from:
        try:
            init_input_layer(net, torch.load(init_from, map_location="cpu", weights_only=False), model, in_dim)
        except (ValueError, RuntimeError, OSError, KeyError) as err:
            raise InputError(init_from, f"cannot initialise the input layer: {err}") from err
    resolved = {"model": model, "model_config": dataclasses.asdict(net.cfg), "train": dataclasses.asdict(cfg),
                "protocol": protocol, "fold": fold, "seed": seed, "classes": list(classes), "task": task,
                "time_bins": time_bins if task == "survival" else None,
                "standardize": standardize, "splits": str(splits), "features_dir": str(features_dir),
                "extra_bags": str(extra_bags) if extra_bags else None, "n_generated_bags": len(generated),
                "confounders": str(confounders) if confounders else None,
                "teacher": str(teacher) if teacher else None}
    if init_from:  # only when set, so the digests of existing runs stay as they were
        resolved["init_from"] = str(init_from)
    digest = config_digest(resolved, data["train"].ids, [len(f) for f in data["train"].features])
    from hardmil.report.assessment import TeacherAssessment

    # MHIM adds its teacher's per-bag scores (teacher_assessment.tsv); the other models leave it empty
    net.assessment = TeacherAssessment()

    def epoch_end(epoch: int) -> None:
        net.assessment.close_epoch(epoch)
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    result = train(net, data["train"], data[select_role], cfg, checkpoint=out / "checkpoint.pt", digest=digest,
                   on_epoch_end=epoch_end, progress=progress)
    if net.assessment.rows:
        write_tsv(out / "teacher_assessment.tsv", net.assessment.rows)
    net.load_state_dict(result.best_state)
    device = resolve_device(cfg.device)

    threshold = None
    if task == "classification" and len(classes) == 2:
        threshold = youden_threshold(data[select_role].labels.numpy(),
                                     predict(net, data[select_role], device, cfg.amp)[:, 1])
    ev = dict(classes=classes, threshold=threshold, alpha=cfg.nll_alpha, fold=fold, epoch=result.best_epoch)
    metrics, pred_rows = evaluate(net, data["test"], bags["test"], device, cfg.amp, **ev)
    select_metrics, _ = evaluate(net, data[select_role], bags[select_role], device, cfg.amp, **ev)
    selection_keys = ("c_index", "nll") if task == "survival" else ("auc", "balanced_accuracy")

    with atomic_path(out / "model.pt", suffix=".pt") as tmp:
        torch.save({"model": model, "model_config": dataclasses.asdict(net.cfg), "state_dict": result.best_state,
                    "feature_mean": mean, "feature_std": std, "classes": list(classes), "epoch": result.best_epoch,
                    "threshold": threshold, "task": task, "bin_edges": edges, "nll_alpha": cfg.nll_alpha}, tmp)
    write_tsv(out / "history.tsv", result.history)
    write_tsv(out / "predictions.tsv", pred_rows)
    summary = {
        **metrics,
        "selected_epoch": result.best_epoch, "epochs_run": len(result.history), "threshold": threshold,
        "threshold_chosen_on": select_role, "selection_set": select_role,
        "selection": {k: select_metrics[k] for k in selection_keys},
        # bags: slides, or cases for survival
        "n_train": len(bags["train"]), "n_train_generated": len(generated), "n_val": len(bags.get("val", [])),
        "n_test": len(bags["test"]),
        "n_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),  # trainable only
        # the only fields that differ between two runs of the same seed
        "timing": {"seconds_per_epoch": result.seconds_per_epoch, "wall_seconds": time.perf_counter() - t0},
    }
    write_json(out / "metrics.json", summary)
    write_yaml(out / "config.yaml", {**resolved, "hardmil_version": __version__, "git_commit": git_commit(),
                                     "torch": torch.__version__, "python": platform.python_version(),
                                     "device": str(device), "provenance": provenance or {}})
    (out / "checkpoint.pt").unlink(missing_ok=True)
    if task == "survival":
        log.info("fold %d: C-index %.3f at epoch %d", fold, metrics["c_index"], result.best_epoch)
    else:
        log.info("fold %d: AUC %.3f, accuracy %s at epoch %d", fold, metrics["auc"],
                 f"{metrics.get('accuracy', float('nan')):.3f}", result.best_epoch)
    return summary
