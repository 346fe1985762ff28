"""The query side in the browser: the operator UI encodes the photo itself (ONNX Runtime Web,
WebAssembly) and sends only the token payload, in Debian's headless Chromium.

Oracles: the Python edge runner's tokens (within the export's parity tolerance), the Python
payload codec (byte for byte), the server's own search on the uploaded photo, and the browser's
network log (no image bytes leave the page)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import requests
from serve_helpers import ARTIFACTS, chromium_or_skip, make_images, start_server

pytestmark = pytest.mark.browser

CHROMIUM = chromium_or_skip()
VENDOR = Path(__file__).resolve().parents[1] / "src" / "isacir" / "serve" / "static" / "vendor"
KEY = {"X-API-Key": "test-key"}

if not (VENDOR / "ort.wasm.min.js").is_file():
    raise RuntimeError(f"{VENDOR} lacks ONNX Runtime Web: `make web` (part of `make test`) installs it from npm")


@pytest.fixture(scope="module")
def served(tmp_path_factory, openclip_fnd):
    import torch

    from isacir.export import export_edge
    from isacir.gallery import Gallery
    from isacir.query import QueryEncoder
    from isacir.serve import ServeSettings, ServiceState, create_app

    tmp = tmp_path_factory.mktemp("browser-edge")
    make_images(tmp / "gallery-images", 16)
    gallery = Gallery.open_or_create(tmp / "gallery", openclip_fnd)
    gallery.index([str(tmp / "gallery-images")], openclip_fnd, progress=False)
    torch.manual_seed(0)
    qe = QueryEncoder.create(openclip_fnd, backbone="mobilenetv3_small_050", num_tokens=2, image_size=48).eval()
    qe.save_pretrained(tmp / "qe")
    report = export_edge(QueryEncoder.from_pretrained(tmp / "qe"), tmp / "edge")
    state = ServiceState(gallery, openclip_fnd, qe, ServeSettings(api_keys=("test-key",)), edge=tmp / "edge")
    server = start_server(create_app(state))
    # photos that are not in the gallery, larger than the model input (the browser resizes them)
    queries = make_images(tmp / "queries", 2, seed=21, size=64)
    yield {"server": server, "state": state, "edge": tmp / "edge", "report": report, "queries": queries}
    server.stop()


def _browser(pw):
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])


def test_the_photo_stays_in_the_browser(served):
    from playwright.sync_api import expect, sync_playwright

    from isacir.edge import EdgeEncoder, decode_payload

    server, photo = served["server"], served["queries"][0]
    sent: list[tuple[str, str, bytes]] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = _browser(pw)
        page = browser.new_page(viewport={"width": 1024, "height": 900})
        page.on("request", lambda r: sent.append((r.method, r.url, r.post_data_buffer or b"")))
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text))
        page.goto(server.url + "/")
        page.click("#key-toggle")
        page.fill("#api-key", "test-key")
        page.click("#key-save")
        expect(page.locator("#mode option[value=device]")).to_be_enabled()
        expect(page.locator("#mode")).to_have_value("device")
        page.set_input_files("#file", str(photo))
        page.fill("#text", "make it red")
        page.select_option("#k", "5")
        page.click("#search")
        page.wait_for_function(
            "document.querySelectorAll('li.result').length > 0 || document.querySelector('#status.error')",
            timeout=60_000,
        )
        assert page.locator("li.result").count() == 5, (page.locator("#status").text_content(), console[-5:])
        expect(page.locator("#mode-note")).to_contain_text("on this device")
        info = page.evaluate("window.__isacir")
        shown = [int(x) for x in page.locator("li.result").evaluate_all("els => els.map(e => e.dataset.id)")]
        page.screenshot(path=str(ARTIFACTS / "ui-on-device-search.png"), full_page=True)
        browser.close()

    photo_bytes = photo.read_bytes()
    assert info["mode"] == "device"
    # no request carried the photo; the search went to the token route with a payload only
    assert not any(photo_bytes[:64] in body or len(body) >= len(photo_bytes) for _, _, body in sent)
    assert not any(url.endswith("/v1/search") for _, url, _ in sent)
    (token_post,) = [body for m, url, body in sent if m == "POST" and url.endswith("/v1/search/tokens")]
    payload = base64.b64decode(json.loads(token_post)["payload"])
    assert len(payload) == info["payloadBytes"] < len(photo_bytes)

    # the browser's tokens are the Python edge runner's, within the export's parity tolerance
    want = EdgeEncoder(served["edge"]).tokens([photo])[0]
    got = np.array(info["tokens"], np.float32).reshape(want.shape)
    tol = served["report"]["verification"]["tolerance"]
    assert np.abs(got - want).max() <= tol, (np.abs(got - want).max(), tol)
    sent_tokens = decode_payload(payload)
    assert sent_tokens.fingerprint == served["state"].qe_fingerprint
    assert np.abs(sent_tokens.tokens - got).max() <= np.abs(got).max() / 1000  # fp16 of the same tokens

    # the same answer as the server's own search on the uploaded photo
    with open(photo, "rb") as f:
        r = requests.post(
            f"{server.url}/v1/search",
            headers=KEY,
            files={"image": ("q.png", f, "image/png")},
            data={"text": "make it red", "k": 5},
            timeout=30,
        )
    assert r.status_code == 200 and shown == [x["id"] for x in r.json()["results"]]


def test_the_javascript_codec_writes_the_python_bytes(served):
    """Byte for byte, every dtype, on values that exercise rounding, ties and fp16 subnormals."""
    from playwright.sync_api import sync_playwright

    from isacir.edge.payload import encode_payload

    rng = np.random.default_rng(3)
    tokens = (rng.normal(size=(4, 33)) * 3).astype(np.float32)
    tokens[0, :4] = [0.5, -0.5, 1e-6, 2.0**-20]  # ties to even, a subnormal half, an underflow
    tokens[1, :] = np.round(tokens[1, :] * 8) / 8  # values on the int grids
    fp = "0123456789abcdef"
    with sync_playwright() as pw:
        browser = _browser(pw)
        page = browser.new_page()
        page.goto(served["server"].url + "/")
        page.wait_for_function("window.IsacirEdge !== undefined")
        got = page.evaluate(
            """([flat, n, d, fp]) => Object.fromEntries(['fp16', 'int8', 'int4'].map(dt =>
                   [dt, Array.from(IsacirEdge.encodePayload(new Float32Array(flat), n, d, fp, dt))]))""",
            [tokens.ravel().tolist(), 4, 33, fp],
        )
        browser.close()
    for dtype in ("fp16", "int8", "int4"):
        assert bytes(got[dtype]) == encode_payload(tokens, fp, dtype), dtype


def test_without_an_edge_package_the_photo_is_uploaded(tmp_path, openclip_fnd):
    from playwright.sync_api import expect, sync_playwright
    from serve_helpers import build_service

    app, _, images = build_service(tmp_path, openclip_fnd, n_images=6)
    server = start_server(app)
    try:
        with sync_playwright() as pw:
            browser = _browser(pw)
            page = browser.new_page()
            page.goto(server.url + "/")
            page.click("#key-toggle")
            page.fill("#api-key", "test-key")
            page.click("#key-save")
            expect(page.locator("#mode option[value=device]")).to_be_disabled()
            expect(page.locator("#mode-note")).to_contain_text("no edge package")
            page.set_input_files("#file", str(images[1]))
            page.click("#search")
            expect(page.locator("li.result")).to_have_count(5)
            expect(page.locator("#mode-note")).to_contain_text("uploaded")
            browser.close()
    finally:
        server.stop()
