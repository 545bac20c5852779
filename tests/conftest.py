"""Shared fixtures: tiny synthetic bags on disk and a local HTTP server with fault injection."""

from __future__ import annotations

import csv
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from hardmil.data.bags import write_features

REPO = Path(__file__).resolve().parents[1]
FUZZ_SUMMARY: list[str] = []  # lines tests/test_fuzz.py reports in the summary (case count, outcome classes)


def pytest_terminal_summary(terminalreporter):
    if FUZZ_SUMMARY:
        terminalreporter.section("fuzz")
        for line in FUZZ_SUMMARY:
            terminalreporter.write_line(line)


def make_cohort(root: Path, n_bags: int = 16, dim: int = 8, seed: int = 0, slides_per_case: int = 1,
                classes=("neg", "pos")) -> tuple[Path, Path]:
    """Bags whose positives hold a few shifted ('tumour') instances. Returns (features_dir, manifest).

    With more than two ``classes``, bag ``i`` has class ``i % C`` and class ``k > 0`` shifts feature ``k - 1``."""
    rng = np.random.default_rng(seed)
    feats_dir = root / "features"
    feats_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_bags):
        label = i % len(classes)
        for j in range(slides_per_case):
            n = int(rng.integers(5, 12))
            x = rng.normal(size=(n, dim))
            if label:
                x[: max(1, n // 4), label - 1] += 3.0
            slide = f"s{i:03d}_{j}"
            cells = rng.choice(36, size=n, replace=False)  # distinct cells of a 6 x 6 grid of 256-px patches
            coords = np.stack([cells % 6, cells // 6], axis=1) * 256 + 512
            write_features(feats_dir / f"{slide}.h5", x, coords=coords)
            rows.append({"slide": slide, "case": f"c{i:03d}", "label": classes[label]})
    manifest = root / "manifest.tsv"
    write_manifest(manifest, rows)
    return feats_dir, manifest


def untrained_model(path: Path, dim: int, classes=("neg", "pos"), seed: int = 0) -> Path:
    """A ``model.pt`` as a training run writes it (AB-MIL, seeded random weights, identity standardisation), for
    tests of the commands that read one without the cost of training."""
    import dataclasses

    import torch

    from hardmil.checkpoint import save
    from hardmil.models import build_model

    torch.manual_seed(seed)
    net = build_model("abmil", in_dim=dim, n_classes=len(classes))
    save(path, {"model": "abmil", "model_config": dataclasses.asdict(net.cfg), "state_dict": net.state_dict(),
                "feature_mean": np.zeros(dim, np.float32), "feature_std": np.ones(dim, np.float32),
                "classes": list(classes), "epoch": 0, "threshold": 0.5, "task": "classification"})
    return path


def write_manifest(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


class FaultyServer:
    """Serves ``files`` (path -> bytes) with Range support.

    ``fail[path]`` = number of 503 answers before success (GET and POST); ``cut[path]`` = number of answers
    that announce the full length but close the connection after half the body. ``requests`` logs each GET.
    ``post[path]`` = a handler for POSTed JSON (its return value is sent back); ``posts`` logs each POST.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.fail: dict[str, int] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        # POST: path -> handler(parsed JSON body) returning an object (sent as JSON) or raw bytes
        self.post: dict = {}
        self.posts: list[tuple[str, object]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                server.requests.append((path, self.headers.get("Range")))
                if server.fail.get(path, 0) > 0:
                    server.fail[path] -= 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path not in server.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files[path]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                for k, v in server.headers.get(path, {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if server.cut.get(path, 0) > 0:
                    server.cut[path] -= 1
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(part)

            def do_POST(self):
                import json

                path = self.path.split("?")[0]
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw
                server.posts.append((path, body))
                status, out = 200, b""
                if server.fail.get(path, 0) > 0:
                    server.fail[path] -= 1
                    status = 503
                elif path not in server.post:
                    status = 404
                else:
                    answer = server.post[path](body)
                    out = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server():
    with FaultyServer() as srv:
        yield srv


@pytest.fixture
def cohort(tmp_path):
    return make_cohort(tmp_path)
