"""Twitch chat end to end with real processes: miniircd as Twitch's IRC server
(LIVESTREAM_TWITCH_IRC_URL=irc://...), daphne, runworker(s), a connection made with
``manage.py connect_platform``, real WebSockets as the user's tabs, and a plain IRC
client as a viewer in the channel.

IRC keeps no history: what is said while nobody of ours is in the channel (between a
drop and the rejoin) is not seen by anyone who joins later, on Twitch as here. The
promise tested is "no message lost from the rejoin on" and "none twice".
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from devtools.clients import Account, create_accounts
from devtools.logs import log_problems
from devtools.processes import Stack, wait_until
from tests.irc import IrcServer, Viewer
from tests.tabs import Tab
from tests.twitchlike import TwitchLikeServer

pytestmark = pytest.mark.processes

CHANNEL = "streamer"
TOKEN = "good-token"
ENV = {
    "LIVESTREAM_PRESENCE_TTL": "3",
    "LIVESTREAM_HEARTBEAT_INTERVAL": "1",
    "LIVESTREAM_TWITCH_SEND_LIMIT": "5",
    # 5 per 300 s: no token comes back during a test (one per minute), however slow the machine.
    "LIVESTREAM_TWITCH_SEND_WINDOW": "300",
    "LIVESTREAM_PLATFORM_RETRY_MAX": "1",
}


@pytest.fixture
def ircd(tmp_path):
    server = IrcServer(tmp_path, password=f"oauth:{TOKEN}").start()
    yield server
    server.stop()


@pytest.fixture
def stack(tmp_path, migrated_db_template, key_prefix, ircd):
    stack = Stack(
        tmp_path, migrated_db_template, key_prefix, env={**ENV, "LIVESTREAM_TWITCH_IRC_URL": ircd.url}
    )
    yield stack
    stack.stop_all()


def platforms(tab: Tab) -> list[dict]:
    states = tab.named("PlatformSupervisor", "platforms")
    return states[-1]["platforms"] if states else []


def state_of(tab: Tab, cid: str) -> dict | None:
    return next((p for p in platforms(tab) if p["id"] == cid), None)


async def until_state(tab: Tab, cid: str, state: str, timeout: float) -> dict:
    return await tab.until(
        lambda: (p := state_of(tab, cid)) is not None and p["state"] == state and p, timeout, f"{cid} {state}"
    )


def chat(tab: Tab) -> list[dict]:
    return tab.named("PlatformSupervisor", "chat")


async def connected_user(stack: Stack, email: str, token: str = TOKEN) -> tuple[Account, str, Tab]:
    account = create_accounts(stack, [email])[email]
    cid = stack.manage("connect_platform", email, "twitch", "--channel", CHANNEL, "--token", token).strip()
    assert cid.startswith("twitch:"), cid
    tab = await Tab.open(stack.web.url, account.session)
    return account, cid, tab


async def test_chat_both_ways_limits_and_a_connection_disabled_and_enabled_while_running(stack, ircd):
    stack.web = stack.start_daphne()
    worker = stack.start_worker()
    await worker.log.wait_for(r"worker \S+ started", 30)
    account, cid, tab = await connected_user(stack, "chat@example.com")
    viewer = await Viewer.join(ircd, "viewer", CHANNEL)
    try:
        await until_state(tab, cid, "connected", 15)
        assert state_of(tab, cid) == {
            "id": cid,
            "platform": "twitch",
            "name": CHANNEL,
            "state": "connected",
            "error": "",
        }
        second = await Tab.open(stack.web.url, account.session)
        await second.until(lambda: state_of(second, cid), 5, "the sticky platforms state")

        # A viewer's line reaches both tabs.
        await viewer.say(CHANNEL, "hello <b>streamer</b>")
        for t in (tab, second):
            line = (await t.until(lambda t=t: chat(t), 5, "chat"))[-1]
            assert line["platform"] == "twitch" and line["channel"] == CHANNEL
            assert line["author"] == "viewer" and line["text"] == "hello <b>streamer</b>"
            assert set(line) == {"platform", "channel", "id", "author", "text", "ts", "badges"}

        # send_chat reaches the channel, and every tab sees it.
        reply = await tab.command("PlatformSupervisor", "send_chat", {"text": "thanks for watching"})
        assert reply["ok"], reply
        assert list(reply["result"]["results"]) == [cid]
        await viewer.wait_for(lambda line: line.endswith(f"PRIVMSG #{CHANNEL} :thanks for watching"), 5)
        await second.until(
            lambda: any(c["text"] == "thanks for watching" for c in chat(second)), 5, "own line"
        )

        # Refusals are error replies, and nothing is sent.
        too_long = await tab.command("PlatformSupervisor", "send_chat", {"text": "x" * 501})
        assert not too_long["ok"] and "too long" in too_long["error"]
        unknown = await tab.command(
            "PlatformSupervisor", "send_chat", {"text": "hi", "platforms": ["twitch:999"]}
        )
        assert not unknown["ok"] and "twitch:999" in unknown["error"]
        empty = await tab.command("PlatformSupervisor", "send_chat", {"text": " \r\n"})
        assert not empty["ok"]
        # LIVESTREAM_TWITCH_SEND_LIMIT=5 per 300 s: 4 more go, the next is refused.
        for n in range(4):
            assert (await tab.command("PlatformSupervisor", "send_chat", {"text": f"n{n}"}))["ok"]
        limited = await tab.command("PlatformSupervisor", "send_chat", {"text": "one too many"})
        assert not limited["ok"] and "rate limited" in limited["error"], limited
        await viewer.wait_for(lambda line: line.endswith(":n3"), 5)
        await asyncio.sleep(0.3)
        assert not any("one too many" in line for line in viewer.lines)

        # Disabled while running: that child stops at once; enabled again: back.
        mark = len(viewer.lines)
        stack.manage(
            "connect_platform",
            "chat@example.com",
            "twitch",
            "--channel",
            CHANNEL,
            "--token",
            TOKEN,
            "--disabled",
        )
        await until_state(tab, cid, "off", 5)
        await viewer.wait_for(
            lambda line: line.startswith(f":{CHANNEL}!") and (" QUIT" in line or " PART" in line), 5, mark
        )
        stack.manage("connect_platform", "chat@example.com", "twitch", "--channel", CHANNEL, "--token", TOKEN)
        await until_state(tab, cid, "connected", 5)

        # Added while running: started at once; removed: gone from the list, the others untouched.
        log_mark = worker.log.mark()
        custom = stack.manage(
            "connect_platform",
            "chat@example.com",
            "custom",
            "--url",
            "rtmp://127.0.0.1/live",
            "--key",
            "sk_secret_1",
        ).strip()
        await until_state(tab, custom, "connected", 5)
        stack.manage(
            "shell",
            "-c",
            f"from platforms.models import PlatformConnection as P; P.objects.get(pk={custom.split(':')[1]}).delete()",
        )
        await tab.until(lambda: state_of(tab, custom) is None and state_of(tab, cid), 5, "custom removed")
        assert state_of(tab, cid)["state"] == "connected"  # type: ignore[index]
        # One-for-one: the sibling's start and stop never restarted the Twitch child.
        assert not worker.log.findall(rf"platform {cid} (connected|stopped|disconnected)", after=log_mark)
        assert worker.log.findall(rf"platform {custom} stopped", after=log_mark)
        reply = await tab.command("PlatformSupervisor", "send_chat", {"text": "still here"})
        assert not reply["ok"] and "rate limited" in reply["error"]  # the send limit outlived the restart
        await second.close()
    finally:
        await viewer.close()
        await tab.close()
    for secret in (TOKEN, "sk_secret_1"):
        assert secret not in worker.log.text() and secret not in stack.web.log.text()
    assert not log_problems([worker, stack.web])


async def test_the_server_drops_the_connection_back_within_5s_and_nothing_lost_from_the_rejoin(stack, ircd):
    stack.web = stack.start_daphne()
    worker = stack.start_worker()
    await worker.log.wait_for(r"worker \S+ started", 30)
    _account, cid, tab = await connected_user(stack, "drop@example.com")
    try:
        await until_state(tab, cid, "connected", 15)
        ircd.stop()  # every connection dropped at once
        dropped = time.monotonic()
        await tab.until(lambda: state_of(tab, cid)["state"] != "connected", 5, "the drop noticed")  # type: ignore[index]
        ircd.start()
        await until_state(tab, cid, "connected", 5)
        back = time.monotonic() - dropped
        assert back < 5.0, back
        viewer = await Viewer.join(ircd, "viewer2", CHANNEL)
        try:
            # The NAMES reply lists who is in the channel: our client is back in it.
            await viewer.wait_for(
                lambda line: " 353 " in line and CHANNEL in line.rsplit(":", 1)[-1].split(), 5
            )
            before = len(chat(tab))
            for n in range(50):
                await viewer.say(CHANNEL, f"after {n}")
            await tab.until(lambda: len(chat(tab)) >= before + 50, 10, "50 lines")
            assert [c["text"] for c in chat(tab)[before:]] == [f"after {n}" for n in range(50)]
        finally:
            await viewer.close()
        print(f"\nIRC server restarted: chat connected again {back:.2f}s after the drop")
    finally:
        await tab.close()
    assert worker.log.findall(rf"platform {cid} disconnected \(")


async def test_a_wrong_token_is_failed_with_the_reason_and_not_retried(stack, ircd):
    stack.web = stack.start_daphne()
    worker = stack.start_worker()
    await worker.log.wait_for(r"worker \S+ started", 30)
    _account, cid, tab = await connected_user(stack, "wrong@example.com", token="wrong-token")
    try:
        failed = await until_state(tab, cid, "failed", 15)
        assert "Password incorrect" in failed["error"] and "reconnect Twitch" in failed["error"], failed
        await asyncio.sleep(3)  # a tight retry loop would show many attempts by now
        attempts = worker.log.findall(rf"platform {cid} failed: ")
        assert len(attempts) == 1, attempts
        assert ircd.log().count("PASS") <= 2
        reply = await tab.command("PlatformSupervisor", "send_chat", {"text": "hi"})
        assert not reply["ok"] and "not connected" in reply["error"], reply
        # A new token (the connection saved again): tried at once, and in.
        stack.manage(
            "connect_platform", "wrong@example.com", "twitch", "--channel", CHANNEL, "--token", TOKEN
        )
        await until_state(tab, cid, "connected", 5)
    finally:
        await tab.close()
    assert "wrong-token" not in worker.log.text()


async def test_kill_9_of_the_worker_chat_comes_back_on_the_other_and_nothing_twice(stack, ircd):
    stack.web = stack.start_daphne()
    workers = [stack.start_worker("worker-a"), stack.start_worker("worker-b")]
    for proc in workers:
        await proc.log.wait_for(r"worker \S+ started", 30)
    _account, cid, tab = await connected_user(stack, "kill@example.com")
    viewer = await Viewer.join(ircd, "viewer3", CHANNEL)
    try:
        await until_state(tab, cid, "connected", 15)
        owner = next(w for w in workers if w.log.findall(rf"platform {cid} connected"))
        survivor = next(w for w in workers if w is not owner)
        # A steady trickle of numbered lines, across the kill.
        sent: list[tuple[float, int]] = []

        async def talk() -> None:
            for n in itertools.count():
                await viewer.say(CHANNEL, f"m{n}")
                sent.append((time.monotonic(), n))
                await asyncio.sleep(0.02)

        talker = asyncio.create_task(talk())
        await tab.until(lambda: len(chat(tab)) >= 20, 10, "lines before the kill")
        owner.kill()
        await survivor.log.wait_for(rf"platform {cid} connected", 15)
        # The survivor's client is in the channel once the viewer sees it join.
        rejoined = await viewer.wait_for(
            lambda line: line.startswith(f":{CHANNEL}!") and " JOIN " in line, 15
        )
        rejoined_at = time.monotonic()
        assert rejoined
        await asyncio.sleep(1.0)
        talker.cancel()
        last = sent[-1][1]
        await tab.until(lambda: any(c["text"] == f"m{last}" for c in chat(tab)), 10, "the last line")
        await tab.pong()
    finally:
        await viewer.close()
        await tab.close()
    got = [int(c["text"][1:]) for c in chat(tab)]
    assert len(got) == len(set(got)), "a line delivered twice"
    assert got == sorted(got), "lines out of order"
    ids = [c["id"] for c in chat(tab)]
    assert len(ids) == len(set(ids))
    # Everything said after the survivor's client was back in the channel arrived.
    after = [n for t, n in sent if t > rejoined_at + 0.1]
    assert after and set(after) <= set(got), sorted(set(after) - set(got))
    lost = sorted(set(range(last + 1)) - set(got))
    print(
        f"\nkill -9: {len(got)} lines delivered once each; {len(lost)} said while no client was in the channel"
    )
    assert not log_problems([survivor, stack.web])


async def test_twitch_tags_and_reconnect_end_to_end(tmp_path, migrated_db_template, key_prefix):
    """Against a server speaking Twitch's lines: tags become the chat event's author,
    badges, id and ts; a RECONNECT brings the chat back within 5 s and nothing said from
    the rejoin on is lost; a siblings' failure (a refused token) leaves this one alone."""
    server = await TwitchLikeServer.start(tokens={TOKEN})
    stack = Stack(
        tmp_path, migrated_db_template, key_prefix, env={**ENV, "LIVESTREAM_TWITCH_IRC_URL": server.url}
    )
    try:
        stack.web = stack.start_daphne()
        worker = stack.start_worker()
        await worker.log.wait_for(r"worker \S+ started", 30)
        _account, cid, tab = await connected_user(stack, "tags@example.com")
        other = stack.manage(
            "connect_platform",
            "tags@example.com",
            "twitch",
            "--channel",
            "second",
            "--token",
            "revoked-token",
        ).strip()
        await until_state(tab, cid, "connected", 15)
        failed = await until_state(tab, other, "failed", 15)
        assert "Login authentication failed" in failed["error"] and "reconnect Twitch" in failed["error"]
        sent_at = time.time()
        server.relay("fan", f"#{CHANNEL}", "PogChamp")
        line = (await tab.until(lambda: chat(tab), 5, "the tagged line"))[-1]
        assert line["author"] == "Fan" and line["text"] == "PogChamp"
        assert line["badges"] == ["subscriber/6", "premium/1"] and line["id"].startswith("msg-")
        assert abs(line["ts"] - sent_at) < 2

        # A line Twitch refuses (here: the same text twice) is an error reply, not a silent drop.
        # (Without "platforms" the failed sibling would refuse the send: "not connected".)
        everywhere = await tab.command("PlatformSupervisor", "send_chat", {"text": "to all"})
        assert not everywhere["ok"] and f"{other} not connected" in everywhere["error"], everywhere
        args = {"text": "same again", "platforms": [cid]}
        assert (await tab.command("PlatformSupervisor", "send_chat", args))["ok"]
        refused = await tab.command("PlatformSupervisor", "send_chat", args)
        assert not refused["ok"] and "identical to the previous one" in refused["error"], refused
        assert len([c for c in chat(tab) if c["text"] == "same again"]) == 1

        server.reconnect_all()
        asked = time.monotonic()
        await tab.until(lambda: state_of(tab, cid)["state"] != "connected", 5, "reconnecting")  # type: ignore[index]
        await until_state(tab, cid, "connected", 5)
        await wait_until(lambda: CHANNEL in server.in_channel(CHANNEL), 5, "rejoined")
        back = time.monotonic() - asked
        assert back < 5, back
        before = len(chat(tab))
        for n in range(20):
            server.relay("fan", f"#{CHANNEL}", f"r{n}")
        await tab.until(lambda: len(chat(tab)) >= before + 20, 5, "20 lines after the RECONNECT")
        assert [c["text"] for c in chat(tab)[before:]] == [f"r{n}" for n in range(20)]
        assert state_of(tab, other)["state"] == "failed"  # type: ignore[index]
        assert server.logins_refused == 1  # the refused token was not retried
        await tab.close()
        print(f"\nRECONNECT: chat back in {back:.2f}s")
    finally:
        stack.stop_all()
        await server.stop()


