"""Paired Δ between two rows of a table, from each run's out-of-fold ``predictions.tsv``.

A row is paired with the row it is compared with on the (seed, fold) runs both have, bag by bag (slide or
case id); the Δ and its interval come from :func:`hardmil.eval.stats.paired_delta` (groups: seed x fold;
resampling unit: the bag). Used by the tables (:mod:`hardmil.report.tables`) and the sweep figures
(:mod:`hardmil.report.figures`). The procedure and what it assumes: ``docs/statistics.md``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardmil.utils import InputError, read_tsv

# a run folder's metrics.json: docs/architecture.md#run-folders
RUN_PATH = re.compile(r"(?P<method>[^/]+)/(?P<protocol>[^/]+)/seed(?P<seed>\d+)/fold(?P<fold>\d+)/metrics\.json$")


@dataclass(frozen=True)
class RunRef:
    protocol: str
    method: str
    seed: int
    fold: int
    path: str

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> RunRef:
        """Parse ``.../{method}/{protocol}/seed{seed}/fold{fold}/metrics.json`` (docs/architecture.md#run-folders)."""
        m = RUN_PATH.search(Path(path).as_posix())
        if m is None:
            raise ValueError(f"{path}: not a run's metrics.json path (.../method/protocol/seedS/foldF/metrics.json)")
        return cls(m["protocol"], m["method"], int(m["seed"]), int(m["fold"]), str(path))


def predictions_path(metrics_path: str | os.PathLike) -> Path:
    """A run's ``predictions.tsv`` (beside its ``metrics.json``)."""
    return Path(metrics_path).with_name("predictions.tsv")


def read_predictions(path: str | os.PathLike) -> dict:
    """One run's out-of-fold predictions: ``{"kind", "ids", ...}``.

    Classification (``prob_<class>`` columns): ``kind="classification"``, ``ids`` (slide), ``y`` (label index),
    ``scores [n, C]``. Survival (``risk`` column): ``kind="survival"``, ``ids`` (case), ``time``, ``event``,
    ``scores`` (risk)."""
    p = Path(path)
    rows = read_tsv(p, "predictions file (has the run finished?)")
    cols = list(rows[0])
    try:
        if "risk" in cols:
            need = [c for c in ("case", "time", "event", "risk") if c not in cols]
            if need:
                raise InputError(p, f"survival predictions lack column(s) {need}")
            return {"kind": "survival", "ids": [r["case"] for r in rows],
                    "time": np.array([float(r["time"]) for r in rows]),
                    "event": np.array([int(float(r["event"])) for r in rows]).astype(bool),
                    "scores": np.array([float(r["risk"]) for r in rows])}
        probs = [c for c in cols if c.startswith("prob_")]
        id_col = "slide" if "slide" in cols else "case"
        if len(probs) < 2 or "label_index" not in cols or id_col not in cols:
            raise InputError(p, f"needs a slide (or case) column, label_index and prob_<class> columns; has {cols}")
        return {"kind": "classification", "ids": [r[id_col] for r in rows],
                "y": np.array([int(r["label_index"]) for r in rows]),
                "scores": np.array([[float(r[c]) for c in probs] for r in rows])}
    except ValueError as err:
        raise InputError(p, f"unreadable value: {err}") from None


DEFAULT_DELTA_METRICS = {"classification": ["auc", "balanced_accuracy"], "survival": ["c_index"]}


def delta_metric_names(deltas: dict) -> list[str]:
    names: list[str] = []
    for d in deltas.values():
        names += [m for m in d if m not in names]
    return names


def _paired_rows(mine: dict[tuple[int, int], RunRef], base: dict[tuple[int, int], RunRef], cache: dict,
                 threshold_metrics: bool = False) -> dict:
    """Stack the two methods' predictions of every shared (seed, fold), aligned bag by bag; with
    ``threshold_metrics``, also each binary run's 0/1 decisions at its own threshold."""
    def load(run: RunRef) -> dict:
        path = predictions_path(run.path)
        if path not in cache:
            cache[path] = read_predictions(path)
        return cache[path]

    def decisions(run: RunRef, pred: dict) -> np.ndarray:
        """0/1 decisions of a binary run at its own threshold (``metrics.json``), as its accuracy / F1 used."""
        if run.path not in cache:
            cache[run.path] = json.loads(Path(run.path).read_text()).get("threshold")
        thr = cache[run.path]
        if thr is None or not math.isfinite(thr):
            raise InputError(run.path, "no decision threshold: a paired Δ of accuracy / f1 compares the runs' "
                                       "thresholded decisions")
        return (pred["scores"][:, 1] >= float(thr)).astype(float)

    out: dict[str, list] = defaultdict(list)
    kind = None
    for key in sorted(set(mine) & set(base)):
        a, b = load(mine[key]), load(base[key])
        pa, pb = predictions_path(mine[key].path), predictions_path(base[key].path)
        if a["kind"] != b["kind"] or a["scores"].shape[1:] != b["scores"].shape[1:]:
            raise InputError(pa, f"predictions are not of the same kind / classes as {pb}")
        kind = a["kind"]
        index_b = {i: k for k, i in enumerate(b["ids"])}
        if len(index_b) != len(b["ids"]) or set(index_b) != set(a["ids"]) or len(a["ids"]) != len(b["ids"]):
            only_a, only_b = sorted(set(a["ids"]) - set(index_b)), sorted(set(index_b) - set(a["ids"]))
            raise InputError(pa, f"test bags differ from {pb} (only here: {only_a[:3]}, only there: {only_b[:3]}"
                                 f"{', or a bag listed twice' if not (only_a or only_b) else ''}); a paired Δ needs "
                                 "identical splits")
        order = np.array([index_b[i] for i in a["ids"]])
        if kind == "survival":
            if not (np.allclose(a["time"], b["time"][order]) and np.array_equal(a["event"], b["event"][order])):
                raise InputError(pa, f"survival times / events differ from {pb} for the same cases")
            out["time"].append(a["time"])
            out["event"].append(a["event"])
        elif not np.array_equal(a["y"], b["y"][order]):
            raise InputError(pa, f"labels differ from {pb} for the same slides")
        else:
            out["y"].append(a["y"])
        out["method"].append(a["scores"])
        out["base"].append(b["scores"][order])
        if threshold_metrics and kind == "classification" and a["scores"].shape[1] == 2:
            out["method_decisions"].append(decisions(mine[key], a))
            out["base_decisions"].append(decisions(base[key], b)[order])
        out["groups"] += [f"seed{key[0]}/fold{key[1]}"] * len(a["ids"])
        out["clusters"] += list(a["ids"])
    out["kind"] = kind
    return out


def paired_deltas(runs: list[RunRef], versus: dict[str, str | None], delta_metrics: list[str] | None = None, *,
                  n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[tuple[str, str], dict]:
    """``{(protocol, method): {metric: paired_delta result}}`` for every row with a comparison.

    Each row is paired with the row it is compared with on the (seed, fold) runs both have, bag by bag (slide
    or case id), from each run's ``predictions.tsv``; the Δ and its interval come from
    :func:`hardmil.eval.stats.paired_delta` (groups: seed x fold; resampling unit: the bag). Accuracy and F1 of
    a binary task compare the decisions each run made at its own threshold (``metrics.json``), so the Δ is the
    difference of the table's two columns; the thresholds are held fixed in the bootstrap."""
    from hardmil.eval.stats import THRESHOLD_METRICS, paired_delta

    by: dict[tuple[str, str], dict[tuple[int, int], RunRef]] = defaultdict(dict)
    for r in runs:
        by[(r.protocol, r.method)][(r.seed, r.fold)] = r
    cache: dict = {}
    out: dict[tuple[str, str], dict] = {}
    for (protocol, method), mine in by.items():
        other = versus.get(method)
        if not other:
            continue
        if (protocol, other) not in by:
            raise ValueError(f"row {method!r} is compared with {other!r}, which has no runs under protocol "
                             f"{protocol!r} in this table")
        paired = _paired_rows(mine, by[(protocol, other)], cache,
                              threshold_metrics=bool(set(delta_metrics or ()) & set(THRESHOLD_METRICS)))
        if paired["kind"] is None:
            raise ValueError(f"rows {method!r} and {other!r} share no (seed, fold) run under protocol {protocol!r}")
        wanted = delta_metrics or DEFAULT_DELTA_METRICS[paired["kind"]]
        res = {}
        for metric in wanted:
            if (metric == "c_index") != (paired["kind"] == "survival"):
                raise ValueError(f"delta metric {metric!r} does not apply to {paired['kind']} predictions "
                                 f"(row {method!r})")
            y = ({"time": np.concatenate(paired["time"]), "event": np.concatenate(paired["event"])}
                 if paired["kind"] == "survival" else np.concatenate(paired["y"]))
            scores = ("method_decisions", "base_decisions") if (
                metric in THRESHOLD_METRICS and paired["method_decisions"]) else ("method", "base")
            res[metric] = paired_delta(y, np.concatenate(paired[scores[0]]), np.concatenate(paired[scores[1]]), metric,
                                       groups=paired["groups"], clusters=paired["clusters"], n_boot=n_boot,
                                       level=level, seed=seed)
        out[(protocol, method)] = res
    return out
