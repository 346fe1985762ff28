"""The operator UI driven like a person would, in Debian's headless Chromium (Playwright).

``make test`` installs Chromium when it runs as root (so CI has it); elsewhere the test skips only
when no Chromium exists, and never on CI.
"""

from __future__ import annotations

import sqlite3

import pytest
from serve_helpers import ARTIFACTS, build_service, chromium_or_skip, start_server

pytestmark = pytest.mark.browser

CHROMIUM = chromium_or_skip()


def _thumbs_loaded(page) -> None:
    """Wait until every card's thumbnail has arrived (they come through authenticated fetches)."""
    page.wait_for_function(
        "[...document.querySelectorAll('li.result img.thumb')].every(i => i.complete && i.naturalWidth > 0)"
    )


@pytest.mark.parametrize("viewport", [{"width": 390, "height": 844}], ids=["phone"])
def test_upload_search_confirm(tmp_path, openclip_fnd, viewport):
    from playwright.sync_api import expect, sync_playwright

    app, state, images = build_service(tmp_path, openclip_fnd, n_images=12)
    server = start_server(app)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport=viewport, device_scale_factor=2)
            page.goto(server.url + "/")
            expect(page.locator("h1")).to_have_text("isacir")

            # no key yet: the service says so and the key box opens
            page.set_input_files("#file", str(images[4]))
            page.fill("#text", "同じ形で赤")  # operators may write Japanese; it travels and is logged as typed
            page.click("#search")
            expect(page.locator("#status")).to_contain_text("API key")
            expect(page.locator("#key-box")).to_be_visible()
            page.fill("#api-key", "test-key")
            page.click("#key-save")
            # the served model reads English only, and the operator is told before searching
            expect(page.locator("#languages")).to_contain_text("English only")
            expect(page.locator("#text")).to_have_attribute("lang", "en")

            page.select_option("#k", "10")
            page.click("#search")
            cards = page.locator("li.result")
            expect(cards).to_have_count(10)
            expect(page.locator("#status")).to_contain_text("10 candidates")
            # thumbnails arrive through authenticated fetches
            _thumbs_loaded(page)

            first = cards.nth(0)
            chosen = int(first.get_attribute("data-id"))
            first.locator(".confirm").click()
            expect(first).to_have_class("result confirmed")
            cards.nth(1).locator(".reject").click()
            expect(cards.nth(1)).to_have_class("result rejected")

            # the page fits a phone: no horizontal scrolling
            assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
            page.screenshot(path=str(ARTIFACTS / "ui-phone-search.png"), full_page=True)
            query_id = page.locator("#results").get_attribute("data-query-id")

            # a model that declares two languages (the bilingual Shapes-CIR one): both are named
            state.foundation.declared_languages = ("en", "ja")
            page.reload()
            expect(page.locator("#languages")).to_contain_text("English and Japanese (日本語)")
            expect(page.locator("#text")).to_have_attribute("lang", "")
            browser.close()
    finally:
        state.foundation.declared_languages = None  # the foundation is shared with other tests
        server.stop()

    rows = (
        sqlite3.connect(state.feedback.path)
        .execute("SELECT candidate_id, verdict FROM feedback WHERE query_id = ? ORDER BY feedback_id", (query_id,))
        .fetchall()
    )
    assert rows[0] == (chosen, "confirmed")
    assert rows[1][1] == "rejected"
    text = sqlite3.connect(state.feedback.path).execute("SELECT text FROM queries WHERE query_id = ?", (query_id,))
    assert text.fetchone() == ("同じ形で赤",)
    assert (ARTIFACTS / "ui-phone-search.png").stat().st_size > 10_000


