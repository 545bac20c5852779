"""MHIM-v2 transcriptions (Tables 2-12), configurable tables against them, the efficiency table."""

import json

import numpy as np
import pytest

from hardmil.report import published
from hardmil.report.efficiency import efficiency_records
from hardmil.report.figures import sweep_figure, sweep_panels
from hardmil.report.tables import RunRef, aggregate, table_spec, write_table
from hardmil.train.efficiency import runs_timing

R50_ROWS_T2 = ["AB-MIL [14]", "CLAM [17]", "DSMIL [15]", "TransMIL [9]", "DTFD-MIL [13]", "IBMIL [6]",
               "MHIM(AB-MIL) [28]", "MHIM(TransMIL) [28]", "MHIM(DSMIL) [28]", "R2T-MIL [92]", "2DMamba [48]",
               "MHIM-v2(AB-MIL)", "MHIM-v2(TransMIL)", "MHIM-v2(DSMIL)"]
SHORT_ROWS = ["AB-MIL", "CLAM", "DSMIL", "TransMIL", "DTFD-MIL", "IBMIL", "MHIM(AB.)", "MHIM(Tr.)", "MHIM(DS.)",
              "R2T-MIL", "2DMamba", "MHIM-v2(AB.)", "MHIM-v2(Tr.)", "MHIM-v2(DS.)"]


def _shape(table):
    rows = published.load_long()
    sel = [r for r in rows if r["table"] == table]
    return sel, {(r["encoder"], r["dataset"], r["baseline"], r["metric"]) for r in sel}


def test_every_mhim_table_is_transcribed_with_the_papers_rows_and_columns():
    assert sorted(published.tables_of()) == sorted(f"mhim2025_table{i}" for i in range(2, 13))
    sel, cols = _shape("mhim2025_table2")
    assert cols == {(e, d, "", m) for e in ("R50", "PLIP") for d in ("camelyon", "tcga_nsclc")
                    for m in ("accuracy", "auc", "f1")}
    for enc in ("R50", "PLIP"):
        assert list(dict.fromkeys(r["row"] for r in sel if r["encoder"] == enc)) == R50_ROWS_T2
    assert all(r["std"] is not None for r in sel)
    sel, cols = _shape("mhim2025_table3")
    assert len(sel) == 2 * 14 * 3 and list(dict.fromkeys(r["row"] for r in sel))[:6] == SHORT_ROWS[:6]
    sel, cols = _shape("mhim2025_table4")
    assert cols == {(e, d, "", "c_index") for e in ("R50", "UNI") for d in ("tcga_blca", "tcga_luad", "tcga_lusc")}
    assert list(dict.fromkeys(r["row"] for r in sel)) == SHORT_ROWS
    sel, cols = _shape("mhim2025_table5")
    assert cols == {("R50", "cptac_nsclc", "", "auc"), ("PLIP", "cptac_nsclc", "", "auc"),
                    ("R50", "cptac_luad", "", "c_index"), ("UNI", "cptac_luad", "", "c_index")}
    assert list(dict.fromkeys(r["row"] for r in sel)) == ["CLAM", "R2T-MIL", "AB-MIL", "MHIM(AB.)", "MHIM-v2(AB.)",
                                                         "TransMIL", "MHIM(Tr.)", "MHIM-v2(Tr.)"]
    sel, _ = _shape("mhim2025_table6")
    assert list(dict.fromkeys(r["row"] for r in sel)) == ["ABMIL", "DTFD-MIL", "R2T-MIL", "MHIM(AB.)",
                                                         "MHIM-v2(AB.)", "TransMIL", "MHIM(Trans.)", "MHIM-v2(Trans.)"]
    assert len(sel) == 8 * 7
    for t, rows in (("mhim2025_table7", ["Baseline", "+RHSM", "+RHSM+GRN", "+RHSM+CL", "+RHSM+GRN+CL"]),
                    ("mhim2025_table8", ["Baseline", "Attention", "Instance Probability"]),
                    ("mhim2025_table10", ["Baseline", "Student copy", "Init.", "Momentum", "Init.+Momentum"])):
        sel, cols = _shape(t)
        assert list(dict.fromkeys(r["row"] for r in sel)) == rows
        assert cols == {(e, d, b, "auc") for e in ("R50", "PLIP") for d in ("camelyon", "tcga_nsclc")
                        for b in ("abmil", "transmil")}
    sel, _ = _shape("mhim2025_table9")
    assert len(sel) == 10 * 5 and {r["baseline"] for r in sel} == {"abmil", "transmil"}
    sel, _ = _shape("mhim2025_table11")
    assert list(dict.fromkeys(r["row"] for r in sel)) == ["AB-MIL", "MHIM-v2(AB.)", "TransMIL", "MHIM-v2(Tr.)",
                                                         "CLAM-SB", "DTFD-MIL", "R2T-MIL"]
    assert all(r["delta"] is not None for r in sel)
    sel, _ = _shape("mhim2025_table12")
    assert [r["row"] for r in sel][::4] == ["MHIM-v2(AB.)", "w/o Decay", "w/o RHSM", "MHIM-v2(Tr.)", "w/o Decay",
                                            "w/o RHSM"]


