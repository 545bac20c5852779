"""hardmil.gpu: GPU slots for concurrent training jobs, tested on the CPU with fake device lists."""

import os
import signal
import subprocess
import sys
import time

import pytest

from hardmil.gpu import acquire, gpu_slot, visible_devices

HOLDER = """
import sys, time
from hardmil.gpu import acquire
slot = acquire(int(sys.argv[1]), devices=sys.argv[2].split(","), lock_dir=sys.argv[3], timeout=float(sys.argv[4]))
print(slot.device, slot.slot, flush=True)
sys.stdin.readline()  # hold the slot until the test closes stdin (or kills this process)
"""


def holder(tmp_path, devices="0,1", jobs_per_gpu=1, timeout=10.0):
    """A separate process that takes a slot, prints 'device slot' and holds it."""
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(jobs_per_gpu), devices, str(tmp_path), str(timeout)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def got(proc) -> tuple[str, int]:
    line = proc.stdout.readline().split()
    assert line, proc.stderr.read()
    return line[0], int(line[1])


def release(*procs):
    for p in procs:
        if p.poll() is None:
            p.stdin.close()
            p.wait(timeout=20)


@pytest.mark.parametrize("env, expected", [("0,2", ["0", "2"]), ("", []), ("3,-1,1", ["3"]),
                                           ("GPU-ab12, GPU-cd34", ["GPU-ab12", "GPU-cd34"])])
def test_visible_devices_from_cuda_visible_devices(monkeypatch, env, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert visible_devices() == expected


def test_two_concurrent_processes_get_different_devices(tmp_path):
    a = holder(tmp_path)
    first = got(a)
    b = holder(tmp_path)
    second = got(b)
    try:
        assert {first[0], second[0]} == {"0", "1"}
        assert first[1] == second[1] == 0
    finally:
        release(a, b)


def test_jobs_per_gpu_two_share_one_device_and_a_third_waits(tmp_path):
    a, b = holder(tmp_path, "0", 2), holder(tmp_path, "0", 2)
    try:
        slots = sorted([got(a), got(b)])
        assert slots == [("0", 0), ("0", 1)]
        with pytest.raises(TimeoutError, match="no free GPU slot"):
            acquire(2, devices=["0"], lock_dir=tmp_path, timeout=0.3, poll=0.05)
    finally:
        release(a, b)
    slot = acquire(2, devices=["0"], lock_dir=tmp_path, timeout=5)  # both ended: free again
    slot.release()


def test_least_loaded_device_first(tmp_path):
    """With 2 slots per GPU on two GPUs, the first two jobs go to different GPUs, not both to GPU 0."""
    s1 = acquire(2, devices=["0", "1"], lock_dir=tmp_path, timeout=1)
    s2 = acquire(2, devices=["0", "1"], lock_dir=tmp_path, timeout=1)
    s3 = acquire(2, devices=["0", "1"], lock_dir=tmp_path, timeout=1)
    try:
        assert (s1.device, s2.device) == ("0", "1")
        assert (s1.index, s2.index) == (0, 1)
        assert s3.device == "0" and s3.slot == 1
    finally:
        for s in (s1, s2, s3):
            s.release()


def test_a_killed_job_frees_its_slot(tmp_path):
    a = holder(tmp_path, "0", 1)
    assert got(a) == ("0", 0)
    with pytest.raises(TimeoutError):
        acquire(1, devices=["0"], lock_dir=tmp_path, timeout=0.3, poll=0.05)
    os.kill(a.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops the flock with the process
    a.wait(timeout=20)
    t = time.monotonic()
    slot = acquire(1, devices=["0"], lock_dir=tmp_path, timeout=5, poll=0.05)
    assert slot.device == "0" and time.monotonic() - t < 5
    slot.release()


def test_released_slot_is_reused_and_bad_arguments(tmp_path):
    s = acquire(1, devices=["0"], lock_dir=tmp_path, timeout=1)
    s.release()
    s.release()  # idempotent
    acquire(1, devices=["0"], lock_dir=tmp_path, timeout=1).release()
    with pytest.raises(ValueError, match="jobs_per_gpu"):
        acquire(0, devices=["0"], lock_dir=tmp_path)
    with pytest.raises(RuntimeError, match="no visible CUDA device"):
        acquire(1, devices=[], lock_dir=tmp_path)


def test_gpu_slot_is_a_no_op_without_cuda_or_for_an_explicit_device(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with gpu_slot("auto", 2, lock_dir=tmp_path / "locks") as slot:
        assert slot is None
    assert not (tmp_path / "locks").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for device in ("cpu", "cuda:1"):
        with gpu_slot(device, 1, lock_dir=tmp_path / "locks") as slot:
            assert slot is None
    assert not (tmp_path / "locks").exists()


@pytest.mark.parametrize("var, value", [("SLURM_JOB_ID", "1234"), ("HARDMIL_GPU_SLOTS", "0")])
def test_gpu_slot_stands_aside_under_slurm_or_when_switched_off(tmp_path, monkeypatch, var, value):
    """A SLURM job has its GPU from the scheduler (and may see it as device 0 like every job on the node)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("set_device called"))
    monkeypatch.setenv(var, value)
    with gpu_slot("auto", 1, lock_dir=tmp_path / "locks") as slot:
        assert slot is None
    assert not (tmp_path / "locks").exists()


def test_gpu_slot_sets_the_device_and_releases(tmp_path, monkeypatch):
    import torch

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("HARDMIL_GPU_SLOTS", raising=False)
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")
    other = acquire(1, lock_dir=tmp_path, timeout=1)  # another job holds GPU 4
    try:
        with gpu_slot("auto", 1, lock_dir=tmp_path, timeout=1) as slot:
            assert (slot.device, slot.index) == ("7", 1)
            assert chosen == [1]
        again = acquire(1, devices=["7"], lock_dir=tmp_path, timeout=1)  # released on exit
        again.release()
    finally:
        other.release()


def test_another_users_lock_files_are_locked_read_only(tmp_path, monkeypatch):
    """Lock files another user created (mode 0644) open read-only; flock excludes all the same."""
    import hardmil.gpu as gpu

    lock_dir = tmp_path / "locks"
    acquire(1, devices=["0"], lock_dir=lock_dir, timeout=1).release()  # files exist now, as if another user's
    assert oct(lock_dir.stat().st_mode & 0o7777) == "0o1777"  # a new lock folder is shared, like /tmp
    real_open = os.open

    def no_write(path, flags, *mode):
        if flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *mode)

    monkeypatch.setattr(gpu.os, "open", no_write)
    held = acquire(1, devices=["0"], lock_dir=lock_dir, timeout=1)
    try:
        assert held.device == "0"
        with pytest.raises(TimeoutError):
            acquire(1, devices=["0"], lock_dir=lock_dir, timeout=0.2, poll=0.05)
    finally:
        held.release()
