"""Checkpoints load with weights_only (no code runs from a .pt), are byte-reproducible, carry MHIM's teacher
assessment through a resume (tests/test_reliability.py); ``hardmil predict`` gives the run's own predictions."""

import csv
import json

import h5py
import pytest
import torch

from hardmil.checkpoint import load_model
from hardmil.cli import main as cli
from hardmil.data.bags import read_manifest
from hardmil.data.splits import make_splits, write_splits
from hardmil.data.store import build_store
from hardmil.train.run import run_fold
from hardmil.utils import InputError

from .conftest import make_cohort

CLASSES = ["neg", "pos"]


class Payload:
    """Unpickling this creates ``marker``: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def fold(tmp_path_factory):
    root = tmp_path_factory.mktemp("fold")
    feats, manifest = make_cohort(root, n_bags=16, dim=8)
    write_splits(root / "splits.tsv", make_splits(read_manifest(manifest, CLASSES), 4, 0, "paper"))
    kw = dict(splits=root / "splits.tsv", features_dir=feats, classes=CLASSES, fold=0, protocol="paper", seed=0,
              train_cfg={"epochs": 3, "patience": 10}, progress=False)
    run_fold(out_dir=root / "abmil", model="abmil", model_params={}, **kw)
    return root, feats, manifest, kw


def _evil(path, marker):
    torch.save({"model": "abmil", "model_config": {}, "state_dict": Payload(marker)}, path)


@pytest.mark.parametrize("where", ["teacher", "init_from", "model", "checkpoint"])
def test_a_pickle_with_code_is_refused_before_it_runs(fold, tmp_path, where):
    root, feats, manifest, kw = fold
    marker = tmp_path / "payload-ran"
    evil = tmp_path / ("checkpoint.pt" if where == "checkpoint" else "model.pt")
    _evil(evil, marker)
    with pytest.raises(InputError, match=rf"{evil.name}: cannot load .* safely"):
        if where == "teacher":
            run_fold(out_dir=tmp_path / "r", model="mhim", model_params={"baseline": "abmil"}, teacher=evil, **kw)
        elif where == "init_from":
            run_fold(out_dir=tmp_path / "r", model="abmil", model_params={}, init_from=evil, **kw)
        elif where == "model":
            load_model(evil)
        else:  # a resume checkpoint in the run folder
            run_fold(out_dir=tmp_path, model="abmil", model_params={}, **kw)
    assert not marker.exists()


def test_model_pt_is_byte_reproducible(fold, tmp_path):
    root, feats, manifest, kw = fold
    run_fold(out_dir=tmp_path / "again", model="abmil", model_params={}, **kw)
    assert (tmp_path / "again" / "model.pt").read_bytes() == (root / "abmil" / "model.pt").read_bytes()
    saved = torch.load(root / "abmil" / "model.pt", weights_only=True)  # plain data only
    assert saved["feature_mean"] is None and saved["classes"] == CLASSES  # raw features: the reference recipe


@pytest.mark.parametrize("kind", ["folder", "store"])
def test_predict_gives_the_runs_own_test_predictions(fold, tmp_path, kind):
    root, feats, manifest, kw = fold
    features = feats
    if kind == "store":
        slides = [r["slide"] for r in read_manifest(manifest, CLASSES)]
        build_store(slides, feats, tmp_path / "store")
        features = tmp_path / "store"
    out, att = tmp_path / "p.tsv", tmp_path / "att.h5"
    assert cli(["predict", "--model", str(root / "abmil" / "model.pt"), "--features", str(features),
                "--out", str(out), "--attention", str(att)]) == 0
    with open(out) as fh:
        ours = {r["slide"]: r for r in csv.DictReader(fh, delimiter="\t")}
    with open(root / "abmil" / "predictions.tsv") as fh:
        run = list(csv.DictReader(fh, delimiter="\t"))
    assert len(ours) == 16 and run
    for r in run:
        assert float(ours[r["slide"]]["prob_pos"]) == pytest.approx(float(r["prob_pos"]), abs=1e-6)
    threshold = json.loads((root / "abmil" / "metrics.json").read_text())["threshold"]
    for r in ours.values():
        assert r["predicted"] == ("pos" if float(r["prob_pos"]) >= threshold else "neg")
    with h5py.File(att) as f:
        assert set(f) == set(ours)
        a = f[next(iter(ours))]
        assert a["attention"].shape[0] == a["coords"].shape[0] and float(a["attention"][()].sum()) == pytest.approx(1)
