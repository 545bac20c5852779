import json
from pathlib import Path

import numpy as np
import pytest

from hardmil.report import published
from hardmil.report.deltas import read_predictions
from hardmil.report.published import METRICS
from hardmil.report.tables import RunRef, aggregate, write_table
from hardmil.utils import InputError


def _runs(tmp_path, values):
    runs = []
    for (protocol, method, seed, fold), auc_value in values.items():
        d = tmp_path / method / protocol / f"seed{seed}" / f"fold{fold}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({m: 0.5 for m in METRICS} | {"auc": auc_value}))
        runs.append(RunRef.from_path(d / "metrics.json"))
    return runs


def test_aggregate_mean_std_and_standard_error(tmp_path):
    vals = {("paper", "abmil", s, f): v for (s, f), v in
            {(0, 0): 0.6, (0, 1): 0.8, (1, 0): 0.9, (1, 1): 0.9, (2, 0): 1.0, (2, 1): 0.8}.items()}
    pub = published.load("li2019")["li2019_table2"]
    rec, = aggregate(_runs(tmp_path, vals), {"abmil": "MIL Model [6]"}, pub)
    all_v = np.array(list(vals.values()))
    assert rec["auc_mean"] == pytest.approx(all_v.mean())
    assert rec["auc_std"] == pytest.approx(all_v.std(ddof=1))
    rep_means = np.array([0.7, 0.9, 0.9])
    assert rec["auc_se"] == pytest.approx(rep_means.std(ddof=1) / np.sqrt(3))
    assert rec["auc_published"] == 0.799 and rec["auc_diff"] == pytest.approx(all_v.mean() - 0.799)
    assert rec["fpr_published"] is None and rec["fpr_diff"] is None  # NA in the paper
    assert rec["n_runs"] == 6 and rec["n_repetitions"] == 3
    write_table([rec], tmp_path / "t.csv", tmp_path / "t.md", "T")
    md = (tmp_path / "t.md").read_text()
    assert "paper 0.799 ± 0.020" in md and "paper NA" not in md and "se NA" not in md


def test_missing_run_is_named(tmp_path):
    runs = _runs(tmp_path, {("paper", "abmil", 0, 0): 0.7})
    runs.append(RunRef("paper", "abmil", 0, 1, str(tmp_path / "abmil/paper/seed0/fold1/metrics.json")))
    with pytest.raises(FileNotFoundError, match="fold1/metrics.json"):
        aggregate(runs, {"abmil": "MIL Model [6]"}, {})


def test_run_path_parsing():
    r = RunRef.from_path("results/runs/d/e/gabmil/clean/seed3/fold12/metrics.json")
    assert (r.method, r.protocol, r.seed, r.fold) == ("gabmil", "clean", 3, 12)
    with pytest.raises(ValueError, match="not a run"):
        RunRef.from_path("results/x.json")


def test_transcribed_li2019_tables_have_the_papers_rows_and_columns():
    pub = published.load("li2019")
    assert list(pub["li2019_table1"]) == ["MIL Model [6]", "Our Model", "Our Model+SB", "Our Model+MB",
                                          "Our Model+FMB"]
    assert list(pub["li2019_table2"]) == ["MIL Model [6]", "SDR+SVM [17]", "Our Model", "Our Model+SB",
                                          "Our Model+MB", "Our Model+FMB"]
    for table in pub.values():
        for row in table.values():
            assert set(row) == {m for m in METRICS} | {f"{m}_se" for m in METRICS}
    assert pub["li2019_table2"]["Our Model+FMB"]["auc"] == 0.999
    assert pub["li2019_table1"]["MIL Model [6]"]["fpr"] is None


