"""bench/gpu_check.py on the CPU: argument handling, the step runner's failure and timeout records, the summary
writer, the GPU-hour arithmetic, the cuda marker's skip, and one short dry run of the whole check."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench/gpu_check.py")
gc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gc)


def test_arguments_defaults_and_overrides(tmp_path):
    a = gc.parse_args([])
    assert a.steps == list(gc.STEPS) and a.device == "cuda" and a.sizes == [8000, 20000, 50000]
    assert a.pack == [1, 2, 4] and a.out.parent == REPO / "results/gpu_check"
    assert sum(a.timeouts.values()) > a.budget  # the budget, not the sum of the limits, bounds the run
    b = gc.parse_args(["--out", str(tmp_path), "--steps", "pytest", "models", "--timeout", "pytest=200",
                       "--timeout", "models=30"])
    assert b.out == tmp_path and b.steps == ["pytest", "models"]
    assert b.timeouts["pytest"] == 200 and b.timeouts["models"] == 30 and b.timeouts["demo"] == gc.TIMEOUTS["demo"]


@pytest.mark.parametrize("argv, message", [
    (["--timeout", "pytest"], "expected STEP=SECONDS"),
    (["--timeout", "nosuch=3"], "expected STEP=SECONDS"),
    (["--timeout", "pytest=soon"], "is not a number"),
    (["--timeout", "pytest=0"], "must be positive"),
    (["--budget", "0"], "--budget must be positive"),
    (["--pack", "0", "2"], "every k must be >= 1"),
    (["--steps", "train"], "invalid choice"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        gc.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_step_runner_records_success_failure_and_missing_program(tmp_path):
    ok = gc.run_step("ok", [sys.executable, "-c", "print('hello')"], 30, tmp_path)
    assert ok["status"] == "ok" and ok["rc"] == 0 and "hello" in ok["tail"]
    assert (tmp_path / "ok.log").read_text() == "hello\n"
    bad = gc.run_step("bad", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], 30, tmp_path)
    assert bad["status"] == "failed" and bad["rc"] == 3 and "boom" in bad["tail"]
    missing = gc.run_step("missing", [str(tmp_path / "no-such-program")], 30, tmp_path)
    assert missing["status"] == "error" and "could not start" in missing["tail"]


def test_step_runner_timeout_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    # a child that starts a grandchild and both hang
    code = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(60)']); open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); "
            f"time.sleep(60)")
    t = time.monotonic()
    rec = gc.run_step("hang", [sys.executable, "-c", code], 3, tmp_path)
    assert rec["status"] == "timeout" and rec["rc"] is None
    assert time.monotonic() - t < 20
    assert "started" in rec["tail"]
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # reaped by init shortly after the kill
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"grandchild {grandchild} survived the step's timeout")


def test_step_commands(tmp_path):
    a = gc.parse_args(["--out", str(tmp_path), "--scale-sizes", "8", "--scale-bag-size", "100"])
    a.work = tmp_path / "work"
    assert gc.step_command("models", a) == [[sys.executable, "bench/models.py", "--device", "cuda", "--sizes", "8000",
                                             "20000", "50000", "--repeats", "3", "--mhim", "abmil", "transmil",
                                             "--no-interleaved", "--json", str(tmp_path / "models.json")]]
    demo = gc.step_command("demo", a)
    assert [c[c.index("--worker-args") + 1] for c in demo] == ["cuda", "cpu"]  # the CPU run beside the CUDA one
    scale = gc.step_command("scale", a)
    if (REPO / "bench/scale.py").exists():
        assert scale[0][2:] == ["--device", "cuda", "--sizes", "8", "--compare-at", "8", "--bag-size", "100",
                                "--json", str(tmp_path / "scale.json")]
    else:
        assert scale is None  # recorded as skipped
    pytest_cmd = gc.step_command("pytest", a)[0]
    assert pytest_cmd[1:6] == ["-m", "pytest", "-m", "cuda", "tests/test_cuda.py"]


def test_pytest_counts():
    assert gc.pytest_counts("...\n=== 3 passed, 2 skipped, 1 failed in 4.2s ===\n") == {
        "passed": 3, "skipped": 2, "failed": 1}
    assert gc.pytest_counts("== 1 error, 40 deselected in 1s ==") == {"error": 1, "deselected": 40}
    assert gc.pytest_counts("no summary") == {}


def test_ratios_beside_the_paper_and_gpu_hours():
    models = {"ratios": {"abmil": [{"n": 8000, "time": 1.5, "memory": 1.1}],
                         "transmil": [{"n": 8000, "time": 0.7, "memory": 0.5}]}}
    rows = {r["baseline"]: r for r in gc.model_ratios(models)}
    assert rows["abmil"]["paper_time_ratio"] == pytest.approx(4.3 / 3.1)
    assert rows["abmil"]["paper_memory_ratio"] is None
    assert rows["transmil"]["paper_time_ratio"] == pytest.approx(10.5 / 13.2)
    assert rows["transmil"]["paper_memory_ratio"] == pytest.approx(5.6 / 10.6)
    packing = {"1": {"steps_per_s": 10.0}, "2": {"steps_per_s": 18.0}, "4": {"steps_per_s": 30.0}}
    hours = gc.gpu_hours(packing, step_ms=100.0, jobs=1000, bags_per_epoch=270, epochs=(100, 200))
    assert [h["k"] for h in hours] == [1, 2, 4]
    one = 1000 * 100 * 270 * 0.1 / 3600  # jobs x epochs x bags x seconds per step
    assert hours[0]["gpu_hours_low"] == pytest.approx(one) and hours[0]["gpu_hours_high"] == pytest.approx(2 * one)
    assert hours[2]["speedup"] == pytest.approx(3.0)
    assert hours[2]["gpu_hours_low"] == pytest.approx(one / 3)
    assert hours[1]["readme_high"] == pytest.approx(1150 / 1.8)
    assert gc.gpu_hours(None, 100.0, 1, 1, (1, 1)) == [] and gc.gpu_hours(packing, None, 1, 1, (1, 1)) == []


def test_summary_writer(tmp_path):
    summary = {"started": "2026-11-28T00:00:00+00:00", "commit": "abc1234", "budget_s": 470, "seconds": 123.4,
               "env": {"device_name": "NVIDIA H100 80GB HBM3", "memory_gb": 79.1, "torch": "2.13.0+cu130",
                       "cuda_build": "13.0"},
               "steps": {"pytest": {"status": "ok", "seconds": 40.0, "rc": 0},
                         "models": {"status": "timeout", "seconds": 120.0, "rc": None, "tail": "step 3 hung here"},
                         "scale": {"status": "skipped", "seconds": 0}},
               "results": {"pytest": {"passed": 44},
                           "demo": [{"method": "abmil", "device": "cuda", "auc": 0.91, "epochs_run": 40}],
                           "packing": {"1": {"steps_per_s": 50.0, "devices": ["0"]}},
                           "gpu_hours": [{"k": 1, "speedup": 1.0, "gpu_hours_low": 400.0, "gpu_hours_high": 800.0,
                                          "readme_low": 570.0, "readme_high": 1150.0}],
                           "gpu_hours_assumptions": {"train_jobs": 3440, "bags_per_epoch": 270, "epochs": [100, 200],
                                                     "step_ms": 4.2}}}
    gc.write_summary(tmp_path, summary)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    md = (tmp_path / "summary.md").read_text()
    assert "NVIDIA H100 80GB HBM3" in md and "abc1234" in md
    assert "| models | timeout | 120 | - |" in md
    assert "### models: timeout" in md and "step 3 hung here" in md
    assert "### scale" not in md  # skipped is not a failure
    assert "| abmil | cuda | 0.91 |" in md
    assert "3440 train jobs" in md and "| 1 | 1 | 400 | 800 | 570 | 1,150 |" in md


def test_cuda_marker_skips_with_a_reason_or_fails_when_required():
    """Without CUDA `pytest -m cuda` skips (never passes) with the reason; HARDMIL_REQUIRE_CUDA=1 makes it fail."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the marker's skip path cannot be shown here")
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-k", "float32_matches_cpu and abmil",
           "-q", "-rs", "-p", "no:cacheprovider"]
    env = {k: v for k, v in os.environ.items() if k != "HARDMIL_REQUIRE_CUDA"}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert res.returncode == 0, res.stdout[-2000:]
    counts = gc.pytest_counts(res.stdout)
    assert counts.get("skipped", 0) >= 1 and "passed" not in counts, res.stdout[-2000:]
    assert "no CUDA device" in res.stdout
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**env, "HARDMIL_REQUIRE_CUDA": "1"})
    assert res.returncode == 1 and "HARDMIL_REQUIRE_CUDA=1 but" in res.stdout, res.stdout[-2000:]


