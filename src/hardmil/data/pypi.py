"""Fetch one file of a release from a Python package index through the Simple API (PEP 691 JSON)."""

from __future__ import annotations

import logging
import os
import urllib.parse
from pathlib import Path

from hardmil.data.download import DownloadError, download, get_json

log = logging.getLogger(__name__)

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


def find_release_file(index_url: str, project: str, filename: str) -> dict:
    """Return ``{"url", "sha256", "size"}`` of ``filename`` in the project's Simple API page."""
    page_url = f"{index_url.rstrip('/')}/{project}/"
    page = get_json(page_url, accept=SIMPLE_JSON)
    for entry in page.get("files", []):
        if entry.get("filename") == filename:
            return {
                "url": urllib.parse.urljoin(page_url, entry["url"]),
                "sha256": entry.get("hashes", {}).get("sha256"),
                "size": entry.get("size"),
            }
    raise DownloadError(f"{page_url}: no file named {filename} (is the version right?)")


def fetch_wheel(index_url: str, project: str, version: str, dest: str | os.PathLike,
                sha256: str | None = None) -> dict:
    """Download ``{project}-{version}-py3-none-any.whl`` to ``dest`` and return its provenance.

    The index's own sha256 is always checked; ``sha256`` (from config) additionally pins the file.
    """
    return fetch_release_file(index_url, project, f"{project}-{version}-py3-none-any.whl", dest, sha256)


def fetch_release_file(index_url: str, project: str, filename: str, dest: str | os.PathLike,
                       sha256: str | None = None) -> dict:
    """Download any file of a release (e.g. a ``py2.py3`` wheel) to ``dest``; pinned like :func:`fetch_wheel`."""
    info = find_release_file(index_url, project, filename)
    if sha256 and info["sha256"] and sha256.lower() != info["sha256"].lower():
        raise DownloadError(f"{info['url']}: index sha256 {info['sha256']} != pinned {sha256}")
    download(info["url"], dest, size=info["size"], sha256=sha256 or info["sha256"])
    log.info("fetched %s (%s bytes)", Path(dest), info["size"])
    return {"url": info["url"], "sha256": sha256 or info["sha256"], "size": info["size"], "filename": filename}
