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
from pathlib import Path

log = logging.getLogger(__name__)

EFFICIENCY_FIELDS = ("n_parameters", "train_seconds_per_epoch", "peak_memory_bytes", "inference_slides_per_second")
# our field -> (the paper's Table 6 metric, factor taking ours to the paper's unit)
PAPER_UNITS = {"n_parameters": ("parameters", 1e-6), "train_seconds_per_epoch": ("train_seconds_per_epoch", 1.0),
               "peak_memory_bytes": ("peak_memory", 1e-9),
               "inference_slides_per_second": ("inference_slides_per_second", 1.0)}


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
