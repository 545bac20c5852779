"""The model contract: the forward output every model returns (:class:`MILOutput`), the base class every
registered model inherits (:class:`MILModel`, the training hooks with their no-op defaults) and the typed
protocols for what the MHIM framework and the heatmaps need from a baseline (:class:`EmbedHead`,
:class:`MaskableBaseline`, :class:`LinearHead`). docs/architecture.md, "The model contract", says how to add a
model or a framework."""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@dataclass
class MILOutput:
    """What ``model(x[B, N, D], mask[B, N] | None, label=None, coords=None)`` returns.

    ``coords`` [B, N, 2] are the patches' level-0 (x, y); models that need them (``needs_coords = True``)
    raise a clear error without them, the others ignore them.

    logits: ``[B, C]`` (survival: hazards over time bins); attention: ``[B, N]`` softmax weights,
    zero on padding; embedding: ``[B, H]`` bag embedding; instance_logits: ``[B, N, C]``;
    aux_losses: extra losses (already weighted) the training loop adds to the bag loss;
    bag_loss_weight: the weight of the bag cross-entropy (CLAM 0.7, DSMIL 0.5, else 1);
    aux_logits: further predictions ``{name: (weight, logits [B, C])}`` that the training loop scores with the
    task's own bag loss (cross-entropy, or the censored survival NLL) and adds with that weight (DSMIL's
    instance stream in survival training, where the label is a time bin and the censoring is the loop's);
    extras: model-specific intermediates a framework may reuse instead of recomputing them (TransMIL: the class
    token's layer-1 attention and values, which MHIM's teacher scores instances from).

    Models whose auxiliary losses need the bag label take it as ``forward(x, mask, label=y)``; the training
    loop passes it, inference does not, and aux_losses are then empty.
    """

    logits: Tensor
    attention: Tensor | None = None
    embedding: Tensor | None = None
    instance_logits: Tensor | None = None
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    bag_loss_weight: float = 1.0
    aux_logits: dict[str, tuple[float, Tensor]] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)


class MILModel(nn.Module):
    """Base class of every registered model: the forward contract plus the hooks the training loop calls.

    A model defines ``config_class`` (a frozen dataclass of its parameters, numeric fields declared with
    :func:`param`), ``__init__(self, cfg)`` storing ``self.cfg``, and ``forward(x, mask=None, label=None,
    coords=None) -> MILOutput``. The hooks below are called on every model; their defaults do nothing, so a
    model overrides only the ones it needs.
    """

    config_class: ClassVar[type]
    #: the model raises without patch coordinates; the run checks every bag has them before training
    needs_coords: ClassVar[bool] = False
    #: the bag embedding is this many rows of ``cfg.hidden_dim`` (MHIM's consistency loss is taken per row)
    embedding_groups: int = 1
    #: set by the training run before training (a ``hardmil.models.assessment.TeacherAssessment``); a model that
    #: assesses instances during training (MHIM's teacher) adds each bag's scores to it, the others ignore it
    assessment: Any = None
    #: set by the training loop on every MILModel submodule: True when the label is a survival time bin, not a
    #: class (CLAM / DSMIL / DTFD then treat their class-label auxiliary losses as the MHIM-MIL reference does)
    survival_task: bool = False
    cfg: Any

    @staticmethod
    def translate_params(params: dict) -> dict:
        """Map the config file's parameters to ``config_class`` fields (MHIM flattens nested groups)."""
        return params

    @staticmethod
    def step_memory_mb(cfg: Any, n_instances: int) -> float:
        """Memory (MB) one training step of a bag of ``n_instances`` takes beyond what the job memory model
        (:func:`hardmil.data.store.job_memory_mb`) counts from the bag's bytes: for a model whose activations do
        not follow the bag's feature bytes (2DMamba: its scan grid). Default 0."""
        return 0.0

    def set_schedule(self, total_steps: int) -> None:
        """Called once before training with the number of optimiser steps (MHIM's per-step schedules)."""

    def training_step(self, out: MILOutput, bag_loss: Tensor) -> Tensor:
        """Backward pass of one bag; returns the loss to log. Default: bag loss plus every auxiliary loss.
        Override for another backward order (DTFD's two tiers with separate gradient clipping)."""
        loss = bag_loss + sum(out.aux_losses.values())
        loss.backward()
        return loss

    def after_step(self) -> None:
        """Called after each optimiser step (MHIM's teacher EMA update)."""


@runtime_checkable
class EmbedHead(Protocol):
    """A model split at the instance embedding: ``forward(x) == head(embed(x))``."""

    def embed(self, x: Tensor) -> Tensor:
        """Instance embeddings ``[B, N, cfg.hidden_dim]`` of features ``x`` [B, N, D]."""
        ...

    def head(self, h: Tensor, mask: Tensor | None = None, label: Tensor | None = None) -> MILOutput:
        """Everything after the instance embedding."""
        ...


