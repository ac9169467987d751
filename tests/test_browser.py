"""The whole flow in a real headless Chromium against real daphne + runworker processes.

Also writes the README's screenshots: docs/dashboard.png, docs/debug-page.png
and docs/impersonation.png.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from devtools.processes import BASE_DIR, Stack
from tests.browser import CHROMIUM, CHROMIUM_ARGS, ensure_chromium

pytestmark = [pytest.mark.browser, pytest.mark.processes]

DOCS = BASE_DIR / "docs"
PASSWORD = "browser-test-pw-1"
ADMIN_PASSWORD = "browser-admin-pw-1"
VIEWPORT = {"width": 1100, "height": 640}
CLEANUP_TIMEOUT = 5.0


@pytest.fixture(scope="session")
def chromium() -> str:
    reason = ensure_chromium()
    if reason is not None:
        print(f"\nbrowser tests skipped: {reason}")
        pytest.skip(f"no Chromium: {reason}")
    return str(CHROMIUM)


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        await browser.close()


def create_users(stack: Stack, users: list[tuple[str, str, str, bool]]) -> dict[str, str]:
    """(username, email, password, superuser) rows -> {username: user id}, in one Django start."""
    code = (
        "import json, os; from django.contrib.auth import get_user_model as m; U = m(); out = {}\n"
        "for name, email, pw, su in json.loads(os.environ['TEST_USERS']):\n"
        "    make = U.objects.create_superuser if su else U.objects.create_user\n"
        "    out[name] = str(make(name, email, pw).pk)\n"
        "print(json.dumps(out))"
    )
    output = stack.manage("shell", "-c", code, TEST_USERS=json.dumps(users))
    return json.loads(output.splitlines()[-1])


async def admin_login(context: Any, base_url: str, username: str, password: str) -> Any:
    page = await context.new_page()
    await page.goto(base_url + "/admin/login/")
    await page.fill("#id_username", username)
    await page.fill("#id_password", password)
    await page.click("input[type=submit]")
    await page.wait_for_url(re.compile(r"/admin/$"))
    return page


async def until_listed(page: Any, user_id: str, *, listed: bool, timeout: float = 10.0) -> None:
    """Reload the admin debug page until its managers table does (not) list ``user_id``.

    Reloads rather than trusting the page's own refresh, which pauses while the
    mouse is over one of its buttons; what it shows is at most one reconcile
    tick old, so a bounded wait, not an instant one.
    """
    row = page.locator(f'table#managers tr[data-user-id="{user_id}"]')
    deadline = time.monotonic() + timeout
    while True:
        await page.reload()
        if (await row.count() == 1) == listed:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"debug page {'never' if listed else 'still'} lists user {user_id}")
        await page.wait_for_timeout(250)


async def count_of(page: Any) -> int:
    value = await page.get_attribute("#manager", "data-count")
    return int(value) if value else 0


async def ticks(page: Any, more: int = 2) -> None:
    """The console-log counter shown on the page goes up by ``more``."""
    start = await count_of(page)
    await page.wait_for_function(
        "n => Number(document.getElementById('manager').dataset.count || 0) >= n",
        arg=start + more,
        timeout=15_000,
    )


async def test_sign_up_three_tabs_cleanup_and_the_debug_page(
    browser, tmp_path, migrated_db_template, key_prefix
):
    from playwright.async_api import expect

    stack = Stack(
        tmp_path, migrated_db_template, key_prefix, env={"LIVESTREAM_CLEANUP_TIMEOUT": str(CLEANUP_TIMEOUT)}
    )
    try:
        create_users(stack, [("admin", "admin@example.com", ADMIN_PASSWORD, True)])
        web = stack.start_daphne()
        worker = stack.start_worker()
        context = await browser.new_context(viewport=VIEWPORT)
        email = "frank@example.com"

        # Sign up, sign out, log in: all through the pages.
        tab1 = await context.new_page()
        await tab1.goto(web.url + "/accounts/signup/")
        await tab1.fill("input[name=email]", email)
        await tab1.fill("input[name=password1]", PASSWORD)
        await tab1.fill("input[name=password2]", PASSWORD)
        await tab1.get_by_role("button", name=re.compile("sign up", re.I)).click()
        await tab1.wait_for_url(re.compile(r"/dashboard/$"))
        await tab1.get_by_role("button", name="Sign out").click()
        await tab1.wait_for_url(re.compile(r"/accounts/login/$"))
        await tab1.fill("input[name=login]", email)
        await tab1.fill("input[name=password]", PASSWORD)
        await tab1.get_by_role("button", name=re.compile("sign in", re.I)).click()
        await tab1.wait_for_url(re.compile(r"/dashboard/$"))
        user_id = await tab1.get_attribute("#manager", "data-user-id")
        assert user_id and user_id.isdigit()

        # Three tabs: each shows the manager running, the counter ticking, 3 sessions.
        tab2 = await context.new_page()
        await tab2.goto(web.url + "/dashboard/stream/")
        tab3 = await context.new_page()
        await tab3.goto(web.url + "/dashboard/analytics/")
        tabs = [tab1, tab2, tab3]
        for tab in tabs:
            await expect(tab.locator("#connection-state")).to_have_text("connected", timeout=15_000)
            await expect(tab.locator("#manager")).to_have_attribute("data-state", "running", timeout=15_000)
            await expect(tab.locator("#manager-sessions")).to_have_text("3", timeout=10_000)
        await ticks(tab3, 2)
        await worker.log.wait_for(rf"UserStreamManager started: {user_id}$", 5)
        assert len(worker.log.findall(rf"UserStreamManager started: {user_id}$")) == 1
        assert (await tab1.text_content("#manager-count")).startswith("#")

        # The admin debug page lists the user while tabs are open.
        admin_context = await browser.new_context(viewport=VIEWPORT)
        admin = await admin_login(admin_context, web.url, "admin", ADMIN_PASSWORD)
        await admin.goto(web.url + "/admin/livestream/debug/")
        await until_listed(admin, user_id, listed=True)
        DOCS.mkdir(exist_ok=True)
        await admin.screenshot(path=str(DOCS / "debug-page.png"), full_page=True)
        await ticks(tab1, 1)
        await tab1.bring_to_front()
        await tab1.screenshot(path=str(DOCS / "dashboard.png"))

        # Close two tabs: the manager keeps running (the worker log keeps going).
        mark = worker.log.mark()
        await tab2.close(run_before_unload=True)
        await tab3.close(run_before_unload=True)
        await worker.log.wait_for(rf"presence leave: {user_id} \(1 sessions left\)", 10, after=mark)
        await expect(tab1.locator("#manager-sessions")).to_have_text("1", timeout=5_000)
        logs = rf"\[UserStreamManager:{user_id}\] Console log #\d+"
        await worker.log.wait_for(logs, 5, after=worker.log.mark(), count=2)
        await ticks(tab1, 1)
        assert not worker.log.findall(
            rf"cleanup scheduled: {user_id}|UserStreamManager stopped: {user_id}", mark
        )
        await until_listed(admin, user_id, listed=True)

        # Close the last: the manager stops CLEANUP_TIMEOUT later, not before, not much after.
        mark = worker.log.mark()
        closed_at = time.monotonic()
        await tab1.close(run_before_unload=True)
        await worker.log.wait_for(rf"presence leave: {user_id} \(0 sessions left\)", 5, after=mark)
        await worker.log.wait_for(rf"cleanup scheduled: {user_id} in 5s", 5, after=mark)
        await worker.log.wait_for(rf"UserStreamManager stopped: {user_id}$", CLEANUP_TIMEOUT + 10, after=mark)
        stopped_after = time.monotonic() - closed_at
        assert CLEANUP_TIMEOUT - 0.3 <= stopped_after <= CLEANUP_TIMEOUT + 3.0, (
            f"stopped {stopped_after:.2f}s after"
        )
        last = worker.log.findall(logs)[-1]
        print(
            f"\nmanager stopped {stopped_after:.2f}s after the last tab closed (cleanup {CLEANUP_TIMEOUT}s)"
        )

        # ...and it is gone from the debug page.
        await until_listed(admin, user_id, listed=False)
        stopped_mark = worker.log.mark()
        await admin.wait_for_timeout(1_500)  # > CONSOLE_LOG_INTERVAL: a running logger would have logged
        assert not worker.log.findall(logs, stopped_mark), f"still logging after stop (last: {last[0]})"
        await admin_context.close()
        await context.close()
        assert "Traceback" not in worker.log.text() + web.log.text()
    finally:
        stack.stop_all()


async def test_a_superuser_impersonates_from_the_admin_and_stops_from_the_banner(
    browser, tmp_path, migrated_db_template, key_prefix
):
    from playwright.async_api import expect

    stack = Stack(tmp_path, migrated_db_template, key_prefix)
    try:
        ids = create_users(
            stack,
            [
                ("admin", "admin@example.com", ADMIN_PASSWORD, True),
                ("root2", "root2@example.com", ADMIN_PASSWORD, True),
                ("grace", "grace@example.com", PASSWORD, False),
            ],
        )
        web = stack.start_daphne()
        worker = stack.start_worker()
        context = await browser.new_context(viewport=VIEWPORT)
        admin = await admin_login(context, web.url, "admin", ADMIN_PASSWORD)
        # A dashboard tab of the superuser's own, open in the same session.
        other_tab = await context.new_page()
        await other_tab.goto(web.url + "/dashboard/")
        await expect(other_tab.locator("#manager")).to_have_attribute("data-user-id", ids["admin"])
        await expect(other_tab.locator("#manager")).to_have_attribute("data-state", "running", timeout=15_000)

        await admin.goto(web.url + "/admin/auth/user/")
        assert await admin.locator(f'button[data-hijack-user="{ids["root2"]}"]').count() == 0
        assert await admin.locator(f'button[data-hijack-user="{ids["admin"]}"]').count() == 0
        await admin.locator(f'button[data-hijack-user="{ids["grace"]}"]').click()
        await admin.wait_for_url(re.compile(r"/dashboard/$"))

        banner = admin.locator("#impersonation-banner")
        await expect(banner).to_contain_text("Viewing as grace@example.com")
        await expect(admin.locator("#manager")).to_have_attribute("data-user-id", ids["grace"])
        await expect(admin.locator("#manager")).to_have_attribute("data-state", "running", timeout=15_000)
        await worker.log.wait_for(rf"UserStreamManager started: {ids['grace']}$", 10)
        # The superuser's other tab was closed by the switch and reloaded as the impersonated user.
        await expect(other_tab.locator("#manager")).to_have_attribute(
            "data-user-id", ids["grace"], timeout=10_000
        )
        await expect(other_tab.locator("#impersonation-banner")).to_be_visible()
        await expect(admin.locator("#manager-sessions")).to_have_text("2", timeout=10_000)
        await ticks(admin, 1)
        await admin.screenshot(path=str(DOCS / "impersonation.png"))
        await web.log.wait_for(
            rf"superuser {ids['admin']} \(admin\) started impersonating user {ids['grace']}", 5
        )

        mark = worker.log.mark()
        await banner.get_by_role("button", name="Stop impersonating").click()
        await admin.wait_for_url(re.compile(r"/admin/auth/user/$"))
        await expect(admin.locator("#impersonation-banner")).to_have_count(0)
        await web.log.wait_for(
            rf"superuser {ids['admin']} \(admin\) stopped impersonating user {ids['grace']}", 5
        )
        # The other tab follows back to the superuser; the impersonated user leaves at once.
        await expect(other_tab.locator("#manager")).to_have_attribute(
            "data-user-id", ids["admin"], timeout=10_000
        )
        await worker.log.wait_for(rf"presence leave: {ids['grace']} \(0 sessions left\)", 5, after=mark)
        await context.close()
        assert "Traceback" not in worker.log.text() + web.log.text()
    finally:
        stack.stop_all()
