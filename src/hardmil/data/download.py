"""HTTP(S) download with Range resume, size and checksum checks, bounded retries and atomic rename.

The file grows in ``<dest>.partial``; only a complete file whose size and checksum match is renamed
onto ``dest``. ``http.client`` does not raise when a server closes the connection early, so the byte
count is checked against ``Content-Length`` after every attempt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    pass


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _check(path: Path, size: int | None, digests: dict[str, str]) -> str | None:
    """Return a description of the first mismatch, or None if the file is as expected."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"size {actual} != expected {size}"
    for algorithm, expected in digests.items():
        got = file_digest(path, algorithm)
        if got.lower() != expected.lower():
            return f"{algorithm} {got} != expected {expected}"
    return None


def download(url: str, dest: str | os.PathLike, *, size: int | None = None, md5: str | None = None,
             sha256: str | None = None, retries: int = 4, backoff: float = 1.0, timeout: float = 60.0,
             headers: dict[str, str] | None = None, progress=None) -> Path:
    """Download ``url`` to ``dest``; skip the transfer when ``dest`` already matches size and checksums.

    Retries (at most ``retries`` extra attempts) on connection errors, short reads and HTTP 5xx,
    resuming from the bytes already in the ``.partial`` file. A checksum mismatch of a complete file
    removes the partial file and fails: the data on the server is not what the caller expects.
    ``progress``, if given, is called with the size of every block written (e.g. ``tqdm.update``).
    """
    dest = Path(dest)
    digests = {k: v for k, v in (("md5", md5), ("sha256", sha256)) if v}
    if dest.exists() and _check(dest, size, digests) is None:
        log.info("%s already complete, skipping", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    last_error = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        have = partial.stat().st_size if partial.exists() else 0
        if size is not None and have > size:
            partial.unlink()
            have = 0
        if size is None or have < size:
            try:
                _fetch_into(url, partial, have, timeout, headers or {}, progress)
            except _Retryable as err:
                last_error = str(err)
                log.warning("%s: attempt %d/%d failed: %s", url, attempt + 1, retries + 1, err)
                continue
        problem = _check(partial, size, digests)
        if problem is None:
            os.replace(partial, dest)
            return dest
        partial.unlink()
        raise DownloadError(f"{url} -> {dest}: downloaded file does not match: {problem}")
    raise DownloadError(f"{url} -> {dest}: gave up after {retries + 1} attempts: {last_error}")


class _Retryable(Exception):
    pass


def _fetch_into(url: str, partial: Path, have: int, timeout: float, headers: dict[str, str],
                progress=None) -> None:
    req = urllib.request.Request(url, headers=dict(headers))
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # range beyond the end: what we have is (claimed) complete
            return
        if 500 <= err.code < 600 or err.code == 429:
            raise _Retryable(f"HTTP {err.code}") from err
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise _Retryable(str(err)) from err
    with resp:
        if have and resp.status != 206:  # server ignored Range: start again
            have = 0
        expected = resp.headers.get("Content-Length")
        got = 0
        try:
            with open(partial, "ab" if have else "wb") as fh:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    fh.write(block)
                    got += len(block)
                    if progress is not None:
                        progress(len(block))
        except (OSError, ValueError) as err:  # includes http.client.IncompleteRead
            raise _Retryable(f"connection lost after {got} bytes: {err}") from err
        if expected is not None and got < int(expected):
            raise _Retryable(f"short read: {got} of {expected} bytes")


def get_bytes(url: str, *, accept: str = "*/*", retries: int = 4, backoff: float = 1.0, timeout: float = 60.0,
              body: object | None = None) -> bytes:
    """GET (or, with ``body``, POST as JSON) a small document into memory.

    Bounded retries on HTTP 5xx / 429, connection errors and short reads; other HTTP errors fail at once.
    """
    import http.client
    import json

    data = None if body is None else json.dumps(body).encode()
    headers = {"Accept": accept} | ({} if data is None else {"Content-Type": "application/json"})
    last = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers),
                                        timeout=timeout) as resp:
                raw = resp.read()
                expected = resp.headers.get("Content-Length")
            if expected is not None and len(raw) < int(expected):
                last = f"short read: {len(raw)} of {expected} bytes"
                continue
            return raw
        except urllib.error.HTTPError as err:
            if not (500 <= err.code < 600 or err.code == 429):
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
            last = f"HTTP {err.code}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            last = str(err) or type(err).__name__
    raise DownloadError(f"{url}: gave up after {retries + 1} attempts: {last}")


def get_json(url: str, *, accept: str = "application/json", retries: int = 4, backoff: float = 1.0,
             timeout: float = 60.0, body: object | None = None) -> object:
    """:func:`get_bytes` parsed as JSON. An answer that is not JSON fails at once, naming the URL."""
    import json

    raw = get_bytes(url, accept=accept, retries=retries, backoff=backoff, timeout=timeout, body=body)
    try:
        return json.loads(raw.decode())
    except ValueError as err:
        raise DownloadError(f"{url}: the answer is not JSON ({err}): {raw[:80]!r}") from err