@runtime_checkable
class MaskableBaseline(EmbedHead, Protocol):
    """What MHIM needs from the baseline it wraps (student and teacher): the split forward, the instance
    assessment of one bag and the shape of the bag embedding."""

    cfg: Any  # with hidden_dim
    embedding_groups: int

    def instance_scores(self, h: Tensor, out: MILOutput, version: str) -> Tensor:
        """Scores ``[N]`` of one bag's instances (``h`` [1, N, H], ``out = head(h)``): v1 attention, v2 the
        class-aware instance probability. MHIM masks the highest; the heatmaps draw them."""
        ...


@runtime_checkable
class LinearHead(EmbedHead, Protocol):
    """A baseline whose bag classifier is one linear map of the (attention-weighted) embedding: the heatmaps
    apply it to each weighted instance (MHIM-v2's class-aware instance probability, Fig. 7)."""

    def classify(self, z: Tensor) -> Tensor:
        """Logits ``[..., C]`` of embeddings ``z`` [..., H]."""
        ...


def masked_softmax(scores: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` that gives exactly zero weight where ``mask`` is False (padding)."""
    if mask is None:
        return torch.softmax(scores, dim=dim)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=dim)


def init_xavier(module: nn.Module) -> None:
    """Xavier-normal weights and zero biases for every Linear (the MHIM-MIL code's initialisation)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper path for training-mode calls without autograd on the CPU (MHIM's teacher
    scores a whole bag in train mode, dropout on, as the reference): the mask is ``rand >= p`` instead of
    ``bernoulli_`` -- the same Bernoulli(1 - p) distribution, about 2x faster on this CPU (bench/models.py).
    Every other call (autograd on, eval mode, CUDA) is ``nn.Dropout`` itself."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and 0 < self.p < 1 and not torch.is_grad_enabled() and x.device.type == "cpu":
            return x.mul(torch.rand_like(x) >= self.p).mul_(1 / (1 - self.p))
        return super().forward(x)


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def instance_projection(in_dim: int, hidden_dim: int, dropout: float, act: str = "relu") -> nn.Sequential:
    """``Linear(in_dim, hidden_dim) + ReLU + Dropout``: the instance embedding most MIL baselines share
    (``act='gelu'``: GELU instead of ReLU, as the MHIM-MIL reference's training config runs it)."""
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), ACTIVATIONS[act](), Dropout(dropout))


def input_layer_name(net: nn.Module, in_dim: int) -> str:
    """Name of the model's input layer: its first ``nn.Linear`` that reads the ``in_dim`` bag features."""
    for name, m in net.named_modules():
        if isinstance(m, nn.Linear) and m.in_features == in_dim:
            return name
    raise ValueError(f"{type(net).__name__} has no Linear layer reading {in_dim}-d features")


def init_input_layer(net: nn.Module, saved: dict, model: str, in_dim: int) -> str:
    """Copy the input layer of a trained checkpoint (a run's model.pt) of the same model into ``net``: MHIM's
    student initialisation applied to any model (Tang et al., Table 11, "w/ student init."). Returns its name."""
    if saved.get("model") != model:
        raise ValueError(f"checkpoint is a {saved.get('model')!r} model, this method trains {model!r}")
    name = input_layer_name(net, in_dim)
    layer = dict(net.named_modules())[name]
    theirs = {k: saved["state_dict"].get(f"{name}.{k}") for k in layer.state_dict()}
    bad = {k: None if v is None else tuple(v.shape) for k, v in theirs.items()
           if v is None or v.shape != layer.state_dict()[k].shape}
    if bad:
        raise ValueError(f"checkpoint's {name} does not fit: {bad} (expected "
                         f"{ {k: tuple(v.shape) for k, v in layer.state_dict().items()} })")
    layer.load_state_dict(theirs)
    return name


def param(default, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
          lt: float | None = None, doc: str = ""):
    """A numeric model-config field with its valid range, checked by :func:`check_ranges` when a model is built:
    ``hidden_dim: int = param(512, ge=1)``. Every numeric field of every registered model declares one."""
    return field(default=default, metadata={"range": {"ge": ge, "gt": gt, "le": le, "lt": lt}, "doc": doc})


def field_range(f: dataclasses.Field) -> dict | None:
    """The declared range of a config field (``{'ge': .., 'gt': .., 'le': .., 'lt': ..}``) or None."""
    return f.metadata.get("range")


def range_text(bounds: dict) -> str:
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{ops[k]} {v}" for k, v in bounds.items() if v is not None) or "any value"


def in_range(value, bounds: dict) -> bool:
    """Whether a numeric ``value`` is within ``bounds`` (a declared range); non-numbers (and bools) pass, the
    config's own type checks handle them."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    return math.isfinite(value) and all(
        v is None or cmp(value, v)
        for v, cmp in ((bounds["ge"], operator.ge), (bounds["gt"], operator.gt),
                       (bounds["le"], operator.le), (bounds["lt"], operator.lt)))


def check_ranges(cfg, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` (e.g. ``model 'mhim'``) and the key if a field is out of its range."""
    for f in dataclasses.fields(cfg):
        bounds = field_range(f)
        value = getattr(cfg, f.name)
        if bounds is None:
            continue
        ok = in_range(value, bounds)
        if not ok:
            raise ValueError(f"{where}: {f.name} = {value!r} is out of range (must be {range_text(bounds)})")
