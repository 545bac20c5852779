"""Bags on their way into a model: one bag per step, standardised on the fly, on the chosen device.

:class:`BagSet` replaces holding a fold's bags in memory. It keeps the fold's (lazy) :class:`~hardmil.data.bags.Bag`
list, the labels and the training set's standardisation, and hands out one bag at a time as
``(x [1, N, D] float32, coords [1, N, 2] | None)``. Where the bag's values live is the *placement*:

* ``stream``: each step reads the bag from its source (the store's memory map: the page cache, no private copy),
  converts it to float32 and standardises it. On CUDA the bag goes through a pinned host buffer and the next
  bag of the iteration is read in a background thread while the current one trains (prefetch).
* ``resident``: every bag is uploaded once, in the store's dtype, and standardised per step on the device.
* ``auto`` (default): CPU streams; CUDA keeps the fold resident when its bags fit in ``memory_share`` of the
  device's free memory, else streams (:func:`choose_placement`, tested with a fake budget).

Both placements give bit-identical model inputs: ``(float32(x) - mean) / std`` in float32, the same
elementwise operations numpy applied when bags were standardised up front.

Memory per job: one bag (a float32 copy plus the standardised result, 2 x N x D x 4 bytes) beyond the model,
whatever the cohort size. Statistics: :func:`feature_stats` streams them in float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from hardmil.data.store import merge_moments
from hardmil.utils import fix_malloc_threshold

PLACEMENTS = ("auto", "stream", "resident")


def feature_stats(bags, chunk_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and (population) std over all instances of ``bags`` (std 0 -> 1), in float64 without
    concatenating the instances: a bag read from a bag store contributes its slides' precomputed moments (no
    pass over its features); any other bag is streamed ``chunk_rows`` rows at a time. Moments are merged with
    Chan et al.'s pairwise formula. Returned as float32, as the models use them."""
    acc = None
    for bag in bags:
        stats = [bag.source.slide_stats(s) for s in bag.slides] if bag.source is not None else [None]
        if all(st is not None for st in stats):
            for st in stats:
                acc = merge_moments(acc, st)
            continue
        feats = bag.features
        for a in range(0, len(feats), chunk_rows):
            x = np.asarray(feats[a: a + chunk_rows], dtype=np.float64)
            mu = x.mean(axis=0)
            acc = merge_moments(acc, (len(x), mu, ((x - mu) ** 2).sum(axis=0)))
    if acc is None:
        raise ValueError("no instances to compute feature statistics from")
    n, mean, m2 = acc
    std = np.sqrt(m2 / n)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def choose_placement(placement: str, device: torch.device, needed_bytes: int, budget_bytes: int | None) -> str:
    """``stream`` or ``resident`` for ``placement`` (``auto``: resident on CUDA when the fold fits the budget)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if placement != "auto":
        return placement
    if device.type != "cuda" or budget_bytes is None:
        return "stream"
    return "resident" if needed_bytes <= budget_bytes else "stream"


def device_budget(device: torch.device, share: float) -> int | None:
    """``share`` of the free memory of a CUDA device (None on other devices)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * share)


