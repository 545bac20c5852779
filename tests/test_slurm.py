"""The SLURM profile on a real SLURM: a tiny bring-your-own-features workflow submitted job by job.

Needs a running SLURM (`sudo scripts/slurm/start_slurm.sh`, or `make test-slurm`, which starts and stops it).
Skips with the reason when there is none, unless HARDMIL_REQUIRE_SLURM=1 (CI), where that is a failure.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, make_cohort

pytestmark = pytest.mark.slurm

PROFILE = REPO / "workflow/profiles/slurm"
TIMEOUT_S = 900


def _run(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def slurm_problem() -> str | None:
    """Why this machine cannot run the test, or None."""
    for tool in ("sinfo", "sbatch", "squeue", "scontrol", "scancel"):
        if not shutil.which(tool):
            return f"{tool} not on PATH; start SLURM with scripts/slurm/start_slurm.sh"
    if find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[cluster]')"
    try:
        res = _run(["sinfo", "-h", "-o", "%T"])
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld does not answer"
    if res.returncode != 0:
        return f"sinfo failed (is slurmctld running?): {res.stderr.strip()}"
    if not {"idle", "mixed", "allocated", "completing"} & set(res.stdout.split()):
        return f"no usable SLURM node: sinfo states {res.stdout.split()}"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = slurm_problem()
    if problem:
        if os.environ.get("HARDMIL_REQUIRE_SLURM") == "1":
            pytest.fail(f"HARDMIL_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)
    partition = _run(["sinfo", "-h", "-o", "%P"]).stdout.split()[0].rstrip("*")
    gres = _run(["sinfo", "-h", "-o", "%G"]).stdout
    return {"partition": partition, "gpus": 1 if "gpu" in gres else 0}


def cancel_jobs_under(workdir: Path) -> None:
    """scancel the jobs whose working directory is ``workdir`` (this test's jobs only)."""
    res = _run(["squeue", "-h", "-o", "%i %Z"])
    ids = [line.split()[0] for line in res.stdout.splitlines()
           if len(line.split()) == 2 and Path(line.split()[1]) == workdir]
    if ids:
        _run(["scancel", *ids])


def job_record(job_id: str) -> dict[str, str]:
    """SLURM's own record of a job (`scontrol show job`; finished jobs stay MinJobAge seconds)."""
    res = _run(["scontrol", "-o", "show", "job", job_id])
    assert res.returncode == 0, f"scontrol has no record of job {job_id}: {res.stderr}"
    return dict(kv.split("=", 1) for kv in res.stdout.split() if "=" in kv)


def byo_dataset(tmp_path: Path) -> dict:
    feats, manifest = make_cohort(tmp_path / "cohort", n_bags=12, dim=8, seed=3)
    return {"byo": {"source": "features", "classes": ["neg", "pos"], "manifest": str(manifest),
                    "features_dir": str(feats)}}


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
            "--configfile", str(workdir / "config.yaml"), "--profile", str(PROFILE), *args]


