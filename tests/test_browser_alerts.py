"""In Chromium: a webhook POST makes the alert appear in the open page's overlay.

Real daphne + runworker; the user signs in through the login page, opens the Stream
page, reads the webhook URL it shows, and an outside client POSTs two alerts to it:
the overlay shows them one at a time, in order, on that page and on another
dashboard page of the same user. Rotating from the page kills the old URL. Writes
docs/alert-overlay.png.
"""

from __future__ import annotations

import re

import httpx
import pytest

from devtools.processes import BASE_DIR, Stack
from tests.test_browser import PASSWORD, browser, chromium, create_users  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.processes]

DISPLAY = 1.5


async def test_a_webhook_alert_appears_on_the_open_pages(browser, tmp_path, migrated_db_template, key_prefix):  # noqa: F811
    from playwright.async_api import expect

    stack = Stack(
        tmp_path, migrated_db_template, key_prefix, env={"LIVESTREAM_ALERT_DISPLAY_INTERVAL": str(DISPLAY)}
    )
    try:
        create_users(stack, [("ana", "ana@example.com", PASSWORD, False)])
        web = stack.start_daphne()
        worker = stack.start_worker()
        context = await browser.new_context(viewport={"width": 1100, "height": 640})
        page = await context.new_page()
        await page.goto(web.url + "/accounts/login/")
        await page.fill("input[name=login]", "ana@example.com")
        await page.fill("input[name=password]", PASSWORD)
        await page.get_by_role("button", name=re.compile("sign in", re.I)).click()
        await page.wait_for_url(re.compile(r"/dashboard/$"))
        await page.goto(web.url + "/dashboard/stream/")
        other = await context.new_page()
        await other.goto(web.url + "/dashboard/analytics/")
        for tab in (page, other):
            await expect(tab.locator("#manager")).to_have_attribute("data-state", "running", timeout=15_000)
        await worker.log.wait_for(r"UserStreamManager started: \d+", 5)
        url = (await page.text_content("#alert-webhook-url") or "").strip()
        assert re.fullmatch(rf"{re.escape(web.url)}/hooks/alerts/\d+/[A-Za-z0-9_-]{{43}}/", url), url

        overlay = page.locator("#alert-overlay")
        await expect(overlay).to_be_hidden()
        async with httpx.AsyncClient(timeout=10) as client:
            first = await client.post(
                url,
                json={
                    "kind": "donation",
                    "from": "Bea",
                    "amount": 5,
                    "currency": "EUR",
                    "message": "<b>gg</b>",
                },
            )
            second = await client.post(url, json={"kind": "follow", "from": "Cy"})
        assert (first.status_code, second.status_code) == (202, 202)

        for tab in (page, other):
            box = tab.locator("#alert-overlay")
            await expect(box).to_be_visible(timeout=5_000)
            await expect(box).to_have_attribute("data-alert-id", first.json()["id"])
            await expect(box.locator("#alert-from")).to_have_text("Bea")
            await expect(box.locator("#alert-amount")).to_contain_text("5")
            # Text, never markup: the sender's "<b>" is shown, not rendered.
            await expect(box.locator("#alert-message")).to_have_text("<b>gg</b>")
        await page.bring_to_front()
        (BASE_DIR / "docs").mkdir(exist_ok=True)
        await page.screenshot(path=str(BASE_DIR / "docs" / "alert-overlay.png"))
        # One at a time: the second replaces the first after the display time.
        await expect(overlay).to_have_attribute(
            "data-alert-id", second.json()["id"], timeout=DISPLAY * 1000 + 5_000
        )
        await expect(overlay.locator("#alert-kind")).to_have_text("follow")
        assert await overlay.get_attribute("data-shown") == "2"
        await expect(overlay).to_be_hidden(timeout=DISPLAY * 1000 + 5_000)

        # Rotate from the page: a new URL, the old one refused at once.
        await page.locator("#alert-webhook-rotate").click()
        await page.wait_for_url(re.compile(r"/dashboard/stream/$"))
        new_url = (await page.text_content("#alert-webhook-url") or "").strip()
        assert new_url != url
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.post(url, json={"kind": "follow", "from": "Dee"})).status_code == 404
            assert (await client.post(new_url, json={"kind": "follow", "from": "Dee"})).status_code == 202
        await expect(page.locator("#alert-from")).to_have_text("Dee", timeout=5_000)
        await context.close()
        assert "Traceback" not in worker.log.text() + web.log.text()
    finally:
        stack.stop_all()
