"""The claims report (hardmil.report.claims): pairing of runs, Δ with interval, localisation against the known
witnesses (with really trained fold models), the table and the forest plot, and the workflow's DAG."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from hardmil.data.simulated import HARD, NEGATIVE, SALIENT, SUBTLE, BagModel, Bank, make_simulated
from hardmil.report.claims import bag_localisation, claims_records, pair_runs, write_claims
from hardmil.utils import InputError

from .conftest import REPO


def write_predictions(path, labels, probs, fold=0):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["slide", "case", "label", "label_index", "prob_neg", "prob_pos", "fold", "epoch"])
        for i, (y, p) in enumerate(zip(labels, probs, strict=True)):
            w.writerow([f"b{fold}_{i}", f"b{fold}_{i}", "pos" if y else "neg", y, 1 - p, p, fold, 1])


def fake_runs(tmp_path, name, labels, scores, folds=2):
    runs = []
    for k in range(folds):
        sl = slice(k, None, folds)
        path = tmp_path / f"{name}_{k}.tsv"
        write_predictions(path, labels[sl], scores[sl], fold=k)
        runs.append({"seed": 0, "fold": k, "predictions": str(path)})
    return runs


def test_pairing_identical_runs_gives_zero_and_a_gain_is_found(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 1, 1] * 75)  # both classes in each of the 2 interleaved folds
    base = np.clip(0.5 + 0.15 * (2 * y - 1) + rng.normal(0, 0.25, len(y)), 0, 1)
    better = np.clip(0.5 + 0.35 * (2 * y - 1) + rng.normal(0, 0.2, len(y)), 0, 1)
    b = fake_runs(tmp_path, "base", y, base)
    same = pair_runs(b, b, "pos")
    assert np.array_equal(same["method"], same["base"]) and len(same["y"]) == 300
    from hardmil.report.claims import delta_record

    rec = delta_record(same, n_boot=300)
    assert rec["delta"] == 0 and not rec["excludes_zero"] and rec["n_bags"] == 300
    rec = delta_record(pair_runs(fake_runs(tmp_path, "m", y, better), b, "pos"), n_boot=300)
    assert rec["delta"] > 0.1 and rec["excludes_zero"] and rec["lo"] > 0 and rec["n_folds"] == 2
    assert rec["auc"] > rec["auc_baseline"]


def test_pairing_refuses_runs_on_different_bags(tmp_path):
    y = np.array([0, 1] * 10)
    a = fake_runs(tmp_path, "a", y, np.linspace(0, 1, 20))
    other = tmp_path / "other.tsv"
    write_predictions(other, y[:8], np.linspace(0, 1, 8), fold=0)
    with pytest.raises(InputError, match="test bags differ"):
        pair_runs([{**a[0], "predictions": str(other)}], a, "pos")
    with pytest.raises(InputError, match="no run for seed 0 fold 1"):
        pair_runs(a, a[:1], "pos")


def test_bag_localisation_against_known_kinds():
    kind = np.array([NEGATIVE] * 6 + [SALIENT, SUBTLE, HARD, HARD])
    att = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.2, 0.5, 0.05])
    out = bag_localisation(att, kind)
    # witnesses (0.9, 0.2) vs 8 non-witnesses: 0.9 beats all 8, 0.2 beats 7 of 8 -> 15 / 16
    assert out["loc_auc"] == pytest.approx(15 / 16)
    # subtle (0.2) vs non-witnesses, salient left out: 7 / 8
    assert out["loc_auc_subtle"] == pytest.approx(7 / 8)
    # witnesses vs hard negatives (0.5, 0.05): 0.9 beats both, 0.2 beats one -> 3 / 4
    assert out["loc_auc_vs_hard"] == pytest.approx(3 / 4)
    assert np.isnan(bag_localisation(att[:7], kind[:7])["loc_auc_vs_hard"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny simulated cohort and two really trained methods (AB-MIL, and MHIM-v2 over it) on 2 folds."""
    from hardmil.train.run import run_fold

    root = tmp_path_factory.mktemp("claims")
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(200, 8)).astype(np.float32)
    tumour = rng.normal(size=(80, 8)).astype(np.float32)
    tumour[:, 0] += 5
    bank = Bank(normal, tumour, {})
    classes = ["neg", "pos"]
    splits = root / "splits.tsv"
    make_simulated(bank, BagModel(n_train=24, n_test=16, bag_size=(20, 40), witness_rate=(0.1, 0.2), seed=0),
                   classes=classes, features_dir=root / "f", manifest=root / "m.tsv", truth=root / "t.h5",
                   summary=root / "s.json", splits={("clean", 0): splits}, folds=2)
    cfg = {"epochs": 3, "patience": 3, "amp": False, "lr": 0.002}
    jobs = {"abmil": [], "mhim": []}
    for k in range(2):
        for method, model, params, extra in (
                ("abmil", "abmil", {}, {}),
                ("mhim", "mhim", {"baseline": "abmil", "version": "v2", "mask_high": 0.05, "rsm_ratio": 0.2},
                 {"teacher": root / "abmil" / f"fold{k}" / "model.pt"})):
            out = root / method / f"fold{k}"
            run_fold(splits=splits, features_dir=root / "f", classes=classes, fold=k, protocol="clean", seed=0,
                     model=model, model_params=params, train_cfg=cfg, out_dir=out, progress=False, **extra)
            jobs[method].append({"seed": 0, "fold": k, "predictions": str(out / "predictions.tsv"),
                                 "model": str(out / "model.pt")})
    return root, {"sim": jobs}


