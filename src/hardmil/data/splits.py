"""Case-level stratified k-fold splits under the two evaluation protocols
(docs/architecture.md#evaluation-protocols-and-metrics).

The splits file is long: one row per (slide, fold) with the slide's ``role`` in that fold's run:

* ``paper``: ``train`` or ``test``; the test fold also selects the epoch, as the authors' code does.
* ``clean``: ``train``, ``val`` (a stratified split of the training cases that selects the epoch and
  the decision threshold) or ``test`` (touched once, after training).

The test folds depend only on the seed, so both protocols of one seed test on the same bags.
Repetitions (Li et al.: 4-fold CV repeated 5 times) are different seeds.
"""

from __future__ import annotations

import csv
import os
from collections import Counter

import numpy as np

from hardmil.utils import InputError, atomic_path, read_tsv

PROTOCOLS = ("paper", "clean")
COLUMNS = ("slide", "case", "label", "fold", "role")
# survival splits also carry each slide's case-level label; ``label`` then holds the stratum
SURVIVAL_COLUMNS = ("time", "event")


def _cases(rows: list[dict], source: str) -> tuple[list[str], list[str]]:
    labels: dict[str, str] = {}
    for r in rows:
        if labels.setdefault(r["case"], r["label"]) != r["label"]:
            raise InputError(source, f"case {r['case']} has slides with different labels")
    cases = sorted(labels)
    return cases, [labels[c] for c in cases]


def make_splits(rows: list[dict], folds: int, seed: int, protocol: str, val_fraction: float = 0.2,
                source: str = "manifest") -> list[dict]:
    """Assign every slide of ``rows`` (manifest rows) a role in each of ``folds`` folds."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {PROTOCOLS}")
    cases, labels = _cases(rows, source)
    counts = Counter(labels)
    if len(counts) < 2:
        raise InputError(source, f"only one class present ({dict(counts)}); cannot stratify")
    if min(counts.values()) < folds:
        raise InputError(source, f"class counts {dict(counts)} are too small for {folds} folds")
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    role_of: list[dict[str, str]] = []
    y = np.asarray(labels)
    for k, (train_idx, test_idx) in enumerate(skf.split(np.zeros(len(cases)), y)):
        roles = {cases[i]: "test" for i in test_idx}
        train_cases = [cases[i] for i in train_idx]
        if protocol == "clean":
            tr, va = train_test_split(train_cases, test_size=val_fraction, stratify=y[train_idx],
                                      random_state=seed * 1000 + k)
            roles.update({c: "train" for c in tr})
            roles.update({c: "val" for c in va})
        else:
            roles.update({c: "train" for c in train_cases})
        role_of.append(roles)
    out = [{"slide": r["slide"], "case": r["case"], "label": r["label"], "fold": k, "role": roles[r["case"]],
            **{c: r[c] for c in SURVIVAL_COLUMNS if c in r}}
           for k, roles in enumerate(role_of) for r in rows]
    check_splits(out, protocol, source)
    return out


def check_splits(rows: list[dict], protocol: str, source: str = "splits") -> None:
    """Invariants: each case has one role per fold, each case is tested exactly once, every selection
    set holds every class."""
    folds = sorted({int(r["fold"]) for r in rows})
    tested: Counter = Counter()
    classes = {r["label"] for r in rows}
    for k in folds:
        fold_rows = [r for r in rows if int(r["fold"]) == k]
        role_by_case: dict[str, str] = {}
        for r in fold_rows:
            if role_by_case.setdefault(r["case"], r["role"]) != r["role"]:
                raise InputError(source, f"fold {k}: case {r['case']} has two roles")
        tested.update(c for c, role in role_by_case.items() if role == "test")
        for role in ("test", "val") if protocol == "clean" else ("test",):
            present = {r["label"] for r in fold_rows if r["role"] == role}
            if present != classes:
                raise InputError(source, f"fold {k}: {role} set lacks class(es) {sorted(classes - present)}")
    untested = {r["case"] for r in rows} - set(tested)
    if untested or max(tested.values()) != 1:
        raise InputError(source, "every case must be in exactly one test fold")


def write_splits(path: str | os.PathLike, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            extra = [c for c in SURVIVAL_COLUMNS if rows and c in rows[0]]
            w = csv.DictWriter(fh, fieldnames=list(COLUMNS) + extra, delimiter="\t", lineterminator="\n",
                               extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)


def read_splits(path: str | os.PathLike, fold: int) -> dict[str, list[dict]]:
    """Rows of one fold grouped by role: ``{"train": [...], "val": [...], "test": [...]}``."""
    from hardmil.data.bags import check_names

    all_rows = read_tsv(path, "splits file", COLUMNS, allow_empty=True)
    check_names(all_rows, path)
    try:
        rows = [r for r in all_rows if int(r["fold"]) == fold]
    except (TypeError, ValueError) as err:
        raise InputError(path, f"fold column: {err}") from err
    if not rows:
        raise InputError(path, f"no rows for fold {fold}")
    out: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for r in rows:
        if r["role"] not in out:
            raise InputError(path, f"role {r['role']!r} of slide {r['slide']} is not one of {sorted(out)}")
        out[r["role"]].append(r)
    return out
