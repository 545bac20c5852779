"""Resume after ``kill -9``: the commands of docs/resume.md give the same outputs as an uninterrupted run.

Snakemake is started in its own process group and the whole group is killed with SIGKILL once an MHIM training
job has written its ``checkpoint.pt`` (so the AB-MIL teachers are done and an MHIM fold is cut mid-training).
The documented two steps (unlock, then the same command with ``--rerun-incomplete``) must finish the workflow,
resume the killed fold from its checkpoint, and leave every output equal to a run that was never interrupted:
tables, predictions, histories, metrics (less the timing fields), ``teacher_assessment.tsv`` and the bytes of
every ``model.pt``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from .conftest import REPO, make_cohort

pytestmark = pytest.mark.workflow

# exactly the commands of docs/resume.md, after the common `snakemake -s Snakefile -d DIR --configfile FILE`
RUN = ("--cores", "1")
RESUME = [("--unlock",), (*RUN, "--rerun-incomplete")]


def _cmd(workdir, *args):
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
            "--configfile", str(workdir / "config.yaml"), *args]


def _run(workdir, *args, timeout=900):
    return subprocess.run(_cmd(workdir, *args), capture_output=True, text=True, timeout=timeout)


def _write_config(workdir, features, manifest):
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = {
        "datasets": {"byo": {"source": "features", "classes": ["neg", "pos"], "manifest": str(manifest),
                             "features_dir": str(features)}},
        "cv": {"folds": 2, "seeds": [0]},
        "protocols": ["paper"],
        "methods": {"abmil": {"model": "abmil"},
                    "mhim": {"model": "mhim", "teacher": "abmil", "params": {"mask_high": 0.1, "rsm_ratio": 0.3}}},
        "train": {"epochs": 40, "patience": 100, "group": "fold"},
        "tables": {"t": {"dataset": "byo", "rows": {"abmil": "AB-MIL", "mhim": "MHIM-v2(AB-MIL)"}}},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))


def _outputs(workdir) -> dict[str, bytes]:
    """Every result file except logs and benchmarks; metrics.json without its timing fields."""
    out = {}
    root = workdir / "results"
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel.split("/")[0] in ("logs", "benchmarks"):
            continue
        data = p.read_bytes()
        if p.name == "metrics.json":
            metrics = json.loads(data)
            metrics.pop("timing")
            data = json.dumps(metrics, sort_keys=True).encode()
        out[rel] = data
    return out


def _kill_group_when(proc, pattern, root, timeout=600):
    """SIGKILL the process group of ``proc`` as soon as a file matching ``pattern`` exists under ``root``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        hits = list(root.glob(pattern))
        if hits:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return hits[0]
        if proc.poll() is not None:
            pytest.fail(f"snakemake ended (rc {proc.returncode}) before {pattern} appeared:\n"
                        f"{proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {pattern} within {timeout} s")


def _group_gone(pgid, timeout=30):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_kill_9_then_documented_resume_equals_an_uninterrupted_run(tmp_path):
    features, manifest = make_cohort(tmp_path / "data", n_bags=24, dim=16)
    ref, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    for d in (ref, killed):
        _write_config(d, features, manifest)

    proc = subprocess.Popen(_cmd(killed, *RUN), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    ckpt = _kill_group_when(proc, "results/runs/byo/provided/mhim/paper/seed0/fold*/checkpoint.pt", killed)
    assert proc.returncode == -signal.SIGKILL
    assert _group_gone(proc.pid), "a job of the killed snakemake survived"
    fold_dir = ckpt.parent
    assert not (fold_dir / "metrics.json").exists(), "the MHIM fold finished before the kill: nothing was tested"
    assert (killed / ".snakemake/locks").exists() and any((killed / ".snakemake/locks").iterdir())

    # the documented steps; the plain command alone does not work after a kill (the stale lock)
    plain = _run(killed, *RUN)
    assert plain.returncode != 0 and "LockException" in plain.stdout + plain.stderr
    for step in RESUME:
        res = _run(killed, *step)
        assert res.returncode == 0, (step, res.stderr[-4000:])
    log = killed / f"results/logs/train/byo/provided/mhim/paper/seed0/{fold_dir.name}.log"
    assert "resumed from" in log.read_text(), log.read_text()[-2000:]  # the killed fold went on from its checkpoint

    res = _run(ref, *RUN)
    assert res.returncode == 0, res.stderr[-4000:]

    a, b = _outputs(ref), _outputs(killed)
    assert sorted(a) == sorted(b)
    assert any(k.endswith("mhim/paper/seed0/fold0/teacher_assessment.tsv") for k in a)
    assert any(k.startswith("tables/t.") for k in a)
    assert not [k for k in b if k.endswith("checkpoint.pt")]
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"outputs differ after the resume: {differ}"
    rows = (fold_dir / "teacher_assessment.tsv").read_text().splitlines()
    assert len(rows) == 1 + 40 * 2  # header + (epochs x labels): the epochs before the kill are kept