def test_dry_run_on_the_cpu(tmp_path):
    """The whole script end to end with --device cpu and tiny settings: every step's record and output lands in
    the folder; the pytest step runs only skips here (no CUDA), which is recorded, not counted as passing."""
    out = tmp_path / "check"
    res = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--out", str(out),
                          "--steps", "env", "demo", "models", "packing", "--sizes", "16",
                          "--mhim-baselines", "abmil", "--demo-epochs", "2", "--demo-bags", "16", "32",
                          "--pack", "1", "2", "--pack-seconds", "1", "--pack-sizes", "50", "--paper-jobs", "100",
                          "--budget", "300", "--copy-to", str(tmp_path / "back")], capture_output=True, text=True,
                         cwd=REPO)
    summary = json.loads((out / "summary.json").read_text())
    assert res.returncode == 0, (res.stdout[-3000:], summary["steps"])
    assert {k: v["status"] for k, v in summary["steps"].items()} == {
        "env": "ok", "demo": "ok", "models": "ok", "packing": "ok"}
    r = summary["results"]
    assert {(d["method"], d["device"]) for d in r["demo"]} == {("abmil", "cpu"), ("mhim_v2_abmil", "cpu")}
    assert all(0 <= d["auc"] <= 1 and d["epochs_run"] == 2 for d in r["demo"])
    assert {row["model"] for row in r["models"]["rows"]} == {"abmil", "mhim:abmil"}
    assert [(x["baseline"], x["n"]) for x in r["models"]["ratios"]] == [("abmil", 16)]
    assert r["packing"]["2"]["slots"] == [0, 1] and r["packing"]["1"]["steps_per_s"] > 0
    assert [g["k"] for g in r["gpu_hours"]] == [1, 2]
    assert r["gpu_hours_assumptions"]["train_jobs"] == 100
    assert (out / "summary.md").read_text().startswith("# GPU check")
    log = (out / "check.log").read_text()  # the script's own output, kept with the results
    assert "== env (limit" in log and "== demo (limit" in log and "# GPU check" in log
    assert "summary.md" in res.stdout
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == ["gpu_check.tar.gz", "summary.json", "summary.md"]