def test_profile_resources_per_rule_family(tmp_path):
    """Dry run (no SLURM needed, only the plugin): which partition, GPU, memory and time each family asks for."""
    if find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[cluster]')")
    cfg = {
        "datasets": byo_dataset(tmp_path),
        "cv": {"folds": 2, "seeds": [0]},
        "protocols": ["paper"],
        "methods": {"abmil": {"model": "abmil"}, "abmil_mb": {"model": "abmil", "hardneg": "mb"},
                    "ibmil": {"model": "ibmil", "confounders": "k3"}},
        "hardneg": {"mb": {"from": "abmil", "generator": "mb"}},
        "confounders": {"k3": {"from": "abmil", "clusters": 3}},
        "tables": {"t": {"dataset": "byo", "rows": {"abmil": "AB-MIL"}}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = os.environ | {"HARDMIL_SLURM_PARTITION": "cpuq", "HARDMIL_SLURM_GPU_PARTITION": "gpuq",
                        "HARDMIL_SLURM_GPUS": "2", "HARDMIL_SLURM_MEM_MB": "7000", "HARDMIL_SLURM_RUNTIME": "90"}
    env.pop("HARDMIL_SLURM_ACCOUNT", None)
    res = subprocess.run(snakemake_cmd(tmp_path, "-n"), capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    asked: dict[str, dict[str, str]] = {}
    rule = None
    for line in res.stdout.splitlines():
        if m := re.match(r"rule (\w+):", line):
            rule = m.group(1)
        elif rule and line.strip().startswith("resources:"):
            fields = dict(kv.split("=", 1) for kv in line.split(":", 1)[1].strip().split(", "))
            fields = {k: v for k, v in fields.items() if k in ("slurm_partition", "gpu", "mem_mb", "runtime")}
            assert asked.setdefault(rule, fields) == fields, f"{rule}: jobs of one family differ"
    asked.pop("all", None)
    assert set(asked) == {"splits", "bag_store", "train", "hardneg", "confounders", "table"}, asked
    train = asked.pop("train")
    assert (train["slurm_partition"], train["gpu"], train["mem_mb"], train["runtime"]) == ("gpuq", "2", "7000", "90")
    for heavy in ("hardneg", "confounders"):  # CPU jobs: hardmil.mining has no CUDA path
        r = asked.pop(heavy)
        assert (r["slurm_partition"], r["mem_mb"], r["runtime"]) == ("cpuq", "7000", "90") and "gpu" not in r
    for small, r in asked.items():
        assert r["slurm_partition"] == "cpuq" and int(r["mem_mb"]) <= 2000 and "gpu" not in r, (small, r)


def test_workflow_through_the_slurm_profile(slurm, tmp_path):
    cfg = {
        "datasets": byo_dataset(tmp_path),
        "cv": {"folds": 2, "seeds": [0]},
        "protocols": ["paper"],
        "methods": {"abmil": {"model": "abmil"}},
        # threads/mem_mb/runtime here are for local runs; the SLURM profile's values must win (checked below)
        "train": {"epochs": 2, "patience": 2, "group": "fold", "threads": 2, "mem_mb": 3000, "runtime": 50},
        "tables": {"t": {"dataset": "byo", "rows": {"abmil": "AB-MIL"}}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # jobs run `python -m snakemake`
        "HARDMIL_SLURM_PARTITION": slurm["partition"],
        "HARDMIL_SLURM_GPUS": str(slurm["gpus"]),
        "HARDMIL_SLURM_CPUS": "1",
        "HARDMIL_SLURM_MEM_MB": "1500",
        "HARDMIL_SLURM_RUNTIME": "10",
    }
    env.pop("HARDMIL_SLURM_ACCOUNT", None)
    env.pop("HARDMIL_SLURM_GPU_PARTITION", None)
    cmd = snakemake_cmd(tmp_path)
    start = time.monotonic()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    finally:
        cancel_jobs_under(tmp_path)
    wall = time.monotonic() - start
    print(f"workflow through SLURM: {wall:.1f} s")
    assert res.returncode == 0, res.stderr[-4000:]

    out = tmp_path / "results"
    for fold in (0, 1):
        run = out / f"runs/byo/provided/abmil/paper/seed0/fold{fold}"
        assert (run / "metrics.json").exists() and (run / "model.pt").exists()
    rows = list(csv.DictReader(open(out / "tables/t.csv")))
    assert rows and rows[0]["n_runs"] == "2"

    # every job went through sbatch: the plugin's per-job SLURM logs are named by SLURM job id
    logs: dict[str, list[Path]] = {}
    for p in sorted((out / "logs/slurm").glob("rule_*/**/*.log")):
        logs.setdefault(p.relative_to(out / "logs/slurm").parts[0], []).append(p)
    assert {k: len(v) for k, v in logs.items()} == {"rule_splits": 1, "rule_bag_store": 1, "rule_train": 2,
                                                    "rule_table": 1}, logs
    for rule, paths in logs.items():
        for log in paths:
            job_id = log.stem
            assert re.fullmatch(r"\d+", job_id), log
            rec = job_record(job_id)
            tres = dict(item.split("=", 1) for item in rec["TRES"].split(","))
            assert rec["JobState"] == "COMPLETED", (rule, rec)
            assert Path(rec["WorkDir"]) == tmp_path
            assert rec["Partition"] == slurm["partition"]
            assert rec["Comment"].startswith(rule), rec["Comment"]  # the plugin's rule_<name>_wildcards_... tag
            if rule == "rule_train":
                # the GPU family: --gpus from HARDMIL_SLURM_GPUS, memory/runtime/CPUs from the profile's knobs
                assert rec["TimeLimit"] == "00:10:00"
                assert tres["mem"] == "1500M" and tres["cpu"] == "1", tres
                if slurm["gpus"]:
                    assert "gpu:1" in rec.get("TresPerJob", ""), rec
            else:
                assert "gpu" not in rec.get("TresPerJob", "")
                assert tres["mem"] == ("2000M" if rule == "rule_bag_store" else "1000M"), (rule, tres)
    # inside each job the plugin's job step ran the rule: its Snakemake output is in that job's SLURM log
    for log in logs["rule_train"]:
        text = log.read_text()
        assert "--executor slurm-jobstep" in text and "rule train:" in text, text[-2000:]
