"""Where MHIM-v2 works (config/mhim_sweep.yaml, docs/mhim_sweep.md): the per-epoch instance diagnostics
(hardmil.train.diagnostics) on a constructed case and in a really trained run, MHIM-v2 at h = 0 with the GRN, the
sweep's report and figure (hardmil.report.mhim_sweep) and the sweep config's dry run."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

from hardmil.config import read_yaml
from hardmil.data.bags import Bag
from hardmil.data.bagset import BagSet
from hardmil.data.simulated import NEGATIVE, SALIENT, SUBTLE, BagModel, Bank, make_simulated
from hardmil.models.base import MILOutput
from hardmil.train.diagnostics import InstanceDiagnostics, localisation_auc
from hardmil.utils import InputError

from .conftest import REPO
from .test_config import dry_run_jobs
from .test_mhim import mhim as tiny_mhim


def read_tsv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_localisation_auc_by_hand():
    w = np.array([True, False, False, True, False])
    # witnesses 0.9 and 0.3 against 0.5, 0.1, 0.2: 0.9 beats 3, 0.3 beats 2 -> 5 / 6
    assert localisation_auc(np.array([0.9, 0.5, 0.1, 0.3, 0.2]), w) == pytest.approx(5 / 6)
    assert np.isnan(localisation_auc(np.ones(3), np.ones(3, bool)))  # a bag of witnesses only has no AUC
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(20):  # ties included: the scores take 5 values
        s, w = rng.integers(0, 5, 40).astype(float), rng.random(40) < 0.2
        if 0 < w.sum() < 40:
            assert localisation_auc(s, w) == pytest.approx(roc_auc_score(w, s))


def test_diagnostics_on_a_constructed_case():
    """Known teacher scores and student attention: bag A (20 instances, witnesses 0 and 5, teacher score 20 - i)
    loses witness 0 to the top-2 mask (h = 0.1 of 20) and keeps witness 5; bag B (10 instances, one witness on
    top) loses it. The negative bag is not scored."""
    m = tiny_mhim(mask_high=0.1, mask_high_random=1.0, mask_high_cosine=False, teacher_dropout=False)
    kind_a = np.full(20, NEGATIVE, np.int8)
    kind_a[[0, 5]] = [SALIENT, SUBTLE]
    kind_b = np.full(10, NEGATIVE, np.int8)
    kind_b[3] = SALIENT
    rng = np.random.default_rng(0)
    bags = BagSet([Bag("a", "a", 1, rng.normal(size=(20, 8)).astype(np.float32)),
                   Bag("neg", "neg", 0, rng.normal(size=(15, 8)).astype(np.float32)),
                   Bag("b", "b", 1, rng.normal(size=(10, 8)).astype(np.float32))])
    teacher = {20: torch.arange(20, 0, -1, dtype=torch.float32),  # instance 0 highest
               10: torch.tensor([0.1] * 3 + [0.9] + [0.1] * 6)}
    student = {20: torch.arange(20, dtype=torch.float32), 10: torch.full((10,), 0.1)}

    def teacher_scores(x):
        m._head_scores = None
        return teacher[x.shape[1]], torch.zeros(512)

    m.teacher_scores = teacher_scores
    m.forward = lambda x, mask=None, label=None, coords=None: MILOutput(torch.zeros(1, 2), student[x.shape[1]][None])
    diag = InstanceDiagnostics(m, bags, {"a": kind_a, "b": kind_b, "neg": np.zeros(15, np.int8)})
    diag.close_epoch(0)
    row = diag.rows[0]
    assert row["n_bags"] == 2 and row["mask_high"] == pytest.approx(0.1) and row["witnesses_mean"] == 1.5
    assert row["witness_share_masked"] == pytest.approx((1 / 2 + 1) / 2)
    assert row["bags_all_witnesses_masked"] == pytest.approx(1 / 2)
    # teacher, bag A: witness 0 (20) beats all 18 non-witnesses, witness 5 (15) beats 14 -> 32 / 36; bag B: 1
    assert row["teacher_loc_auc"] == pytest.approx((32 / 36 + 1) / 2)
    # student, bag A: attention i: witness 0 beats none, witness 5 beats 4 (instances 1-4) -> 4 / 36; bag B: ties 0.5
    assert row["student_loc_auc"] == pytest.approx((4 / 36 + 0.5) / 2)
    with pytest.raises(InputError, match="bag b: 9 ground-truth labels for 10 instances"):
        InstanceDiagnostics(m, bags, {"a": kind_a, "b": kind_b[:9]})
    with pytest.raises(InputError, match="no ground truth for bag a"):
        InstanceDiagnostics(m, bags, {"b": kind_b})


def test_diagnostics_leave_the_training_rng_alone():
    """Randomly-high masking (RHSM) and teacher dropout draw random numbers; the diagnostics draw them from a
    forked generator, so the training's stream is the same as without them."""
    m = tiny_mhim(mask_high=0.2, mask_high_random=0.5)
    bags = BagSet([Bag("a", "a", 1, np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32))])
    kind = np.zeros(30, np.int8)
    kind[:3] = SALIENT
    diag = InstanceDiagnostics(m, bags, {"a": kind})
    torch.manual_seed(5)
    diag.close_epoch(0)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))


