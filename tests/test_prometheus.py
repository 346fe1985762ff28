"""The pilot counters as a real Prometheus server scrapes them, and the Grafana dashboard's queries.

Debian's ``prometheus`` scrapes the service with the bearer key, and the counter is read back
through Prometheus's own HTTP query API. ``make test`` installs prometheus when it runs as root;
elsewhere the test skips only when there is no prometheus, and never on CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from serve_helpers import build_service, free_port, start_server

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "isacir-pilot.json"
KEY = {"X-API-Key": "test-key"}


@pytest.fixture(scope="module")
def live(tmp_path_factory, openclip_fnd):
    tmp = tmp_path_factory.mktemp("prom")
    app, state, images = build_service(tmp, openclip_fnd, n_images=8)
    server = start_server(app)
    # one search, two verdicts: the counters exist with known values
    with open(images[0], "rb") as f:
        res = requests.post(
            f"{server.url}/v1/search",
            headers=KEY,
            files={"image": ("a.png", f, "image/png")},
            data={"text": "make it red", "k": "3"},
            timeout=60,
        ).json()
    for cand, verdict in ((res["results"][0]["id"], "rejected"), (res["results"][1]["id"], "confirmed")):
        r = requests.post(
            f"{server.url}/v1/feedback",
            headers=KEY,
            timeout=10,
            json={"query_id": res["query_id"], "candidate_id": cand, "verdict": verdict},
        )
        assert r.status_code == 200, r.text
    yield server, state, tmp
    server.stop()


def test_counters_have_bounded_labels(live):
    server, state, _ = live
    text = requests.get(f"{server.url}/metrics", headers=KEY, timeout=10).text
    version = state.qe_fingerprint
    assert f'isacir_search_total{{mode="image",version="{version}"}} 1.0' in text
    assert f'isacir_feedback_total{{verdict="rejected",version="{version}"}} 1.0' in text
    assert f'isacir_feedback_total{{verdict="confirmed",version="{version}"}} 1.0' in text
    # a refused verdict is not counted, so a client cannot grow the label set
    r = requests.post(
        f"{server.url}/v1/feedback",
        headers=KEY,
        json={"query_id": "x", "candidate_id": 1, "verdict": "whatever"},
        timeout=10,
    )
    assert r.status_code == 422
    assert "whatever" not in requests.get(f"{server.url}/metrics", headers=KEY, timeout=10).text


def test_grafana_dashboard_queries_only_metrics_the_service_exports(live):
    server, _, _ = live
    exported = set(
        re.findall(
            r"^([a-z_]+?)(?:\{|\s)", requests.get(f"{server.url}/metrics", headers=KEY, timeout=10).text, flags=re.M
        )
    )
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 6
    used = {m for e in exprs for m in re.findall(r"\b(isacir_[a-z_]+)", e)}
    assert used and used <= exported, used - exported
    assert {"isacir_search_total", "isacir_feedback_total"} <= used


def test_a_real_prometheus_scrapes_the_counters(live, tmp_path):
    if not Path(PROMETHEUS).exists():
        if os.environ.get("CI"):
            raise RuntimeError("prometheus not found: make test installs Debian's prometheus when run as root")
        pytest.skip("no prometheus (apt-get install prometheus)")
    server, state, _ = live
    target = server.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: isacir\n    metrics_path: /metrics\n"
        "    authorization:\n      credentials: test-key\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    query = f'isacir_feedback_total{{verdict="confirmed",version="{state.qe_fingerprint}"}}'
    value, deadline = None, time.time() + 90
    try:
        while time.time() < deadline and value is None:
            time.sleep(1)
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {proc.stderr.read()[-2000:]}")
            try:
                r = requests.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=5)
            except requests.ConnectionError:
                continue
            result = r.json()["data"]["result"]
            if result:
                value = float(result[0]["value"][1])
        up = requests.get(
            f"http://127.0.0.1:{port}/api/v1/query", params={"query": "up{job='isacir'}"}, timeout=5
        ).json()["data"]["result"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert value == 1.0
    assert up and up[0]["value"][1] == "1"  # the scrape authenticated with the bearer key
