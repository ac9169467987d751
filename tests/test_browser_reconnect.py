"""presence.js reconnects with backoff when the socket drops (daphne restarted), in real Chromium."""

from __future__ import annotations

import re

import pytest

from tests.harness import Stack
from tests.test_browser import PASSWORD, browser, chromium, create_users  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.processes]


async def test_the_page_reconnects_after_daphne_restarts_and_keeps_its_manager(
    browser,  # noqa: F811
    tmp_path,
    migrated_db_template,
    key_prefix,
):
    stack = Stack(tmp_path, migrated_db_template, key_prefix)
    try:
        web = stack.start_daphne()
        # A wide window: this is about reconnecting, not about the 5 s timing
        # (backoff retries come at ~0.5, 1.5, 3.5, 7.5 s; a slow daphne start
        # under load must not turn this into a stop and restart).
        worker = stack.start_worker(LIVESTREAM_CLEANUP_TIMEOUT="20")
        uid = create_users(stack, [("rita", "rita@example.com", PASSWORD, False)])["rita"]
        page = await (await browser.new_context()).new_page()
        await page.goto(web.url + "/accounts/login/")
        await page.fill("input[name=login]", "rita@example.com")
        await page.fill("input[name=password]", PASSWORD)
        await page.click("form button[type=submit]")
        await page.wait_for_url(re.compile(r"/dashboard/$"))
        await page.wait_for_selector("#presence[data-state=connected]", timeout=10_000)
        await worker.log.wait_for(rf"UserStreamManager started: {uid}\n", timeout=10)

        # daphne goes away: the page notices and starts retrying.
        web.stop()
        await page.wait_for_selector("#presence[data-state=reconnecting]", timeout=10_000)
        await worker.log.wait_for(rf"presence leave: {uid} \(0 sessions left\)", timeout=10)

        # It comes back on the same address: the page reconnects by itself,
        # within the cleanup window, so the user keeps the same manager.
        stack.start_daphne("daphne-2", port=web.port)
        await page.wait_for_selector("#presence[data-state=connected]", timeout=10_000)
        await worker.log.wait_for(rf"presence join: {uid}\n", timeout=10, count=2)
        mark = worker.log.mark()
        await worker.log.wait_for(
            rf"\[UserStreamManager:{uid}\] Console log #\d+", timeout=10, after=mark, count=6
        )
        assert len(worker.log.findall(rf"UserStreamManager started: {uid}\n")) == 1
        assert not worker.log.findall(rf"UserStreamManager stopped: {uid}\n")
    finally:
        stack.stop_all()