def test_mhim_v2_at_h0_with_the_grn_trains_and_masks_no_witness():
    """h = 0 with the recycle module on (the reference crashes there): a training step runs, the GRN recycles,
    the high-score mask is empty and the diagnostics measure a masked witness share of 0."""
    m = tiny_mhim(version="v2", mask_high=0.0, grn=True, rsm_ratio=0.2, mask_high_cosine=False)
    assert m.grn is not None
    x = torch.randn(1, 50, 8)
    score, _ = m.teacher_scores(x)
    assert len(m.high_mask(score)) == 0
    kept, recycled = m.select(score)
    assert len(kept) + len(recycled) == 50 and len(recycled) == 10  # nothing masked high, 20 % recycled
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in m.student.state_dict().items()}
    m.train()
    out = m(x, label=torch.tensor([1]))
    loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([1])) + sum(out.aux_losses.values())
    loss.backward()
    assert m.grn.to_q.weight.grad is not None and torch.isfinite(loss)
    opt.step()
    m.after_step()
    assert any(not torch.equal(before[k], v) for k, v in m.student.state_dict().items())
    kind = np.zeros(50, np.int8)
    kind[:2] = SALIENT
    diag = InstanceDiagnostics(m, BagSet([Bag("a", "a", 1, x[0].numpy())]), {"a": kind})
    diag.close_epoch(0)
    assert diag.rows[0]["witness_share_masked"] == 0 and diag.rows[0]["bags_all_witnesses_masked"] == 0
    assert diag.rows[0]["mask_high"] == 0


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory):
    """A tiny simulated cohort; the attn baseline and MHIM-v2 over it trained on 2 folds with the truth, and MHIM-v2
    once more without it."""
    from hardmil.train.run import run_fold

    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(200, 8)).astype(np.float32)
    tumour = rng.normal(size=(80, 8)).astype(np.float32)
    tumour[:, 0] += 5
    classes = ["neg", "pos"]
    splits, truth = root / "splits.tsv", root / "t.h5"
    make_simulated(Bank(normal, tumour, {}), BagModel(n_train=30, n_test=16, bag_size=(20, 40),
                                                      witness_rate=(0.05, 0.1), seed=0),
                   classes=classes, features_dir=root / "f", manifest=root / "m.tsv", truth=truth,
                   summary=root / "s.json", splits={("clean", 0): splits}, folds=2)
    cfg = {"epochs": 3, "patience": 3, "amp": False, "lr": 0.002}
    attn = {"act": "gelu", "attention_act": "relu", "attention_bias": False}
    v2 = {"baseline": "abmil", "baseline_params": attn, "version": "v2", "mask_high": 0.1, "mask_high_random": 1.0,
          "mask_high_cosine": False, "rsm_ratio": 0.2}
    common = dict(splits=splits, features_dir=root / "f", classes=classes, protocol="clean", seed=0,
                  train_cfg=cfg, progress=False)
    jobs = {"base": [], "mhim": []}
    for k in range(2):
        base = root / "base" / f"fold{k}"
        run_fold(**common, fold=k, model="abmil", model_params=attn, out_dir=base, truth=truth)
        out = root / "mhim" / f"fold{k}"
        run_fold(**common, fold=k, model="mhim", model_params=v2, out_dir=out, teacher=base / "model.pt", truth=truth)
        run_fold(**common, fold=k, model="mhim", model_params=v2, out_dir=root / "plain" / f"fold{k}",
                 teacher=base / "model.pt")
        for name, d in (("base", base), ("mhim", out)):
            jobs[name].append({"seed": 0, "fold": k, "predictions": str(d / "predictions.tsv"),
                               "model": str(d / "model.pt"), "diagnostics": str(d / "instance_diagnostics.tsv"),
                               "metrics": str(d / "metrics.json")})
    return root, jobs


def test_trained_run_writes_diagnostics_and_trains_as_without_them(sweep_runs):
    root, _ = sweep_runs
    for k in range(2):
        rows = read_tsv(root / "mhim" / f"fold{k}" / "instance_diagnostics.tsv")
        assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
        for r in rows:
            assert float(r["mask_high"]) == pytest.approx(0.1) and int(r["n_bags"]) >= 1
            for c in ("witness_share_masked", "bags_all_witnesses_masked", "teacher_loc_auc", "student_loc_auc"):
                assert 0 <= float(r[c]) <= 1, (c, r)
        base = read_tsv(root / "base" / f"fold{k}" / "instance_diagnostics.tsv")
        assert len(base) == 3 and base[0]["teacher_loc_auc"] == "nan" and 0 <= float(base[0]["student_loc_auc"]) <= 1
        # the same predictions and history as the run without the truth: the diagnostics change nothing
        assert (root / "mhim" / f"fold{k}" / "predictions.tsv").read_text() == \
            (root / "plain" / f"fold{k}" / "predictions.tsv").read_text()
        assert (root / "mhim" / f"fold{k}" / "history.tsv").read_text() == \
            (root / "plain" / f"fold{k}" / "history.tsv").read_text()
        assert not (root / "plain" / f"fold{k}" / "instance_diagnostics.tsv").exists()