@pytest.mark.parametrize(("table", "kw", "row", "metric", "value", "std"), [
    ("mhim2025_table2", {"encoder": "R50", "dataset": "camelyon"}, "MHIM-v2(TransMIL)", "auc", 0.9347, 0.0057),
    ("mhim2025_table2", {"encoder": "PLIP", "dataset": "tcga_nsclc"}, "MHIM-v2(DSMIL)", "f1", 0.9258, 0.0164),
    ("mhim2025_table3", {"encoder": "R50"}, "2DMamba", "accuracy", 0.8753, 0.017),
    ("mhim2025_table4", {"encoder": "UNI", "dataset": "tcga_luad"}, "MHIM-v2(AB.)", "c_index", 0.677, 0.045),
    ("mhim2025_table5", {"encoder": "UNI"}, "TransMIL", "c_index", 0.533, 0.03),
    ("mhim2025_table7", {"encoder": "PLIP", "dataset": "camelyon", "baseline": "transmil"}, "+RHSM", "auc",
     0.939, None),
    ("mhim2025_table9", {"encoder": "R50", "dataset": "camelyon", "baseline": "transmil"}, "+RSM", "auc", 0.93,
     None),
    ("mhim2025_table12", {"encoder": "PLIP", "dataset": "camelyon", "baseline": "transmil"}, "w/o Decay", "auc",
     0.944, None),
])
def test_spot_values_against_the_paper(table, kw, row, metric, value, std):
    cell = published.long_values(table, **kw)[row]
    assert cell[metric] == pytest.approx(value)
    assert (cell[f"{metric}_std"] is None) if std is None else cell[f"{metric}_std"] == pytest.approx(std)


def test_units_deltas_and_ambiguity():
    t6 = published.long_values("mhim2025_table6", dataset="camelyon")
    assert t6["TransMIL"]["peak_memory"] == 10.6 and t6["MHIM-v2(AB.)"]["parameters"] == 1.64
    assert t6["ABMIL"]["inference_slides_per_second"] == 1250 and t6["ABMIL"]["auc"] == pytest.approx(0.9159)
    assert published.long_values("mhim2025_table9", encoder="R50", dataset="camelyon",
                                 baseline="transmil")["+RSM"]["peak_memory"] == 5.5
    assert published.long_values("mhim2025_table11", encoder="R50", dataset="camelyon")["MHIM-v2(Tr.)"][
        "auc_delta"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="ambiguous"):
        published.long_values("mhim2025_table2", dataset="camelyon")
    with pytest.raises(ValueError, match="no published table"):
        published.long_values("mhim2025_table99")


def _run(tmp_path, method, protocol, seed, fold, skill=0.0, **metrics):
    d = tmp_path / method / protocol / f"seed{seed}" / f"fold{fold}"
    d.mkdir(parents=True)
    extra = {"n_parameters": 100, "timing": {"seconds_per_epoch": 1.0 + fold}}
    (d / "metrics.json").write_text(json.dumps(metrics | extra))
    # out-of-fold predictions of 8 test slides (the paired Δ reads them): P(tumour) rises with `skill`
    rng = np.random.default_rng([fold, seed])
    y = np.array([0, 1] * 4)
    p1 = np.clip(0.5 + skill * (y - 0.5) + 0.3 * rng.standard_normal(8), 0.01, 0.99)
    lines = ["slide\tcase\tlabel\tlabel_index\tprob_normal\tprob_tumor\tfold\tepoch"]
    lines += [f"s{fold}_{i}\tc{fold}_{i}\t{'nt'[t]}\t{t}\t{1 - q}\t{q}\t{fold}\t1"
              for i, (t, q) in enumerate(zip(y, p1, strict=True))]
    (d / "predictions.tsv").write_text("\n".join(lines) + "\n")
    return d / "metrics.json"


