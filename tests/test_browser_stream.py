"""The Stream page in a real headless Chromium: "Go live" clicked in one tab changes the
state shown in a second tab (StreamStateServer's sticky "state" events over each tab's
own socket); "End stream" in the second ends it in the first. Writes docs/stream-page.png."""

from __future__ import annotations

import re

import pytest

from devtools.processes import BASE_DIR, Stack
from tests.test_browser import browser, chromium, create_users  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.processes]

PASSWORD = "stream-page-pw-1"
VIEWPORT = {"width": 1100, "height": 760}


async def test_go_live_in_one_tab_shows_in_the_other(browser, tmp_path, migrated_db_template, key_prefix):  # noqa: F811
    from playwright.async_api import expect

    stack = Stack(
        tmp_path,
        migrated_db_template,
        key_prefix,
        env={"LIVESTREAM_STREAM_START_DELAY": "1.5", "LIVESTREAM_STREAM_END_DELAY": "0.5"},
    )
    try:
        create_users(stack, [("streamer", "streamer@example.com", PASSWORD, False)])
        web = stack.start_daphne()
        worker = stack.start_worker()
        await worker.log.wait_for(r"worker \S+ started", 30)
        context = await browser.new_context(viewport=VIEWPORT)
        first = await context.new_page()
        await first.goto(web.url + "/accounts/login/")
        await first.fill("input[name=login]", "streamer@example.com")
        await first.fill("input[name=password]", PASSWORD)
        await first.get_by_role("button", name=re.compile("sign in", re.I)).click()
        await first.wait_for_url(re.compile(r"/dashboard/$"))
        await first.get_by_role("link", name="Stream", exact=True).click()  # linked from the nav
        await first.wait_for_url(re.compile(r"/dashboard/stream/$"))
        second = await context.new_page()
        await second.goto(web.url + "/dashboard/stream/")

        for page in (first, second):
            await expect(page.locator("#stream-state")).to_have_text("offline")
            await expect(page.locator("#go-live")).to_be_enabled(timeout=15_000)  # socket up, manager running
            await expect(page.locator("#end-stream")).to_be_disabled()

        await first.locator("#go-live").click()
        # In flight, then "starting": "Go live" stays disabled in the tab that clicked.
        await expect(first.locator("#go-live")).to_be_disabled()
        await expect(second.locator("#stream-state")).to_have_text("starting", timeout=5_000)
        await expect(second.locator("#go-live")).to_be_disabled()
        await expect(second.locator("#stream-state")).to_have_text("live", timeout=5_000)
        await expect(first.locator("#stream-state")).to_have_text("live")
        await expect(first.locator("#stream-error")).to_be_hidden()
        await first.screenshot(path=str(BASE_DIR / "docs" / "stream-page.png"))
        # The page API: a refused command rejects with the reply's error message.
        refused = await first.evaluate(
            "() => window.streampai.command('StreamStateServer', 'go_live', {})"
            ".then(() => 'resolved', (e) => String(e) + '|' + e.message)"
        )
        assert refused == "cannot go live while the stream is live|cannot go live while the stream is live"

        # A third tab opened now shows "live" at once (the sticky state).
        third = await context.new_page()
        await third.goto(web.url + "/dashboard/stream/")
        await expect(third.locator("#stream-state")).to_have_text("live", timeout=5_000)

        await expect(second.locator("#end-stream")).to_be_enabled()
        await second.locator("#end-stream").click()
        await expect(second.locator("#end-stream")).to_be_disabled()
        for page in (first, second, third):
            await expect(page.locator("#stream-state")).to_have_text("offline", timeout=5_000)
        await expect(first.locator("#go-live")).to_be_enabled()
        await context.close()
    finally:
        stack.stop_all()
