"""Measure one method's computational efficiency on one fold (the ``efficiency`` rule; Tang et al. MHIM-v2
Table 6). What each field means is documented in :mod:`hardmil.report.efficiency`, which turns the JSON this
writes into the table.

The timed epoch reruns the fold through :func:`hardmil.train.run.run_fold` with the *same* :class:`FoldJob`
the training job used (teacher, confounders, generated bags, ``init_from``), so the two cannot drift apart.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from hardmil.checkpoint import load_model
from hardmil.data.bags import load_bags
from hardmil.data.bagset import BagSet
from hardmil.data.splits import read_splits
from hardmil.infer import predict_proba, resolve_device
from hardmil.train.run import FoldJob, run_fold
from hardmil.utils import write_json

log = logging.getLogger(__name__)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: fall back to the process peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory of the code inside ``with``: CUDA max allocated, or sampled RSS above the start (CPU)."""

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval = device, interval
        self.peak_bytes = 0
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_rss_rise"

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = self._peak = _rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes())
            self.peak_bytes = int(self._peak - self._start)


def runs_timing(metrics_paths: list[str | os.PathLike]) -> dict:
    """Mean seconds per epoch and trainable parameters over a method's ``metrics.json`` files."""
    secs, params = [], []
    for p in metrics_paths:
        d = json.loads(Path(p).read_text())
        if "timing" not in d or "n_parameters" not in d:
            raise ValueError(f"{p}: metrics.json has no timing / n_parameters (written by an older hardmil?)")
        secs.append(d["timing"]["seconds_per_epoch"])
        params.append(d["n_parameters"])
    if not secs:
        raise ValueError("no metrics.json given: the efficiency of a method needs its finished runs")
    # the most common count: folds may differ (e.g. IBMIL's number of confounders)
    return {"n_parameters": max(set(params), key=params.count), "train_seconds_per_epoch": float(np.mean(secs)),
            "train_seconds_per_epoch_std": float(np.std(secs, ddof=1)) if len(secs) > 1 else float("nan"),
            "n_runs": len(secs)}


def measure_fold(*, job: dict, features_dir: str | os.PathLike, classes: list[str], protocol: str, model: str,
                 model_params: dict, train_cfg: dict, standardize: bool = False, threads: int = 1) -> dict:
    """One extra training epoch of the fold (timed, memory measured) and the trained model's inference speed.

    ``job`` is one entry of the workflow's ``train_jobs`` (splits, out_dir of the trained run, extra_bags,
    confounders, teacher). Training runs the real :func:`hardmil.train.run.run_fold` for one epoch into a
    temporary folder (same data, model, teacher and loss as the workflow's run)."""
    job = FoldJob.from_dict(job) if isinstance(job, dict) else job
    torch.set_num_threads(max(1, threads))
    device = resolve_device(train_cfg.get("device", "auto"))
    epochs = {"epochs": 1, "patience": 1, "min_epochs": 0}
    # warm-up: torch's one-off CPU start-up (kernels, thread pools, autograd engine) is not the method's memory
    warm = torch.nn.Linear(8, 2)
    torch.optim.Adam(warm.parameters()).step(lambda: warm(torch.randn(4, 8)).sum().backward())
    with tempfile.TemporaryDirectory(prefix="hardmil-efficiency-") as tmp:
        with PeakMemory(device) as mem:
            run_fold(**job.inputs(), features_dir=features_dir, classes=classes, protocol=protocol, model=model,
                     model_params=model_params, train_cfg={**train_cfg, **epochs}, out_dir=tmp,
                     standardize=standardize, threads=threads, progress=False)
        with open(Path(tmp) / "metrics.json") as fh:
            epoch_seconds = json.load(fh)["timing"]["seconds_per_epoch"]
    rows = read_splits(job.splits, job.fold)["test"]
    net, saved = load_model(Path(job.out_dir) / "model.pt")
    data = BagSet(load_bags(rows, features_dir, classes), saved["feature_mean"], saved["feature_std"],
                  device=device, placement="resident")  # inference speed without I/O, as before
    predict_proba(net, data.subset([0]))  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    passes = []  # the fastest of 5 passes over the test slides: small folds finish in milliseconds
    for _ in range(5):
        t0 = time.perf_counter()
        predict_proba(net, data)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        passes.append(time.perf_counter() - t0)
    infer = min(passes)
    return {"timed_epoch_seconds": epoch_seconds, "peak_memory_bytes": mem.peak_bytes, "peak_memory_kind": mem.kind,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "inference_slides_per_second": len(rows) / infer if infer > 0 else float("nan"),
            "inference_slides": len(rows), "device": str(device), "torch_threads": torch.get_num_threads(),
            "fold": job.fold, "seed": job.seed}


def measure_method(*, metrics: list[str | os.PathLike], out: str | os.PathLike, protocol: str, **fold_kw) -> dict:
    """Write ``out`` (JSON): :func:`runs_timing` over the method's runs plus :func:`measure_fold` of one fold."""
    result = {"protocol": protocol, **runs_timing(metrics), **measure_fold(protocol=protocol, **fold_kw)}
    log.info("%s: %d parameters, %.3f s/epoch (runs), %.3f s timed epoch, peak %.1f MB (%s), %.1f slides/s",
             out, result["n_parameters"], result["train_seconds_per_epoch"], result["timed_epoch_seconds"],
             result["peak_memory_bytes"] / 1e6, result["peak_memory_kind"], result["inference_slides_per_second"])
    write_json(out, result)
    return result


