"""Small shared helpers: atomic writes, seeding, logging and provenance."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

log = logging.getLogger("hardmil")


DISK_FULL = "disk full while writing this file (no space left on device); any previous version is untouched"


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_disk_full(err: BaseException) -> bool:
    """True for ENOSPC (or EDQUOT), for HDF5 reporting errno 28, and for torch's zip writer failing after the disk
    filled up."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT) or (
            err.errno is None and ("No space left on device" in str(err) or "errno = 28," in str(err)))
    if isinstance(err, RuntimeError):
        text = str(err)
        return "unexpected pos" in text or "file write failed" in text
    return False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    A reader (or Snakemake) therefore never sees a half-written file, and a failure leaves any
    previous version of ``path`` untouched. The file gets the mode a plain ``open`` would give it
    (``0o666`` less the umask), not ``mkstemp``'s ``0o600``. A full disk raises :class:`InputError`
    naming ``path``.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, (0o777 if tmp_path.is_dir() else 0o666) & ~_umask())
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as err:
        if is_disk_full(err):
            raise InputError(path, DISK_FULL) from err
        raise
    finally:
        if tmp_path is not None and tmp_path.is_file():
            tmp_path.unlink()


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically and byte-reproducibly.

    ``torch.save`` to a file name uses that name as the zip archive's internal folder, so a random
    temporary name would make every file different; writing through an open file object gives the fixed
    internal name ``archive``. A full disk raises :class:`InputError` naming ``path``.
    """
    import torch

    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_tsv(path: str | os.PathLike, rows: list[dict], columns: list[str] | None = None) -> None:
    """Write ``rows`` as a tab-separated table with a header, atomically (None becomes an empty cell)."""
    import csv

    columns = columns or (list(rows[0]) if rows else [])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, delimiter="\t", lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else r[k]) for k in columns} for r in rows)


def read_tsv(path: str | os.PathLike, what: str = "table", columns: tuple[str, ...] | list[str] = (),
             allow_empty: bool = False) -> list[dict]:
    """The rows of a tab-separated file with a header; a missing file, no rows (unless ``allow_empty``) or a
    missing column among ``columns`` is an :class:`InputError` naming the file and saying what it is."""
    import csv

    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{what} does not exist")
    try:  # utf-8-sig: a byte-order mark (Excel's "UTF-8" export) is dropped; newline="": CRLF lines are read too
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            rows = list(reader)
    except UnicodeDecodeError:
        raise InputError(path, f"line {_first_non_utf8_line(path)}: {what} is not UTF-8 text; save it as UTF-8"
                         ) from None
    except csv.Error as err:
        raise InputError(path, f"{what} is not a readable TSV: {err}") from None
    except IsADirectoryError:
        raise InputError(path, f"{what} is a folder, not a file") from None
    if not rows and not allow_empty:
        raise InputError(path, f"{what} has no rows")
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(path, f"{what} lacks column(s) {missing}")
    for i, row in enumerate(rows, start=2):
        if None in row or any(row.get(c) is None for c in columns):
            raise InputError(path, f"line {i}: {'more' if None in row else 'fewer'} cells than the header's "
                                   f"{len(reader.fieldnames or [])}")
        for key, value in row.items():  # a short row's missing optional cells read as empty
            if value is None:
                row[key] = ""
    return rows


def _first_non_utf8_line(path: Path) -> int:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return data[: err.start].count(b"\n") + 1
    return 1


def check_distinct_paths(inputs: dict[str, str | os.PathLike | None], outputs: dict[str, str | os.PathLike | None]
                         ) -> None:
    """Refuse (:class:`InputError`) an output that is one of the inputs or another output: the same resolved
    path, or the same file reached through a symlink or hard link (``os.path.samefile``). ``inputs`` and
    ``outputs`` map an option name (``--model``) to its path; None entries are skipped. An output may not lie
    inside an input folder either (it would replace a file the command reads)."""
    given = [(name, Path(p), name in outputs) for name, p in {**inputs, **outputs}.items() if p is not None]
    for i, (name, path, is_out) in enumerate(given):
        for other, opath, other_out in given[:i]:
            if not (is_out or other_out):
                continue
            same = path.resolve() == opath.resolve()
            if not same and path.exists() and opath.exists():
                with contextlib.suppress(OSError):
                    same = os.path.samefile(path, opath)
            out, inp = (path, opath) if is_out else (opath, path)
            inside = not same and inp.is_dir() and out.resolve().is_relative_to(inp.resolve())
            if same or inside:
                raise InputError(path, f"{name} is {'inside ' if inside else ''}the path given to {other} "
                                       f"({opath}); writing it would replace a file this command reads or "
                                       "writes: choose another path")


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, yaml.safe_dump(_plain(obj), sort_keys=False))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _plain(obj: Any) -> Any:
    """Convert Snakemake's Namedlist/ordered dicts and numpy scalars to plain YAML-able objects."""
    if isinstance(obj, dict) or hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, str):
        return str(obj)  # drops str subclasses such as torch's TorchVersion
    return obj


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Send the package's log records to ``log_file`` (a rule's log) and to stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """The commit of the source tree the package runs from, or 'unknown' outside a git checkout."""
    here = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class InputError(ValueError):
    """Bad user input. The message always names the offending file."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem

    def __reduce__(self):  # picklable (a worker process can hand it back), with both arguments
        return type(self), (self.path, self.problem)


class _LogStream:
    """A rule's log as a text stream that never raises: the first failed write (a full disk) is kept in ``error``
    and everything after it is dropped, so logging cannot bury the job's own error under chained tracebacks."""

    def __init__(self, path: Path):
        self.path = path
        self.error: OSError | None = None
        self._fh = open(path, "a")

    def write(self, text: str) -> int:
        if self.error is None:
            try:
                self._fh.write(text)
                self._fh.flush()
            except OSError as err:
                self.error = err
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):  # fileno, encoding, ... of the log file (subprocesses write to it directly)
        if name == "_fh":
            raise AttributeError(name)
        return getattr(self._fh, name)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()