# --- paired Δ against each row's baseline, and publishable rendering ---------------------------------------
def _write_run(root, method, protocol, seed, fold, slides, labels, p1, metrics=None):
    from hardmil.eval.metrics import classification_metrics

    d = root / method / protocol / f"seed{seed}" / f"fold{fold}"
    d.mkdir(parents=True)
    probs = np.c_[1 - p1, p1]
    m = classification_metrics(labels, probs, 0.5) | (metrics or {})
    (d / "metrics.json").write_text(json.dumps(m))
    lines = ["slide\tcase\tlabel\tlabel_index\tprob_normal\tprob_tumor\tfold\tepoch"]
    lines += [f"{s}\t{s}\t{['normal', 'tumor'][y]}\t{y}\t{1 - p:.6f}\t{p:.6f}\t{fold}\t3"
              for s, y, p in zip(slides, labels, p1, strict=True)]
    (d / "predictions.tsv").write_text("\n".join(lines) + "\n")
    return RunRef.from_path(d / "metrics.json")


def _cohort(tmp_path, methods, n=40, seeds=2, folds=4, protocols=("paper",)):
    """Runs of ``methods`` ({key: function(labels, rng) -> P(tumour)}) on identical splits."""
    rng = np.random.default_rng(0)
    slides = np.array([f"slide_{i:03d}" for i in range(n)])
    labels = np.r_[np.ones(n // 2, int), np.zeros(n - n // 2, int)]
    runs = []
    for seed in range(seeds):
        fold_of = rng.permutation(np.arange(n) % folds)
        for fold in range(folds):
            sel = fold_of == fold
            for protocol in protocols:
                for method, fn in methods.items():
                    p1 = fn(labels[sel], np.random.default_rng([seed, fold, len(method)]))
                    runs.append(_write_run(tmp_path, method, protocol, seed, fold, slides[sel], labels[sel], p1))
    return runs


def _good(y, rng):
    return np.clip(0.5 + 0.35 * (2 * y - 1) + 0.1 * rng.standard_normal(len(y)), 0, 1)


def _noise(y, rng):
    return rng.random(len(y))


def test_paired_delta_columns_resolve_a_real_gain_and_not_a_copy(tmp_path):
    runs = _cohort(tmp_path, {"abmil": _noise, "mhim": _good, "copy": _noise})
    # 'copy' predicts exactly what abmil predicts (same generator seeds), so its Δ is 0 with a zero-width interval
    for r in [r for r in runs if r.method == "copy"]:
        base = Path(r.path.replace("/copy/", "/abmil/")).with_name("predictions.tsv")
        Path(r.path).with_name("predictions.tsv").write_text(base.read_text())
        Path(r.path).write_text(base.with_name("metrics.json").read_text())
    rows = {"abmil": "AB-MIL", "mhim": "MHIM-v2(AB-MIL)", "copy": "a copy"}
    versus = {"abmil": None, "mhim": "abmil", "copy": "abmil"}
    recs = aggregate(runs, rows, {}, ["auc", "accuracy_argmax"], versus=versus, n_boot=500)
    by = {r["method"]: r for r in recs}
    assert by["abmil"]["versus"] == "" and by["abmil"]["auc_delta"] is None
    mh = by["mhim"]
    assert mh["versus"] == "abmil" and mh["versus_label"] == "AB-MIL"
    assert mh["auc_delta"] == pytest.approx(mh["auc_mean"] - by["abmil"]["auc_mean"])  # the table's two means
    assert mh["auc_delta_lo"] > 0 and mh["auc_delta_resolved"] is True
    assert mh["delta_bags"] == 40 and mh["delta_pairs"] == 8
    assert (by["copy"]["auc_delta"], by["copy"]["auc_delta_lo"], by["copy"]["auc_delta_hi"]) == (0, 0, 0)
    assert by["copy"]["balanced_accuracy_delta_resolved"] is False
    write_table(recs, tmp_path / "t.csv", tmp_path / "t.md", "T", tex_path=tmp_path / "t.tex")
    md = (tmp_path / "t.md").read_text()
    assert "| Method | Key | Runs | AUC | Accuracy (argmax) | Compared with | Δ AUC [95 % CI] |" in md
    assert "| AB-MIL | `abmil` | 8 |" in md and "| baseline | — | — |" in md
    assert "[+0.000, +0.000] not resolved" in md and "] resolved" in md
    assert "paper " not in md and "NA" not in md and "accuracy_argmax" not in md
    csv_text = (tmp_path / "t.csv").read_text()
    assert "auc_delta_lo" in csv_text.splitlines()[0]
    # without comparisons the table renders without Δ columns
    plain = aggregate(runs, rows, {}, ["auc"])
    assert "auc_delta" not in plain[0]
    md2 = write_table(plain, tmp_path / "p.csv", tmp_path / "p.md", "T") or (tmp_path / "p.md").read_text()
    assert "Compared with" not in md2 and "Δ" not in md2


def test_threshold_metric_deltas_use_each_runs_own_threshold(tmp_path):
    """Δ accuracy / F1 compare the decisions each run made at its stored threshold: the Δ equals the difference
    of the table's two accuracy / F1 columns, and a run without a threshold is named."""
    from hardmil.eval.metrics import classification_metrics

    runs = _cohort(tmp_path, {"abmil": _noise, "mhim": _good})
    rng = np.random.default_rng(5)
    for r in runs:  # give every run its own threshold, and the accuracy / F1 it gives
        pred = read_predictions(Path(r.path).with_name("predictions.tsv"))
        thr = float(rng.uniform(0.3, 0.7))
        m = classification_metrics(pred["y"], pred["scores"], thr) | {"threshold": thr}
        Path(r.path).write_text(json.dumps(m))
    recs = aggregate(runs, {"abmil": "A", "mhim": "M"}, {}, ["accuracy", "f1"], versus={"mhim": "abmil"},
                     delta_metrics=["accuracy", "f1", "macro_f1"], n_boot=300)
    by = {r["method"]: r for r in recs}
    for m in ("accuracy", "f1"):
        assert by["mhim"][f"{m}_delta"] == pytest.approx(by["mhim"][f"{m}_mean"] - by["abmil"][f"{m}_mean"])
    assert by["mhim"]["accuracy_delta_resolved"] is True and by["mhim"]["macro_f1_delta"] > 0
    Path(runs[0].path).write_text(json.dumps({"auc": 0.5, "accuracy": 0.5, "f1": 0.5}))
    with pytest.raises(InputError, match="metrics.json: no decision threshold"):
        aggregate(runs, {"abmil": "A", "mhim": "M"}, {}, ["accuracy"], versus={"mhim": "abmil"},
                  delta_metrics=["accuracy"], n_boot=200)


def test_paired_delta_needs_identical_test_bags(tmp_path):
    runs = _cohort(tmp_path, {"abmil": _noise, "mhim": _good}, seeds=1, folds=2)
    pred = Path(next(r for r in runs if r.method == "mhim").path).with_name("predictions.tsv")
    lines = pred.read_text().splitlines()
    pred.write_text("\n".join([lines[0], lines[1].replace("slide_", "other_")] + lines[2:]) + "\n")
    from hardmil.utils import InputError

    with pytest.raises(InputError, match=r"mhim/paper/seed0/fold\d/predictions.tsv.*test bags differ"):
        aggregate(runs, {"abmil": "A", "mhim": "M"}, {}, ["auc"], versus={"mhim": "abmil"}, n_boot=200)
    with pytest.raises(ValueError, match="compared with 'nope'"):
        aggregate(runs, {"abmil": "A", "mhim": "M"}, {}, ["auc"], versus={"mhim": "nope"}, n_boot=200)


def test_survival_delta_is_the_c_index(tmp_path):
    from hardmil.report.deltas import paired_deltas

    rng = np.random.default_rng(1)
    cases = [f"case_{i}" for i in range(30)]
    time = rng.exponential(10, 30).round(2)
    event = (rng.random(30) < 0.7).astype(int)
    runs = []
    for method, risk in (("abmil", rng.standard_normal(30)), ("mhim", -time + 0.1 * rng.standard_normal(30))):
        for fold in range(2):
            sel = slice(fold * 15, fold * 15 + 15)
            d = tmp_path / method / "paper" / "seed0" / f"fold{fold}"
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps({"c_index": 0.5}))
            lines = ["case\tslides\ttime\tevent\ttime_bin\trisk\tfold\tepoch"]
            lines += [f"{c}\t{c}.svs\t{t}\t{e}\t0\t{r}\t{fold}\t1"
                      for c, t, e, r in zip(cases[sel], time[sel], event[sel], risk[sel], strict=True)]
            (d / "predictions.tsv").write_text("\n".join(lines) + "\n")
            runs.append(RunRef.from_path(d / "metrics.json"))
    res = paired_deltas(runs, {"mhim": "abmil"}, n_boot=300)[("paper", "mhim")]
    assert list(res) == ["c_index"] and res["c_index"]["delta"] > 0.2 and res["c_index"]["excludes_zero"]
    with pytest.raises(ValueError, match="'auc' does not apply to survival"):
        paired_deltas(runs, {"mhim": "abmil"}, ["auc"], n_boot=300)


def test_table_baselines_are_checked_and_derived():
    import copy

    import yaml

    from hardmil.config import check_references, table_versus, validate_config

    from .conftest import REPO

    schema = yaml.safe_load((REPO / "src/hardmil/schemas/config.schema.yaml").read_text())
    demo = validate_config(yaml.safe_load((REPO / "config/config.yaml").read_text()), schema)
    v = table_versus(demo, "li2019_table2")
    assert v == {"abmil": None, "li2019": "abmil", "li2019_sb": "li2019", "li2019_mb": "li2019",
                 "li2019_fmb": "li2019", "li2019_random": "li2019"}  # +FMB / control vs Li et al. stage 1
    v = table_versus(demo, "mhim_table2")
    assert v["mhim_v1_transmil"] == "transmil" and v["mhim_v2_dsmil"] == "dsmil" and v["dsmil"] == "abmil"
    for change, message in [
        (lambda t: t.update(baseline="nope"), r"tables.mhim_table2.baseline: 'nope' is not one of the table's rows"),
        (lambda t: t["rows"].update(dsmil={"row": "DSMIL [15]", "versus": "x"}),
         r"tables.mhim_table2.rows.dsmil.versus: 'x' is not one of the table's rows"),
        (lambda t: t["rows"].update(dsmil={"row": "DSMIL [15]", "versus": "dsmil"}), "compared with itself"),
    ]:
        cfg = copy.deepcopy(demo)
        change(cfg["tables"]["mhim_table2"])
        with pytest.raises(ValueError, match=message):
            check_references(cfg)
    cfg = copy.deepcopy(demo)
    cfg["tables"]["mhim_table2"]["rows"]["dsmil"] = {"row": "DSMIL [15]", "versus": "transmil"}
    del cfg["tables"]["mhim_table2"]["baseline"]
    check_references(cfg)
    v = table_versus(cfg, "mhim_table2")  # no table baseline: only derived / explicit comparisons remain
    assert v["dsmil"] == "transmil" and v["abmil"] is None and v["transmil"] is None
    assert v["mhim_v2_abmil"] == "abmil"


def test_columns_without_any_value_are_not_rendered():
    from hardmil.report.tables import to_latex, to_markdown

    rec = {"protocol": "clean", "method": "abmil", "label": "AB-MIL", "paper_row": "", "n_runs": 3,
           "n_repetitions": 1}
    for m, v in (("auc", 0.8), ("fpr", float("nan"))):
        rec.update({f"{m}_mean": v, f"{m}_std": float("nan"), f"{m}_se": float("nan"), f"{m}_published": None,
                    f"{m}_published_se": None, f"{m}_diff": None})
    md, tex = to_markdown([rec], "T"), to_latex([rec], "T")
    assert "| Method | Key | Runs | AUC |" in md and "FPR" not in md and "NA" not in md
    assert "FPR" not in tex and r"\begin{tabular}{lc}" in tex and "parentheses" not in tex
