"""CAMELYON16/17 client against a bucket-shaped server on 127.0.0.1."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import yaml

from hardmil.data import camelyon
from hardmil.data.download import DownloadError
from hardmil.data.slide_download import fetch_slides

from .conftest import REPO
from .test_gdc import fake_slide

C16 = ["normal_001", "normal_002", "tumor_001", "test_001", "test_002", "test_003"]
C17 = ["patient_000_node_0", "patient_000_node_1", "patient_000_node_2", "patient_100_node_0"]
OUTLINE = (b'<?xml version="1.0"?><ASAP_Annotations><Annotations><Annotation Name="Annotation 0" Type="Polygon" '
           b'PartOfGroup="_0"><Coordinates><Coordinate Order="0" X="10" Y="10"/><Coordinate Order="1" X="90" '
           b'Y="10"/><Coordinate Order="2" X="90" Y="60"/></Coordinates></Annotation></Annotations>'
           b'<AnnotationGroups/></ASAP_Annotations>')
NET = {"backoff": 0, "retries": 1}


def serve_bucket(server, reference_header=False, tamper=None):
    """Slides, md5 lists, the C16 test reference and the C17 stages under /CAMELYON16 and /CAMELYON17."""
    bodies = {}
    for part, names in (("CAMELYON16", C16), ("CAMELYON17", C17)):
        lines = []
        for i, name in enumerate(names):
            body = fake_slide(hash(name) % 1000, 50_000 + i)
            bodies[name] = body
            lines.append(f"{hashlib.md5(body).hexdigest()}  images/{name}.tif")
            server.files[f"/{part}/images/{name}.tif"] = body if name != tamper else body[::-1]
        if part == "CAMELYON16":  # one tumour slide has a published outline, listed with its md5
            lines.append(f"{hashlib.md5(OUTLINE).hexdigest()}  annotations/tumor_001.xml")
            server.files[f"/{part}/annotations/tumor_001.xml"] = OUTLINE
        lines.append(f"{'b' * 32} *./README.md")
        server.files[f"/{part}/checksums.md5"] = ("\n".join(lines) + "\n").encode()
    ref = "test_001,Tumor,Macro,,\ntest_002,Normal,,,\n"  # test_003 has no reference row
    if reference_header:
        ref = "image,class,type,center\n" + ref.replace(",,\n", ",0\n")
    server.files["/CAMELYON16/evaluation/reference.csv"] = ref.encode()
    server.files["/CAMELYON17/stages.csv"] = (
        b"patient,stage\npatient_000.zip,pN1\npatient_000_node_0.tif,negative\npatient_000_node_1.tif,itc\n"
        b"patient_000_node_2.tif,macro\npatient_100.zip,\n")
    return bodies


def read_tsv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.mark.parametrize("header", [False, True])
def test_manifest_labels_cases_and_exclusions(http_server, tmp_path, header):
    bodies = serve_bucket(http_server, reference_header=header)
    rows = camelyon.build_manifest({"base_url": http_server.url}, tmp_path / "c.tsv", tmp_path / "c.json",
                                   classes=["normal", "tumor"], **NET)
    table = read_tsv(tmp_path / "c.tsv")
    assert list(table[0]) == camelyon.MANIFEST_COLUMNS and len(table) == len(rows)
    got = {r["slide"]: (r["label"], r["case"], r["split"]) for r in table}
    assert got == {
        "normal_001": ("normal", "normal_001", "train"), "normal_002": ("normal", "normal_002", "train"),
        "tumor_001": ("tumor", "tumor_001", "train"), "test_001": ("tumor", "test_001", "test"),
        "test_002": ("normal", "test_002", "test"),
        "patient_000_node_0": ("normal", "patient_000", "train"),
        "patient_000_node_1": ("tumor", "patient_000", "train"),  # isolated tumour cells count as positive
        "patient_000_node_2": ("tumor", "patient_000", "train"),
    }
    assert {r["slide"]: r["stage"] for r in table}["patient_000_node_1"] == "itc"
    assert all(r["md5"] == hashlib.md5(bodies[r["slide"]]).hexdigest() for r in table)
    prov = json.loads((tmp_path / "c.json").read_text())
    assert prov["excluded"] == {"CAMELYON16: no label published": 1, "CAMELYON17: no label published": 1}
    assert len(prov["sources_sha256"]) == 4
    outlined = {r["slide"]: (r["annotation_key"], r["annotation_md5"]) for r in table if r["annotation_key"]}
    assert outlined == {"tumor_001": ("CAMELYON16/annotations/tumor_001.xml", hashlib.md5(OUTLINE).hexdigest())}
    assert prov["annotated_per_label"] == {"tumor": 1}
    off = camelyon.build_manifest({"base_url": http_server.url, "annotations": False}, tmp_path / "o.tsv",
                                  tmp_path / "o.json", **NET)
    assert not any(r["annotation_key"] for r in off)


def test_only_one_part_and_malformed_checksums(http_server, tmp_path):
    serve_bucket(http_server)
    rows = camelyon.build_manifest({"base_url": http_server.url, "parts": ["CAMELYON17"]}, tmp_path / "c.tsv",
                                   tmp_path / "c.json", **NET)
    assert {r["part"] for r in rows} == {"CAMELYON17"} and len(rows) == 3
    http_server.files["/CAMELYON17/checksums.md5"] = b"not a checksum line\n"
    with pytest.raises(DownloadError, match=rf"{http_server.url}/CAMELYON17/checksums.md5: line 1 is not"):
        camelyon.build_manifest({"base_url": http_server.url, "parts": ["CAMELYON17"]}, tmp_path / "d.tsv",
                                tmp_path / "d.json", **NET)
    assert not (tmp_path / "d.tsv").exists()
    serve_bucket(http_server)
    del http_server.files["/CAMELYON17/stages.csv"]
    with pytest.raises(DownloadError, match=r"/CAMELYON17/stages.csv: HTTP 404"):
        camelyon.build_manifest({"base_url": http_server.url, "parts": ["CAMELYON17"],
                                 "c17_stages": "CAMELYON17/stages.csv"}, tmp_path / "d.tsv", tmp_path / "d.json",
                                **NET)


def test_download_verifies_the_published_checksums(http_server, tmp_path):
    bodies = serve_bucket(http_server, tamper="tumor_001")
    rows = camelyon.build_manifest({"base_url": http_server.url}, tmp_path / "c.tsv", tmp_path / "c.json", **NET)
    items = camelyon.slide_files(rows, http_server.url)
    out = tmp_path / "slides"
    counts = fetch_slides(items, out, out / "download.tsv", on_error="skip", backoff=0)
    assert counts["downloaded"] == 7 and counts["failed"] == 1
    assert not (out / "tumor_001.tif").exists() and not (out / "tumor_001.tif.partial").exists()
    for r in read_tsv(out / "download.tsv"):
        assert (out / f"{r['slide']}.tif").read_bytes() == bodies[r["slide"]]


def test_outlines_are_fetched_verified_and_read_as_annotations(http_server, tmp_path):
    """The published outline lands beside the slides as {slide}.xml, where the heatmap figure looks for it."""
    from hardmil.wsi.annotations import find_annotation, read_asap_xml

    serve_bucket(http_server)
    rows = camelyon.build_manifest({"base_url": http_server.url}, tmp_path / "c.tsv", tmp_path / "c.json", **NET)
    out = tmp_path / "slides"
    items = camelyon.annotation_files(rows, http_server.url)
    assert [it.filename for it in items] == ["tumor_001.xml"]
    counts = fetch_slides(items, out, out / "annotations.tsv", on_error="fail", backoff=0, what="outlines")
    assert counts["downloaded"] == 1
    ann = read_asap_xml(find_annotation(out, "tumor_001"))
    assert len(ann.tumour) == 1 and ann.tumour[0].shape == (3, 2)
    assert fetch_slides(items, out, out / "annotations.tsv", backoff=0, what="outlines")["skipped"] == 1
    http_server.files["/CAMELYON16/annotations/tumor_001.xml"] = OUTLINE.replace(b"90", b"91")
    (out / "tumor_001.xml").unlink()
    with pytest.raises(DownloadError, match="1 of 1 outlines failed"):  # a changed outline fails its md5
        fetch_slides(items, out, out / "annotations.tsv", on_error="fail", backoff=0, what="outlines")
    assert not (out / "tumor_001.xml").exists()


def test_schema_defaults_match_the_module_defaults():
    from hardmil.config import load_schema

    schema = load_schema()
    props = schema["properties"]["datasets"]["additionalProperties"]["properties"]["camelyon"]["properties"]
    assert {k: v["default"] for k, v in props.items()} == camelyon.DEFAULTS
    gdc_props = schema["properties"]["datasets"]["additionalProperties"]["properties"]["gdc"]["properties"]
    from hardmil.data import gdc

    assert gdc_props["api_url"]["default"] == gdc.GDC_API


def test_example_config_is_valid_and_a_gdc_dataset_needs_its_query():
    from hardmil.config import SCHEMA_PATH, load_config, validate_config

    schema_path = SCHEMA_PATH
    cfg = load_config(REPO / "config/examples/slides.yaml", schema_path)
    assert cfg["datasets"]["camelyon"]["camelyon"]["c17_labels"]["itc"] == "tumor"  # defaults filled in
    assert cfg["datasets"]["tcga_nsclc"]["gdc"]["api_url"] == "https://api.gdc.cancer.gov"
    assert cfg["download"]["on_error"] == "fail"
    schema = yaml.safe_load(schema_path.read_text())
    bad = {"datasets": {"x": {"source": "gdc", "classes": ["a", "b"]}}, "methods": {"m": {"model": "abmil"}}}
    with pytest.raises(ValueError, match="config datasets.x: 'gdc' is a required property"):
        validate_config(bad, schema)
