"""Computational efficiency measured by the workflow (the counterpart of Tang et al. MHIM-v2, Table 6).

Per method, on the method's own data (paper: Tang et al., MHIM-v2 journal version, Table 6 and §4.4;
reference code https://github.com/DearCaat/MHIM-MIL):

* ``n_parameters``: trainable parameters of the trained model (``metrics.json``; an MHIM teacher is a frozen
  EMA copy and is not counted; the paper does not say whether it counted it).
* ``train_seconds_per_epoch``: mean over the method's runs of ``metrics.json`` ``timing.seconds_per_epoch``
  (every epoch the workflow trained), and ``timed_epoch_seconds``: one extra epoch timed here, alone.
* ``peak_memory_bytes``: during that timed fold (load, one epoch, evaluation). CUDA:
  ``torch.cuda.max_memory_allocated`` (tensors on the GPU: model, teacher, optimiser state, gradients and the
  activations of the largest bag; the features stay in pinned host memory, as in the paper's GPU memory).
  CPU: the highest resident set size sampled every 2 ms from ``/proc/self/statm`` minus the RSS just before
  the fold (so it *includes* the fold's features held in memory; small for UCSB, large for WSI cohorts), and
  ``peak_rss_bytes`` = ``ru_maxrss`` of the whole process for reference.
* ``inference_slides_per_second``: the trained fold's model predicting every test slide of the fold
  (features already in memory, no I/O), slides / wall seconds of the fastest of 5 passes.

Deviations: the paper timed CAMELYON on an RTX 3090; absolute numbers here depend on the machine and the
data set, so the table gives the paper's values beside ours for their ratios, not for equality.
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

log = logging.getLogger(__name__)

EFFICIENCY_FIELDS = ("n_parameters", "train_seconds_per_epoch", "peak_memory_bytes", "inference_slides_per_second")
# our field -> (the paper's Table 6 metric, factor taking ours to the paper's unit)
PAPER_UNITS = {"n_parameters": ("parameters", 1e-6), "train_seconds_per_epoch": ("train_seconds_per_epoch", 1.0),
               "peak_memory_bytes": ("peak_memory", 1e-9),
               "inference_slides_per_second": ("inference_slides_per_second", 1.0)}


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
                 model_params: dict, train_cfg: dict, standardize: bool = True, threads: int = 1) -> dict:
    """One extra training epoch of the fold (timed, memory measured) and the trained model's inference speed.

    ``job`` is one entry of the workflow's ``train_jobs`` (splits, out_dir of the trained run, extra_bags,
    confounders, teacher). Training runs the real :func:`hardmil.train.run.run_fold` for one epoch into a
    temporary folder (same data, model, teacher and loss as the workflow's run)."""
    import hardmil.eval.metrics  # noqa: F401  (imports run_fold would do lazily must not count as memory)
    import hardmil.mining.hardneg  # noqa: F401
    import hardmil.report.assessment  # noqa: F401
    from hardmil.data.bags import load_bags
    from hardmil.data.splits import read_splits
    from hardmil.train.loop import Tensors, predict, resolve_device
    from hardmil.train.run import load_trained, run_fold

    torch.set_num_threads(max(1, threads))
    device = resolve_device(train_cfg.get("device", "auto"))
    epochs = {"epochs": 1, "patience": 1, "min_epochs": 0}
    # warm-up: torch's one-off CPU start-up (kernels, thread pools, autograd engine) is not the method's memory
    warm = torch.nn.Linear(8, 2)
    torch.optim.Adam(warm.parameters()).step(lambda: warm(torch.randn(4, 8)).sum().backward())
    with tempfile.TemporaryDirectory(prefix="hardmil-efficiency-") as tmp:
        with PeakMemory(device) as mem:
            run_fold(splits=job["splits"], features_dir=features_dir, classes=classes, fold=job["fold"],
                     protocol=protocol, seed=job["seed"], model=model, model_params=model_params,
                     train_cfg={**train_cfg, **epochs}, out_dir=tmp, standardize=standardize, threads=threads,
                     progress=False, extra_bags=job.get("extra_bags"),
                     confounders=job.get("confounders"), teacher=job.get("teacher"))
        with open(Path(tmp) / "metrics.json") as fh:
            epoch_seconds = json.load(fh)["timing"]["seconds_per_epoch"]
    rows = read_splits(job["splits"], job["fold"])["test"]
    net, mean, std = load_trained(Path(job["out_dir"]) / "model.pt")
    data = Tensors.from_bags(load_bags(rows, features_dir, classes), mean, std, pin=device.type == "cuda")
    net.to(device)
    predict(net, Tensors(data.features[:1], data.labels[:1], data.ids[:1], data.coords[:1]), device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    passes = []  # the fastest of 5 passes over the test slides: small folds finish in milliseconds
    for _ in range(5):
        t0 = time.perf_counter()
        predict(net, data, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        passes.append(time.perf_counter() - t0)
    infer = min(passes)
    return {"timed_epoch_seconds": epoch_seconds, "peak_memory_bytes": mem.peak_bytes, "peak_memory_kind": mem.kind,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "inference_slides_per_second": len(rows) / infer if infer > 0 else float("nan"),
            "inference_slides": len(rows), "device": str(device), "torch_threads": torch.get_num_threads(),
            "fold": job["fold"], "seed": job["seed"]}


def measure_method(*, metrics: list[str | os.PathLike], out: str | os.PathLike, protocol: str, **fold_kw) -> dict:
    """Write ``out`` (JSON): :func:`runs_timing` over the method's runs plus :func:`measure_fold` of one fold."""
    from hardmil.utils import write_json

    result = {"protocol": protocol, **runs_timing(metrics), **measure_fold(protocol=protocol, **fold_kw)}
    log.info("%s: %d parameters, %.3f s/epoch (runs), %.3f s timed epoch, peak %.1f MB (%s), %.1f slides/s",
             out, result["n_parameters"], result["train_seconds_per_epoch"], result["timed_epoch_seconds"],
             result["peak_memory_bytes"] / 1e6, result["peak_memory_kind"], result["inference_slides_per_second"])
    write_json(out, result)
    return result


def efficiency_records(paths: list[str | os.PathLike], rows: dict[str, str], published: dict[str, dict]) -> list[dict]:
    """Table 6 rows: one per ``efficiency.json`` (``.../{method}.json``), ours beside the paper's value."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} efficiency measurement(s) missing, e.g. {missing[0]}")
    records = []
    for p in paths:
        d = json.loads(Path(p).read_text())
        method = Path(p).stem
        if method not in rows:
            raise ValueError(f"{p}: method {method!r} is not a row of this table ({sorted(rows)})")
        pub = published.get(rows[method], {})
        rec = {"protocol": d.get("protocol", ""), "method": method, "paper_row": rows[method],
               "n_runs": d["n_runs"], "device": d["device"], "peak_memory_kind": d["peak_memory_kind"]}
        for field in EFFICIENCY_FIELDS:
            paper_metric, factor = PAPER_UNITS[field]
            ours = d[field] * factor
            p_val = pub.get(paper_metric)
            rec.update({f"{paper_metric}_mean": ours, f"{paper_metric}_std": d.get(f"{field}_std", float("nan")),
                        f"{paper_metric}_se": float("nan"), f"{paper_metric}_published": p_val,
                        f"{paper_metric}_published_std": None,
                        f"{paper_metric}_diff": (ours - p_val) if p_val is not None else None})
        records.append(rec)
    return records