async def test_an_expired_chat_token_is_refreshed_once_and_a_revoked_one_says_reconnect(
    tmp_path, migrated_db_template, key_prefix
):
    """Twitch refuses the IRC login with an expired token: the worker refreshes it at the
    token endpoint (a contract server) and logs in with the new one. A connection whose
    refresh token is refused too is marked revoked: "reconnect Twitch", that platform only."""
    from tests.contract.twitch import CLIENT_ID, CLIENT_SECRET, TwitchContract

    oauth = TwitchContract("unused", "refresh-0").start()
    server = await TwitchLikeServer.start(tokens={"access-1"})  # what the token endpoint hands out first
    env = {
        **ENV,
        "LIVESTREAM_TWITCH_IRC_URL": server.url,
        "LIVESTREAM_TWITCH_TOKEN_URL": oauth.token_url,
        "TWITCH_CLIENT_ID": CLIENT_ID,
        "TWITCH_CLIENT_SECRET": CLIENT_SECRET,
    }
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=env)
    try:
        stack.web = stack.start_daphne()
        worker = stack.start_worker()
        await worker.log.wait_for(r"worker \S+ started", 30)
        account = create_accounts(stack, ["refresh@example.com"])["refresh@example.com"]
        good = stack.manage(
            "connect_platform",
            account.email,
            "twitch",
            "--channel",
            CHANNEL,
            "--token",
            "expired-1",
            "--refresh-token",
            "refresh-0",
        ).strip()
        bad = stack.manage(
            "connect_platform",
            account.email,
            "twitch",
            "--channel",
            "other",
            "--token",
            "expired-2",
            "--refresh-token",
            "revoked-refresh",
        ).strip()
        tab = await Tab.open(stack.web.url, account.session)
        await until_state(tab, good, "connected", 15)
        failed = await until_state(tab, bad, "failed", 15)
        assert "Invalid refresh token" in failed["error"] and "reconnect Twitch" in failed["error"], failed
        assert len(oauth.calls("POST", "/oauth2/token")) == 2  # one refresh each, no retry loop
        await asyncio.sleep(2)
        assert len(oauth.calls("POST", "/oauth2/token")) == 2
        assert state_of(tab, good)["state"] == "connected"  # type: ignore[index]
        stored = stack.manage(
            "shell",
            "-c",
            "from platforms.models import PlatformConnection as P; "
            f"r = P.objects.get(pk={good.split(':')[1]}); b = P.objects.get(pk={bad.split(':')[1]}); "
            "print(r.access_token == 'access-1', r.refresh_token == 'refresh-1', bool(b.revoked), 'access-1' in r.access_token_enc)",
        )
        assert stored.split()[-4:] == ["True", "True", "True", "False"], stored
        await tab.close()
        for secret in ("expired-1", "refresh-0", "access-1", "refresh-1", "revoked-refresh"):
            assert secret not in worker.log.text()
    finally:
        stack.stop_all()
        await server.stop()
        oauth.stop()


