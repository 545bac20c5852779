"""GDC client against a GDC-shaped server on 127.0.0.1: paging, clinical join, manifest, slide download."""

from __future__ import annotations

import csv
import hashlib
import math
import re
import uuid

import numpy as np
import pytest

from hardmil.data import gdc
from hardmil.data.download import DownloadError
from hardmil.data.slide_download import fetch_slides


def fake_slide(seed: int, n: int = 300_000) -> bytes:
    return b"II*\x00" + np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _field_values(filters: dict, field: str) -> list | None:
    """The values an ``in`` filter on ``field`` allows (None: no such filter)."""
    if filters.get("op") == "in" and filters["content"]["field"] == field:
        return filters["content"]["value"]
    if filters.get("op") == "and":
        for sub in filters["content"]:
            got = _field_values(sub, field)
            if got is not None:
                return got
    return None


def _paged(hits: list, body: dict) -> dict:
    start, size = int(body["from"]), int(body["size"])
    total = len(hits)
    return {"data": {"hits": hits[start:start + size], "pagination": {
        "count": len(hits[start:start + size]), "total": total, "from": start, "size": size,
        "page": start // size + 1, "pages": math.ceil(total / size)}}, "warnings": {}}


class GDCMock:
    """Serves /files, /cases (POST, filtered and paged as the GDC does) and /data/{id} from ``server``."""

    def __init__(self, server, slides: list[dict], cases: list[dict]):
        self.slides, self.cases = slides, cases
        server.post["/files"] = self.files
        server.post["/cases"] = self.case_hits
        for s in slides:
            server.files[f"/data/{s['file_id']}"] = s["body"]
            server.headers[f"/data/{s['file_id']}"] = {
                "Content-Disposition": f"attachment; filename={s['file_name']}",
                "Content-Type": "application/octet-stream"}

    def files(self, body):
        f = body["filters"]
        keep = [s for s in self.slides
                if s["project"] in _field_values(f, "cases.project.project_id")
                and s["data_type"] in _field_values(f, "data_type")
                and s["experimental_strategy"] in _field_values(f, "experimental_strategy")
                and s["data_format"] in _field_values(f, "data_format")]
        hits = [{"id": s["file_id"], "file_id": s["file_id"], "file_name": s["file_name"],
                 "md5sum": hashlib.md5(s["body"]).hexdigest(), "file_size": len(s["body"]),
                 "cases": [{"case_id": s["case_id"], "submitter_id": s["submitter"],
                            "project": {"project_id": s["project"]}}]} for s in keep]
        return _paged(hits, body)

    def case_hits(self, body):
        projects = _field_values(body["filters"], "project.project_id")
        return _paged([c for c in self.cases if c["project"]["project_id"] in projects], body)


def tcga_cohort(seed: int = 0):
    """Slides and cases: LUAD, LUSC and BRCA, with the awkward cases the client must handle."""
    rng = np.random.default_rng(seed)

    def case(submitter, project, vital=None, dtd=None, diagnoses=(), follow_ups=()):
        cid = str(uuid.UUID(int=int(rng.integers(1 << 62))))
        hit = {"case_id": cid, "submitter_id": submitter, "project": {"project_id": project}}
        if vital is not None or dtd is not None:
            hit["demographic"] = {"vital_status": vital, "days_to_death": dtd}
        if diagnoses:
            hit["diagnoses"] = [dict(d) for d in diagnoses]
        if follow_ups:
            hit["follow_ups"] = [{"days_to_follow_up": d} for d in follow_ups]
        return hit

    cases = [
        case("TCGA-AA-0001", "TCGA-LUAD", "Dead", 400, [{"days_to_last_follow_up": 100,
                                                       "primary_diagnosis": "Adenocarcinoma, NOS"}]),
        case("TCGA-AA-0002", "TCGA-LUAD", "Alive", None, [{"days_to_last_follow_up": 1200},
                                                           {"days_to_last_follow_up": None}], [1300, 90]),
        case("TCGA-BB-0003", "TCGA-LUSC", "Alive", None),
        case("TCGA-BB-0004", "TCGA-LUSC", "Dead", 50),
        case("TCGA-CC-0005", "TCGA-BRCA", "Alive", None, [{"primary_diagnosis": "Infiltrating duct carcinoma, NOS",
                                                           "days_to_last_follow_up": 700}]),
        case("TCGA-CC-0006", "TCGA-BRCA", "Alive", None, [{"primary_diagnosis": "Lobular carcinoma, NOS"}]),
        case("TCGA-CC-0007", "TCGA-BRCA", "Dead", 30, [{"primary_diagnosis": "Metaplastic carcinoma, NOS"}]),
        case("TCGA-CC-0008", "TCGA-BRCA", "Alive", None, [{"primary_diagnosis": "Infiltrating duct carcinoma, NOS"},
                                                           {"primary_diagnosis": "Not Reported"}]),
    ]
    by_sub = {c["submitter_id"]: c for c in cases}
    slides = []

    def slide(submitter, tag, project=None, strategy="Diagnostic Slide", case_id=None):
        fid = str(uuid.UUID(int=int(rng.integers(1 << 62))))
        code = "01Z-00-" + tag
        slides.append({"file_id": fid, "file_name": f"{submitter}-{code}.{fid.upper()}.svs",
                       "case_id": case_id or by_sub[submitter]["case_id"], "submitter": submitter,
                       "project": project or by_sub[submitter]["project"]["project_id"],
                       "data_type": "Slide Image", "experimental_strategy": strategy, "data_format": "SVS",
                       "body": fake_slide(len(slides))})

    slide("TCGA-AA-0001", "DX1")
    slide("TCGA-AA-0001", "DX2")
    slide("TCGA-AA-0002", "DX1")
    slide("TCGA-AA-0002", "TS1", strategy="Tissue Slide")  # frozen section: must not be listed
    slide("TCGA-BB-0003", "DX1")
    slide("TCGA-BB-0004", "DX1")
    slide("TCGA-BB-0009", "DX1", project="TCGA-LUSC", case_id="no-clinical-record")
    for sub in ("TCGA-CC-0005", "TCGA-CC-0006", "TCGA-CC-0007", "TCGA-CC-0008"):
        slide(sub, "DX1")
    return slides, cases


NSCLC = {"projects": ["TCGA-LUAD", "TCGA-LUSC"], "label_field": "project",
         "labels": {"TCGA-LUAD": "luad", "TCGA-LUSC": "lusc"}}
BRCA = {"projects": ["TCGA-BRCA"], "label_field": "primary_diagnosis",
        "labels": {"Infiltrating duct carcinoma, NOS": "idc", "Lobular carcinoma, NOS": "ilc"}}
NET = {"backoff": 0, "retries": 2}


@pytest.fixture
def gdc_server(http_server):
    slides, cases = tcga_cohort()
    GDCMock(http_server, slides, cases)
    return http_server, slides


def read_tsv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_search_walks_every_page_and_sends_the_slide_filter(gdc_server):
    server, slides = gdc_server
    hits = gdc.query_slides(server.url, ["TCGA-LUAD", "TCGA-LUSC"], page_size=2, **NET)
    expected = {s["file_id"] for s in slides if s["project"] != "TCGA-BRCA"
                and s["experimental_strategy"] == "Diagnostic Slide"}
    assert {h["file_id"] for h in hits} == expected and len(hits) == 6
    posts = [b for p, b in server.posts if p == "/files"]
    assert [b["from"] for b in posts] == [0, 2, 4] and all(b["size"] == 2 for b in posts)
    assert set(posts[0]["fields"].split(",")) == set(gdc.FILE_FIELDS)
    assert _field_values(posts[0]["filters"], "access") == ["open"]


def test_paging_is_bounded_by_the_first_answers_pages(http_server):
    calls = []

    def liar(body):  # claims 10 hits on 1 page but sends 2 per page
        calls.append(body["from"])
        return {"data": {"hits": [{"case_id": str(body["from"] + i)} for i in range(2)],
                         "pagination": {"total": 10, "pages": 1}}}

    http_server.post["/cases"] = liar
    with pytest.raises(DownloadError, match=r"/cases: got 2 hits but pagination.total says 10"):
        gdc.search(http_server.url, "cases", {}, ["case_id"], page_size=2, **NET)
    assert calls == [0]

    http_server.post["/cases"] = lambda body: {"data": {"hits": [], "pagination": {"total": 5, "pages": 50}}}
    with pytest.raises(DownloadError, match="page 1 is empty after 0 of 5 hits"):
        gdc.search(http_server.url, "cases", {}, ["case_id"], **NET)


def test_clinical_join_and_nsclc_manifest(gdc_server, tmp_path):
    server, slides = gdc_server
    rows = gdc.build_manifest({**NSCLC, "api_url": server.url, "page_size": 2}, tmp_path / "m.tsv",
                              tmp_path / "m.json", classes=["luad", "lusc"], **NET)
    table = read_tsv(tmp_path / "m.tsv")
    assert list(table[0]) == gdc.MANIFEST_COLUMNS
    assert len(table) == len(rows) == 6
    by_case = {}
    for r in table:
        by_case.setdefault(r["case"], []).append(r)
    assert sorted(by_case) == ["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-BB-0003", "TCGA-BB-0004", "TCGA-BB-0009"]
    assert [r["label"] for r in by_case["TCGA-AA-0001"]] == ["luad", "luad"]
    a1 = by_case["TCGA-AA-0001"][0]
    assert (a1["vital_status"], a1["days_to_death"], a1["days_to_last_follow_up"]) == ("Dead", "400", "100")
    assert a1["slide"] + ".svs" == a1["filename"] and a1["slide"].startswith("TCGA-AA-0001-01Z-00-DX")
    src = next(s for s in slides if s["file_name"] == a1["filename"])
    assert a1["md5"] == hashlib.md5(src["body"]).hexdigest() and int(a1["size"]) == len(src["body"])
    a2 = by_case["TCGA-AA-0002"][0]  # largest follow-up over diagnoses (None ignored) and follow_ups
    assert (a2["vital_status"], a2["days_to_death"], a2["days_to_last_follow_up"], a2["days_to_follow_up"]) == \
        ("Alive", "", "1200", "1300")
    assert not any("TS1" in r["slide"] for r in table)  # frozen section filtered by the query
    orphan = by_case["TCGA-BB-0009"][0]  # no /cases record: label from the project, clinical fields empty
    assert orphan["label"] == "lusc" and orphan["vital_status"] == "" and orphan["days_to_death"] == ""
    import json

    prov = json.loads((tmp_path / "m.json").read_text())
    assert prov["slides_kept"] == 6 and prov["slides_without_clinical_record"] == 1
    assert prov["per_label"] == {"luad": 3, "lusc": 3} and prov["api_url"] == server.url


def test_brca_labels_from_primary_diagnosis(gdc_server, tmp_path):
    server, _ = gdc_server
    brca = {**BRCA, "api_url": server.url}
    gdc.build_manifest(brca, tmp_path / "b.tsv", tmp_path / "b.json", classes=["idc", "ilc"], **NET)
    table = read_tsv(tmp_path / "b.tsv")
    assert {r["case"]: r["label"] for r in table} == {"TCGA-CC-0005": "idc", "TCGA-CC-0006": "ilc",
                                                     "TCGA-CC-0008": "idc"}  # metaplastic left out
    assert {r["case"]: r["primary_diagnosis"] for r in table}["TCGA-CC-0008"] == \
        "Infiltrating duct carcinoma, NOS | Not Reported"
    with pytest.raises(DownloadError, match=r"labels \['idc'\] are not among the dataset's classes"):
        gdc.build_manifest(brca, tmp_path / "c.tsv", tmp_path / "c.json", classes=["ilc", "other"], **NET)
    assert not (tmp_path / "c.tsv").exists()


def test_malformed_api_answers_name_the_url(http_server, tmp_path):
    http_server.post["/files"] = lambda body: b"<html>maintenance</html>"
    with pytest.raises(DownloadError, match=rf"{http_server.url}/files: the answer is not JSON"):
        gdc.query_slides(http_server.url, ["TCGA-LUAD"], **NET)
    assert len(http_server.posts) == 1  # not retried
    http_server.post["/files"] = lambda body: {"data": {"hits": [], "pagination": {"count": 0}}}
    with pytest.raises(DownloadError, match=rf"{http_server.url}/files: malformed GDC answer: .*total/pages"):
        gdc.query_slides(http_server.url, ["TCGA-LUAD"], **NET)
    http_server.post["/files"] = lambda body: {"error": "bad filter"}
    with pytest.raises(DownloadError, match=rf"{http_server.url}/files: malformed GDC answer: no data.hits"):
        gdc.query_slides(http_server.url, ["TCGA-LUAD"], **NET)
    http_server.post["/files"] = lambda body: _paged([{"file_id": "x", "file_name": "a.svs"}], body)
    with pytest.raises(DownloadError, match=rf"{http_server.url}/files: malformed file hit"):
        gdc.query_slides(http_server.url, ["TCGA-LUAD"], **NET)
    assert not list(tmp_path.iterdir())


def test_api_5xx_is_retried_a_bounded_number_of_times(gdc_server):
    server, _ = gdc_server
    server.fail["/cases"] = 2
    assert len(gdc.query_clinical(server.url, ["TCGA-LUAD"], backoff=0, retries=2)) == 2
    server.fail["/cases"] = 10
    with pytest.raises(DownloadError, match=r"/cases: gave up after 3 attempts: HTTP 503"):
        gdc.query_clinical(server.url, ["TCGA-LUAD"], backoff=0, retries=2)
    assert server.fail["/cases"] == 7


def _nsclc_items(server, tmp_path):
    rows = gdc.build_manifest({**NSCLC, "api_url": server.url}, tmp_path / "m.tsv", tmp_path / "m.json", **NET)
    return gdc.slide_files(rows, server.url)


def test_cohort_download_resumes_and_skips_complete_files(gdc_server, tmp_path):
    server, slides = gdc_server
    items = _nsclc_items(server, tmp_path)
    cut = f"/data/{items[0].url.rsplit('/', 1)[1]}"
    server.cut[cut] = 1  # the first answer for this slide ends half-way through
    out = tmp_path / "slides"
    counts = fetch_slides(items, out, out / "download.tsv", backoff=0)
    assert counts["downloaded"] == 6 and counts["failed"] == 0
    body = {s["file_name"]: s["body"] for s in slides}
    for it in items:
        assert (out / it.filename).read_bytes() == body[it.filename]
        assert not (out / (it.filename + ".partial")).exists()
    ranges = [r for p, r in server.requests if p == cut]
    assert ranges == [None, f"bytes={len(body[items[0].filename]) // 2}-"]
    listing = read_tsv(out / "download.tsv")
    assert [r["slide"] for r in listing] == [it.slide for it in items]
    assert all(r["status"] == "downloaded" for r in listing)

    n = len(server.requests)
    counts = fetch_slides(items, out, out / "download.tsv", backoff=0)
    assert counts["skipped"] == 6 and len(server.requests) == n  # no request, no re-hash needed

    victim = out / items[1].filename  # a file changed on disk is checked again and repaired
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    counts = fetch_slides(items, out, out / "download.tsv", backoff=0)
    assert counts == {"skipped": 5, "verified": 0, "resumed": 0, "downloaded": 1, "failed": 0}
    assert victim.read_bytes() == body[items[1].filename]


def test_resume_from_a_partial_left_by_a_killed_job(gdc_server, tmp_path):
    server, slides = gdc_server
    items = _nsclc_items(server, tmp_path)[:1]
    body = next(s["body"] for s in slides if s["file_name"] == items[0].filename)
    out = tmp_path / "slides"
    out.mkdir()
    (out / (items[0].filename + ".partial")).write_bytes(body[:1000])
    counts = fetch_slides(items, out, out / "download.tsv", backoff=0)
    assert counts["resumed"] == 1 and (out / items[0].filename).read_bytes() == body
    assert [r for p, r in server.requests] == ["bytes=1000-"]


def test_md5_mismatch_leaves_nothing_and_fails_after_trying_all(gdc_server, tmp_path):
    server, slides = gdc_server
    items = _nsclc_items(server, tmp_path)
    bad = items[2].filename
    server.files[f"/data/{items[2].url.rsplit('/', 1)[1]}"] = b"X" * items[2].size  # right size, wrong bytes
    out = tmp_path / "slides"
    with pytest.raises(DownloadError, match=rf"(?s)1 of 6 slides failed.*{re.escape(items[2].slide)}: .*md5"):
        fetch_slides(items, out, out / "download.tsv", backoff=0)
    assert not (out / bad).exists() and not (out / (bad + ".partial")).exists()
    assert not (out / "download.tsv").exists()
    assert sorted(p.name for p in out.glob("*.svs")) == sorted(it.filename for it in items if it.filename != bad)
    ledger = read_tsv(out / ".verified.tsv")
    assert bad not in {r["filename"] for r in ledger} and len(ledger) == 5

    counts = fetch_slides(items, out, out / "download.tsv", on_error="skip", backoff=0)
    assert counts["skipped"] == 5 and counts["failed"] == 1
    assert [r["slide"] for r in read_tsv(out / "download.tsv")] == [it.slide for it in items if it.filename != bad]


def test_download_5xx_retried_then_given_up(gdc_server, tmp_path):
    server, _ = gdc_server
    items = _nsclc_items(server, tmp_path)[:2]
    server.fail[f"/data/{items[0].url.rsplit('/', 1)[1]}"] = 2
    server.fail[f"/data/{items[1].url.rsplit('/', 1)[1]}"] = 50
    out = tmp_path / "slides"
    counts = fetch_slides(items, out, out / "download.tsv", on_error="skip", retries=2, backoff=0)
    assert counts["downloaded"] == 1 and counts["failed"] == 1
    assert server.fail[f"/data/{items[1].url.rsplit('/', 1)[1]}"] == 47  # exactly 3 attempts


@pytest.mark.workflow
def test_download_rules_end_to_end_with_snakemake(gdc_server, tmp_path):
    """slide_manifest -> download_slides for a GDC and a CAMELYON dataset; a failed slide is retried alone."""
    import subprocess
    import sys

    import yaml

    from .conftest import REPO
    from .test_camelyon import serve_bucket

    server, slides = gdc_server
    serve_bucket(server)
    cfg = {
        "datasets": {
            "nsclc": {"source": "gdc", "classes": ["luad", "lusc"], "encoders": ["efficientnet_lite0"],
                      "gdc": {**NSCLC, "api_url": server.url, "page_size": 4}},
            "cam": {"source": "camelyon", "classes": ["normal", "tumor"], "encoders": ["efficientnet_lite0"],
                    "camelyon": {"base_url": server.url}},
        },
        "download": {"retries": 1, "backoff": 0, "timeout": 10},
        "methods": {"abmil": {"model": "abmil"}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    good = {s["file_id"]: s["body"] for s in slides}
    bad_id = next(s["file_id"] for s in slides if s["submitter"] == "TCGA-BB-0003")
    server.files[f"/data/{bad_id}"] = b"\0" * len(good[bad_id])  # md5 will not match
    server.cut[f"/data/{slides[0]['file_id']}"] = 1  # and one transfer is cut half-way

    def run(*args):
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
               "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", "download_all_slides", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    dry = run("-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    for rule in ("slide_manifest", "download_slides", "download_all_slides"):
        assert rule in dry.stdout
    first = run("--keep-going")
    assert first.returncode != 0
    log = (tmp_path / "results/logs/download_slides/nsclc.log").read_text()
    assert "1 of 6 slides failed" in log and "md5" in log
    assert (tmp_path / "resources/slides/cam/download.tsv").exists()  # the other dataset finished
    cam = tmp_path / "resources/slides/cam"
    assert (cam / "tumor_001.xml").exists() and "tumor_001.xml" in (cam / "annotations.tsv").read_text()
    nsclc = tmp_path / "resources/slides/nsclc"
    assert len(list(nsclc.glob("*.svs"))) == 5 and not (nsclc / "download.tsv").exists()

    server.files[f"/data/{bad_id}"] = good[bad_id]  # the server is fixed: only the missing slide is fetched
    before = len(server.requests)
    second = run()
    assert second.returncode == 0, second.stderr[-3000:]
    assert [p for p, _ in server.requests[before:]] == [f"/data/{bad_id}"]
    manifest = read_tsv(tmp_path / "results/manifests/nsclc.tsv")
    listing = read_tsv(nsclc / "download.tsv")
    assert [r["slide"] for r in listing] == [r["slide"] for r in manifest]
    for r in manifest:
        assert (nsclc / f"{r['slide']}.svs").read_bytes() == good[r["file_id"]]
    assert len(read_tsv(tmp_path / "resources/slides/cam/download.tsv")) == 8