class BagSet:
    """The bags of one role of a fold (train / val / test / external) ready for a model."""

    def __init__(self, bags: list, mean: np.ndarray | None = None, std: np.ndarray | None = None, *,
                 device: torch.device | str = "cpu", placement: str = "auto", memory_share: float = 0.5,
                 prefetch: bool = True):
        fix_malloc_threshold()  # one bag per step must not fragment the heap (hardmil.utils.fix_malloc_threshold)
        self.bags = list(bags)
        self.device = torch.device(device)
        self.ids = [b.slide for b in self.bags]
        self.labels = torch.tensor([b.label for b in self.bags], dtype=torch.long)
        self.times = self.events = None
        if self.bags and "event" in self.bags[0].extra:
            self.times = torch.tensor([b.extra["time"] for b in self.bags], dtype=torch.float64)
            self.events = torch.tensor([b.extra["event"] for b in self.bags], dtype=torch.long)
        self.mean = None if mean is None else torch.as_tensor(np.asarray(mean, np.float32)).to(self.device)
        self.std = None if std is None else torch.as_tensor(np.asarray(std, np.float32)).to(self.device)
        self.sizes = [len(b) for b in self.bags]
        self.prefetch = prefetch and self.device.type == "cuda"
        itemsize = 4
        if self.bags and self.bags[0].source is not None:
            itemsize = np.dtype(self.bags[0].source.dtype).itemsize
        self.needed_bytes = sum(self.sizes) * (self._dim() or 0) * itemsize
        self.placement = choose_placement(placement, self.device, self.needed_bytes,
                                          device_budget(self.device, memory_share))
        self._resident: list[tuple[torch.Tensor, torch.Tensor | None]] | None = None

    def _dim(self) -> int | None:
        if not self.bags:
            return None
        b = self.bags[0]
        if b.source is not None and b.source.dim is not None:
            return int(b.source.dim)
        return int(np.asarray(b.features).shape[1])

    def __len__(self) -> int:
        return len(self.bags)

    @property
    def survival(self) -> bool:
        return self.events is not None

    def subset(self, indices: Iterable[int]) -> BagSet:
        """The bags ``indices`` with the same statistics, device and placement."""
        out = object.__new__(BagSet)
        out.__dict__.update(self.__dict__)
        idx = list(indices)
        out.bags = [self.bags[i] for i in idx]
        out.ids = [self.ids[i] for i in idx]
        out.sizes = [self.sizes[i] for i in idx]
        out.labels = self.labels[idx]
        out.times = None if self.times is None else self.times[idx]
        out.events = None if self.events is None else self.events[idx]
        out._resident = None if self._resident is None else [self._resident[i] for i in idx]
        return out

    # -- reading ---------------------------------------------------------------------------------------------
    def _host(self, i: int, pin: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Bag ``i``'s raw values as a host tensor (its own memory; pinned if asked) and its coords."""
        bag = self.bags[i]
        feats = bag.features
        x = torch.empty(feats.shape, dtype=_torch_dtype(feats.dtype), pin_memory=pin)
        x.numpy()[...] = feats  # one copy out of the memory map / file buffer
        c = bag.coords
        return x, None if c is None else torch.from_numpy(np.asarray(c, dtype=np.int64))

    def _finish(self, x: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x.to(self.device, non_blocking=True)
        x = x.float() if x.dtype != torch.float32 else x
        if self.mean is not None:
            x = x.sub(self.mean).div_(self.std) if x.device.type != "cpu" else x.sub_(self.mean).div_(self.std)
        return x[None], None if c is None else c.to(self.device)[None]

    def _upload(self) -> None:
        self._resident = []
        for i in range(len(self)):
            x, c = self._host(i, pin=False)
            self._resident.append((x.to(self.device), None if c is None else c.to(self.device)))

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Bag ``i`` as a batch of one: (features [1, N, D] float32 standardised, coords [1, N, 2] | None)."""
        if self.placement == "resident":
            if self._resident is None:
                self._upload()
            x, c = self._resident[i]
            x = x.float() if x.dtype != torch.float32 else x.clone()
            if self.mean is not None:
                x = x.sub_(self.mean).div_(self.std)
            return x[None], None if c is None else c[None]
        return self._finish(*self._host(i, pin=self.device.type == "cuda"))

    def iterate(self, indices: Iterable[int] | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """``(i, x, coords)`` for each of ``indices`` (default: all, in order). Streaming on CUDA reads the next
        bag into pinned memory in a background thread while the caller works on the current one."""
        order = list(range(len(self)) if indices is None else indices)
        if self.placement == "resident" or not self.prefetch:
            for i in order:
                yield (i, *self.batch(i))
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bag-prefetch") as pool:
            pending: Future | None = pool.submit(self._host, order[0], True) if order else None
            for pos, i in enumerate(order):
                host = pending.result()
                pending = pool.submit(self._host, order[pos + 1], True) if pos + 1 < len(order) else None
                yield (i, *self._finish(*host))


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.float64): torch.float32}[np.dtype(dtype)]
