import json

import numpy as np
import pytest

from hardmil.report import published
from hardmil.report.published import METRICS
from hardmil.report.tables import RunRef, aggregate, write_table


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
    assert "paper 0.799 ± 0.020" in md and "paper NA" in md


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
