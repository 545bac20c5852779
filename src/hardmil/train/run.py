"""Train and evaluate one fold: the body of the workflow's ``train`` rule.

Writes the run folder (docs/architecture.md#run-folders): ``model.pt`` (best epoch's weights, the feature
standardisation and the model config), ``history.tsv``, ``predictions.tsv``, ``metrics.json`` and ``config.yaml``.

Bags are read lazily from the dataset's bag store (or a features folder) and reach the model one at a time
(:class:`~hardmil.data.bagset.BagSet`); the standardisation statistics come from the store's per-slide moments.

Tasks: ``classification`` (one bag per slide, any number of classes) and ``survival`` (one bag per case,
``time_bins`` logits = discrete hazards, :mod:`hardmil.data.survival` and :mod:`hardmil.eval.survival`).
What is reported for C > 2 classes: see :mod:`hardmil.eval.metrics`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hardmil import __version__
from hardmil.checkpoint import RUN_FILES, load_model_file, save
from hardmil.data.bagset import BagSet, feature_stats
from hardmil.data.generated import read_generated
from hardmil.data.simulated import read_truth
from hardmil.data.splits import read_splits
from hardmil.data.store import BagStore, as_source, load_bags
from hardmil.data.survival import bin_edges, load_case_bags, set_bins
from hardmil.eval.evaluate import evaluate
from hardmil.eval.metrics import youden_threshold
from hardmil.infer import predict_proba, resolve_device
from hardmil.models import build_model
from hardmil.models.assessment import TeacherAssessment
from hardmil.models.base import init_input_layer
from hardmil.train.diagnostics import EpochStates, InstanceDiagnostics
from hardmil.train.loop import TrainConfig, config_digest, train
from hardmil.utils import InputError, git_commit, package_versions, seed_everything, write_json, write_tsv, write_yaml

__all__ = ["RUN_FILES", "FoldJob", "run_fold", "training_bags"]

log = logging.getLogger(__name__)
TASKS = ("classification", "survival")


@dataclass(frozen=True)
class FoldJob:
    """Where one fold reads and writes: built once by the workflow (``train_jobs``) and handed unchanged to
    every stage that reruns the fold (training, the efficiency measurement), so no input can be forgotten."""

    splits: str
    fold: int
    seed: int
    out_dir: str
    extra_bags: str | None = None
    confounders: str | None = None
    teacher: str | None = None
    init_from: str | None = None
    # not here: run_fold's ``truth`` (instance diagnostics) measures the run and changes nothing in it, so a rerun
    # of the fold (the efficiency measurement) leaves it out

    @classmethod
    def from_dict(cls, d: dict) -> FoldJob:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def inputs(self) -> dict:
        """The keyword arguments of :func:`run_fold` this job fixes (all but ``out_dir``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "out_dir"}


def _survival_bags(roles: dict[str, list[dict]], bag_source, time_bins: int, source) -> tuple[dict, np.ndarray]:
    """Lazy case bags per role, labelled with time bins from the training cases' uncensored times."""
    bags = {role: load_case_bags(rows, bag_source) for role, rows in roles.items() if rows}
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




def fold_seed(cfg: TrainConfig, seed: int, fold: int) -> int:
    """The seed a fold's run starts from: the repetition's seed for every fold (``fold_seeds: shared``, the
    reference's ``seed_torch(args.seed)`` at each fold start, ``main.py:207``) or ``seed * 1000 + fold``."""
    return seed if cfg.fold_seeds == "shared" else seed * 1000 + fold


def _fold_bags(roles: dict[str, list[dict]], source, classes: list[str]) -> dict[str, list]:
    return {role: load_bags(rows, source, classes) for role, rows in roles.items()}


