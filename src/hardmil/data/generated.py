"""Generated (hard-negative) bags as stage 2 of Li et al. reads them: ``bags.h5`` written by
:func:`hardmil.mining.hardneg.write_generated` (``features`` [sum N, D], ``offsets`` [n+1], ``source_slide``)."""

from __future__ import annotations

import os
from pathlib import Path

from hardmil.data.bags import Bag
from hardmil.utils import InputError


def read_generated(path: str | os.PathLike, expected_dim: int | None = None) -> list[Bag]:
    """The generated bags as negative (class 0) :class:`Bag` objects named ``gen{k}``."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            feats, offsets = f["features"][()], f["offsets"][()]
            sources = [s.decode() for s in f["source_slide"][()]]
    except Exception as err:
        raise InputError(path, f"cannot read generated bags: {err}") from err
    if expected_dim is not None and len(feats) and feats.shape[1] != expected_dim:
        raise InputError(path, f"feature dimension {feats.shape[1]} != {expected_dim}")
    return [Bag(f"gen{k}", f"gen{k}", 0, feats[a:b], extra={"sources": sources[a:b]})
            for k, (a, b) in enumerate(zip(offsets[:-1], offsets[1:], strict=True))]