def test_none_of_these_then_open_by_id_and_mark_the_right_one(tmp_path, openclip_fnd):
    """An operator rejects what was shown, finds the right item by id and names it for that search."""
    from playwright.sync_api import expect, sync_playwright

    app, state, images = build_service(tmp_path, openclip_fnd, n_images=12)
    server = start_server(app)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1024, "height": 900})
            page.goto(server.url + "/")
            page.evaluate("localStorage.setItem('isacir.apiKey', 'test-key')")
            page.reload()
            page.set_input_files("#file", str(images[3]))
            page.fill("#text", "make it green")
            page.select_option("#k", "5")
            page.click("#search")
            cards = page.locator("li.result")
            expect(cards).to_have_count(5)
            query_id = page.locator("#results").get_attribute("data-query-id")
            shown = [int(cards.nth(i).get_attribute("data-id")) for i in range(5)]
            cards.nth(0).locator(".reject").click()
            expect(cards.nth(0)).to_have_class("result rejected")

            page.click("#none")
            expect(page.locator("#correcting")).to_be_visible()
            expect(page.locator("#correcting-text")).to_have_text("make it green")
            for i in range(5):
                expect(cards.nth(i)).to_have_class("result rejected")

            right = next(item["id"] for item in state.gallery.items() if item["id"] not in shown)
            page.fill("#item-id", str(right))
            page.click("#open-item button[type=submit]")
            expect(cards).to_have_count(1)
            card = cards.nth(0)
            expect(card).to_have_attribute("data-id", str(right))
            expect(card.locator(".confirm")).to_be_hidden()
            page.wait_for_function("document.querySelector('li.result img.thumb').naturalWidth > 0")
            page.screenshot(path=str(ARTIFACTS / "ui-correct-by-id.png"), full_page=True)
            card.locator(".correct").click()
            expect(card).to_have_class("result corrected")
            expect(page.locator("#correcting")).to_be_hidden()
            expect(page.locator("#status")).to_contain_text(f"item {right} is the right one")
            browser.close()
    finally:
        server.stop()

    rows = (
        sqlite3.connect(state.feedback.path)
        .execute(
            "SELECT candidate_id, verdict, in_results FROM feedback WHERE query_id = ? ORDER BY feedback_id",
            (query_id,),
        )
        .fetchall()
    )
    # the one rejected by hand is not rejected twice; the other four by "none of these"; then the correction
    assert sorted(r[0] for r in rows if r[1] == "rejected") == sorted(shown)
    assert rows[-1] == (right, "corrected", 0)


@pytest.mark.parametrize(
    "viewport", [{"width": 390, "height": 844}, {"width": 1280, "height": 900}], ids=["phone", "desktop"]
)
def test_review_the_queue_then_refine_a_search_with_more_like_this(tmp_path, openclip_fnd, viewport):
    """The operator opens Review, judges the query the service hands them, skips one, then in a
    search of their own rejects a candidate and asks for more like another one."""
    import base64

    import numpy as np
    from fastapi.testclient import TestClient
    from playwright.sync_api import expect, sync_playwright

    from isacir.edge.payload import encode_payload
    from isacir.feedback.review import ReviewPolicy
    from isacir.serve.review import ReviewDesk

    app, state, images = build_service(tmp_path, openclip_fnd, n_images=12)
    state.review = ReviewDesk(state.feedback, ReviewPolicy(budget=1.0, uniform=1.0), seed=0)
    qe = state.query_encoder
    client = TestClient(app)  # two devices' searches, queued for review (no lifespan: the server runs it)
    asked = []
    for n, text in enumerate(("with stripes", "in blue")):
        tokens = np.random.default_rng(n).standard_normal((qe.num_tokens, qe.word_dim)).astype(np.float32)
        payload = base64.b64encode(encode_payload(tokens, state.qe_fingerprint)).decode()
        r = client.post(
            "/v1/search/tokens", headers={"X-API-Key": "test-key"}, json={"payload": payload, "text": text, "k": 4}
        )
        asked.append(r.json()["query_id"])
    server = start_server(app)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = "phone" if viewport["width"] < 500 else "desktop"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport=viewport, device_scale_factor=2 if name == "phone" else 1)
            page.goto(server.url + "/")
            page.evaluate("localStorage.setItem('isacir.apiKey', 'test-key')")
            page.reload()

            page.click("#review-toggle")
            expect(page.locator("#review")).to_be_visible()
            expect(page.locator("#query")).to_be_hidden()
            expect(page.locator("#review-query")).to_contain_text("with stripes")
            expect(page.locator("#review-why")).to_contain_text("Asked")
            cards = page.locator("li.result")
            expect(cards).to_have_count(4)
            _thumbs_loaded(page)
            assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
            page.screenshot(path=str(ARTIFACTS / f"ui-review-{name}.png"), full_page=True)
            confirmed = int(cards.nth(1).get_attribute("data-id"))
            cards.nth(1).locator(".confirm").click()
            expect(cards.nth(1)).to_have_class("result confirmed")
            page.click("#review-next")
            expect(page.locator("#review-query")).to_contain_text("in blue")
            page.click("#review-skip")  # nothing else open: the queue says so
            expect(page.locator("#status")).to_contain_text("review queue is empty")
            page.click("#review-close")
            expect(page.locator("#query")).to_be_visible()

            page.set_input_files("#file", str(images[2]))
            page.fill("#text", "rounder")
            page.select_option("#k", "5")
            page.click("#search")
            expect(cards).to_have_count(5)
            first_query = page.locator("#results").get_attribute("data-query-id")
            rejected = int(cards.nth(0).get_attribute("data-id"))
            liked = int(cards.nth(2).get_attribute("data-id"))
            expect(cards.nth(2).locator(".like")).to_be_hidden()  # offered after a rejection
            cards.nth(0).locator(".reject").click()
            expect(cards.nth(2).locator(".like")).to_be_visible()
            expect(cards.nth(0).locator(".like")).to_be_hidden()
            cards.nth(2).locator(".like").click()
            expect(page.locator("#status")).to_contain_text("more like #3 and unlike the 1 rejected")
            expect(page.locator("#results")).not_to_have_attribute("data-query-id", first_query)
            refined = [int(cards.nth(i).get_attribute("data-id")) for i in range(cards.count())]
            assert rejected not in refined and liked in refined
            _thumbs_loaded(page)
            page.screenshot(path=str(ARTIFACTS / f"ui-refine-{name}.png"), full_page=True)
            browser.close()
    finally:
        server.stop()
    db = sqlite3.connect(state.feedback.path)
    assert db.execute("SELECT candidate_id FROM feedback WHERE query_id = ?", (asked[0],)).fetchall() == [(confirmed,)]
    # the page timed the operator: results shown to verdict, in seconds
    ((took,),) = db.execute("SELECT verdict_s FROM feedback WHERE query_id = ?", (asked[0],)).fetchall()
    assert took is not None and 0 <= took < 120
    modes = [m for (m,) in db.execute("SELECT mode FROM queries ORDER BY created")]
    assert modes[-1] == "refine"
    done = dict(db.execute("SELECT query_id, done IS NOT NULL FROM review").fetchall())
    assert done[asked[0]] == 1 and done[asked[1]] == 0


