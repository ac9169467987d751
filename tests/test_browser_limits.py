"""presence.js on the close codes of issue 9, in real Chromium against real daphne + worker.

- 4029: a tab over MAX_SOCKETS_PER_USER shows "too many open tabs" and does not retry
  quickly (30-60 s);
- 4003: deactivating the user from a shell closes their open page's socket; the page
  shows "signed out" and does not reconnect; the manager stops CLEANUP_TIMEOUT later.
"""

from __future__ import annotations

import re
import time

import pytest

from devtools.processes import Stack
from tests.test_browser import PASSWORD, browser, chromium, create_users  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.processes]

CLEANUP = 1.0


async def test_too_many_tabs_then_deactivation(browser, tmp_path, migrated_db_template, key_prefix):  # noqa: F811
    stack = Stack(
        tmp_path,
        migrated_db_template,
        key_prefix,
        env={"LIVESTREAM_MAX_SOCKETS_PER_USER": "1", "LIVESTREAM_CLEANUP_TIMEOUT": str(CLEANUP)},
    )
    try:
        web = stack.start_daphne()
        worker = stack.start_worker()
        uid = create_users(stack, [("tess", "tess@example.com", PASSWORD, False)])["tess"]
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(web.url + "/accounts/login/")
        await page.fill("input[name=login]", "tess@example.com")
        await page.fill("input[name=password]", PASSWORD)
        await page.click("form button[type=submit]")
        await page.wait_for_url(re.compile(r"/dashboard/$"))
        await page.wait_for_selector("#presence[data-state=connected]", timeout=10_000)
        await worker.log.wait_for(rf"UserStreamManager started: {uid}\n", timeout=10)

        # A second tab of the same user: over the cap of 1.
        second = await context.new_page()
        await second.goto(web.url + "/dashboard/")
        await second.wait_for_selector("#presence[data-state=too-many]", timeout=10_000)
        assert await second.text_content("#connection-state") == "too many open tabs"
        retry_ms = int(await second.get_attribute("#presence", "data-retry-ms"))
        assert 30_000 <= retry_ms <= 60_000, retry_ms
        await web.log.wait_for(r"MAX_SOCKETS_PER_USER 1\); closing with 4029", timeout=5)
        await second.close()

        # Deactivated from a shell: the open page is told at once and stays signed out.
        mark = worker.log.mark()
        deactivated_at = time.monotonic()
        stack.manage(
            "shell",
            "-c",
            f"from django.contrib.auth import get_user_model as m; "
            f"u = m().objects.get(pk={uid}); u.is_active = False; u.save()",
        )
        await page.wait_for_selector("#presence[data-state=signed-out]", timeout=10_000)
        assert await page.text_content("#connection-state") == "signed out"
        await web.log.wait_for(rf"closing a socket of user {uid}: account deactivated", timeout=5)
        await worker.log.wait_for(rf"UserStreamManager stopped: {uid}\n", timeout=CLEANUP + 10, after=mark)
        stopped_after = time.monotonic() - deactivated_at
        attempts = len(web.log.findall(r"WSCONNECTING /ws/presence/"))
        await page.wait_for_timeout(2_000)  # no reconnect loop: nothing to await but time
        assert len(web.log.findall(r"WSCONNECTING /ws/presence/")) == attempts
        assert await page.get_attribute("#presence", "data-state") == "signed-out"
        print(f"deactivation: page signed out, manager stopped {stopped_after:.2f}s after the shell's save")
        assert "Traceback" not in web.log.text() + worker.log.text()
    finally:
        stack.stop_all()