def test_claims_records_table_and_forest_from_trained_runs(trained, tmp_path):
    root, jobs = trained
    claims = {"regimes": {"sim": "regime A"}, "n_boot": 200, "level": 0.95,
              "rows": {"abmil": {"row": "AB-MIL"}, "mhim": {"row": "MHIM-v2", "baseline": "abmil"}}}
    deltas, locs = claims_records(claims, jobs, {"sim": ["neg", "pos"]}, features={"sim": root / "f"},
                                  truth_files={"sim": root / "t.h5"})
    assert len(deltas) == 1 and deltas[0]["n_bags"] == 16 and deltas[0]["lo"] <= deltas[0]["delta"] <= deltas[0]["hi"]
    sd = deltas[0]["fold_delta_sd"]
    assert deltas[0]["n_folds"] == 2 and deltas[0]["folds_to_resolve"] == int(np.ceil((1.96 * sd / 0.02) ** 2))
    assert [r["method"] for r in locs] == ["abmil", "mhim"]
    # failed runs: fold runs below the default 0.6, recounted from each fold's predictions
    for r in locs:
        from hardmil.report.claims import fold_aucs

        a = fold_aucs(jobs["sim"][r["method"]], "pos")
        assert r["runs"] == 2 and r["failed_runs"] == int((a < 0.6).sum())
    assert deltas[0]["verdict"] in ("better", "worse", "within ±0.03", "not resolved")
    # recomputed independently: every positive test bag under its own fold's model, attention vs the truth file
    from sklearn.metrics import roc_auc_score

    from hardmil.checkpoint import load_model
    from hardmil.data.bags import read_features
    from hardmil.data.simulated import read_truth
    from hardmil.report.heatmaps import instance_maps

    truth = read_truth(root / "t.h5")
    for r in locs:
        aucs = []
        for run in jobs["sim"][r["method"]]:
            net, saved = load_model(run["model"])
            mean, std = saved["feature_mean"], saved["feature_std"]
            with open(run["predictions"], newline="") as fh:
                positives = [row["slide"] for row in csv.DictReader(fh, delimiter="\t") if row["label"] == "pos"]
            for slide in positives:
                att = instance_maps(net, read_features(root / "f" / f"{slide}.h5")[0], mean, std)[0]["attention"]
                aucs.append(roc_auc_score(np.isin(truth[slide], [SALIENT, SUBTLE]), att))
        assert r["n_bags"] == len(aucs) == 8 and r["loc_auc"] == pytest.approx(np.mean(aucs))
        assert r["loc_auc_vs_hard"] is None  # no hard negatives in this cohort
    out = {k: tmp_path / f"c.{k}" for k in ("md", "tsv", "loc", "png")}
    write_claims(deltas, locs, md=out["md"], tsv=out["tsv"], localisation_tsv=out["loc"], forest=out["png"],
                 title="T", note="N")
    md = out["md"].read_text()
    assert "| regime A | MHIM-v2 | AB-MIL |" in md and "localisation AUC" in md
    assert out["png"].read_bytes()[:4] == b"\x89PNG"
    with open(out["tsv"], newline="") as fh:
        assert next(csv.DictReader(fh, delimiter="\t"))["method"] == "mhim"


def test_markdown_says_not_resolved_when_the_interval_holds_zero(tmp_path):
    from hardmil.report.claims import claims_markdown

    d = {"regime": "r", "dataset": "sim", "method": "m", "baseline": "b", "row": "M", "baseline_row": "B",
         "auc": 0.8, "auc_baseline": 0.79, "delta": 0.01, "lo": -0.02, "hi": 0.04, "excludes_zero": False,
         "fold_delta_mean": 0.01, "fold_delta_sd": 0.03, "n_folds": 8}
    locs = [{"dataset": "sim", "method": "m", "runs": 8, "failed_runs": 0, "regime": "r", "row": "M",
             "bag_auc_mean": 0.8, "bag_auc_sd": 0.1},
            {"dataset": "sim", "method": "b", "runs": 8, "failed_runs": 3, "regime": "r", "row": "B",
             "bag_auc_mean": 0.7, "bag_auc_sd": 0.2}]
    md = claims_markdown([d, {**d, "delta": -0.05, "lo": -0.08, "hi": -0.02, "excludes_zero": True}], locs,
                         title="T", note="")
    assert "| not resolved |" in md and "| worse |" in md and "folds to resolve ±0.02" in md
    assert "| 8 | 0/8 / 3/8 |" in md  # runs done, failed runs of the method / of its baseline


@pytest.mark.parametrize("lo, hi, excludes, expected", [(-0.02, 0.025, False, "within ±0.03"),
                                                         (-0.02, 0.04, False, "not resolved"),
                                                         (0.01, 0.05, True, "better"),
                                                         (-0.035, 0.01, False, "not resolved")])
def test_verdict_separates_resolved_equivalent_and_unresolved(lo, hi, excludes, expected):
    from hardmil.report.claims import verdict

    assert verdict((lo + hi) / 2, lo, hi, excludes, 0.03) == expected


@pytest.mark.workflow
def test_claims_config_dry_run_plans_the_benchmark(tmp_path):
    """config/claims.yaml: the bank cohort, one simulated job per regime (its own splits, rule splits never
    runs for them), every method's runs under protocol clean, and the claims report."""
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                          "--configfile", str(REPO / "config/claims.yaml"), "-n", "--cores", "2", "--quiet", "rules"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    counts = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["simulated"] == 3 and counts["claims"] == 1 and "splits" not in counts
    assert counts["simulated_splits"] == 3 * 2  # one per regime x protocol x seed
    assert counts["synthetic_cohort"] == 1 and counts["hardneg"] == 2 * 3 * 2  # train.group: seed, seeds 0-1
    # group: seed -> one job per method, regime and seed (7 methods: MHIM's teacher, abmil_mhim, is one)
    assert counts["train"] == 7 * 3 * 2
