"""Deterministic weights for the parity fixtures (tests/data/parity): both this project's model and the reference
implementation get them, so the fixtures store inputs and reference outputs, not megabytes of weights.

Every floating tensor of ``model.state_dict()``, in sorted key order, is drawn from numpy's PCG64 generator seeded
with ``[seed, index]`` (a stream numpy keeps stable across versions): matrices uniform in +-1/sqrt(fan_in),
vectors named ``*weight`` (norm scales) 1 +- 0.1, other vectors +- ``bias_scale``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def fill_weights(model: nn.Module, seed: int, bias_scale: float = 0.1) -> float:
    """Overwrite ``model``'s floating state in place; returns the sum of all values drawn (a checksum)."""
    total = 0.0
    state = model.state_dict()
    with torch.no_grad():
        for i, key in enumerate(sorted(state)):
            t = state[key]
            if not t.is_floating_point():
                continue
            u = np.random.Generator(np.random.PCG64([seed, i])).random(t.numel()) * 2 - 1
            if t.dim() >= 2:
                values = u / np.sqrt(t.numel() / t.shape[0])
            elif key.endswith("weight"):
                values = 1 + 0.1 * u
            else:
                values = bias_scale * u
            t.copy_(torch.from_numpy(values.reshape(tuple(t.shape))).to(t.dtype))
            total += float(values.sum())
    return total
