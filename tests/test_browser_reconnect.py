"""presence.js reconnects with backoff when the socket drops (daphne restarted), in real Chromium."""

from __future__ import annotations

import itertools
import re

import pytest

from devtools.processes import Stack
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
        # The hand-off delay (CLEANUP_TIMEOUT + HANDOFF_GRACE, set where the leave happens:
        # the stopping daphne) must outlast the page's backoff while no daphne listens.
        web = stack.start_daphne(LIVESTREAM_CLEANUP_TIMEOUT="20", LIVESTREAM_HANDOFF_GRACE="30")
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

        # daphne goes away (SIGTERM, a deploy): it hands the socket off and closes it with
        # 1012; the page retries soon (0.1-2 s, spread), then backs off while nothing answers.
        await page.evaluate(
            """() => { window.__states = [];
              document.addEventListener("streampai:connection", (e) => window.__states.push(
                [e.detail.state, Number(document.getElementById("presence").dataset.retryMs || 0)])); }"""
        )
        web.stop()
        await page.wait_for_selector("#presence[data-state=reconnecting]", timeout=10_000)
        await worker.log.wait_for(rf"presence leave: {uid} \(0 sessions left\)", timeout=10)
        assert "handing off 1 open sockets" in web.log.text()
        await page.wait_for_function(
            "() => window.__states.filter((s) => s[0] === 'reconnecting').length >= 3", timeout=15_000
        )
        waits = [w for state, w in await page.evaluate("() => window.__states") if state == "reconnecting"]
        assert 100 <= waits[0] <= 2000, waits  # the restart close: soon, with jitter
        # Refused while nothing listens: each wait longer than the one before, never a faster retry.
        assert all(b > a for a, b in itertools.pairwise(waits)), waits

        # It comes back on the same address: the page reconnects by itself,
        # within the cleanup window, so the user keeps the same manager.
        stack.start_daphne("daphne-2", port=web.port)
        # (the backoff may be ~10 s by now)
        await page.wait_for_selector("#presence[data-state=connected]", timeout=25_000)
        await worker.log.wait_for(rf"presence join: {uid}\n", timeout=10, count=2)
        mark = worker.log.mark()
        await worker.log.wait_for(
            rf"\[UserStreamManager:{uid}\] Console log #\d+", timeout=10, after=mark, count=6
        )
        assert len(worker.log.findall(rf"UserStreamManager started: {uid}\n")) == 1
        assert not worker.log.findall(rf"UserStreamManager stopped: {uid}\n")
    finally:
        stack.stop_all()
