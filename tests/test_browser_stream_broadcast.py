"""The Stream page's ingest and outputs in a real headless Chromium (issue 18): the ingest URL
and masked key, "Show", OBS (ffmpeg) connecting shows "input connected", two outputs added in
the page's form go live after "Go live". Writes docs/stream-page.png (after
test_browser_stream.py's, which it replaces with this fuller page)."""

from __future__ import annotations

import re

import pytest

from broadcast import ingest
from devtools.broadcast import Publisher, Receiver, broadcast_env, start_ingest
from devtools.processes import BASE_DIR, Stack, wait_until
from tests.test_browser import browser, chromium, create_users  # noqa: F401  (fixtures)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.processes,
    pytest.mark.skipif(ingest.unavailable() is not None, reason=f"no RTMP ingest: {ingest.unavailable()}"),
]

PASSWORD = "stream-page-pw-1"
VIEWPORT = {"width": 1100, "height": 1000}


async def test_stream_page_ingest_input_and_outputs(browser, tmp_path, migrated_db_template, key_prefix):  # noqa: F811
    from playwright.async_api import expect

    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=broadcast_env(tmp_path))
    receivers = [await Receiver(stream="a").start(), await Receiver(stream="b").start()]
    obs = None
    try:
        create_users(stack, [("streamer", "streamer@example.com", PASSWORD, False)])
        web = stack.start_daphne()
        worker = stack.start_worker()
        await worker.log.wait_for(r"worker \S+ started", 30)
        await start_ingest(stack, web)
        context = await browser.new_context(viewport=VIEWPORT)
        page = await context.new_page()
        await page.goto(web.url + "/accounts/login/")
        await page.fill("input[name=login]", "streamer@example.com")
        await page.fill("input[name=password]", PASSWORD)
        await page.get_by_role("button", name=re.compile("sign in", re.I)).click()
        await page.wait_for_url(re.compile(r"/dashboard/$"))
        await page.goto(web.url + "/dashboard/stream/")

        url = page.locator("#stream-ingest-url")
        await expect(url).to_have_text(re.compile(r"^rtmp://127\.0\.0\.1:\d+/live$"), timeout=15_000)
        await expect(page.locator("#stream-key")).to_have_text(re.compile(r"^••••.{4}$"))
        await expect(page.locator("#stream-input")).to_have_text("input disconnected")
        await page.locator("#stream-key-show").click()
        await expect(page.locator("#stream-key")).to_have_text(re.compile(r"^sp_[A-Za-z0-9_-]{40,}$"))
        key = await page.locator("#stream-key").text_content()
        await page.locator("#stream-key-show").click()  # "Hide": masked again for the screenshot
        await expect(page.locator("#stream-key")).to_have_text(re.compile(r"^••••"))

        obs = await Publisher(f"{await url.text_content()}/{key}").start()
        await expect(page.locator("#stream-input")).to_have_text("input connected", timeout=10_000)

        # "Go live" without an output: refused, with the reason shown.
        await page.locator("#go-live").click()
        await expect(page.locator("#stream-error")).to_contain_text("no output enabled")

        for name, receiver in zip(("Twitch", "YouTube"), receivers, strict=True):
            await page.fill("#output-name", name)
            await page.fill("#output-url", receiver.url)
            await page.fill("#output-key", "live_" + name.lower() + "_0123456789")
            await page.locator("#output-add-button").click()
            await expect(page.locator("#stream-outputs tbody tr", has_text=name)).to_have_count(
                1, timeout=5_000
            )
        await expect(page.locator("#stream-outputs .output-state")).to_have_text(["off", "off"])

        await page.locator("#go-live").click()
        await expect(page.locator("#stream-state")).to_have_text("live", timeout=10_000)
        await expect(page.locator("#stream-outputs .output-state")).to_have_text(
            ["live", "live"], timeout=10_000
        )
        # "live" is the relay's own report; the receivers print their first frame after probing it.
        await wait_until(lambda: all(r.frames > 0 for r in receivers), 5, "frames at both receivers")
        content = await page.content()
        assert "0123456789" not in content and key not in content  # no output key, no stream key shown
        await page.screenshot(path=str(BASE_DIR / "docs" / "stream-page.png"), full_page=True)

        await page.locator("#end-stream").click()
        await expect(page.locator("#stream-state")).to_have_text("offline", timeout=10_000)
        await expect(page.locator("#stream-outputs .output-state")).to_have_text(
            ["off", "off"], timeout=5_000
        )
        await context.close()
    finally:
        if obs is not None:
            await obs.stop()
        for receiver in receivers:
            await receiver.stop()
        stack.stop_all()
