"""The Stream page's chat in a real headless Chromium with a real IRC server (miniircd as
Twitch): a line typed on the page appears in the IRC channel, and a line said in the
channel appears on a second tab, as text (never HTML); the connection's state shows."""

from __future__ import annotations

import os
import re

import pytest

from devtools.processes import Stack
from tests.irc import IrcServer, Viewer
from tests.test_browser import browser, chromium, create_users  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.processes]

PASSWORD = "chat-page-pw-1"
CHANNEL = "streamer"


async def test_a_line_typed_on_the_page_reaches_the_channel_and_back_on_another_tab(
    browser,  # noqa: F811
    tmp_path,
    migrated_db_template,
    key_prefix,
):
    from playwright.async_api import expect

    ircd = IrcServer(tmp_path, password="oauth:page-token").start()
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env={"LIVESTREAM_TWITCH_IRC_URL": ircd.url})
    viewer = None
    try:
        create_users(stack, [("streamer", "streamer@example.com", PASSWORD, False)])
        cid = stack.manage(
            "connect_platform",
            "streamer@example.com",
            "twitch",
            "--channel",
            CHANNEL,
            "--token",
            "page-token",
        ).strip()
        web = stack.start_daphne()
        worker = stack.start_worker()
        await worker.log.wait_for(r"worker \S+ started", 30)
        context = await browser.new_context()
        first = await context.new_page()
        await first.goto(web.url + "/accounts/login/")
        await first.fill("input[name=login]", "streamer@example.com")
        await first.fill("input[name=password]", PASSWORD)
        await first.get_by_role("button", name=re.compile("sign in", re.I)).click()
        await first.wait_for_url(re.compile(r"/dashboard/$"))
        await first.goto(web.url + "/dashboard/stream/")
        second = await context.new_page()
        await second.goto(web.url + "/dashboard/stream/")
        for page in (first, second):
            state = page.locator(f'#platform-list li[data-id="{cid}"] .platform-state')
            await expect(state).to_have_text("connected", timeout=15_000)

        viewer = await Viewer.join(ircd, "viewer", CHANNEL)
        await first.fill("#chat-text", "hello from the page")
        await first.locator("#chat-send").click()
        await viewer.wait_for(lambda line: line.endswith(f"PRIVMSG #{CHANNEL} :hello from the page"), 5)
        await expect(first.locator("#chat-text")).to_have_value("")
        await expect(second.locator("#chat-lines .chat-text").last).to_have_text(
            "hello from the page", timeout=5_000
        )

        await viewer.say(CHANNEL, "<img src=x onerror=alert(1)> hi")
        line = second.locator("#chat-lines li").last
        await expect(line.locator(".chat-text")).to_have_text(
            "<img src=x onerror=alert(1)> hi", timeout=5_000
        )
        await expect(line.locator(".chat-author")).to_have_text("viewer")
        await expect(line.locator(".chat-platform")).to_have_text("twitch")
        assert await second.locator("#chat-lines img").count() == 0
        await expect(first.locator("#chat-lines .chat-text").last).to_have_text(
            "<img src=x onerror=alert(1)> hi"
        )

        # A tab opened later shows the recent lines, once each and in order.
        third = await context.new_page()
        await third.goto(web.url + "/dashboard/stream/")
        texts = third.locator("#chat-lines .chat-text")
        await expect(texts).to_have_text(
            ["hello from the page", "<img src=x onerror=alert(1)> hi"], timeout=10_000
        )

        if os.environ.get("SCREENSHOT_DIR"):  # a look at the panel while developing
            await second.screenshot(
                path=os.path.join(os.environ["SCREENSHOT_DIR"], "chat.png"), full_page=True
            )

        # A refused send shows its reason on the page.
        await first.fill("#chat-text", "x" * 500)
        await first.evaluate("() => document.getElementById('chat-text').removeAttribute('maxlength')")
        await first.fill("#chat-text", "x" * 501)
        await first.locator("#chat-send").click()
        await expect(first.locator("#chat-error")).to_contain_text("too long", timeout=5_000)
        await context.close()
    finally:
        if viewer is not None:
            await viewer.close()
        stack.stop_all()
        ircd.stop()
