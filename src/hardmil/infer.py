"""The one inference path: a model over a :class:`~hardmil.data.bagset.BagSet`, one bag at a time.

Every stage that runs a trained model (selection during training, test evaluation, external evaluation,
hard-negative mining, IBMIL confounders, heatmaps, patch grids, efficiency) calls :func:`infer` or one of its
two shorthands, so device placement, bf16 autocast and eval mode are decided in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

KEEP = ("logits", "attention", "embedding", "instance_logits", "output")


@dataclass
class BagResult:
    """What one bag gave: ``logits`` [C] float32 always; the rest only when asked for (``keep``)."""

    index: int
    logits: np.ndarray
    attention: np.ndarray | None = None
    embedding: np.ndarray | None = None
    instance_logits: np.ndarray | None = None
    output: object | None = None  # the model's MILOutput itself (on the device), for framework-specific maps
    x: torch.Tensor | None = None  # the model input, with ``output``


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when CUDA is available, else the CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp``; a no-op context elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach()[0].float().cpu().numpy()


@torch.no_grad()
def infer(model: nn.Module, bags, *, amp: bool = False, keep: Iterable[str] = ("logits",),
          indices: Iterable[int] | None = None) -> Iterator[BagResult]:
    """Run ``model`` (eval mode, on ``bags.device``) over ``bags`` and yield a :class:`BagResult` per bag."""
    keep = set(keep)
    unknown = keep - set(KEEP)
    if unknown:
        raise ValueError(f"unknown outputs {sorted(unknown)}; valid: {KEEP}")
    model.eval()
    model.to(bags.device)
    for i, x, coords in bags.iterate(indices):
        with autocast(bags.device, amp):
            out = model(x, None, coords=coords)
        yield BagResult(i, out.logits.float()[0].cpu().numpy(),
                        _np(out.attention) if "attention" in keep else None,
                        _np(out.embedding) if "embedding" in keep else None,
                        _np(out.instance_logits) if "instance_logits" in keep else None,
                        out if "output" in keep else None, x if "output" in keep else None)


def predict_logits(model: nn.Module, bags, amp: bool = False) -> np.ndarray:
    """Logits ``[n_bags, C]`` (float32)."""
    rows = [r.logits for r in infer(model, bags, amp=amp)]
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def predict_proba(model: nn.Module, bags, amp: bool = False) -> np.ndarray:
    """Class probabilities ``[n_bags, C]``."""
    return torch.softmax(torch.from_numpy(predict_logits(model, bags, amp)), dim=-1).numpy()
