"""The prepared GPU check: everything the CUDA path needs verified and measured, in one run of under 8 minutes.

    bash bench/gpu_check.sh                     # from the repository root on a one-GPU machine (sets up Python)
    python bench/gpu_check.py [--out DIR] [--steps env pytest demo models packing scale] [--budget 470]

Steps, each in its own process group with its own timeout (a hang costs that step only; a failed or timed-out
step is recorded and the next one runs):

1. ``env``: torch, CUDA build, device name and memory, nvidia-smi.
2. ``pytest``: ``pytest -m cuda tests/test_cuda.py`` with ``HARDMIL_REQUIRE_CUDA=1`` (no silent skip).
3. ``demo``: AB-MIL and MHIM-v2(AB-MIL) (the demo's settings from config/config.yaml) trained for fold 0 with
   ``hardmil.train.run.run_fold`` on CUDA and on the CPU; metrics side by side. Bags: the demo's synthetic-cohort
   features when ``results/bags/synthetic`` exists, else a feature-level stand-in of the same shape.
4. ``models``: ``bench/models.py --device cuda`` at 8,000 / 20,000 / 50,000 instances for AB-MIL, TransMIL and
   MHIM-v2 over each: step time, ``torch.cuda.max_memory_allocated``, MHIM-v2 / baseline ratios beside the
   paper's Table 6 ratios.
5. ``packing``: k = 1, 2, 4 concurrent training processes on the one GPU (each takes a slot from
   ``hardmil.gpu`` with ``jobs_per_gpu = k``): aggregate bag steps per second, the speed-up over k = 1, and the
   GPU-hour estimate for config/paper.yaml at each k.
6. ``scale``: ``bench/scale.py --device cuda`` (40 bags of 8,000 x 1024: store build, AB-MIL and MHIM-v2 folds,
   resident against streamed bags, two jobs at once) when that file exists.

Everything printed also goes to ``results/gpu_check/<UTC date-time>/``: ``summary.json``, ``summary.md``,
``check.log`` (this script's own output), one ``<step>.log`` per step and the steps' own JSON files.

Length (over 400 lines): a self-contained script, run on a bare GPU machine with nothing but this file
and the repository; each step is a short function and the step runner, summary writer and argument
handling are tested on the CPU (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("env", "pytest", "demo", "models", "packing", "scale")  # packing before scale: the GPU-hours need it
# per-step wall-clock limits (seconds); --budget (the 8-minute total less the set-up) caps them, so scale, the last
# step, gets what is left
TIMEOUTS = {"env": 30, "pytest": 120, "demo": 120, "models": 100, "packing": 100, "scale": 150}
# MHIM-MIL Table 6 (CAMELYON-16, RTX 3090): seconds per epoch and GPU memory
PAPER_TABLE6 = {"abmil": {"baseline_s": 3.1, "mhim_s": 4.3},
                "transmil": {"baseline_s": 13.2, "mhim_s": 10.5, "baseline_gb": 10.6, "mhim_gb": 5.6}}
# train jobs of `snakemake -n --configfile config/paper.yaml` (bench/paper_dag.py, rule `train`) at commit 5bc0361
# (4629 jobs in all); the check counts them again when Snakemake is installed
PAPER_TRAIN_JOBS = 3680
# the README's GPU-time estimate for config/paper.yaml (3,440 train jobs then), one job per GPU, from Table 6's times
README_GPU_HOURS = (570, 1150)


# ----------------------------------------------------------------------------------------------- step runner
def run_step(name: str, cmd: list[str], timeout: float, out: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` in its own process group with ``timeout`` seconds; its output goes to ``out/<name>.log``.

    Returns ``{"status": ok | failed | timeout | error, "rc", "seconds", "tail"}``; never raises for the
    command's own failure, so the next step still runs."""
    log = out / f"{name}.log"
    t0 = time.monotonic()
    rec: dict = {"cmd": " ".join(map(str, cmd)), "timeout_s": round(timeout, 1)}
    try:
        with open(log, "w") as fh:
            proc = subprocess.Popen([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
                rec.update(status="ok" if rc == 0 else "failed", rc=rc)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                rec.update(status="timeout", rc=None)
            except BaseException:  # the check itself interrupted (Ctrl-C, SIGTERM from an outer timeout)
                _kill_group(proc)
                raise
    except OSError as err:
        rec.update(status="error", rc=None)
        log.write_text(f"could not start: {err}\n")
    rec["seconds"] = round(time.monotonic() - t0, 1)
    rec["tail"] = tail(log)
    return rec


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the step's whole process group (pytest, its children, packing workers)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def say(out: Path, text: str) -> None:
    """Print, and append to ``out/check.log``: what the check itself prints is kept with its results."""
    print(text, flush=True)
    with open(out / "check.log", "a") as fh:
        fh.write(text + "\n")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------- summaries
def pytest_counts(text: str) -> dict:
    """{'passed': n, 'failed': n, 'skipped': n, ...} from pytest's closing line."""
    counts = {}
    for line in reversed(text.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", line)
        if found:
            for n, what in found:
                counts["error" if what.startswith("error") else what] = int(n)
            break
    return counts


def model_ratios(models: dict) -> list[dict]:
    """MHIM-v2 / baseline time and memory ratios per baseline and size, beside the paper's Table 6 ratios."""
    rows = []
    for base, paper in PAPER_TABLE6.items():
        paper_time = paper["mhim_s"] / paper["baseline_s"]
        paper_mem = paper["mhim_gb"] / paper["baseline_gb"] if "baseline_gb" in paper else None
        for r in (models or {}).get("ratios", {}).get(base, []):
            rows.append({"baseline": base, "n": r["n"], "time_ratio": r["time"], "memory_ratio": r["memory"],
                         "paper_time_ratio": paper_time, "paper_memory_ratio": paper_mem})
    return rows


def gpu_hours(packing: dict | None, step_ms: float | None, jobs: int, bags_per_epoch: int,
              epochs: tuple[int, int]) -> list[dict]:
    """GPU-hours of ``jobs`` training jobs at each measured k: jobs x epochs x bags x step time / speed-up(k).

    ``step_ms``: the per-bag training step of a typical job at one job per GPU (mean of the measured models);
    speed-up(k) = aggregate bag steps per second of k concurrent jobs / that of one job. Also the README's
    570-1,150 GPU-hours (one job per GPU) divided by the same speed-up."""
    if not packing or not step_ms:
        return []
    base = packing.get("1", {}).get("steps_per_s")
    rows = []
    for k, rec in sorted(packing.items(), key=lambda kv: int(kv[0])):
        if not base or not rec.get("steps_per_s"):
            continue
        speedup = rec["steps_per_s"] / base
        hours = [jobs * e * bags_per_epoch * step_ms / 1000 / speedup / 3600 for e in epochs]
        rows.append({"k": int(k), "speedup": speedup, "gpu_hours_low": hours[0], "gpu_hours_high": hours[1],
                     "readme_low": README_GPU_HOURS[0] / speedup, "readme_high": README_GPU_HOURS[1] / speedup})
    return rows


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def md_table(rows: list[dict], columns: list[str]) -> list[str]:
    if not rows:
        return ["(none)"]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return out


def summary_markdown(s: dict) -> str:
    """The short human summary of a check's ``summary.json`` content."""
    env = s.get("env") or {}
    device = env.get("device_name", s.get("device", "?"))
    lines = [f"# GPU check {s['started']}", "",
             f"- device: {device} ({fmt(env.get('memory_gb'))} GB), torch {env.get('torch', '?')}"
             f" (CUDA {env.get('cuda_build', '?')}), commit {s.get('commit', '?')}",
             f"- wall time: {fmt(s.get('seconds'))} s of a {fmt(s.get('budget_s'))} s budget", "",
             "## Steps", ""]
    lines += md_table([{"step": k, **v} for k, v in s["steps"].items()], ["step", "status", "seconds", "rc"])
    res = s.get("results", {})
    if "pytest" in res:
        lines += ["", f"## pytest -m cuda: {res['pytest']}"]
    if res.get("demo"):
        lines += ["", "## Demo fold 0, CUDA beside CPU", ""]
        lines += md_table(res["demo"], ["method", "device", "auc", "balanced_accuracy", "selected_epoch",
                                        "epochs_run", "seconds_per_epoch"])
    if res.get("models"):
        lines += ["", "## Table 6 on this GPU (per-bag training step)", ""]
        lines += md_table(res["models"]["rows"], ["model", "n", "ms", "peak_mb"])
        lines += ["", "MHIM-v2 / baseline (paper: Table 6 per-epoch ratios on CAMELYON-16, RTX 3090)", ""]
        lines += md_table(res["models"]["ratios"], ["baseline", "n", "time_ratio", "paper_time_ratio",
                                                    "memory_ratio", "paper_memory_ratio"])
    if res.get("packing"):
        lines += ["", "## Packing k jobs on one GPU", ""]
        lines += md_table([{"k": k, **v} for k, v in res["packing"].items()], ["k", "steps_per_s", "devices"])
    if res.get("gpu_hours"):
        g = res["gpu_hours_assumptions"]
        lines += ["", f"## GPU-hours for config/paper.yaml ({g['train_jobs']} train jobs, {g['bags_per_epoch']} bags"
                  f" per epoch, {g['epochs'][0]}-{g['epochs'][1]} epochs, {fmt(g['step_ms'])} ms per bag step)", ""]
        lines += md_table(res["gpu_hours"], ["k", "speedup", "gpu_hours_low", "gpu_hours_high", "readme_low",
                                             "readme_high"])
    failed = [k for k, v in s["steps"].items() if v["status"] not in ("ok", "skipped")]
    if failed:
        lines += ["", "## Failed steps (last lines of their logs)"]
        for k in failed:
            lines += ["", f"### {k}: {s['steps'][k]['status']}", "", "```", s["steps"][k].get("tail", ""), "```"]
    return "\n".join(lines) + "\n"


def write_summary(out: Path, summary: dict) -> None:
    """summary.json and summary.md, each written atomically."""
    from hardmil.utils import write_json, write_text

    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", summary_markdown(summary))


# ----------------------------------------------------------------------------------------------- workers
def worker_env(path: str, device: str) -> int:
    import torch

    from hardmil.utils import write_json

    info = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda": torch.cuda.is_available(),
            "python": platform.python_version(), "host": platform.node()}
    if info["cuda"]:
        p = torch.cuda.get_device_properties(0)
        info.update(device_name=p.name, memory_gb=round(p.total_memory / 2**30, 1),
                    device_count=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
                    bf16=torch.cuda.is_bf16_supported())
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,utilization.gpu",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        info["nvidia_smi"] = f"unavailable: {err}"
    missing = []
    for mod in ("hardmil.train.run", "h5py", "sklearn", "yaml", "pytest"):
        try:
            __import__(mod)
        except ImportError as err:
            missing.append(f"{mod}: {err}")
    info["missing_imports"] = missing
    print(json.dumps(info, indent=1))
    write_json(path, info)
    return 0 if (info["cuda"] or device != "cuda") and not missing else 1


def demo_bags(work: Path, n_bags: int = 48, dim: int = 1280, seed: int = 0) -> tuple[Path, Path, str]:
    """(features dir, manifest, source): the demo's synthetic-cohort features when present, else a stand-in.

    The stand-in has the demo's shape (48 slides, 20-40 patches each, EfficientNet-Lite0's 1280 features; tumour
    slides hold 10-30 % shifted instances) so that timing and metrics are of the same kind."""
    import numpy as np

    from hardmil.data.bags import write_features
    from hardmil.utils import write_text

    demo_dir, demo_manifest = ROOT / "results/bags/synthetic/efficientnet_lite0", ROOT / "results/bags/synthetic.tsv"
    if demo_manifest.exists() and demo_dir.is_dir():
        return demo_dir, demo_manifest, "demo synthetic cohort (results/bags/synthetic)"
    feats, manifest = work / "features", work / "manifest.tsv"
    if manifest.exists():  # made by the other device's run
        return feats, manifest, f"feature-level stand-in ({n_bags} bags x 20-40 x {dim})"
    rng = np.random.default_rng(seed)
    feats.mkdir(parents=True, exist_ok=True)
    direction = rng.normal(size=dim) / np.sqrt(dim) * 8  # a tumour instance: 8 noise SDs along one direction
    rows = []
    for i in range(n_bags):
        label = i % 2
        n = int(rng.integers(20, 41))
        x = rng.normal(size=(n, dim)).astype(np.float32)
        if label:
            k = max(1, int(n * rng.uniform(0.1, 0.3)))
            x[:k] += direction
        cells = rng.choice(64, size=n, replace=False)
        write_features(feats / f"slide{i:03d}.h5", x, coords=np.stack([cells % 8, cells // 8], 1) * 256)
        rows.append(f"slide{i:03d}\tcase{i:03d}\t{['normal', 'tumour'][label]}")
    write_text(manifest, "slide\tcase\tlabel\n" + "\n".join(rows) + "\n")
    return feats, manifest, f"feature-level stand-in ({n_bags} bags x 20-40 x {dim})"


def worker_demo(device: str, path: str, epochs: int, work: str, n_bags: int = 48, dim: int = 1280) -> int:
    """AB-MIL, then MHIM-v2(AB-MIL) with the demo's teacher (trained first): fold 0, protocol clean, seed 0."""
    import yaml

    from hardmil.data.bags import read_manifest
    from hardmil.data.splits import make_splits, write_splits
    from hardmil.train.run import run_fold
    from hardmil.utils import write_json

    work_dir = Path(work)
    classes = ["normal", "tumour"]
    feats, manifest, source = demo_bags(work_dir, n_bags, dim)
    splits = work_dir / "splits.tsv"
    if not splits.exists():
        write_splits(splits, make_splits(read_manifest(manifest, classes), 4, 0, "clean"))
    demo = yaml.safe_load((ROOT / "config/config.yaml").read_text())["methods"]
    train_cfg = {"epochs": epochs, "patience": 20, "device": device, "amp": True}
    threads = 1 if device == "cuda" else min(4, max(1, (os.cpu_count() or 2) // 2))
    rows = []
    teacher = demo["mhim_v2_abmil"]["teacher"]  # the demo's MHIM teacher (the reference's internal attn baseline)
    for method in dict.fromkeys(("abmil", teacher, "mhim_v2_abmil")):
        spec = demo[method]
        out = work_dir / device / method
        m = run_fold(splits=splits, features_dir=feats, classes=classes, fold=0, protocol="clean", seed=0,
                     model=spec["model"], model_params=spec.get("params", {}), train_cfg=train_cfg, out_dir=out,
                     threads=threads, progress=False,
                     teacher=work_dir / device / spec["teacher"] / "model.pt" if spec.get("teacher") else None)
        if method == teacher and teacher != "abmil":
            continue  # trained only to be the teacher
        rows.append({"method": method, "device": device, "source": source, "epochs_cap": epochs,
                     **{k: m.get(k) for k in ("auc", "balanced_accuracy", "accuracy", "selected_epoch", "epochs_run")},
                     **m["timing"]})
        print(json.dumps(rows[-1]))
    write_json(path, rows)
    return 0


PACK_CHILD = """
import json, sys, time
import torch, torch.nn.functional as F
from hardmil.gpu import acquire
from hardmil.models import build_model
from hardmil.train.loop import TrainConfig, make_adam
k, lock_dir, sizes, dev = int(sys.argv[1]), sys.argv[2], [int(s) for s in sys.argv[3].split(",")], sys.argv[5]
slot = acquire(k, devices=None if dev == "cuda" else ["cpu"], lock_dir=lock_dir, timeout=30)
if dev == "cuda":
    torch.cuda.set_device(slot.index)
else:
    torch.set_num_threads(1)
torch.manual_seed(slot.slot)
model = build_model(sys.argv[4], in_dim=1024).to(dev).train()
opt = make_adam(model, TrainConfig())
# on the host, pinned, as the training loop holds them
bags = [torch.randn(n, 1024).pin_memory() if dev == "cuda" else torch.randn(n, 1024) for n in sizes]
y = torch.tensor([1], device=dev)
def step(i):
    x = bags[i % len(bags)].to(dev, non_blocking=True)[None]
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
        out = model(x, label=y)
        loss = out.bag_loss_weight * F.cross_entropy(out.logits.float(), y) + sum(out.aux_losses.values())
    loss.backward()
    opt.step()
    if hasattr(model, "after_step"):
        model.after_step()
    return loss.item()  # one host sync per bag, as the loop's running loss does
for i in range(3):
    step(i)
print("ready", flush=True)
end = float(sys.stdin.readline())
n = 0
while time.time() < end:
    step(n)
    n += 1
print(json.dumps({"steps": n, "device": slot.device, "slot": slot.slot}), flush=True)
"""


def worker_packing(path: str, ks: list[int], seconds: float, model: str, sizes: list[int], device: str) -> int:
    """For each k: k processes take slots (jobs_per_gpu = k) and train one bag per step for ``seconds``."""
    from hardmil.utils import write_json

    res, errors = {}, {}
    for k in ks:
        try:
            res[str(k)] = _pack(k, seconds, model, sizes, device)
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as err:  # record it, try the next k
            errors[str(k)] = str(err)
            print(f"k={k}: failed: {err}", flush=True)
        write_json(path, res)  # after every k: a later hang keeps what was measured
    return 1 if errors else 0


def _pack(k: int, seconds: float, model: str, sizes: list[int], device: str) -> dict:
    """k concurrent training processes for ``seconds``: their bag steps and the slots they took."""
    import tempfile

    with tempfile.TemporaryDirectory() as lock_dir:
        cmd = [sys.executable, "-c", PACK_CHILD, str(k), lock_dir, ",".join(map(str, sizes)), model, device]
        procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
                 for _ in range(k)]
        try:
            for p in procs:
                line = p.stdout.readline().strip()
                if line != "ready":
                    raise RuntimeError(f"k={k}: a worker did not start (said {line!r}, rc {p.poll()})")
            end = time.time() + seconds
            for p in procs:
                p.stdin.write(f"{end}\n")
                p.stdin.flush()
            done = [json.loads(p.stdout.readline()) for p in procs]
            for p in procs:
                p.wait(timeout=30)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    total = sum(d["steps"] for d in done)
    print(f"k={k}: {total / seconds:.1f} bag steps/s ({[d['steps'] for d in done]})", flush=True)
    return {"steps_per_s": total / seconds, "steps": [d["steps"] for d in done],
            "devices": sorted({d["device"] for d in done}), "slots": sorted(d["slot"] for d in done),
            "model": model, "sizes": sizes, "seconds": seconds}


# ----------------------------------------------------------------------------------------------- the check
def paper_train_jobs(out: Path, timeout: float) -> tuple[int, str]:
    """The number of train jobs of config/paper.yaml: counted by bench/paper_dag.py when Snakemake is there."""
    rec = run_step("paper_dag", [sys.executable, "bench/paper_dag.py"], timeout, out)
    m = re.search(r"^\s+train\s+(\d+)$", (out / "paper_dag.log").read_text(errors="replace"), re.M)
    if rec["status"] == "ok" and m:
        return int(m.group(1)), "counted by bench/paper_dag.py"
    return PAPER_TRAIN_JOBS, "recorded count (Snakemake not available here)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="output folder (default results/gpu_check/<UTC date-time>)")
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="steps to run, in this order")
    ap.add_argument("--budget", type=float, default=470.0, help="seconds for all steps together (default 470)")
    ap.add_argument("--timeout", action="append", default=[], metavar="STEP=SECONDS",
                    help="override one step's timeout, e.g. --timeout pytest=200 (repeatable)")
    ap.add_argument("--device", default="cuda", help="the device checked (cpu: a dry run of the script itself)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8000, 20000, 50000], help="bench/models.py bag sizes")
    ap.add_argument("--demo-epochs", type=int, default=40, help="epoch cap of the demo fold (demo: 200)")
    ap.add_argument("--demo-bags", type=int, nargs=2, default=[48, 1280], metavar=("BAGS", "DIM"),
                    help="size of the feature-level stand-in when the demo's features are absent")
    ap.add_argument("--mhim-baselines", nargs="+", default=["abmil", "transmil"], help="models step: baselines")
    ap.add_argument("--scale-sizes", type=int, nargs="+", default=[40], help="bench/scale.py cohort sizes (bags)")
    ap.add_argument("--scale-bag-size", type=int, default=8000, help="bench/scale.py instances per bag")
    ap.add_argument("--pack", type=int, nargs="+", default=[1, 2, 4], help="concurrent jobs per GPU to measure")
    ap.add_argument("--pack-seconds", type=float, default=10.0, help="measured window per k")
    ap.add_argument("--pack-sizes", type=int, nargs="+", default=[3000, 6000, 9000, 14000],
                    help="bag sizes the packing workers cycle through (CAMELYON-16-like, 20x)")
    ap.add_argument("--paper-jobs", type=int, help="GPU-hour estimate: train jobs of config/paper.yaml "
                    "(default: counted by bench/paper_dag.py when Snakemake is installed, else the recorded count)")
    ap.add_argument("--bags-per-epoch", type=int, default=270, help="GPU-hour estimate: training bags per epoch")
    ap.add_argument("--epochs", type=int, nargs=2, default=[100, 200], metavar=("LOW", "HIGH"),
                    help="GPU-hour estimate: epochs per job (early stopping after 100, at most 200)")
    ap.add_argument("--copy-to", type=Path, metavar="DIR",
                    help="also put summary.md, summary.json and the whole folder as gpu_check.tar.gz into DIR")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-args", nargs="*", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    timeouts = dict(TIMEOUTS)
    for item in args.timeout:
        step, sep, value = item.partition("=")
        if step not in STEPS or not sep:
            ap.error(f"--timeout {item!r}: expected STEP=SECONDS with STEP one of {', '.join(STEPS)}")
        try:
            timeouts[step] = float(value)
        except ValueError:
            ap.error(f"--timeout {item!r}: {value!r} is not a number of seconds")
        if timeouts[step] <= 0:
            ap.error(f"--timeout {item!r}: must be positive")
    args.timeouts = timeouts
    if args.budget <= 0:
        ap.error("--budget must be positive")
    if any(k < 1 for k in args.pack):
        ap.error("--pack: every k must be >= 1")
    if args.out is None:
        args.out = ROOT / "results/gpu_check" / datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    return args


def step_command(step: str, args: argparse.Namespace) -> list[list[str]] | None:
    """The command(s) of one step, or None when the step does not apply here (scale without bench/scale.py)."""
    py, me, out = sys.executable, str(Path(__file__).resolve()), args.out
    if step == "env":
        return [[py, me, "--worker", "env", "--worker-args", str(out / "env.json"), args.device]]
    if step == "pytest":
        return [[py, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rA", "-p", "no:cacheprovider",
                 "--junitxml", str(out / "pytest.xml")]]
    if step == "demo":
        return [[py, me, "--worker", "demo", "--worker-args", dev, str(out / f"demo_{dev}.json"),
                 str(args.demo_epochs), str(args.work / "demo"), *map(str, args.demo_bags)]
                for dev in dict.fromkeys((args.device, "cpu"))]
    if step == "models":
        return [[py, "bench/models.py", "--device", args.device, "--sizes", *map(str, args.sizes), "--repeats", "3",
                 "--mhim", *args.mhim_baselines, "--no-interleaved", "--json", str(out / "models.json")]]
    if step == "scale":
        scale = ROOT / "bench/scale.py"
        if not scale.exists():
            return None
        return [[py, str(scale), "--device", args.device, "--sizes", *map(str, args.scale_sizes), "--compare-at",
                 str(args.scale_sizes[0]), "--bag-size", str(args.scale_bag_size), "--json", str(out / "scale.json")]]
    if step == "packing":
        return [[py, me, "--worker", "packing", "--worker-args", str(out / "packing.json"),
                 ",".join(map(str, args.pack)), str(args.pack_seconds), "abmil", ",".join(map(str, args.pack_sizes)),
                 args.device]]
    raise ValueError(step)


def run_check(args: argparse.Namespace) -> dict:
    import shutil
    import tempfile

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    args.work = Path(tempfile.mkdtemp(prefix="hardmil-gpu-check-"))  # bags and run folders: not handed back
    try:
        return _run_check(args, out)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)


def _run_check(args: argparse.Namespace, out: Path) -> dict:
    t0 = time.monotonic()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    summary = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": args.device,
               "commit": commit.stdout.strip() or "?", "budget_s": args.budget, "argv": sys.argv[1:],
               "steps": {}, "results": {}}
    env = {"HARDMIL_REQUIRE_CUDA": "1" if args.device == "cuda" else "0", "PYTHONUNBUFFERED": "1",
           "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # deterministic cuBLAS for the resume test
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    for step in args.steps:
        cmds = step_command(step, args)
        if cmds is None:
            summary["steps"][step] = {"status": "skipped", "reason": "bench/scale.py not present", "seconds": 0}
            say(out, f"== {step}: skipped (bench/scale.py not present)")
            continue
        recs = []
        for i, cmd in enumerate(cmds):
            left = args.budget - (time.monotonic() - t0)
            limit = min(args.timeouts[step] / len(cmds), left)
            if limit < 5:
                recs.append({"status": "skipped", "reason": "time budget spent", "seconds": 0})
                continue
            name = step if len(cmds) == 1 else f"{step}_{i}"
            say(out, f"== {name} (limit {limit:.0f} s): {' '.join(map(str, cmd))}")
            rec = run_step(name, cmd, limit, out, env)
            shown = "\n".join("   | " + x for x in rec["tail"].splitlines())
            say(out, f"   {rec['status']} in {rec['seconds']} s\n{shown}")
            recs.append(rec)
        merged = recs[0] if len(recs) == 1 else {
            "status": next((r["status"] for r in recs if r["status"] != "ok"), "ok"), "parts": recs,
            "seconds": round(sum(r["seconds"] for r in recs), 1), "rc": [r.get("rc") for r in recs],
            "tail": "\n".join(r.get("tail", "") for r in recs if r["status"] != "ok")}
        summary["steps"][step] = merged
        collect(step, summary, args)
        if step == "packing" and "packing" in summary["results"]:
            estimate_gpu_hours(summary, args, out, args.budget - (time.monotonic() - t0))
        summary["seconds"] = round(time.monotonic() - t0, 1)
        write_summary(out, summary)  # after every step: a later hang still leaves what was measured
    summary["seconds"] = round(time.monotonic() - t0, 1)
    write_summary(out, summary)
    return summary


def estimate_gpu_hours(summary: dict, args: argparse.Namespace, out: Path, left: float) -> None:
    """GPU-hours of config/paper.yaml's train jobs at each measured k (right after the packing step)."""
    if args.paper_jobs:
        jobs, how = args.paper_jobs, "--paper-jobs"
    elif left > 20:
        jobs, how = paper_train_jobs(out, min(45.0, left))
    else:
        jobs, how = PAPER_TRAIN_JOBS, "recorded count (no time left to count)"
    ms = [r["ms"] for r in summary["results"].get("models", {}).get("rows", []) if r["n"] == min(args.sizes)]
    step_ms = sum(ms) / len(ms) if ms else None
    source = f"mean per-bag step of the bench/models.py rows at {min(args.sizes)} instances"
    one = summary["results"]["packing"].get("1", {}).get("steps_per_s")
    if step_ms is None and one:  # models step missing: AB-MIL's step in the packing run at k = 1
        step_ms, source = 1000 / one, "AB-MIL step of the packing run at k = 1 (models step missing)"
    summary["results"]["gpu_hours_assumptions"] = {
        "train_jobs": jobs, "train_jobs_source": how, "bags_per_epoch": args.bags_per_epoch,
        "epochs": list(args.epochs), "step_ms": step_ms, "step_ms_source": source}
    summary["results"]["gpu_hours"] = gpu_hours(summary["results"]["packing"], step_ms, jobs,
                                                 args.bags_per_epoch, tuple(args.epochs))


def collect(step: str, summary: dict, args: argparse.Namespace) -> None:
    """Pull a finished step's own outputs into the summary's results."""
    out, res = args.out, summary["results"]
    if step == "env":
        res_env = read_json(out / "env.json")
        if res_env:
            summary["env"] = res_env
    elif step == "pytest":
        res["pytest"] = pytest_counts((out / "pytest.log").read_text(errors="replace")) if (
            out / "pytest.log").exists() else {}
    elif step == "demo":
        res["demo"] = [r for dev in dict.fromkeys((args.device, "cpu"))
                       for r in (read_json(out / f"demo_{dev}.json") or [])]
    elif step == "models":
        models = read_json(out / "models.json")
        if models:
            rows = [r for rs in models["rows"].values() for r in rs]
            res["models"] = {"rows": rows, "ratios": model_ratios(models), "device_name": models.get("device_name"),
                             "failed": models.get("failed", {})}
    elif step == "scale":
        scale = read_json(out / "scale.json")
        if scale is not None:
            res["scale"] = scale
    elif step == "packing":
        packing = read_json(out / "packing.json")
        if packing:
            res["packing"] = packing


def copy_out(folder: Path, dest: Path) -> None:
    """summary.md, summary.json and ``gpu_check.tar.gz`` (the whole folder) into ``dest``: three files."""
    import shutil
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("summary.md", "summary.json"):
        shutil.copy2(folder / name, dest / name)
    with tarfile.open(dest / "gpu_check.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    print(f"copied summary.md, summary.json and gpu_check.tar.gz to {dest}")


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through run_step, which ends the running step's process group


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))  # the package even where it is not installed
    if args.worker:
        w = args.worker_args
        if args.worker == "env":
            return worker_env(w[0], w[1])
        if args.worker == "demo":
            return worker_demo(w[0], w[1], int(w[2]), w[3], *map(int, w[4:6]))
        if args.worker == "packing":
            return worker_packing(w[0], [int(k) for k in w[1].split(",")], float(w[2]), w[3],
                                  [int(n) for n in w[4].split(",")], w[5])
        raise SystemExit(f"unknown worker {args.worker!r}")
    summary = run_check(args)
    say(args.out, f"\nwrote {args.out}/summary.json and summary.md ({summary['seconds']} s)")
    say(args.out, summary_markdown(summary))
    if args.copy_to:
        copy_out(args.out, args.copy_to)
    bad = [k for k, v in summary["steps"].items() if v["status"] not in ("ok", "skipped")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