@pytest.mark.parametrize(
    "viewport", [{"width": 390, "height": 844}, {"width": 1280, "height": 900}], ids=["phone", "desktop"]
)
def test_pilot_dashboard_draws_both_versions(tmp_path, openclip_fnd, viewport):
    from playwright.sync_api import expect, sync_playwright
    from test_pilot import two_version_log

    from isacir.serve.keys import KeyRing, add_key

    device_key, _ = add_key(tmp_path / "keys.toml", "camera", "device")
    operator_key, _ = add_key(tmp_path / "keys.toml", "manager", "operator")
    keys = KeyRing.from_file(tmp_path / "keys.toml")
    app, state, _ = build_service(tmp_path, openclip_fnd, n_images=12, api_key=None, keys=keys)
    ids = [item["id"] for item in state.gallery.items()]
    two_version_log(state.feedback, ids)
    server = start_server(app)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = "phone" if viewport["width"] < 600 else "desktop"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport=viewport, device_scale_factor=2 if name == "phone" else 1)
            page.goto(server.url + "/pilot")
            expect(page.locator("#status")).to_contain_text("API key")  # the data routes need a key
            page.fill("#api-key", device_key)  # a device key may search, not read the pilot
            page.click("#key-save")
            expect(page.locator("#status")).to_contain_text("lacks the 'pilot' scope")
            page.fill("#api-key", operator_key)
            page.click("#key-save")
            expect(page.locator("#status")).to_contain_text("24 queries, 24 judged, 2 version(s)")
            rows = page.locator("#versions tbody tr")
            expect(rows).to_have_count(2)
            expect(rows.nth(0).locator("th")).to_have_text("AAAAAAAA")
            expect(rows.nth(1).locator("th")).to_have_text("v2 (BBBBBBBB)")  # its registry name, fingerprint beside
            expect(rows.nth(0).locator("td").nth(2)).to_have_text("50.0 %")  # version A's false-hit rate
            expect(rows.nth(0).locator("td").nth(8)).to_have_text("12.0")  # operator seconds per judged query
            expect(rows.nth(1).locator("td").nth(8)).to_have_text("6.0")
            expect(page.locator("#o-operator-n")).to_contain_text("median of 24; mean 9.0 s")
            expect(page.locator("#review-line")).to_be_hidden()  # no review queue in this pilot
            # how traffic is split now, and the interleaved comparisons (none in this pilot)
            expect(page.locator("#split")).to_contain_text("Served now:")
            expect(page.locator("#interleaving tbody")).to_contain_text("No interleaved search")
            page.wait_for_function(
                "[...document.querySelectorAll('.charts img')].every(i => i.complete && i.naturalWidth > 100)"
            )
            # the page fits a phone: nothing but the table scrolls sideways
            assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
            page.screenshot(path=str(ARTIFACTS / f"pilot-{name}.png"), full_page=True)
            browser.close()
    finally:
        server.stop()
    assert (ARTIFACTS / f"pilot-{name}.png").stat().st_size > 20_000
