"""GPU slots for concurrently running training jobs on one workstation.

Every visible device offers ``jobs_per_gpu`` slots; a slot is an exclusive ``flock`` on a small file in a lock
folder shared by all jobs of the machine (``$HARDMIL_GPU_LOCK_DIR``, default ``<tmp>/hardmil-gpu-slots``). A job
takes a free slot on the least-loaded device (waiting up to ``timeout`` seconds when all are taken), makes that
device its current CUDA device and gives the slot back on exit. The kernel drops an ``flock`` when its holder
dies, so a crashed or killed (SIGKILL) job frees its slot without any clean-up.

Not used under a batch scheduler: in a SLURM job (``SLURM_JOB_ID`` set) the scheduler has already given the job
its GPU, and every job on a node may see it as device 0, so slots named by index would make jobs on different GPUs
wait for each other. ``HARDMIL_GPU_SLOTS=0`` turns the slots off anywhere.

Devices are the entries of ``CUDA_VISIBLE_DEVICES`` when it is set (indices, or ``GPU-``/``MIG-`` UUIDs; CUDA stops
at the first negative entry), else ``torch.cuda.device_count()`` indices. Lock files are named by the entry, so two
workflows started with the same visible devices share their slots.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "HARDMIL_GPU_LOCK_DIR"
SWITCH_ENV = "HARDMIL_GPU_SLOTS"
WAIT_ENV = "HARDMIL_GPU_WAIT_S"
DEFAULT_TIMEOUT = 3600.0


def visible_devices() -> list[str]:
    """The devices a CUDA process here would see, as ``CUDA_VISIBLE_DEVICES`` names them (else indices)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        out = []
        for entry in (e.strip() for e in env.split(",")):
            if not entry or entry.startswith("-"):  # CUDA ignores this entry and every one after it
                break
            out.append(entry)
        return out
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def default_lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "hardmil-gpu-slots")


def _lock_name(device: str, slot: int) -> str:
    return f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.slot{slot}.lock"


def _open(path: Path) -> int:
    """``path`` opened for flock: read-write, or read-only when another user created it (flock needs neither)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def _make_lock_dir(lock_dir: Path) -> None:
    """Create the lock folder; one this process creates is writable by every user (sticky, like /tmp)."""
    if not lock_dir.is_dir():
        lock_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(lock_dir, 0o1777)
        except OSError:
            pass


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive flock on ``path``, or None when another holder has it."""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


@dataclass
class Slot:
    """One held GPU slot: ``cuda:{index}`` in this process is the device ``device`` of the visible list."""

    device: str
    index: int
    slot: int
    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def acquire(jobs_per_gpu: int = 1, devices: list[str] | None = None, lock_dir: str | os.PathLike | None = None,
            timeout: float | None = None, poll: float = 0.2) -> Slot:
    """Take a free slot on the device with the most free slots (ties: the first visible one).

    Raises ``TimeoutError`` when no slot frees up within ``timeout`` seconds (default ``$HARDMIL_GPU_WAIT_S`` or
    one hour) and ``RuntimeError`` when no device is visible."""
    if jobs_per_gpu < 1:
        raise ValueError(f"jobs_per_gpu must be >= 1, got {jobs_per_gpu}")
    devices = visible_devices() if devices is None else [str(d) for d in devices]
    if not devices:
        raise RuntimeError("no visible CUDA device to allocate (CUDA_VISIBLE_DEVICES empty or no GPU)")
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    _make_lock_dir(lock_dir)
    if timeout is None:
        timeout = float(os.environ.get(WAIT_ENV) or DEFAULT_TIMEOUT)
    deadline = time.monotonic() + timeout
    while True:
        slot = _pick(devices, jobs_per_gpu, lock_dir)
        if slot is not None:
            try:  # for a person looking at the lock folder
                os.ftruncate(slot.fd, 0)
                os.write(slot.fd, f"pid {os.getpid()}\n".encode())
            except OSError:  # opened read-only (another user's file): the lock holds all the same
                pass
            return slot
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no free GPU slot among devices {devices} x {jobs_per_gpu} job(s) per GPU "
                               f"in {lock_dir} after {timeout:g} s")
        time.sleep(poll)


def _pick(devices: list[str], jobs_per_gpu: int, lock_dir: Path) -> Slot | None:
    """Under the folder's allocation mutex: probe every slot, keep the best free one."""
    mutex = _open(lock_dir / "allocator.lock")
    try:
        fcntl.flock(mutex, fcntl.LOCK_EX)  # held only while probing: milliseconds
        best: Slot | None = None
        best_free = 0
        for index, device in enumerate(devices):
            free: list[tuple[int, Path, int]] = []
            for s in range(jobs_per_gpu):
                path = lock_dir / _lock_name(device, s)
                fd = _try_lock(path)
                if fd is not None:
                    free.append((s, path, fd))
            if len(free) > best_free:
                if best is not None:
                    best.release()
                s, path, fd = free.pop(0)
                best, best_free = Slot(device, index, s, path, fd), len(free) + 1
            for _, _, fd in free:  # probed, not kept
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        return best
    finally:
        fcntl.flock(mutex, fcntl.LOCK_UN)
        os.close(mutex)


@contextmanager
def gpu_slot(device: str = "auto", jobs_per_gpu: int = 1, lock_dir: str | os.PathLike | None = None,
             timeout: float | None = None) -> Iterator[Slot | None]:
    """For a training job: hold a GPU slot and make its device the current CUDA device.

    Only when the job would run on an unspecified CUDA device (``device`` ``auto`` or ``cuda``), CUDA is available
    and no scheduler placed the job (``SLURM_JOB_ID``; ``HARDMIL_GPU_SLOTS=0``); otherwise (``cpu``, an explicit
    ``cuda:N``, no GPU, a SLURM job) it yields None and changes nothing. The job's
    ``device`` setting itself is left as it is, so its resolved config (and resume digest) does not depend on
    which GPU it got: ``torch.device('cuda')`` is the current device."""
    import torch

    if os.environ.get(SWITCH_ENV) == "0" or os.environ.get("SLURM_JOB_ID"):
        yield None
        return
    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        yield None
        return
    slot = acquire(jobs_per_gpu, lock_dir=lock_dir, timeout=timeout)
    try:
        torch.cuda.set_device(slot.index)
        log.info("GPU slot %d of device %s (cuda:%d), %d job(s) per GPU", slot.slot, slot.device, slot.index,
                 jobs_per_gpu)
        yield slot
    finally:
        slot.release()