async def test_youtube_chat_through_the_worker_refresh_send_and_quota(
    tmp_path, migrated_db_template, key_prefix
):
    """YouTube against its contract server (tests/contract/youtube.py) through a real worker:
    an expired token is refreshed once (401 -> refresh -> retry), a viewer's line reaches the
    tab, send_chat inserts and the line comes back in the poll, an exhausted quota shows on the tab."""
    from tests.contract.youtube import CLIENT_ID, CLIENT_SECRET, YouTubeContract

    yt = YouTubeContract("ya29.current", "1//refresh", polling_ms=200)
    yt.valid_access = set()  # the stored token has expired: every call is a 401 until refreshed
    yt.start()
    env = {
        **ENV,
        "LIVESTREAM_YOUTUBE_API_URL": yt.api_url,
        "LIVESTREAM_GOOGLE_TOKEN_URL": yt.token_url,
        "GOOGLE_CLIENT_ID": CLIENT_ID,
        "GOOGLE_CLIENT_SECRET": CLIENT_SECRET,
    }
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=env)
    try:
        stack.web = stack.start_daphne()
        worker = stack.start_worker()
        await worker.log.wait_for(r"worker \S+ started", 30)
        account = create_accounts(stack, ["yt@example.com"])["yt@example.com"]
        yid = stack.manage(
            "connect_platform",
            account.email,
            "youtube",
            "--channel",
            "UCstreamer",
            "--token",
            "ya29.expired",
            "--refresh-token",
            "1//refresh",
        ).strip()
        tab = await Tab.open(stack.web.url, account.session)
        await until_state(tab, yid, "connected", 15)
        assert len(yt.calls("POST", "/token")) == 1

        yt.say("Viewer One", "hi from YouTube")
        line = (await tab.until(lambda: chat(tab), 5, "the YouTube line"))[-1]
        assert (line["platform"], line["author"], line["text"]) == (
            "youtube",
            "Viewer One",
            "hi from YouTube",
        )
        reply = await tab.command("PlatformSupervisor", "send_chat", {"text": "welcome!", "platforms": [yid]})
        assert reply["ok"], reply
        back = await tab.until(lambda: [c for c in chat(tab) if c["text"] == "welcome!"], 5, "the sent line")
        assert back[0]["badges"] == ["owner"] and len(back) == 1
        too_long = await tab.command("PlatformSupervisor", "send_chat", {"text": "y" * 201})
        assert not too_long["ok"] and "at most 200" in too_long["error"]

        yt.quota_exhausted = True
        failed = await until_state(tab, yid, "failed", 10)
        assert failed["error"] == "YouTube API quota exhausted (quotaExceeded)", failed
        await tab.close()
        assert "ya29." not in worker.log.text()
    finally:
        stack.stop_all()
        yt.stop()
