"""One plain, readable training loop for every plain-trained MIL model.

One bag per step; Adam with L2 weight decay; cosine learning rate stepped per epoch; after every epoch
the model is scored on the protocol's selection set, the best epoch's weights are kept, and a checkpoint
(model, optimiser, scheduler, RNG, history, early-stopping state) is written so that a killed job
resumes and ends bit-identical to an uninterrupted run. Shuffling uses a generator seeded by
(seed, epoch), so the order of bags never depends on what ran before.

The recipe is the MHIM-MIL reference trainer's (DearCaat/MHIM-MIL ``main.py``, ``train_utils.py``, ``utils.py``);
element by element, with the reference's file and line and every declared difference: docs/recipe.md.
* Selection (``main.py:338``): an epoch replaces the kept one only on a strict improvement of the selection
  score, so a tie keeps the earlier epoch (``selection_ties: earliest``; ``loss`` breaks a tie by the lower
  selection loss, this project's rule before 0.2).
* Early stopping (``utils.py:252-268``): an epoch whose score is strictly worse than the best counts against
  ``patience``; an equal score resets the count (``patience_ties: reset``; ``count`` counts it). Training ends
  after ``patience`` such epochs, but not before epoch index ``min_epochs`` (the reference's ``max_epoch`` M is
  ``min_epochs`` M + 2: it may stop after validating epoch M + 1).
* Score (``options.py:338-339``, ``selection_metric: auto``): AUC for two classes, balanced (macro) accuracy at
  argmax for more, the C-index for survival.
* Schedule (``train_utils.py:77``): timm's per-epoch cosine from ``lr`` to ``min_lr`` over ``epochs`` without
  warm-up, which is ``CosineAnnealingLR`` epoch for epoch (tests/test_recipe.py checks the closed form).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torch import Tensor, nn
from tqdm import tqdm

from hardmil.checkpoint import load, save
from hardmil.data.bagset import BagSet
from hardmil.eval.metrics import auc
from hardmil.eval.survival import c_index, nll_survival_loss, risk_scores
from hardmil.infer import autocast, predict_logits, resolve_device
from hardmil.models.base import MILModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200  # MHIM-MIL feat_cls.yaml num_epoch
    lr: float = 2e-4  # MHIM-MIL
    weight_decay: float = 1e-5  # MHIM-MIL (L2 inside Adam)
    min_lr: float = 1e-7  # MHIM-MIL cosine floor
    patience: int = 20  # MHIM-MIL option default
    min_epochs: int = 0  # earliest epoch at which early stopping may end training
    selection_metric: str = "auto"  # 'auto' | 'auc' (survival: C-index) | 'balanced_accuracy' | 'loss'
    selection_ties: str = "earliest"  # 'earliest' (the reference) | 'loss' (the lower selection loss wins a tie)
    patience_ties: str = "reset"  # 'reset' (the reference: a tie with the best resets patience) | 'count'
    fold_seeds: str = "shared"  # 'shared' (the reference: every fold starts from the seed) | 'distinct'
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda' | 'cuda:N'
    amp: bool = True  # bf16 autocast when on CUDA; ignored on CPU
    seed: int = 0
    nll_alpha: float = 0.0  # survival: weight of the uncensored term in the discrete-time NLL (MHIM-MIL: 0)
    placement: str = "auto"  # where bags live: 'auto' | 'stream' | 'resident' (hardmil.data.bagset)
    memory_share: float = 0.5  # CUDA: the share of free device memory a resident fold may take


@dataclass
class TrainResult:
    best_state: dict
    best_epoch: int
    history: list[dict]
    seconds_per_epoch: float
    first_step_at: float | None = None  # time.perf_counter() when this process finished its first training step


def make_adam(model: nn.Module, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with L2 weight decay; the fused kernel where torch has it (2.5x faster per bag on CPU here)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):  # older torch or a device without the fused kernel
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def bag_loss(logits: Tensor, data: BagSet, index: slice, alpha: float = 0.0) -> Tensor:
    """The bag loss of ``data``'s bags ``index``: cross-entropy, or the discrete-time NLL for survival."""
    y = data.labels[index].to(logits.device)
    if data.survival:
        return nll_survival_loss(logits, y, data.events[index].to(logits.device), alpha)
    return F.cross_entropy(logits.float(), y)


def selection_key(cfg: TrainConfig, scores: dict[str, float]) -> str:
    """The history column an epoch is selected on, given the selection set's ``scores`` (:func:`_score`):
    ``select_loss``, ``select_auc``, ``select_c_index`` or ``select_balanced_accuracy``. ``auto`` is the
    reference's rule (``options.py:338-339``): balanced accuracy for more than two classes, else AUC / C-index."""
    metric = cfg.selection_metric
    if metric == "auto":
        metric = "balanced_accuracy" if "balanced_accuracy" in scores else "auc"
    if metric == "auc":
        metric = "c_index" if "c_index" in scores else "auc"
    if metric not in scores:
        raise ValueError(f"selection_metric {cfg.selection_metric!r} is not defined for this task "
                         f"(selection scores: {sorted(scores)})")
    return f"select_{metric}"


def _score(model, data: BagSet, device, amp, alpha: float = 0.0) -> dict[str, float]:
    """The selection set's loss and scores: cross-entropy, AUC and balanced accuracy at argmax or, for survival,
    the NLL and the C-index."""
    logits = predict_logits(model, data, amp)
    loss = bag_loss(torch.from_numpy(logits), data, slice(None), alpha).item()
    if data.survival:
        return {"loss": loss, "c_index": c_index(data.times.numpy(), data.events.numpy(), risk_scores(logits))}
    y = data.labels.numpy()
    out = {"loss": loss, "auc": auc(y, torch.softmax(torch.from_numpy(logits), dim=-1).numpy())}
    if logits.shape[1] > 2:
        # at argmax, as hardmil.eval.metrics reports it (scikit-learn; the reference's torchmetrics macro accuracy)
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, logits.argmax(axis=1)))
    return out


