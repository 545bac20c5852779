"""End to end with Snakemake: survival from simulated times (Table 4 style) and cross-source evaluation
(Table 5 style): each fold's trained model is tested on another dataset without retraining."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from hardmil.eval.external import evaluate_external
from hardmil.utils import InputError

from .conftest import make_cohort
from .test_survival import survival_cohort
from .test_workflow import snakemake

pytestmark = pytest.mark.workflow


def test_survival_and_cross_source_workflow(tmp_path):
    feats_a, man_a = make_cohort(tmp_path / "a", n_bags=12, dim=8, seed=1)
    feats_b, man_b = make_cohort(tmp_path / "b", n_bags=10, dim=8, seed=2)
    feats_s, _ = survival_cohort(tmp_path / "s", n_cases=24, seed=3)
    feats_t, man_t = survival_cohort(tmp_path / "t", n_cases=12, seed=4)
    cfg = {
        "datasets": {
            "src_a": {"classes": ["neg", "pos"], "manifest": str(man_a), "features_dir": str(feats_a)},
            "ext_b": {"classes": ["neg", "pos"], "manifest": str(man_b), "features_dir": str(feats_b),
                      "external_only": True},
            "surv": {"task": "survival", "features_dir": str(feats_s),
                     "simulate": {"from": str(tmp_path / "s" / "slides.tsv"), "seed": 3, "beta": 2.0}},
            "surv_ext": {"task": "survival", "manifest": str(man_t), "features_dir": str(feats_t),
                         "external_only": True},
        },
        "cv": {"folds": 2, "seeds": [0]},
        "protocols": ["paper", "clean"],
        "methods": {"abmil": {"model": "abmil"}, "meanmil": {"model": "meanmil"}},
        "train": {"epochs": 3, "patience": 5, "group": "method"},
        "external": {"cptac_like": {"train": "src_a", "test": "ext_b"},
                     "surv_x": {"train": "surv", "test": "surv_ext", "methods": ["abmil"]}},
        "tables": {
            "table4": {"dataset": "surv", "rows": {"abmil": "AB-MIL", "meanmil": "Mean-MIL"}, "metrics": ["c_index"]},
            "table5_auc": {"dataset": "src_a", "external": "cptac_like", "rows": {"abmil": "AB-MIL"},
                           "metrics": ["auc", "accuracy"]},
            "table5_cindex": {"dataset": "surv", "external": "surv_x", "rows": {"abmil": "AB-MIL"},
                              "metrics": ["c_index"]},
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "results"
    assert (out / "manifests/surv.tsv").exists()  # simulated by the workflow
    for protocol in ("paper", "clean"):
        for fold in (0, 1):
            tail = f"{protocol}/seed0/fold{fold}"
            ext = out / f"external/cptac_like/provided/abmil/{tail}"
            m = json.loads((ext / "metrics.json").read_text())
            assert m["n_test"] == 10 and m["model"].endswith(f"runs/src_a/provided/abmil/{tail}/model.pt")
            trained = torch.load(out / f"runs/src_a/provided/abmil/{tail}/model.pt", weights_only=False)
            assert m["threshold"] == trained["threshold"]  # the training fold's threshold, not re-chosen
            preds = list(csv.DictReader(open(ext / "predictions.tsv"), delimiter="\t"))
            assert sorted(p["slide"] for p in preds) == [f"s{i:03d}_0" for i in range(10)]
            s = json.loads((out / f"external/surv_x/provided/abmil/{tail}/metrics.json").read_text())
            assert s["n_test"] == 12 and 0 <= s["c_index"] <= 1
            run = json.loads((out / f"runs/surv/provided/abmil/{tail}/metrics.json").read_text())
            assert 0 <= run["c_index"] <= 1 and run["n_test"] == 12
    assert not (out / "external/surv_x/provided/meanmil").exists()  # only the listed methods
    assert not (out / "runs/ext_b").exists() and not (out / "splits/ext_b").exists()  # external_only
    t4 = list(csv.DictReader(open(out / "tables/table4.csv")))
    assert {r["method"] for r in t4} == {"abmil", "meanmil"} and "c_index_mean" in t4[0]
    assert "C-index" in (out / "tables/table4.md").read_text()
    t5 = list(csv.DictReader(open(out / "tables/table5_auc.csv")))
    aucs = [json.loads((out / f"external/cptac_like/provided/abmil/paper/seed0/fold{f}/metrics.json").read_text())
            ["auc"] for f in (0, 1)]
    paper = next(r for r in t5 if r["protocol"] == "paper")
    assert float(paper["auc_mean"]) == pytest.approx(np.mean(aucs), abs=1e-5)
    assert "Cross-source" in (out / "tables/table5_cindex.md").read_text()


def test_external_refuses_a_mismatched_dataset(tmp_path):
    from hardmil.data.bags import read_manifest
    from hardmil.data.splits import make_splits, write_splits
    from hardmil.train.run import run_fold

    feats, manifest = make_cohort(tmp_path / "a", n_bags=8, dim=8)
    write_splits(tmp_path / "splits.tsv", make_splits(read_manifest(manifest, ["neg", "pos"]), 2, 0, "paper"))
    run_fold(splits=tmp_path / "splits.tsv", features_dir=feats, classes=["neg", "pos"], fold=0, protocol="paper",
             seed=0, model="abmil", model_params={}, train_cfg={"epochs": 1}, out_dir=tmp_path / "r", progress=False)
    model = tmp_path / "r" / "model.pt"
    other, man_o = make_cohort(tmp_path / "o", n_bags=4, dim=6)
    with pytest.raises(InputError, match="feature dimension 6 != 8"):
        evaluate_external(model_path=model, manifest=man_o, features_dir=other, out_dir=tmp_path / "x",
                          classes=["neg", "pos"])
    with pytest.raises(InputError, match="differ from the training classes"):
        evaluate_external(model_path=model, manifest=manifest, features_dir=feats, out_dir=tmp_path / "x",
                          classes=["pos", "neg"])
    with pytest.raises(InputError, match="trained for classification"):
        evaluate_external(model_path=model, manifest=manifest, features_dir=feats, out_dir=tmp_path / "x",
                          task="survival")
    assert not (tmp_path / "x").exists()  # nothing written on failure
