"""Seeded fuzz of the cheap entry points (issue 26): random mutations of a valid config, manifest, features file
(h5) and bag store, each fed to what reads it (``hardmil check-config``, the store build, ``hardmil predict``).

Every case must end in one of three outcome classes: ``same`` (ran, outputs identical to the unmutated run),
``changed`` (ran on input that is still valid but says something else, e.g. a manifest without one slide; never
allowed for a mutated store, nor for a mutation that only re-encodes the same content) or ``refused`` (one
``InputError`` / config line naming a file or key, and the finished outputs left as they were). Anything else
(a traceback, a message of several lines or naming nothing, a changed output after a refusal) fails the test.
The counts are printed in the ``fuzz`` section of pytest's summary.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from hardmil.cli import main as cli
from hardmil.data.store import STORE_FILES, build_store
from hardmil.data.survival import manifest_slides

from .conftest import FUZZ_SUMMARY, make_cohort, untrained_model

SEED = 26
CASES_PER_TARGET = 55  # x 4 targets = 220 cases
CLASSES = ["neg", "pos"]
NAMED = ("config", "manifest.tsv", "features", "store", "model.pt")  # what a refusal may name


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The unmutated case: 5 bags of 4-d features with coords, manifest, config, model, store, predictions."""
    root = tmp_path_factory.mktemp("fuzz_base")
    make_cohort(root, n_bags=5, dim=4)
    cfg = {"datasets": {"mine": {"source": "features", "classes": CLASSES, "manifest": "manifest.tsv",
                                 "features_dir": "features"}},
           "methods": {"abmil": {"model": "abmil", "params": {"dropout": 0.1}}},
           "train": {"epochs": 3, "lr": 0.0002}, "cv": {"folds": 2, "seeds": [0]}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    untrained_model(root / "model.pt", 4)
    with contextlib.chdir(root):
        outcome = run_case(STEPS)
    assert {step: o[0] for step, o in outcome.items()} == {s: "ok" for s in outcome}, outcome
    return root, {step: o[1] for step, o in outcome.items()}


def _step(fn):
    """('ok', result) or ('refused', the one line); any other exception propagates (a traceback = a failure)."""
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            result = fn()
    except (ValueError, FileNotFoundError) as exc:  # InputError and config errors are ValueErrors
        return "refused", str(exc)
    if isinstance(result, int) and result != 0:  # the command line: exit 2 and "error: <line>"
        return "refused", err.getvalue().removeprefix("error: ").removesuffix("\n")
    return "ok", result


def _store_state() -> dict:
    """What a store holds: its arrays' bytes and its index without the sources' fingerprints (a source rewritten
    with the same content has a new mtime)."""
    state = {f: Path("store", f).read_bytes() for f in STORE_FILES if Path("store", f).exists()}
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        index = json.loads(state.pop("index.json"))
        for entry in index["slides"].values():
            entry.pop("fingerprint")
        state["index.json"] = index
    return state


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if Path(path).exists() else None


def _build():
    build_store(manifest_slides("manifest.tsv", "classification", CLASSES), "features", "store")
    return _store_state()


def _predict(features: str, out: str):
    return cli(["predict", "--model", "model.pt", "--features", features, "--manifest", "manifest.tsv",
                "--out", out]) or Path(out).read_bytes()


STEPS = {"check-config": lambda: cli(["check-config", "config.yaml"]), "store": _build,
         "predict-store": lambda: _predict("store", "predict-store.tsv"),
         "predict-files": lambda: _predict("features", "predict-files.tsv")}
# what each target is fed to, in order (a damaged store is read first, then rebuilt: the build must repair it)
TARGET_STEPS = {"config": ["check-config"], "manifest": ["check-config", "store", "predict-files"],
                "features": ["store", "predict-files"], "store": ["predict-store", "store"]}


def run_case(steps) -> dict:
    """Run ``steps`` on the case folder (the working directory); outputs are compared by the caller."""
    return {step: _step(STEPS[step]) for step in steps}


# --- mutations: each edits the case folder and returns True if the content's meaning is unchanged -----------
def _flip_bytes(path: Path, rng, n: int, start: int = 0) -> None:
    data = bytearray(path.read_bytes())
    for _ in range(n):
        k = int(rng.integers(min(start, len(data) - 1), len(data)))
        data[k] = int(rng.integers(0, 256))
    path.write_bytes(bytes(data))


def _text(path: Path) -> str:
    return path.read_text()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def m_manifest(rng, d: Path) -> tuple[str, bool]:
    p = d / "manifest.tsv"
    lines = _lines(p)
    kind = rng.choice(["bom", "crlf", "bom_crlf", "drop_row", "dup_row", "bad_label", "drop_column", "extra_cell",
                       "truncate", "flip", "empty", "garbage", "unknown_slide", "unsafe_slide", "latin1",
                       "reorder_columns", "blank_line", "short_row"])
    k = int(rng.integers(1, len(lines)))
    if kind in ("bom", "crlf", "bom_crlf"):
        data = p.read_bytes()
        if "crlf" in kind:
            data = data.replace(b"\n", b"\r\n")
        p.write_bytes((b"\xef\xbb\xbf" if "bom" in kind else b"") + data)
        return kind, True
    if kind == "reorder_columns":
        rows = [line.rstrip("\n").split("\t") for line in lines]
        p.write_text("".join("\t".join([r[2], r[0], r[1]]) + "\n" for r in rows))
        return kind, True
    if kind == "drop_row":
        del lines[k]
    elif kind == "dup_row":
        lines.insert(k, lines[k])
    elif kind == "bad_label":
        cells = lines[k].rstrip("\n").split("\t")
        cells[2] = rng.choice(["tumour", "", "Pos", "neg ", "1"])
        lines[k] = "\t".join(cells) + "\n"
    elif kind == "drop_column":
        lines[0] = lines[0].replace(rng.choice(["slide", "case", "label"]), "x", 1)
    elif kind == "extra_cell":
        lines[k] = lines[k].rstrip("\n") + "\textra\n"
    elif kind == "short_row":
        lines[k] = lines[k].rsplit("\t", 1)[0] + "\n"
    elif kind == "truncate":
        p.write_bytes(p.read_bytes()[: int(rng.integers(0, len(p.read_bytes())))])
        return kind, False
    elif kind == "flip":
        _flip_bytes(p, rng, int(rng.integers(1, 4)))
        return kind, False
    elif kind == "empty":
        lines = []
    elif kind == "garbage":
        p.write_bytes(rng.bytes(int(rng.integers(1, 200))))
        return kind, False
    elif kind == "unknown_slide":
        lines[k] = lines[k].replace("s00", "zz", 1)
    elif kind == "unsafe_slide":
        lines[k] = rng.choice(["../", "a b", ".", "x/"]) + lines[k]
    elif kind == "latin1":
        p.write_bytes(p.read_bytes().replace(b"c00", b"\xe900", 1))
        return kind, False
    elif kind == "blank_line":
        lines.insert(k, "\n")
        p.write_text("".join(lines))
        return kind, True  # csv skips blank lines
    p.write_text("".join(lines))
    return kind, False


def m_features(rng, d: Path) -> tuple[str, bool]:
    slide = f"s{int(rng.integers(0, 5)):03d}_0"
    p = d / "features" / f"{slide}.h5"
    with h5py.File(p, "r") as f:
        x, c = f["features"][()], f["coords"][()]
    kind = rng.choice(["nan", "inf", "coords_nan", "coords_inf", "no_features", "dim", "one_d", "three_d", "empty",
                       "truncate", "flip", "coords_shape", "coords_text", "pt_twin", "float64", "coords_float",
                       "perturb", "no_coords", "text_features", "big_coords"])
    neutral = kind in ("float64", "coords_float")
    feats, coords = x, c
    if kind in ("nan", "inf"):
        feats = x.copy()
        feats[int(rng.integers(0, len(x))), int(rng.integers(0, x.shape[1]))] = np.nan if kind == "nan" else np.inf
    elif kind in ("coords_nan", "coords_inf", "coords_float"):
        coords = c.astype(np.float64)
        if kind != "coords_float":
            coords[int(rng.integers(0, len(c))), int(rng.integers(0, 2))] = np.nan if kind == "coords_nan" else -np.inf
    elif kind == "big_coords":
        coords = c.astype(np.float64) * 1e30
    elif kind == "no_features":
        feats = None
    elif kind == "dim":
        feats = np.concatenate([x, x[:, :1]], axis=1)
    elif kind == "one_d":
        feats = x.ravel()
    elif kind == "three_d":
        feats = x[None, None]
    elif kind == "empty":
        feats, coords = x[:0], c[:0]
    elif kind == "coords_shape":
        coords = c[:, :1]
    elif kind == "coords_text":
        coords = np.array([[b"a", b"b"]] * len(c))
    elif kind == "float64":
        feats = x.astype(np.float64)
    elif kind == "perturb":
        feats = x + rng.normal(scale=0.5, size=x.shape).astype(np.float32)
    elif kind == "no_coords":
        coords = None
    elif kind == "text_features":
        feats = np.array([[b"x"] * x.shape[1]] * len(x))
    if kind == "truncate":
        p.write_bytes(p.read_bytes()[: int(rng.integers(0, p.stat().st_size))])
    elif kind == "flip":
        _flip_bytes(p, rng, int(rng.integers(1, 6)))
    elif kind == "pt_twin":
        torch.save(torch.from_numpy(x), p.with_suffix(".pt"))
    else:
        p.unlink()
        with h5py.File(p, "w") as f:
            if feats is not None:
                f["features"] = feats
            if coords is not None:
                f["coords"] = coords
    return kind, neutral


def m_store(rng, d: Path) -> tuple[str, bool]:
    store = d / "store"
    kind = rng.choice(["flip_features", "flip_coords", "flip_stats", "nan_features", "index_flip", "index_key",
                       "index_count", "index_digest", "index_truncate", "delete", "index_whitespace",
                       "features_truncate"])
    if kind == "index_whitespace":
        (store / "index.json").write_text(json.dumps(json.loads((store / "index.json").read_text()), indent=4))
        return kind, True
    if kind.startswith("flip_"):
        p = store / f"{kind.removeprefix('flip_')}.npy"
        _flip_bytes(p, rng, int(rng.integers(1, 4)), start=128)  # past the .npy header
    elif kind == "nan_features":
        a = np.load(store / "features.npy", mmap_mode="r+")
        a[int(rng.integers(0, len(a))), int(rng.integers(0, a.shape[1]))] = np.nan
        a.flush()
        del a
    elif kind == "index_flip":
        _flip_bytes(store / "index.json", rng, int(rng.integers(1, 4)))
    elif kind in ("index_key", "index_count", "index_digest"):
        index = json.loads((store / "index.json").read_text())
        slide = rng.choice(list(index["slides"]))
        if kind == "index_key":
            index["slides"][slide].pop(rng.choice(["start", "count", "digest", "source", "has_coords"]))
        elif kind == "index_count":
            index["slides"][slide]["count"] += int(rng.choice([-1, 1, 1000]))
        else:
            index["slides"][slide]["digest"] = "0" * 32
        (store / "index.json").write_text(json.dumps(index))
    elif kind == "index_truncate":
        p = store / "index.json"
        p.write_bytes(p.read_bytes()[: int(rng.integers(0, p.stat().st_size))])
    elif kind == "delete":
        (store / rng.choice(list(STORE_FILES))).unlink()
    elif kind == "features_truncate":
        p = store / "features.npy"
        p.write_bytes(p.read_bytes()[: int(rng.integers(0, p.stat().st_size))])
    return kind, False


def m_config(rng, d: Path) -> tuple[str, bool]:
    p = d / "config.yaml"
    lines = _lines(p)
    kind = rng.choice(["dup_block", "dup_key", "dup_classes", "drop_line", "flip", "epochs_text", "missing_manifest",
                       "missing_features", "tab", "latin1", "comment", "empty", "list", "unknown_key", "bom"])
    k = int(rng.integers(0, len(lines)))
    if kind == "dup_block":
        p.write_text(_text(p) + "train:\n  epochs: 1\n")
    elif kind == "dup_key":
        i = next(j for j, line in enumerate(lines) if line.strip().startswith("epochs:"))
        lines.insert(i + 1, lines[i])
        p.write_text("".join(lines))
    elif kind == "dup_classes":
        p.write_text(_text(p).replace("- pos\n", "- pos\n    - pos\n", 1))
    elif kind == "drop_line":
        del lines[k]
        p.write_text("".join(lines))
    elif kind == "flip":
        _flip_bytes(p, rng, int(rng.integers(1, 4)))
    elif kind == "epochs_text":
        p.write_text(_text(p).replace("epochs: 3", "epochs: three"))
    elif kind == "missing_manifest":
        p.write_text(_text(p).replace("manifest: manifest.tsv", "manifest: gone.tsv"))
    elif kind == "missing_features":
        p.write_text(_text(p).replace("features_dir: features", "features_dir: nowhere/{encoder}"))
    elif kind == "tab":
        lines[k] = "\t" + lines[k]
        p.write_text("".join(lines))
    elif kind == "latin1":
        p.write_bytes(p.read_bytes().replace(b"abmil", b"abm\xefl", 1))
    elif kind == "comment":
        p.write_text("# a comment\n" + _text(p))
        return kind, True
    elif kind == "bom":
        p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
        return kind, True
    elif kind == "empty":
        p.write_text("")
    elif kind == "list":
        p.write_text("- a\n- b\n")
    elif kind == "unknown_key":
        p.write_text(_text(p) + "trian: {epochs: 2}\n")
    return kind, False


MUTATIONS = {"manifest": m_manifest, "features": m_features, "store": m_store, "config": m_config}


def check_case(target: str, kind: str, neutral: bool, before: dict, got: dict, baseline: dict) -> tuple[str, str]:
    """(outcome class, problem or '') of one case."""
    problems, changed = [], False
    for step, (status, value) in got.items():
        if status == "refused":
            if "\n" in value or "Traceback" in value or not any(n in value for n in NAMED):
                problems.append(f"{step}: message is not one line naming a file or key: {value!r}")
            continue
        changed |= value != baseline[step]
    if "store" in got and got["store"][0] == "refused" and _store_state() != before["store"]:
        problems.append("a refused store build changed the finished store")
    for name in ("predict-store", "predict-files"):
        if name in got and got[name][0] == "refused" and _read(f"{name}.tsv") != before[name]:
            problems.append(f"a refused {name} changed its finished output")
    if changed and (neutral or target == "store"):  # a damaged store is refused, and rebuilt as it was
        problems.append(f"a {'neutral' if neutral else 'store'} mutation ran to different outputs")
    outcome = "refused" if any(s == "refused" for s, _ in got.values()) else "changed" if changed else "same"
    return outcome, "; ".join(problems)


def test_fuzz_inputs(base, tmp_path):
    root, baseline = base
    rng = np.random.default_rng(SEED)
    outcomes: Counter = Counter()
    kinds: Counter = Counter()
    changed_by: Counter = Counter()
    failures = []
    for target, mutate in MUTATIONS.items():
        for i in range(CASES_PER_TARGET):
            case = tmp_path / f"{target}{i}"
            shutil.copytree(root, case)  # copy2: mtimes kept, so the copied store is current
            with contextlib.chdir(case):
                kind, neutral = mutate(rng, case)
                kinds[f"{target}:{kind}"] += 1
                before = {"store": _store_state(), **{n: _read(f"{n}.tsv") for n in ("predict-store",
                                                                                      "predict-files")}}
                try:
                    got = run_case(TARGET_STEPS[target])
                except Exception as exc:  # noqa: BLE001 - a traceback is the failure this test looks for
                    outcomes["traceback"] += 1
                    failures.append(f"{target}:{kind} (case {i}): {type(exc).__name__}: {exc}")
                    continue
                outcome, problem = check_case(target, kind, neutral, before, got, baseline)
            outcomes[outcome] += 1
            if outcome == "changed":
                changed_by[f"{target}:{kind}"] += 1
            if problem:
                failures.append(f"{target}:{kind} (case {i}): {problem}")
            shutil.rmtree(case)
    total = sum(outcomes.values())
    FUZZ_SUMMARY.append(f"fuzz (seed {SEED}): {total} cases over {len(kinds)} mutation kinds; outcomes "
                        + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) + f"; failures {len(failures)}")
    FUZZ_SUMMARY.append("ran to other outputs (valid input that says something else): "
                        + ", ".join(f"{k} {v}" for k, v in sorted(changed_by.items())))
    assert total >= 200
    assert not failures, "\n".join(failures[:20])