def test_mhim_table_from_config_with_per_row_baseline(tmp_path):
    tcfg = {"published": "mhim2025_table7", "published_encoder": "R50", "published_dataset": "camelyon",
            "metrics": ["auc"], "rows": {"abmil": {"row": "Baseline", "baseline": "abmil"},
                                         "transmil": {"row": "Baseline", "baseline": "transmil"},
                                         "mine": {"row": "our extra row", "in_paper": False}}}
    rows, pub, spread = table_spec(tcfg)
    assert spread == "std" and pub["Baseline [transmil]"]["auc"] == pytest.approx(0.912)
    runs = [RunRef.from_path(_run(tmp_path, m, p, 0, f, auc=0.9 + 0.01 * f))
            for m in ("abmil", "transmil", "mine") for p in ("paper", "clean") for f in range(2)]
    recs = aggregate(runs, rows, pub, ["auc"], spread)
    by = {(r["protocol"], r["method"]): r for r in recs}
    assert len(recs) == 6
    assert by[("clean", "transmil")]["auc_diff"] == pytest.approx(0.905 - 0.912)
    assert by[("paper", "mine")]["auc_published"] is None
    write_table(recs, tmp_path / "t.csv", tmp_path / "t.md", "T7", tex_path=tmp_path / "t.tex")
    assert "paper 0.916, diff. -0.011" in (tmp_path / "t.md").read_text()  # AB-MIL baseline: 91.6
    assert r"\begin{tabular}{lc}" in (tmp_path / "t.tex").read_text()
    with pytest.raises(ValueError, match="fold0/metrics.json: no metric 'c_index'"):
        aggregate(runs, rows, pub, ["c_index"], spread)
    with pytest.raises(ValueError, match="'AB-MIL' .* not a row of mhim2025_table2"):
        table_spec({"published": "mhim2025_table2", "published_encoder": "R50", "published_dataset": "camelyon",
                    "rows": {"abmil": "AB-MIL"}})


def test_efficiency_table_and_missing_measurement(tmp_path):
    paths = [_run(tmp_path, "abmil", "paper", 0, f, auc=0.9) for f in range(3)]
    timing = runs_timing(paths)
    assert timing["train_seconds_per_epoch"] == pytest.approx(2.0) and timing["n_parameters"] == 100
    eff = tmp_path / "abmil.json"
    eff.write_text(json.dumps({**timing, "protocol": "paper", "peak_memory_bytes": 2.3e9, "peak_memory_kind": "x",
                               "inference_slides_per_second": 1000.0, "device": "cpu"}))
    rows, pub, _ = table_spec({"published": "mhim2025_table6", "published_dataset": "camelyon",
                               "rows": {"abmil": "ABMIL"}})
    rec, = efficiency_records([eff], rows, pub)
    assert rec["parameters_mean"] == pytest.approx(1e-4) and rec["parameters_published"] == 0.66
    assert rec["peak_memory_mean"] == pytest.approx(2.3) and rec["peak_memory_diff"] == pytest.approx(0.0)
    assert rec["train_seconds_per_epoch_diff"] == pytest.approx(2.0 - 3.1)
    write_table([rec], tmp_path / "e.csv", tmp_path / "e.md", "T6")
    with pytest.raises(FileNotFoundError, match="dtfd.json"):
        efficiency_records([eff, tmp_path / "dtfd.json"], rows, pub)


def test_sweep_panels_read_each_methods_runs_and_name_a_missing_one(tmp_path):
    paths = {m: [_run(tmp_path, m, "paper", 0, f, skill=k, auc=a + 0.01 * f) for f in range(4)]
             for m, a, k in (("rsm10", 0.8, 0.9), ("rsm50", 0.7, 0.0), ("abmil", 0.75, 0.0))}
    cfg = {"metric": "auc", "panels": {"AB-MIL": {"xlabel": "mask ratio", "baseline": "abmil",
                                                  "series": {"RSM only": {0.1: "rsm10", 0.5: "rsm50"}}}}}
    panels = sweep_panels(cfg, lambda m: paths[m])
    assert panels["AB-MIL"]["series"]["RSM only"][0.5] == pytest.approx([0.7, 0.71, 0.72, 0.73])
    assert panels["AB-MIL"]["baseline"][0] == "abmil"
    d = panels["AB-MIL"]["deltas"]["RSM only"]
    # rsm50 predicts exactly what abmil predicts (same seeds, no skill): Δ 0, zero-width interval, not resolved
    assert (d[0.5]["delta"], d[0.5]["lo"], d[0.5]["hi"], d[0.5]["excludes_zero"]) == (0, 0, 0, False)
    assert d[0.1]["delta"] > 0.2 and d[0.1]["excludes_zero"] and d[0.1]["n"] == 32
    fig = sweep_figure(panels, metric="auc", title="t", footnote="f")
    assert len(fig.axes) == 2 and "Δ AUC vs abmil" in fig.axes[1].get_ylabel()
    fig.savefig(tmp_path / "sweep.png")
    paths["rsm50"][1].unlink()
    with pytest.raises(FileNotFoundError, match="rsm50/paper/seed0/fold1"):
        sweep_panels(cfg, lambda m: paths[m])
