"""Run folders and checkpoints: the files a training job leaves, and the one way to save and load them.

A run folder (``results/runs/{dataset}/{encoder}/{method}/{protocol}/seed{seed}/fold{fold}/``) holds
:data:`RUN_FILES`; ``checkpoint.pt`` exists only while its job runs (resume after a kill).

Every ``.pt`` this project writes holds only tensors, plain containers, strings and numbers, so every load is
``torch.load(weights_only=True)``: a checkpoint from elsewhere (a teacher, ``init_from``) cannot run code.
Saved through an open file handle, so the archive's internal name is fixed and identical content gives
identical bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from hardmil.models import build_model
from hardmil.utils import InputError, save_torch

RUN_FILES = ("model.pt", "history.tsv", "predictions.tsv", "metrics.json", "config.yaml")
MODEL_KEYS = ("model", "model_config", "state_dict")


def plain(obj):
    """``obj`` with numpy arrays as tensors and numpy scalars as Python numbers (loadable with weights_only)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


def save(path: str | os.PathLike, obj: dict) -> None:
    """Write ``obj`` (made :func:`plain`) atomically and byte-reproducibly."""
    save_torch(plain(obj), path)


def load(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """``torch.load(weights_only=True)`` of ``path``; anything else (a pickle with code, garbage) is refused with
    an :class:`~hardmil.utils.InputError` naming the file, before any of it runs."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{what} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for pickled code, RuntimeError for a broken zip, ...
        raise InputError(path, f"cannot load {what} safely (only tensors and plain data are accepted): "
                               f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    if not isinstance(obj, dict):
        raise InputError(path, f"{what} is a {type(obj).__name__}, not a dict")
    return obj


def load_model_file(path: str | os.PathLike, what: str = "trained model") -> dict:
    """A run's ``model.pt`` as a dict; feature statistics as numpy arrays (or None)."""
    saved = load(path, what)
    missing = [k for k in MODEL_KEYS if k not in saved]
    if missing:
        raise InputError(path, f"{what} lacks {missing}: not a hardmil model.pt")
    for key in ("feature_mean", "feature_std", "bin_edges"):
        if isinstance(saved.get(key), torch.Tensor):
            saved[key] = saved[key].numpy()
    return saved


def load_model(path: str | os.PathLike):
    """(model in eval mode, the saved dict) from a run's ``model.pt``."""
    saved = load_model_file(path)
    try:
        net = build_model(saved["model"], **saved["model_config"])
        net.load_state_dict(saved["state_dict"])
    except (ValueError, RuntimeError, TypeError, KeyError) as err:
        raise InputError(path, f"cannot rebuild the trained model: {err}") from err
    return net.eval(), saved
