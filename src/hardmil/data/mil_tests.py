"""Algorithmic unit tests of the MIL assumption (Raff & Holt, NeurIPS 2023): bags a model respecting the
assumption classifies well and a model that learned from negative evidence classifies worse than chance.

Raff & Holt ("Reproducibility in Multiple Instance Learning: A Case For Algorithmic Unit Tests", NeurIPS 2023,
arXiv 2310.17867) build synthetic bag datasets whose *training* bags hold two explanations of the label: the
correct one (positive evidence, a concept instance whose presence makes a bag positive) and a wrong one that
the MIL assumption forbids (an instance that only negative bags carry, the *poison*, or the *number* of concept
instances). The *test* bags turn the wrong explanation around. A model that learned only from positive
evidence is unaffected and scores a high test AUC; one that learned the forbidden rule ranks the test bags the
wrong way round (AUC below 0.5). This module is this project's own implementation from the paper's description
of its three tests; the exact distributions, sizes and counts are this project's (the paper's supplement was not
available here), each declared in :class:`TestModel` and documented in docs/mil_tests.md.

Instances (dimension ``dim``): three orthonormal directions ``a``, ``b``, ``p`` are drawn once per dataset
(seeded); every instance is ``N(0, I)`` noise plus a shift:

* **background** (kind 0): no shift (the negative instances every bag is made of);
* **concept A** (kind 1): ``+ concept * a``; **concept B** (kind 2): ``+ concept * b``;
* **poison** (kind 3): ``+ poison * p`` with ``poison > concept``: the easier signal, so that a model allowed
  to use it will.

A bag holds ``n ~ U{bag_size}`` instances, background apart from the ones below (placed at random positions).

1. ``standard`` (single-concept standard MIL, poisoned): positive iff the bag holds concept A. Development bags:
   positives hold ``U{witnesses}`` A instances, negatives ``U{witnesses}`` poison instances. Test bags: positives
   hold A *and* poison, negatives background only. Under the MIL assumption the poison, never seen in a positive
   bag, is no evidence at all; "poison => negative" (equivalently "no poison => positive") inverts the ranking.
2. ``threshold`` (threshold MIL with two concepts, poisoned): positive iff the bag holds at least one A *and*
   at least one B. Development: positives hold A and B, negatives exactly one of the two concepts (half A, half
   B) plus poison. Test: positives hold A, B and poison; negatives one concept and no poison.
3. ``frequency`` (false-frequency reliance): positive iff A and B are both present, as in 2, without poison.
   Development: positives hold one A and one B, negatives one instance of one concept. Test: positives as in
   development; negatives hold ``test_frequency`` instances of one concept. A model that counts concept
   instances ("more concept => positive") instead of requiring both concepts ranks the test negatives above
   the test positives.

The label is the MIL label in every case: a model that implements the stated bag rule (presence of A; presence
of A and B) can reach AUC 1 on the test bags. Pass criterion and verdicts: :mod:`hardmil.report.mil_tests`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hardmil.data.simulated import SimBag, dataclass_from_config, grid_coords, pool_labels
from hardmil.utils import write_json, write_tsv

log = logging.getLogger(__name__)

TESTS = ("standard", "threshold", "frequency")
BACKGROUND, CONCEPT_A, CONCEPT_B, POISON = 0, 1, 2, 3  # instance kinds in the truth file
KINDS = {BACKGROUND: "background", CONCEPT_A: "concept A", CONCEPT_B: "concept B", POISON: "poison"}
MANIFEST_FIELDS = ("slide", "case", "label", "pool", "instances", "concept_a", "concept_b", "poison")


@dataclass(frozen=True)
class TestModel:
    """The declared generator of one algorithmic unit test (see the module docstring)."""

    __test__ = False  # not a pytest class

    test: str = "standard"
    n_train: int = 200
    n_test: int = 200
    positive_fraction: float = 0.5
    bag_size: tuple[int, int] = (10, 20)
    witnesses: tuple[int, int] = (1, 3)
    dim: int = 32
    concept: float = 4.0
    poison: float = 6.0
    test_frequency: int = 4
    seed: int = 0

    def __post_init__(self):
        if self.test not in TESTS:
            raise ValueError(f"mil_test: test must be one of {TESTS}, got {self.test!r}")
        if self.n_train < 4 or self.n_test < 4:
            raise ValueError(f"mil_test: n_train and n_test must be >= 4, got {self.n_train}, {self.n_test}")
        if not 0 < self.positive_fraction < 1:
            raise ValueError(f"mil_test: positive_fraction must be in (0, 1), got {self.positive_fraction}")
        for name in ("bag_size", "witnesses"):
            lo, hi = getattr(self, name)
            if not 1 <= int(lo) <= int(hi):
                raise ValueError(f"mil_test: {name} must be [low, high] with 1 <= low <= high, got {[lo, hi]}")
        need = 2 * self.witnesses[1] + 1 if self.test != "frequency" else max(3, self.test_frequency + 1)
        if self.bag_size[0] < need:
            raise ValueError(f"mil_test: bag_size low {self.bag_size[0]} leaves no room for the test's special "
                             f"instances plus background; use at least {need}")
        if self.dim < 3:
            raise ValueError(f"mil_test: dim must be >= 3 (three orthogonal directions), got {self.dim}")
        if not 0 < self.concept or not 0 <= self.poison:
            raise ValueError(f"mil_test: concept must be > 0 and poison >= 0, got {self.concept}, {self.poison}")
        if self.test_frequency < 2:
            raise ValueError(f"mil_test: test_frequency must be >= 2, got {self.test_frequency}")

    @classmethod
    def from_config(cls, cfg: dict) -> TestModel:
        return dataclass_from_config(cls, cfg, "mil_test")


def _special(model: TestModel, label: int, pool: str, rng: np.random.Generator) -> list[int]:
    """The non-background instance kinds of one bag (the test's construction, module docstring)."""
    def k() -> int:
        return int(rng.integers(model.witnesses[0], model.witnesses[1] + 1))

    one = CONCEPT_A if rng.random() < 0.5 else CONCEPT_B
    if model.test == "standard":
        if label:
            return [CONCEPT_A] * k() + ([POISON] * k() if pool == "test" else [])
        return [POISON] * k() if pool == "train" else []
    if model.test == "threshold":
        if label:
            return [CONCEPT_A] * k() + [CONCEPT_B] * k() + ([POISON] * k() if pool == "test" else [])
        return [one] * k() + ([POISON] * k() if pool == "train" else [])
    # frequency
    if label:
        return [CONCEPT_A, CONCEPT_B]
    return [one] * (1 if pool == "train" else model.test_frequency)


def generate_test_bags(model: TestModel, cohort: str = "mil") -> list[SimBag]:
    """Development bags (pool ``train``), then test bags (pool ``test``), from one seeded generator."""
    rng = np.random.default_rng(model.seed)
    q, _ = np.linalg.qr(rng.normal(size=(model.dim, 3)))
    shift = {BACKGROUND: np.zeros(model.dim), CONCEPT_A: model.concept * q[:, 0],
             CONCEPT_B: model.concept * q[:, 1], POISON: model.poison * q[:, 2]}
    bags = []
    for pool, n_bags in (("train", model.n_train), ("test", model.n_test)):
        for i, label in enumerate(pool_labels(rng, n_bags, model.positive_fraction)):
            n = int(rng.integers(model.bag_size[0], model.bag_size[1] + 1))
            special = _special(model, int(label), pool, rng)
            kind = np.full(n, BACKGROUND, dtype=np.int8)
            kind[:len(special)] = special
            kind = kind[rng.permutation(n)]
            x = rng.normal(size=(n, model.dim)) + np.stack([shift[int(c)] for c in kind])
            bags.append(SimBag(f"{cohort}_{pool}_{i:04d}", int(label), pool, x.astype(np.float32),
                               grid_coords(rng, n), kind))
    return bags


def test_bag_summary(bag: SimBag) -> dict:
    return {"slide": bag.slide, "case": bag.slide, "label_index": bag.label, "pool": bag.pool,
            "instances": len(bag.kind), "concept_a": int((bag.kind == CONCEPT_A).sum()),
            "concept_b": int((bag.kind == CONCEPT_B).sum()), "poison": int((bag.kind == POISON).sum())}


test_bag_summary.__test__ = False  # not a pytest function


def make_mil_test(model: TestModel, *, classes: list[str], features_dir: str | os.PathLike,
                  manifest: str | os.PathLike, truth: str | os.PathLike, summary: str | os.PathLike,
                  splits: dict[tuple[str, int], str] | None = None, folds: int = 2, val_fraction: float = 0.2,
                  cohort: str = "mil") -> list[dict]:
    """Generate one unit-test cohort; writes the same files as :func:`hardmil.data.simulated.make_simulated`
    (features, manifest, truth with this module's kind codes, summary, splits)."""
    from hardmil.data.bags import write_features
    from hardmil.data.simulated import simulated_splits, write_truth
    from hardmil.data.splits import write_splits

    if len(classes) != 2:
        raise ValueError(f"mil_test: needs exactly two classes (negative, positive), got {classes}")
    bags = generate_test_bags(model, cohort)
    Path(features_dir).mkdir(parents=True, exist_ok=True)
    for b in bags:
        write_features(Path(features_dir) / f"{b.slide}.h5", b.features, b.coords, source="mil_test",
                       cohort=cohort, label=classes[b.label], pool=b.pool)
    rows = [{**test_bag_summary(b), "label": classes[b.label]} for b in bags]
    write_tsv(manifest, rows, list(MANIFEST_FIELDS))
    write_truth(truth, bags, KINDS)
    for (protocol, seed), path in (splits or {}).items():
        write_splits(path, simulated_splits(rows, folds, seed, protocol, val_fraction))
    stats = {pool: {f"{lab}_{col}": float(np.mean([r[col] for r in rows if r["pool"] == pool
                                                    and r["label_index"] == i]))
                    for i, lab in enumerate(("negative", "positive"))
                    for col in ("instances", "concept_a", "concept_b", "poison")}
             for pool in ("train", "test")}
    write_json(summary, {"model": asdict(model), "classes": classes, "kinds": KINDS, "pools": stats})
    log.info("mil_test %s (%s): %d bags; %s", cohort, model.test, len(bags), stats)
    return rows