def disk_full_line(err: BaseException) -> str | None:
    """The one line to print for a full disk behind ``err`` (naming the file), None if the disk is not full."""
    if isinstance(err, InputError) and err.problem == DISK_FULL:
        return str(err)
    if is_disk_full(err):
        return f"{getattr(err, 'filename', None) or '(a file of this job)'}: {DISK_FULL}"
    return None


@contextlib.contextmanager
def rule_log(log_file: str | os.PathLike | None) -> Iterator[None]:
    """For a workflow script: log records, progress bars (stderr) and any exception go to the rule's log.

    A full disk, whether it stops an output or the log itself, ends the job with one line on the job's stderr
    naming the file that could not be written (exit status 1), no traceback."""
    if not log_file:
        setup_logging(None)
        yield
        return
    log_file = Path(log_file)
    old_stderr = sys.stderr

    def give_up(line: str) -> None:
        print(f"error: {line}", file=old_stderr)
        raise SystemExit(1)

    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        stream = _LogStream(log_file)
    except OSError as err:
        if is_disk_full(err):
            give_up(f"{log_file}: {DISK_FULL}")
        raise
    sys.stderr = stream
    try:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            handlers=[logging.StreamHandler(stream)], force=True)
        try:
            yield
        except Exception as err:
            line = disk_full_line(err)
            if line is None:
                log.exception("failed")
                raise
            log.error("%s", line)
            sys.stderr = old_stderr
            give_up(line)
    finally:
        sys.stderr = old_stderr
        logging.basicConfig(handlers=[logging.StreamHandler(old_stderr)], force=True)
        stream.close()
    if stream.error is not None:
        give_up(f"{log_file}: {DISK_FULL}")


_MALLOC_FIXED = False


def fix_malloc_threshold(bytes_: int = 1 << 20) -> bool:
    """Make glibc serve every allocation of ``bytes_`` or more with its own mmap, returned to the system on free.

    glibc otherwise raises its mmap threshold after the first large free (up to 32 MB), so the one-bag-per-step
    buffers (a 8,000 x 1024 float32 bag is 33 MB) come from the heap and fragment it: measured on this machine,
    a training job's anonymous memory wandered between 580 and 760 MB over 6 epochs instead of staying at 360 MB.
    Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``, as ``MALLOC_MMAP_THRESHOLD_`` would) keeps a job's
    memory independent of how many bags it has stepped through. A no-op (False) where libc is not glibc."""
    global _MALLOC_FIXED
    if _MALLOC_FIXED:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        _MALLOC_FIXED = bool(libc.mallopt(-3, int(bytes_)))  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        _MALLOC_FIXED = False
    return _MALLOC_FIXED


RECORDED_PACKAGES = ("torch", "numpy", "scikit-learn", "scikit-survival", "h5py", "snakemake", "openslide-python")


def package_versions(names: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that shape a run's numbers (None where not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