def _better(cfg: TrainConfig, loss: float, score: float, best: dict | None) -> bool:
    """Does this epoch replace the kept one? ``score`` is higher-is-better (the negated loss under 'loss')."""
    if best is None:
        return True
    if np.isnan(score):
        return np.isnan(best["score"]) and loss < best["loss"]
    tie_to_loss = cfg.selection_ties == "loss" and cfg.selection_metric != "loss"
    return score > best["score"] or (tie_to_loss and score == best["score"] and loss < best["loss"])


def _patience_after(cfg: TrainConfig, improved: bool, score: float, best_score: float | None, bad: int) -> int:
    """The early-stopping count after an epoch (the reference's ``EarlyStopping.__call__``)."""
    if improved or (cfg.patience_ties == "reset" and score == best_score):
        return 0
    return bad + 1


def config_digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train(model: nn.Module, train_data: BagSet, select_data: BagSet, cfg: TrainConfig,
          checkpoint: str | os.PathLike | None = None, digest: str = "",
          on_epoch_end: Callable[[int], None] | None = None, progress: bool = True,
          extra_state=None) -> TrainResult:
    """Train ``model`` and return the best epoch's weights (chosen on ``select_data``) and the history.

    If ``checkpoint`` exists and carries the same ``digest`` (a hash of everything that defines the
    run), training resumes from it; otherwise it starts fresh. ``extra_state`` (an object with
    ``close_epoch(epoch)``, ``state_dict()`` and ``load_state_dict()``, e.g. MHIM's teacher assessment) is closed
    after every epoch and travels in the checkpoint.
    """
    device = resolve_device(cfg.device)
    model.to(device)
    opt = make_adam(model, cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.min_lr)
    state = {"epoch": 0, "history": [], "best": None, "best_state": None, "bad_epochs": 0, "seconds": 0.0}
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        saved = load(ckpt, "training checkpoint")
        if saved.get("digest") == digest:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            torch.set_rng_state(saved["torch_rng"])
            if saved.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(saved["cuda_rng"])
            state = saved["loop"]
            if extra_state is not None and saved.get("extra") is not None:
                extra_state.load_state_dict(saved["extra"])
            log.info("resumed from %s at epoch %d", ckpt, state["epoch"])
        else:
            log.warning("%s belongs to another configuration; starting fresh", ckpt)

    n = len(train_data)
    first_step_at = None
    for m in model.modules():  # survival: the time bin is no class; CLAM / DSMIL / DTFD (also inside MHIM) then
        if isinstance(m, MILModel):  # treat their class-label auxiliary losses as the MHIM-MIL reference
            m.survival_task = train_data.survival
    model.set_schedule(cfg.epochs * n)  # per-iteration schedules (MHIM's mask ratio and EMA momentum)
    epochs = range(state["epoch"], cfg.epochs)
    bar = tqdm(epochs, desc="epochs", unit="ep", disable=not progress, initial=state["epoch"], total=cfg.epochs)
    for epoch in bar:
        if state["bad_epochs"] >= cfg.patience and epoch >= cfg.min_epochs:
            break
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        total = 0.0
        for i, x, coords in train_data.iterate(order.tolist()):
            y = train_data.labels[i : i + 1].to(device)
            opt.zero_grad(set_to_none=True)
            with autocast(device, cfg.amp):
                out = model(x, None, label=y, coords=coords)
                main_loss = out.bag_loss_weight * bag_loss(out.logits, train_data, slice(i, i + 1), cfg.nll_alpha)
                for weight, aux in out.aux_logits.values():
                    main_loss = main_loss + weight * bag_loss(aux, train_data, slice(i, i + 1), cfg.nll_alpha)
            loss = model.training_step(out, main_loss)  # backward (DTFD: its own order of two tiers)
            opt.step()
            model.after_step()  # e.g. MHIM's teacher EMA update
            total += float(loss.item())
            if first_step_at is None:
                first_step_at = time.perf_counter()
        sched.step()
        state["seconds"] += time.perf_counter() - start
        scores = _score(model, select_data, device, cfg.amp, cfg.nll_alpha)
        row = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "train_loss": total / n,
               **{f"select_{k}": float(v) for k, v in scores.items()}}
        sel_loss = row["select_loss"]
        key = selection_key(cfg, scores)
        sel_score = -sel_loss if key == "select_loss" else row[key]
        best_score = None if state["best"] is None else state["best"]["score"]
        improved = _better(cfg, sel_loss, sel_score, state["best"])
        state["bad_epochs"] = _patience_after(cfg, improved, sel_score, best_score, state["bad_epochs"])
        if improved:
            state["best"] = {"epoch": epoch, "loss": sel_loss, "score": sel_score}
            state["best_state"] = copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})
        state["history"].append(row)
        state["epoch"] = epoch + 1
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", sel_score=f"{sel_score:.3f}", best=state["best"]["epoch"])
        if extra_state is not None:
            extra_state.close_epoch(epoch)
        if ckpt is not None:
            _save_checkpoint(ckpt, model, opt, sched, state, digest,
                             None if extra_state is None else extra_state.state_dict())
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    bar.close()
    done = max(len(state["history"]), 1)
    return TrainResult(state["best_state"], state["best"]["epoch"], state["history"], state["seconds"] / done,
                       first_step_at)


def _save_checkpoint(path: Path, model, opt, sched, state: dict, digest: str, extra: dict | None = None) -> None:
    payload = {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "loop": state, "digest": digest, "extra": extra,
    }
    save(path, payload)


