"""The HTTP service against a real uvicorn on a real port (not only a test client)."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import threading
import time

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from serve_helpers import build_service, make_images, start_server

from isacir.edge.payload import encode_payload

KEY = {"X-API-Key": "test-key"}


@pytest.fixture(scope="module")
def live(tmp_path_factory, openclip_fnd):
    tmp = tmp_path_factory.mktemp("serve")
    app, state, images = build_service(tmp, openclip_fnd, max_upload_bytes=300_000)
    server = start_server(app)
    yield server, state, images, tmp
    server.stop()


def _png(path) -> bytes:
    return path.read_bytes()


def _tokens_payload(state, image_path, fingerprint=None, dtype="fp16") -> tuple[str, torch.Tensor]:
    tokens = state.retriever.pseudo_tokens(Image.open(image_path))
    raw = encode_payload(tokens[0].numpy(), fingerprint or state.qe_fingerprint, dtype)
    return base64.b64encode(raw).decode(), tokens


def test_health_needs_no_key(live):
    server, state, _, _ = live
    r = requests.get(f"{server.url}/healthz", timeout=10)
    assert r.status_code == 200
    assert r.json()["gallery_items"] == state.gallery.count() > 0


@pytest.mark.parametrize(
    "method,path",
    [
        ("post", "/v1/search"),
        ("post", "/v1/search/tokens"),
        ("post", "/v1/gallery"),
        ("delete", "/v1/gallery/1"),
        ("get", "/v1/images/1"),
        ("get", "/v1/images/1/thumbnail"),
        ("post", "/v1/feedback"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/v1/info"),
    ],
)
def test_every_data_route_needs_the_key(live, method, path):
    server = live[0]
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer nope"}):
        r = requests.request(method, server.url + path, headers=headers, timeout=10)
        assert r.status_code == 401, (path, headers, r.text)
        assert r.json()["code"] == "unauthorized"


def test_bearer_key_works(live):
    server = live[0]
    r = requests.get(f"{server.url}/v1/info", headers={"Authorization": "Bearer test-key"}, timeout=10)
    assert r.status_code == 200


def test_image_search_returns_k_gallery_items_and_logs_the_query(live):
    server, state, images, _ = live
    r = requests.post(
        f"{server.url}/v1/search",
        headers=KEY,
        files={"image": ("q.png", _png(images[0]), "image/png")},
        data={"text": "make it red", "k": "5"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 5
    ids = {it["id"] for it in state.gallery.items()}
    assert all(res["id"] in ids for res in body["results"])
    scores = [res["score"] for res in body["results"]]
    assert scores == sorted(scores, reverse=True)
    row = (
        state.feedback.db()
        .execute("SELECT text, mode, tokens FROM queries WHERE query_id = ?", (body["query_id"],))
        .fetchone()
    )
    assert row[0] == "make it red" and row[1] == "image" and len(row[2]) > 0


def test_token_search_equals_in_process_search_with_the_same_tokens(live):
    server, state, images, _ = live
    payload, _ = _tokens_payload(state, images[3])
    r = requests.post(
        f"{server.url}/v1/search/tokens", headers=KEY, json={"payload": payload, "text": "bigger", "k": 6}, timeout=30
    )
    assert r.status_code == 200, r.text
    from isacir.edge.payload import decode_payload

    tokens = torch.from_numpy(decode_payload(base64.b64decode(payload)).tokens)[None]
    expected = state.retriever.search(text="bigger", tokens=tokens, k=6, mode="isa")
    assert [res["id"] for res in r.json()["results"]] == [h.id for h in expected]
    np.testing.assert_allclose([res["score"] for res in r.json()["results"]], [h.score for h in expected], atol=1e-5)


def test_real_queries_reach_index_tuning_off_the_request_path(tmp_path, openclip_fnd):
    """A search only queues its composed query; the housekeeping thread hands it to the gallery
    (within about a second, and at the latest when the service closes)."""
    from fastapi.testclient import TestClient

    app, state, images = build_service(tmp_path, openclip_fnd, n_images=4)
    payload, _ = _tokens_payload(state, images[1])
    before = len(state.gallery.tuning_queries())
    with TestClient(app) as client:
        for text in ("bigger", "in red", "on the left"):
            body = {"payload": payload, "text": text, "k": 2}
            assert client.post("/v1/search/tokens", headers=KEY, json=body).status_code == 200
        deadline = time.monotonic() + 5
        while len(state.gallery.tuning_queries()) < before + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(state.gallery.tuning_queries()) == before + 3  # noted by the housekeeper, or drained at close


def test_concurrent_searches_share_text_batches_and_each_gets_its_own_answer(live):
    """Micro-batched text encodes: 12 different queries at once, each equal to its lone in-process search."""
    from concurrent.futures import ThreadPoolExecutor

    from isacir.edge.payload import decode_payload

    server, state, images, _ = live
    texts = ["bigger", "make it red", "on the left", "smaller and blue"]
    jobs = [(_tokens_payload(state, images[i % len(images)])[0], texts[i % len(texts)]) for i in range(12)]

    def sample(name):
        return state.metrics.registry.get_sample_value(f"isacir_text_encode_batch_size_{name}") or 0.0

    queries_before, passes_before = sample("sum"), sample("count")

    def ask(job):
        payload, text = job
        body = {"payload": payload, "text": text, "k": 5}
        return requests.post(f"{server.url}/v1/search/tokens", headers=KEY, json=body, timeout=60)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, jobs))
    for (payload, text), r in zip(jobs, answers, strict=True):
        assert r.status_code == 200, r.text
        tokens = torch.from_numpy(decode_payload(base64.b64decode(payload)).tokens)[None]
        expected = state.retriever.search(text=text, tokens=tokens, k=5, mode="isa")
        assert [x["id"] for x in r.json()["results"]] == [h.id for h in expected]
        np.testing.assert_allclose([x["score"] for x in r.json()["results"]], [h.score for h in expected], atol=1e-5)
    forward_passes = sample("count") - passes_before
    assert sample("sum") - queries_before == 12  # every query encoded exactly once
    assert forward_passes < 12, forward_passes  # and some of them together


def test_a_saturated_server_answers_503_with_retry_after(tmp_path, openclip_fnd, monkeypatch):
    from isacir.serve import ServeSettings, ServiceState, create_app

    app, state, images = build_service(tmp_path, openclip_fnd)
    settings = ServeSettings(api_keys=("test-key",), max_inflight=2, feedback_db=tmp_path / "f2.sqlite")
    state = ServiceState(state.gallery, state.foundation, state.query_encoder, settings)
    slow_search = state.retriever.search_vector

    def slow(*args, **kwargs):
        time.sleep(1.0)
        return slow_search(*args, **kwargs)

    monkeypatch.setattr(state.retriever, "search_vector", slow)
    server = start_server(create_app(state))
    try:
        payload, _ = _tokens_payload(state, images[0])
        from concurrent.futures import ThreadPoolExecutor

        def ask(_):
            return requests.post(f"{server.url}/v1/search/tokens", headers=KEY, json={"payload": payload}, timeout=60)

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, range(6)))
        codes = sorted(r.status_code for r in answers)
        assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}, codes
        refused = next(r for r in answers if r.status_code == 503)
        assert refused.headers["Retry-After"] == "1" and refused.json()["code"] == "overloaded"
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200  # probes are never refused
    finally:
        server.stop()


def test_fingerprint_mismatch_is_409_with_both_fingerprints(live):
    server, state, images, _ = live
    payload, _ = _tokens_payload(state, images[0], fingerprint="0123456789abcdef")
    r = requests.post(f"{server.url}/v1/search/tokens", headers=KEY, json={"payload": payload, "text": ""}, timeout=30)
    assert r.status_code == 409
    msg = r.json()["detail"]
    assert "0123456789abcdef" in msg and state.qe_fingerprint in msg and state.foundation_fingerprint in msg


@pytest.mark.parametrize(
    "mutate,code",
    [
        (lambda raw: b"XXXX" + raw[4:], "payload_magic"),
        (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), "payload_checksum"),
        (lambda raw: raw[:30], "payload_length"),
    ],
)
def test_bad_payloads_are_422_with_a_specific_code(live, mutate, code):
    server, state, images, _ = live
    payload, _ = _tokens_payload(state, images[0])
    bad = base64.b64encode(mutate(base64.b64decode(payload))).decode()
    r = requests.post(f"{server.url}/v1/search/tokens", headers=KEY, json={"payload": bad}, timeout=30)
    assert r.status_code == 422 and r.json()["code"] == code, r.text


def test_wrong_token_shape_and_bad_base64_are_422(live):
    server, state, _, _ = live
    n, d = state.query_encoder.config.num_tokens, state.query_encoder.config.word_dim
    raw = encode_payload(np.ones((n + 1, d), np.float32), state.qe_fingerprint)
    r = requests.post(
        f"{server.url}/v1/search/tokens", headers=KEY, json={"payload": base64.b64encode(raw).decode()}, timeout=30
    )
    assert r.status_code == 422 and r.json()["code"] == "payload_shape"
    r = requests.post(f"{server.url}/v1/search/tokens", headers=KEY, json={"payload": "not base64!!"}, timeout=30)
    assert r.status_code == 422 and r.json()["code"] == "payload_base64"
    r = requests.post(f"{server.url}/v1/search/tokens", headers=KEY, json={"payload": "", "k": 0}, timeout=30)
    assert r.status_code == 422  # k out of range: FastAPI's validation


def test_undecodable_upload_is_415_and_oversized_is_413(live):
    server, _, _, _ = live
    r = requests.post(
        f"{server.url}/v1/search",
        headers=KEY,
        files={"image": ("x.png", b"this is not an image", "image/png")},
        timeout=30,
    )
    assert r.status_code == 415, r.text
    big = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "PNG")
    assert len(buf.getvalue()) > 300_000
    r = requests.post(
        f"{server.url}/v1/search", headers=KEY, files={"image": ("big.png", buf.getvalue(), "image/png")}, timeout=30
    )
    assert r.status_code == 413 and r.json()["code"] == "too_large"


def test_images_and_thumbnails_serve_only_gallery_files(live):
    server, state, images, _ = live
    item = state.gallery.items()[0]
    r = requests.get(f"{server.url}/v1/images/{item['id']}", headers=KEY, timeout=10)
    assert r.status_code == 200 and r.content == open(item["path"], "rb").read()
    r = requests.get(f"{server.url}/v1/images/{item['id']}/thumbnail?size=32", headers=KEY, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 32
    for probe in (
        "/v1/images/..%2F..%2Fetc%2Fpasswd",
        "/v1/images/%2Fetc%2Fpasswd",
        "/v1/images/../../etc/passwd",
        "/v1/images/999999999/thumbnail",
        "/v1/images/1e3",
    ):
        r = requests.get(server.url + probe, headers=KEY, timeout=10)
        assert r.status_code in (404, 422), (probe, r.status_code)
        assert b"root:" not in r.content


def test_feedback_is_stored_with_tokens_and_text(live):
    server, state, images, _ = live
    payload, _ = _tokens_payload(state, images[1])
    res = requests.post(
        f"{server.url}/v1/search/tokens",
        headers=KEY,
        json={"payload": payload, "text": "move it left", "k": 3},
        timeout=30,
    ).json()
    cand = res["results"][1]["id"]
    r = requests.post(
        f"{server.url}/v1/feedback",
        headers=KEY,
        json={"query_id": res["query_id"], "candidate_id": cand, "verdict": "confirmed"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    con = sqlite3.connect(state.feedback.path)
    row = con.execute(
        "SELECT f.candidate_id, f.verdict, q.text, q.tokens FROM feedback f JOIN queries q USING (query_id) "
        "WHERE f.feedback_id = ?",
        (r.json()["feedback_id"],),
    ).fetchone()
    assert row[:3] == (cand, "confirmed", "move it left")
    assert row[3] == base64.b64decode(payload)  # the exact bytes that travelled
    for body, status in [
        ({"query_id": "nope", "candidate_id": cand, "verdict": "confirmed"}, 404),
        ({"query_id": res["query_id"], "candidate_id": -5, "verdict": "confirmed"}, 422),
        ({"query_id": res["query_id"], "candidate_id": cand, "verdict": "maybe"}, 422),
    ]:
        assert requests.post(f"{server.url}/v1/feedback", headers=KEY, json=body, timeout=10).status_code == status


def test_gallery_add_and_delete(live):
    server, state, _, tmp = live
    new = make_images(tmp / "new", 2, seed=42)
    before = state.gallery.count()
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in new]
    files.append(("images", ("broken.jpg", b"\xff\xd8\xff garbage", "image/jpeg")))
    r = requests.post(f"{server.url}/v1/gallery", headers=KEY, files=files, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [a["filename"] for a in body["added"]] == ["img000.png", "img001.png"]
    assert [x["filename"] for x in body["rejected"]] == ["broken.jpg"]
    assert state.gallery.count() == before + 2
    new_id = body["added"][0]["id"]
    got = requests.get(f"{server.url}/v1/images/{new_id}", headers=KEY, timeout=10)
    assert got.content == new[0].read_bytes()
    assert requests.delete(f"{server.url}/v1/gallery/{new_id}", headers=KEY, timeout=10).status_code == 200
    assert requests.get(f"{server.url}/v1/images/{new_id}", headers=KEY, timeout=10).status_code == 404
    assert requests.delete(f"{server.url}/v1/gallery/{new_id}", headers=KEY, timeout=10).status_code == 404
    assert state.gallery.count() == before + 1
    only_bad = requests.post(
        f"{server.url}/v1/gallery", headers=KEY, files=[("images", ("x.png", b"nope", "image/png"))], timeout=30
    )
    assert only_bad.status_code == 415


def test_search_keeps_working_while_images_are_added(live):
    server, state, images, tmp = live
    payload, _ = _tokens_payload(state, images[2])
    errors: list[str] = []
    done = threading.Event()
    counts = [0]

    def searcher():
        s = requests.Session()
        while not done.is_set():
            r = s.post(
                f"{server.url}/v1/search/tokens",
                headers=KEY,
                json={"payload": payload, "text": "x", "k": 5},
                timeout=60,
            )
            if r.status_code != 200 or len(r.json()["results"]) != 5:
                errors.append(f"{r.status_code} {r.text[:200]}")
            counts[0] += 1

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    before = state.gallery.count()
    try:
        for batch in range(3):
            new = make_images(tmp / f"conc{batch}", 3, seed=100 + batch)
            r = requests.post(
                f"{server.url}/v1/gallery",
                headers=KEY,
                files=[("images", (p.name, p.read_bytes(), "image/png")) for p in new],
                timeout=120,
            )
            assert r.status_code == 200, r.text
    finally:
        done.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[:3]
    assert counts[0] >= 3
    assert state.gallery.count() == before + 9


def test_metrics_and_openapi(live):
    server = live[0]
    requests.get(f"{server.url}/v1/info", timeout=10)  # a 401 to count
    text = requests.get(f"{server.url}/metrics", headers=KEY, timeout=10).text
    assert (
        'isacir_request_duration_seconds_bucket{le="0.001",method="POST",route="/v1/search/tokens"}' in text
        or 'route="/v1/search/tokens"' in text
    )
    assert 'isacir_errors_total{route="/v1/info",status="401"}' in text
    assert "isacir_gallery_items " in text
    spec = requests.get(f"{server.url}/openapi.json", headers=KEY, timeout=10).json()
    for path in (
        "/v1/search",
        "/v1/search/tokens",
        "/v1/gallery",
        "/v1/gallery/{item_id}",
        "/v1/images/{item_id}",
        "/v1/images/{item_id}/thumbnail",
        "/v1/feedback",
        "/healthz",
        "/metrics",
    ):
        assert path in spec["paths"], path
    json.dumps(spec)
    # success bodies are declared, so a client generated from the spec gets types, not objects
    declared = {
        ("/v1/search", "post"): "SearchOut",
        ("/v1/search/tokens", "post"): "SearchOut",
        ("/v1/feedback", "post"): "FeedbackOut",
        ("/v1/info", "get"): "InfoOut",
        ("/v1/versions", "get"): "VersionsOut",
        ("/v1/pilot/summary", "get"): "PilotSummaryOut",
    }
    schemas = spec["components"]["schemas"]
    for (path, method), name in declared.items():
        body = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{name}"}, (path, body)
    results = schemas["SearchOut"]["properties"]["results"]
    assert results["items"] == {"$ref": "#/components/schemas/ResultOut"}
    assert {"id", "score", "image_url"} <= set(schemas["ResultOut"]["required"])
    # what JSON Schema can say, the spec says: an upload needs an image; from/to take three forms
    upload = schemas["Body_add_images_v1_gallery_post"]
    assert "images" in upload["required"] and upload["properties"]["images"]["minItems"] == 1
    for path in ("/v1/pilot/summary", "/v1/interleaving"):
        times = {
            p["name"]: p["schema"] for p in spec["paths"][path]["get"]["parameters"] if p["name"] in ("from", "to")
        }
        assert len(times) == 2 and all(
            {f.get("format") for f in t["anyOf"]} == {"date-time", "date", None} for t in times.values()
        ), times
    # a method a path does not take: 405 naming every method its routes do take, as the spec lists
    wrong = requests.request("OPTIONS", f"{server.url}/v1/gallery/1", headers=KEY, timeout=10)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "DELETE, GET"
    assert sorted(m.upper() for m in spec["paths"]["/v1/gallery/{item_id}"]) == ["DELETE", "GET"]


def test_a_service_without_keys_is_open(tmp_path, openclip_fnd):
    app, state, images = build_service(tmp_path, openclip_fnd, api_key=None, n_images=3)
    server = start_server(app)
    try:
        r = requests.get(f"{server.url}/v1/info", timeout=10)
        assert r.status_code == 200 and r.json()["gallery_items"] == 3
    finally:
        server.stop()


def test_a_chunked_body_over_the_cap_is_413_not_400(live):
    """No Content-Length to check up front: the cap is enforced while streaming, and says so."""
    server, _, _, _ = live
    boundary = "isacirboundary"

    def body():
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'.encode()
        yield b"Content-Type: image/png\r\n\r\n"
        for _ in range(40):
            yield b"\x89PNG" + b"\x00" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = requests.post(
        f"{server.url}/v1/search",
        headers={**KEY, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        data=body(),
        timeout=30,
    )
    assert r.request.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in r.request.headers
    assert r.status_code == 413 and r.json()["code"] == "too_large", r.text
    # a chunked body under the cap still works
    small = requests.post(
        f"{server.url}/v1/feedback",
        headers={**KEY, "Content-Type": "application/json"},
        data=iter([b'{"query_id": "x", ', b'"candidate_id": 1, "verdict": "confirmed"}']),
        timeout=30,
    )
    assert small.status_code == 404 and small.json()["code"] == "feedback"


def test_clients_cannot_mint_metric_series(live):
    """Labels come from route templates and a fixed method set, whatever path or method is sent."""
    import random
    import string

    server, _, _, _ = live

    def series() -> int:
        text = requests.get(f"{server.url}/metrics", headers=KEY, timeout=10).text
        return sum(1 for line in text.splitlines() if line and not line.startswith("#"))

    rng = random.Random(0)

    def noise(n: int) -> None:
        for _ in range(n):
            path = "/" + "".join(rng.choices(string.ascii_lowercase + "/%.", k=rng.randint(1, 30)))
            method = rng.choice(["GET", "POST", "BREW", "X" + "".join(rng.choices(string.ascii_uppercase, k=6))])
            requests.request(method, server.url + path, timeout=10)

    noise(20)  # the first unmatched request of each status creates its series once
    before = series()
    noise(100)
    assert series() == before
    text = requests.get(f"{server.url}/metrics", headers=KEY, timeout=10).text
    assert "BREW" not in text and 'method="OTHER"' in text


def test_readyz_reports_each_check_without_a_key(live):
    server, _, _, _ = live
    r = requests.get(f"{server.url}/readyz", timeout=10)
    assert r.status_code == 200 and r.json() == {
        "ready": True,
        "checks": {"models": "ok", "store": "ok", "query_log": "ok"},
    }


def test_cors_is_off_unless_an_origin_is_configured(live, tmp_path, openclip_fnd):
    from isacir.serve import ServeSettings, ServiceState, create_app

    server, state, _, _ = live
    origin = {"Origin": "https://ops.example"}
    r = requests.get(f"{server.url}/v1/info", headers={**KEY, **origin}, timeout=10)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    settings = ServeSettings(
        api_keys=("test-key",), cors_origins=("https://ops.example",), feedback_db=tmp_path / "f.sqlite"
    )
    other = start_server(create_app(ServiceState(state.gallery, openclip_fnd, state.retriever.query_encoder, settings)))
    try:
        r = requests.get(f"{other.url}/v1/info", headers={**KEY, **origin}, timeout=10)
        assert r.headers.get("access-control-allow-origin") == "https://ops.example"
        r = requests.get(f"{other.url}/v1/info", headers={**KEY, "Origin": "https://evil.example"}, timeout=10)
        assert "access-control-allow-origin" not in r.headers
    finally:
        other.stop()


def test_the_reference_and_its_copies_are_not_answers(live):
    server, state, images, _ = live
    ref = images[5]
    ref_id = state.gallery.ids_for_paths([str(ref.resolve())])[str(ref.resolve())]
    n = state.gallery.count()
    files = {"image": (ref.name, ref.read_bytes(), "image/png")}
    r = requests.post(f"{server.url}/v1/search", headers=KEY, files=files, data={"k": n}, timeout=30)
    assert r.status_code == 200 and ref_id not in [x["id"] for x in r.json()["results"]]
    assert all(x["metadata"] == {} for x in r.json()["results"])  # indexed without metadata
    assert len(r.json()["results"]) == n - 1  # everything else is still there
    kept = requests.post(
        f"{server.url}/v1/search", headers=KEY, files=files, data={"k": n, "keep_copies": "true"}, timeout=30
    )
    assert ref_id in [x["id"] for x in kept.json()["results"]]
    payload, _ = _tokens_payload(state, ref)
    other = [x["id"] for x in kept.json()["results"] if x["id"] != ref_id][:2]
    body = {"payload": payload, "k": n, "reference_id": ref_id, "exclude_ids": other}
    r = requests.post(f"{server.url}/v1/search/tokens", headers=KEY, json=body, timeout=30)
    got = [x["id"] for x in r.json()["results"]]
    assert r.status_code == 200 and not {ref_id, *other} & set(got) and len(got) == n - 3
    r = requests.post(f"{server.url}/v1/search/tokens", headers=KEY, json={**body, "reference_id": 123}, timeout=30)
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_an_install_without_onnx_runtime_web_says_what_is_missing(tmp_path, monkeypatch):
    """Installed without `make web`, the service names the missing piece at start-up (the UI then
    says the same, where it used to blame the browser's WebAssembly)."""
    from isacir.serve import settings

    monkeypatch.setattr(settings, "STATIC", tmp_path)
    (problem,) = settings.ui_problems()
    assert "ONNX Runtime Web is not vendored" in problem and "make web" in problem
    (tmp_path / "vendor").mkdir()
    (tmp_path / "vendor" / "VERSION.json").write_text("{}")
    assert settings.ui_problems() == []