def run_fold(*, splits: str | os.PathLike, features_dir: str | os.PathLike, classes: list[str], fold: int,
             protocol: str, seed: int, model: str, model_params: dict, train_cfg: dict, out_dir: str | os.PathLike,
             standardize: bool = False, threads: int = 1, progress: bool = True, on_epoch_end=None,
             extra_bags: str | os.PathLike | None = None, confounders: str | os.PathLike | None = None,
             teacher: str | os.PathLike | None = None, init_from: str | os.PathLike | None = None,
             provenance: dict | None = None, truth: str | os.PathLike | None = None,
             task: str = "classification", time_bins: int = 4) -> dict:
    """Train on the fold's training bags (plus ``extra_bags``, generated negative bags in an h5 written by
    :mod:`hardmil.mining.hardneg`), select on its selection set, evaluate once on its test bags.
    ``features_dir``: the dataset's bag store (:mod:`hardmil.data.store`) or a features folder.
    ``task='survival'``: case bags, ``time_bins`` discrete hazards, the splits carry time / event.
    ``confounders``: the fold's IBMIL dictionary (``.npy``, :mod:`hardmil.mining.confounders`);
    ``teacher``: the same fold's trained baseline ``model.pt`` that initialises an MHIM teacher;
    ``init_from``: the same fold's trained ``model.pt`` of the same model whose input layer initialises this one's;
    ``truth``: the dataset's instance ground truth (``source: simulated``, :func:`hardmil.data.simulated.read_truth`):
    per-epoch instance diagnostics on the selection set's positive bags, ``instance_diagnostics.tsv``
    (:mod:`hardmil.train.diagnostics`; written only then)."""
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
    source = as_source(features_dir)
    if isinstance(source, BagStore):
        source.check_fresh([r["slide"] for rows in roles.values() for r in rows])
    edges = None
    if task == "survival":
        if extra_bags:
            raise ValueError("generated (hard-negative) bags are a classification method; not for survival")
        bags, edges = _survival_bags(roles, source, time_bins, splits)
        n_outputs = time_bins
    else:
        bags = _fold_bags(roles, source, classes)
        n_outputs = len(classes)
    if source.dim is None:  # a features folder: the first training bag fixes the dimension every other must have
        source.dim = bags["train"][0].features.shape[1]
    in_dim = int(source.dim)
    generated = read_generated(extra_bags, expected_dim=in_dim) if extra_bags else []
    mean, std = feature_stats(bags["train"]) if standardize else (None, None)
    cfg = TrainConfig(**train_cfg)
    cfg = dataclasses.replace(cfg, seed=fold_seed(cfg, seed, fold))
    device = resolve_device(cfg.device)
    place = {"device": device, "placement": cfg.placement, "memory_share": cfg.memory_share}
    data = {role: BagSet(b, mean, std, **place) for role, b in bags.items() if role != "train"}
    data["train"] = BagSet(training_bags(bags, generated), mean, std, **place)
    log.info("fold %d: %d training bags (%d instances, %s), placement %s on %s", fold, len(data["train"]),
             sum(data["train"].sizes), type(source).__name__, data["train"].placement, device)

    seed_everything(cfg.seed)
    params = {**model_params, "in_dim": in_dim, "n_classes": n_outputs}
    centres = None
    if confounders:
        centres = np.load(confounders, allow_pickle=False)
        params["n_confounders"] = len(centres)
    net = build_model(model, **params)
    if net.needs_coords:
        missing = [bag for role_bags in bags.values() for bag in role_bags if bag.coords is None]
        if missing:
            raise InputError(missing[0].path, f"model {model!r} needs patch coordinates ('coords' dataset); "
                                              f"{len(missing)} bag(s) of this fold have none")
    if centres is not None:
        net.set_confounders(centres)
    if teacher:
        saved_teacher = load_model_file(teacher, "MHIM teacher")
        try:
            net.init_teacher(saved_teacher)
        except (ValueError, RuntimeError) as err:
            raise InputError(teacher, f"cannot initialise the MHIM teacher: {err}") from err
    if init_from:
        saved_init = load_model_file(init_from, "init_from model")
        try:
            init_input_layer(net, saved_init, model, in_dim)
        except (ValueError, RuntimeError, KeyError) as err:
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
    if truth:
        resolved["truth"] = str(truth)
    digest = config_digest(resolved, data["train"].ids, data["train"].sizes)
    assessment = net.assessment  # MHIM: the teacher's per-epoch statistics (None for other models)
    extra, diagnostics = assessment, None
    if truth:
        if task != "classification" or len(classes) != 2:
            raise InputError(truth, "instance diagnostics need a two-class classification dataset")
        diagnostics = InstanceDiagnostics(net, data[select_role], read_truth(truth, data[select_role].ids),
                                          amp=cfg.amp, source=truth)
        extra = EpochStates(**{k: v for k, v in (("assessment", assessment), ("diagnostics", diagnostics))
                                if v is not None})
    result = train(net, data["train"], data[select_role], cfg, checkpoint=out / "checkpoint.pt", digest=digest,
                   on_epoch_end=on_epoch_end, progress=progress, extra_state=extra)
    if diagnostics is not None:
        diagnostics.write(out / "instance_diagnostics.tsv")
    # a declared output of every training job: a header only for models without a teacher
    (assessment or TeacherAssessment()).write(out / "teacher_assessment.tsv")
    net.load_state_dict(result.best_state)

    threshold = None
    if task == "classification" and len(classes) == 2:
        threshold = float(youden_threshold(data[select_role].labels.numpy(),
                                           predict_proba(net, data[select_role], cfg.amp)[:, 1]))
    ev = dict(amp=cfg.amp, classes=classes, threshold=threshold, alpha=cfg.nll_alpha, fold=fold,
              epoch=result.best_epoch)
    metrics, pred_rows = evaluate(net, data["test"], **ev)
    select_metrics, _ = evaluate(net, data[select_role], **ev)
    selection_keys = ("c_index", "nll") if task == "survival" else ("auc", "balanced_accuracy")

    save(out / "model.pt", {"model": model, "model_config": dataclasses.asdict(net.cfg),
                            "state_dict": result.best_state, "feature_mean": mean, "feature_std": std,
                            "classes": list(classes), "epoch": result.best_epoch, "threshold": threshold,
                            "task": task, "bin_edges": edges, "nll_alpha": cfg.nll_alpha})
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
        "timing": {"seconds_per_epoch": result.seconds_per_epoch, "wall_seconds": time.perf_counter() - t0,
                   "seconds_to_first_step": None if result.first_step_at is None else result.first_step_at - t0},
    }
    write_json(out / "metrics.json", summary)
    write_yaml(out / "config.yaml", {**resolved, "hardmil_version": __version__, "git_commit": git_commit(),
                                     "torch": torch.__version__, "python": platform.python_version(),
                                     "packages": package_versions(), "device": str(device),
                                     "placement": data["train"].placement, "provenance": provenance or {}})
    (out / "checkpoint.pt").unlink(missing_ok=True)
    if task == "survival":
        log.info("fold %d: C-index %.3f at epoch %d", fold, metrics["c_index"], result.best_epoch)
    else:
        log.info("fold %d: AUC %.3f, accuracy %s at epoch %d", fold, metrics["auc"],
                 f"{metrics.get('accuracy', float('nan')):.3f}", result.best_epoch)
    return summary
