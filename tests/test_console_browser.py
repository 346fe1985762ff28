"""The operations console at /admin, driven like a person would in Debian's headless Chromium: start
a learning cycle, change the canary share, roll a canary back, promote another, retire the old
version, and read the cost view and the audit trail."""

from __future__ import annotations

import time

import pytest
from serve_helpers import ARTIFACTS, chromium_or_skip, start_server
from test_cycle import _admin_service, _cycle, _feedback, loop  # noqa: F401  (loop is a fixture)

pytestmark = pytest.mark.browser

CHROMIUM = chromium_or_skip()


def _timed_searches(setup, version: str, seconds: float, n: int = 8) -> None:
    """Searches ``version`` answered alone, judged in ``seconds`` each: half right at the top, half
    corrected with an item from outside the list."""
    store, qe, fnd = setup["store"], setup["qe"], setup["fnd"]
    for i in range(n):
        qid = store.log_query("image", "in red", None, 5, [1, 2, 3, 4, 5], qe.fingerprint, fnd.fingerprint,
                              model_version=version)  # fmt: skip
        if i % 2:
            store.add(qid, 1, "confirmed", verdict_s=seconds)
        else:
            store.add(qid, 1, "rejected", verdict_s=seconds / 2)
            store.add(qid, 99, "corrected", verdict_s=seconds)


@pytest.mark.parametrize(
    "viewport", [{"width": 390, "height": 844}, {"width": 1280, "height": 900}], ids=["phone", "desktop"]
)
def test_the_console_runs_the_loop_and_shows_its_cost(loop, tmp_path, viewport):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    from isacir.cycle import CycleStore
    from isacir.serve import create_app

    state = _admin_service(loop, tmp_path)
    state.attach_learning(_cycle(loop), every_s=3600)  # steps run only when the console asks
    server = start_server(create_app(state))
    reg = loop["registry"]
    _feedback(loop["store"], loop["qe"], loop["fnd"], loop["ids"], 80, seed=7)
    _timed_searches(loop, "v1", 12.0)
    name = "phone" if viewport["width"] < 600 else "desktop"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def wait_cycle(page, state_: str):
        deadline = time.time() + 120

        def now() -> str | None:
            cycles = CycleStore(reg.folder).all()
            return cycles[-1]["state"] if cycles else None

        while now() != state_ or state.learner.running:
            assert time.time() < deadline, now()
            time.sleep(0.2)
        page.reload()

    def act(page, button, why: str):
        page.fill("#reason", why)
        button.click()
        expect(page.locator("#status")).to_contain_text("done")

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport=viewport, device_scale_factor=2 if name == "phone" else 1)
            page.goto(server.url + "/admin")
            expect(page.locator("#status")).to_contain_text("API key")
            expect(page.locator("#key-box")).to_be_visible()
            page.fill("#api-key", "operator-secret")  # an operator's key may not run operations
            page.click("#key-save")
            expect(page.locator("#status")).to_contain_text("models:admin")
            page.fill("#api-key", "admin-secret")
            page.click("#key-save")
            expect(page.locator("#c-active")).to_have_text("v1")
            expect(page.locator("#c-cycle")).to_have_text("none yet")

            # the cost view of v1's 88 judged searches: the 80 of the log, each corrected with an
            # item it did not show, and 8 timed at 12 s, 4 right at the top and 4 corrected
            row = page.locator("#cost tr[data-version='v1'] td")
            expect(row.nth(0)).to_have_text("12.0 (8 timed)")
            expect(row.nth(1)).to_have_text(f"{100 * 4 / 88:.1f} %")
            expect(row.nth(3)).to_have_text(f"{100 * 84 / 88:.1f}")
            expect(row.nth(4)).to_have_text(f"{12 * 1000 / 3600:.2f}")

            # no action without a reason
            page.click("#cycle-start")
            expect(page.locator("#status")).to_contain_text("Write a reason first")
            act(page, page.locator("#cycle-start"), "week 1 verdicts")
            wait_cycle(page, "canary")
            first = CycleStore(reg.folder).all()[-1]["candidate"]
            expect(page.locator(f"#versions tr[data-version='{first}'] td.state")).to_have_text("canary")
            expect(page.locator("#c-canary")).to_have_text(first)
            expect(page.locator(f"#versions tr[data-version='{first}'] td").nth(2)).to_contain_text("hit@1")
            expect(page.locator("#c-cycle-note")).to_contain_text("under way")
            expect(page.locator("#c-inter")).to_have_text(f"{first} vs v1")
            expect(page.locator("#cycle")).to_contain_text("canary")
            page.screenshot(path=str(ARTIFACTS / f"console-canary-{name}.png"), full_page=True)

            page.fill("#share", "5")
            act(page, page.locator("#share-set"), "less risk this week")
            # the interleaved comparison keeps its pair: 5 % of searches are merged now
            expect(page.locator("#c-canary-note")).to_contain_text("share 5.0 % interleaved (registry)")
            assert reg.rollout() == {"canary_share": 0.0, "interleave": [first, "v1"], "interleave_share": 0.05}

            # roll the canary back by hand; the cycle sees it at its next step
            act(page, page.locator(f"#versions tr[data-version='{first}'] button[data-to='retired']"), "bad answers")
            assert reg.get(first)["state"] == "retired"
            act(page, page.locator("#cycle-start"), "close the cycle")
            wait_cycle(page, "rolled_back")
            expect(page.locator("#cycle")).to_contain_text("rolled_back")

            # a new cycle, promoted by hand through the gate
            _feedback(loop["store"], loop["qe"], loop["fnd"], loop["ids"], 20, seed=8)
            act(page, page.locator("#cycle-start"), "try again")
            wait_cycle(page, "canary")
            second = CycleStore(reg.folder).all()[-1]["candidate"]
            assert second != first
            act(page, page.locator(f"#versions tr[data-version='{second}'] button[data-to='active']"), "looks right")
            expect(page.locator("#c-active")).to_have_text(second)
            expect(page.locator("#versions tr[data-version='v1'] td.state")).to_have_text("deprecated")
            gate = page.locator(f"#versions tr[data-version='{second}'] td").nth(2)
            expect(gate).to_contain_text("hit@1")
            act(page, page.locator("#versions tr[data-version='v1'] button[data-to='retired']"), "no device left on v1")
            expect(page.locator("#versions tr[data-version='v1'] td.state")).to_have_text("retired")
            assert [reg.get(n)["state"] for n in ("v1", first, second)] == ["retired", "retired", "active"]

            # the audit trail names who did what and why
            expect(page.locator("#audit tbody tr").first).to_contain_text("models.state")
            expect(page.locator("#audit")).to_contain_text("no device left on v1")
            expect(page.locator("#audit")).to_contain_text("cycle.requested")
            assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
            page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)
            browser.close()
    finally:
        server.stop()
        state.close()