class _Killed(Exception):
    pass


def test_a_resumed_run_writes_the_same_diagnostics(sweep_runs, tmp_path):
    """The diagnostics travel in the training checkpoint: a run killed after epoch 1 and resumed writes the
    uninterrupted run's instance_diagnostics.tsv (and the same model)."""
    from hardmil.train.run import run_fold

    root, _ = sweep_runs
    whole = root / "mhim" / "fold0"
    cfg = read_yaml(whole / "config.yaml")
    kw = dict(splits=root / "splits.tsv", features_dir=root / "f", classes=["neg", "pos"], protocol="clean", seed=0,
              fold=0, model="mhim", model_params={k: cfg["model_config"][k] for k in
                                                  ("baseline", "baseline_params", "version", "mask_high",
                                                   "mask_high_random", "mask_high_cosine", "rsm_ratio")},
              train_cfg={"epochs": 3, "patience": 3, "amp": False, "lr": 0.002}, progress=False,
              teacher=root / "base" / "fold0" / "model.pt", truth=root / "t.h5")

    def kill_at_1(epoch):
        if epoch == 1:
            raise _Killed

    with pytest.raises(_Killed):
        run_fold(out_dir=tmp_path / "cut", on_epoch_end=kill_at_1, **kw)
    assert (tmp_path / "cut/checkpoint.pt").exists() and not (tmp_path / "cut/instance_diagnostics.tsv").exists()
    run_fold(out_dir=tmp_path / "cut", **kw)
    for name in ("instance_diagnostics.tsv", "teacher_assessment.tsv", "model.pt", "predictions.tsv"):
        assert (tmp_path / "cut" / name).read_bytes() == (whole / name).read_bytes(), name


def test_sweep_report_and_figure(sweep_runs, tmp_path):
    from hardmil.report.mhim_sweep import sweep_records, write_sweep

    _, jobs = sweep_runs
    sweep = {"regimes": {"sim": {"label": "5-10 %", "witness_rate": [0.05, 0.1]}}, "baseline": "base",
             "methods": {"mhim": {"mask": {"high_ratio": 0.1}}}, "n_boot": 200, "level": 0.95}
    deltas, diags = sweep_records(sweep, {"sim": jobs}, {"sim": ["neg", "pos"]})
    assert len(deltas) == 1 and deltas[0]["h"] == 0.1 and deltas[0]["lo"] <= deltas[0]["delta"] <= deltas[0]["hi"]
    assert deltas[0]["n_runs"] == 2
    by = {d["method"]: d for d in diags}
    assert set(by) == {"base", "mhim"} and 0 <= by["mhim"]["witness_share_masked"] <= 1
    assert np.isnan(by["base"]["witness_share_masked"]) and 0 <= by["base"]["student_loc_auc"] <= 1
    out = {k: tmp_path / f"x.{k}" for k in ("md", "tsv", "diag", "png")}
    write_sweep(deltas, diags, md=out["md"], tsv=out["tsv"], diagnostics_tsv=out["diag"], figure=out["png"],
                title="T", note="N")
    assert out["png"].stat().st_size > 10_000 and "| 5-10 % |" in out["md"].read_text()
    missing = [{**j, "diagnostics": str(tmp_path / "none.tsv")} for j in jobs["mhim"]]
    with pytest.raises(InputError, match="instance_diagnostics.tsv"):
        sweep_records(sweep, {"sim": {**jobs, "mhim": missing}}, {"sim": ["neg", "pos"]})


@pytest.mark.workflow
def test_sweep_config_dry_run_plans_the_sweep(tmp_path):
    """config/mhim_sweep.yaml: the bank, one simulated job per witness-rate regime, the attn baseline (every
    MHIM-v2's teacher) trained once per regime, three MHIM-v2 jobs per regime reading its models, the sweep report,
    no claims report and no rule splits."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "2",
           "--configfile", str(REPO / "config/mhim_sweep.yaml")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    jobs = dry_run_jobs(res.stdout)
    rules = [j["rule"] for j in jobs]
    assert rules.count("simulated") == 3 and rules.count("mhim_sweep") == 1 and rules.count("synthetic_cohort") == 1
    # train.group: seed -> one job per method, regime and seed (2 seeds)
    assert rules.count("train") == 4 * 3 * 2 and "claims" not in rules and "splits" not in rules
    # every MHIM-v2 job reads its regime's baseline models (its teachers) and the regime's instance truth
    for j in jobs:
        if j["rule"] == "train" and "method=abmil_mhim" not in j["wildcards"]:
            d = next(w.split("=")[1] for w in j["wildcards"] if w.startswith("dataset="))
            assert f"results/simulated/{d}/truth.h5" in j["input"]
            seed = next(w.split("=")[1] for w in j["wildcards"] if w.startswith("seed="))
            assert f"results/runs/{d}/provided/abmil_mhim/clean/seed{seed}/fold2/model.pt" in j["input"]
