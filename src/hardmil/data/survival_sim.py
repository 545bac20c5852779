"""Simulated survival times for the demo: a proportional-hazards model driven by tumour burden.

No public survival data is small enough for a CPU demo, so the demo draws times for the synthetic slide
cohort from a known model; a MIL model that reads tumour burden from the features must then rank cases
better than chance (C-index > 0.5), which tests the whole survival path end to end.

Model (per case ``i``; times in days):

* tumour burden ``b_i`` = mean ``tumour_fraction`` over the case's slides (manifest column);
  ``z_i = (b_i - mean(b)) / sd(b)`` over the cohort (``z = 0`` when every case has the same burden);
* Weibull proportional hazards: ``h(t | z) = (k / s) (t / s)^(k - 1) exp(beta z)``, so
  ``S(t | z) = exp(-(t / s)^k exp(beta z))``; shape ``k``, scale ``s`` (the median at ``z = 0`` is
  ``s (log 2)^(1/k)``), log-hazard ratio ``beta`` per standard deviation of burden;
* event time by inversion: ``T = s (-log U exp(-beta z))^(1/k)``, ``U ~ Uniform(0, 1)``;
* random censoring ``C ~ Exponential(censor_rate)`` (none when the rate is 0) and administrative
  censoring at ``follow_up``;
* observed ``time = ceil(min(T, C, follow_up))`` (at least 1 day), ``event = 1`` if ``T <= min(C, follow_up)``.

Everything is drawn from one ``numpy`` generator seeded by ``seed``, cases in sorted order, so the same
manifest and seed give the same times.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardmil.utils import InputError, atomic_path


@dataclass(frozen=True)
class HazardModel:
    shape: float = 1.5
    scale: float = 1000.0
    beta: float = 1.5
    censor_rate: float = 0.0005
    follow_up: float = 3650.0
    seed: int = 0


def draw_times(burden: np.ndarray, model: HazardModel) -> tuple[np.ndarray, np.ndarray]:
    """(observed times, events) for cases with tumour ``burden`` under ``model``."""
    burden = np.asarray(burden, dtype=float)
    sd = burden.std()
    z = (burden - burden.mean()) / sd if sd > 0 else np.zeros_like(burden)
    rng = np.random.default_rng(model.seed)
    u = rng.uniform(size=len(z))
    t = model.scale * (-np.log1p(-u) * np.exp(-model.beta * z)) ** (1.0 / model.shape)
    c = rng.exponential(1.0 / model.censor_rate, size=len(z)) if model.censor_rate > 0 else np.full(len(z), np.inf)
    limit = np.minimum(c, model.follow_up)
    time = np.maximum(1.0, np.ceil(np.minimum(t, limit)))
    return time, (t <= limit).astype(int)


def simulate_manifest(src: str | os.PathLike, dst: str | os.PathLike, model: HazardModel) -> dict:
    """Copy the slide manifest ``src`` to ``dst`` with case-level ``time`` and ``event`` columns added;
    returns a summary (cases, events, median time)."""
    src = Path(src)
    if not src.exists():
        raise InputError(src, "manifest does not exist")
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or not {"slide", "case", "tumour_fraction"} <= set(rows[0]):
        raise InputError(src, "survival simulation needs rows with columns slide, case, tumour_fraction")
    fractions: dict[str, list[float]] = {}
    for i, r in enumerate(rows, start=2):
        try:
            f = float(r["tumour_fraction"])
        except ValueError:
            f = float("nan")
        if not 0.0 <= f <= 1.0:
            raise InputError(src, f"line {i}: tumour_fraction {r['tumour_fraction']!r} is not in [0, 1]")
        fractions.setdefault(r["case"], []).append(f)
    cases = sorted(fractions)
    time, event = draw_times(np.array([np.mean(fractions[c]) for c in cases]), model)
    label = {c: (float(t), int(e)) for c, t, e in zip(cases, time, event, strict=True)}
    fields = [k for k in rows[0] if k not in ("time", "event")] + ["time", "event"]
    with atomic_path(dst) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, delimiter="\t", lineterminator="\n", extrasaction="ignore")
            w.writeheader()
            for r in rows:
                t, e = label[r["case"]]
                w.writerow({**r, "time": f"{t:.0f}", "event": e})
    return {"cases": len(cases), "events": int(event.sum()), "median_time": float(np.median(time))}
