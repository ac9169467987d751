"""Tokens, Twitch Helix and the YouTube Data API against local contract servers
(tests/contract/): refresh before expiry (once, across two "workers"), 401 -> one
refresh and a retry, a refused refresh -> revoked, 429 -> back off, YouTube chat polled
at the interval and with the page token it returns, quota exhausted -> shown in the
supervisor's ``platforms`` state (what the page renders)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from devtools.processes import wait_until
from livestream import keys
from livestream.redis import get_redis
from platforms import tokens
from platforms.api import RateLimited
from platforms.models import PlatformConnection
from platforms.twitch import helix
from platforms.youtube import api as youtube
from tests.contract import twitch as twitch_contract
from tests.contract import youtube as youtube_contract
from tests.contract.server import Reply
from tests.contract.twitch import TwitchContract
from tests.contract.youtube import YouTubeContract

pytestmark = pytest.mark.django_db(transaction=True)

PROVIDERS = {
    "twitch": {"APPS": [{"client_id": twitch_contract.CLIENT_ID, "secret": twitch_contract.CLIENT_SECRET}]},
    "google": {"APPS": [{"client_id": youtube_contract.CLIENT_ID, "secret": youtube_contract.CLIENT_SECRET}]},
}


@pytest.fixture
def twitch(settings, configure_livestream):
    server = TwitchContract("access-0", "refresh-0").start()
    configure_livestream(TWITCH_HELIX_URL=server.helix_url, TWITCH_TOKEN_URL=server.token_url)
    settings.SOCIALACCOUNT_PROVIDERS = PROVIDERS
    yield server
    server.stop()


@pytest.fixture
def yt(settings, configure_livestream):
    server = YouTubeContract("ya29.old", "1//refresh").start()
    configure_livestream(YOUTUBE_API_URL=server.api_url, GOOGLE_TOKEN_URL=server.token_url)
    settings.SOCIALACCOUNT_PROVIDERS = PROVIDERS
    yield server
    server.stop()


@database_sync_to_async
def make_connection(
    platform: str, access: str, refresh: str, expires_in: float | None, channel: str = "streamer"
):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(
        username=f"u{time.monotonic_ns()}", email=f"{time.monotonic_ns()}@example.com"
    )
    row = PlatformConnection(user=user, platform=platform, channel=channel)
    row.access_token, row.refresh_token = access, refresh
    if expires_in is not None:
        row.expires_at = timezone.now() + timedelta(seconds=expires_in)
    row.save()
    return row


@database_sync_to_async
def reload(row: PlatformConnection) -> PlatformConnection:
    return PlatformConnection.objects.get(pk=row.pk)


def creds(row: PlatformConnection) -> tokens.Credentials:
    expires = row.expires_at.timestamp() if row.expires_at else None
    return tokens.Credentials(row.pk, row.platform, row.access_token, row.refresh_token, expires)


async def test_a_token_near_expiry_is_refreshed_once_even_by_two_workers_at_once(twitch):
    row = await make_connection("twitch", "access-0", "refresh-0", expires_in=60)
    a, b = creds(row), creds(row)  # two workers' copies
    await asyncio.gather(tokens.ensure_fresh(a), tokens.ensure_fresh(b))
    assert len(twitch.calls("POST", "/oauth2/token")) == 1
    assert a.access_token == b.access_token == "access-1"
    stored = await reload(row)
    assert stored.access_token == "access-1" and stored.refresh_token == "refresh-1"
    assert "access-1" not in stored.access_token_enc  # encrypted at rest
    assert stored.expires_at and stored.expires_at.timestamp() > time.time() + 14000
    assert not await get_redis().exists(keys.platform_refresh_lock(str(row.pk)))
    # Far from expiry: nothing happens.
    await tokens.ensure_fresh(a)
    assert len(twitch.calls("POST", "/oauth2/token")) == 1


async def test_helix_stream_key_after_a_401_one_refresh_and_one_retry(twitch):
    row = await make_connection("twitch", "expired-access", "refresh-0", expires_in=None)
    c = creds(row)
    assert await helix.stream_key(c) == twitch_contract.STREAM_KEY
    assert len(twitch.calls("POST", "/oauth2/token")) == 1
    users = twitch.calls("GET", "/helix/users")
    assert [r.headers["authorization"] for r in users] == ["Bearer expired-access", "Bearer access-1"]
    key_call = twitch.calls("GET", "/helix/streams/key")[-1]
    assert key_call.query == {"broadcaster_id": twitch_contract.USER_ID}
    assert key_call.headers["client-id"] == twitch_contract.CLIENT_ID


async def test_a_refused_refresh_marks_the_connection_revoked(twitch):
    row = await make_connection("twitch", "expired-access", "bad-refresh", expires_in=None)
    with pytest.raises(tokens.Revoked, match="Invalid refresh token"):
        await helix.stream_key(creds(row))
    assert "Invalid refresh token" in (await reload(row)).revoked
    assert len(twitch.calls("GET", "/helix/users")) == 1  # one try, one refresh, no loop


async def test_helix_429_is_rate_limited_with_the_reset_time(twitch):
    row = await make_connection("twitch", "access-0", "refresh-0", expires_in=None)
    reset = int(time.time()) + 3
    twitch.inject(
        "GET",
        "/helix/users",
        Reply(
            429, {"error": "Too Many Requests", "status": 429, "message": ""}, {"Ratelimit-Reset": str(reset)}
        ),
    )
    with pytest.raises(RateLimited) as caught:
        await helix.stream_key(creds(row))
    assert 1.5 <= caught.value.retry_after <= 3.5
    assert await helix.stream_key(creds(row)) == twitch_contract.STREAM_KEY


async def test_a_workers_platform_calls_share_one_kept_connection(twitch, yt):
    """Every platform call of an event loop goes through one kept client (platforms/outbound.py):
    a client made per call built an SSL context (the CA bundle read) on the loop each time, and
    opened a new connection. Five stream-key reads, a refresh and a YouTube call: one connection
    to each server."""
    row = await make_connection("twitch", "access-0", "refresh-0", 3600)
    for _ in range(5):
        assert await helix.stream_key(creds(row)) == twitch_contract.STREAM_KEY
    await tokens.refresh(creds(row), force=True)
    assert await helix.stream_key(creds(await reload(row))) == twitch_contract.STREAM_KEY
    yt_row = await make_connection("youtube", "ya29.old", "1//refresh", 3600)
    await youtube.ingestion(creds(yt_row))
    await youtube.ingestion(creds(yt_row))
    with twitch.lock:
        twitch_peers = {request.peer for request in twitch.requests}
        count = len(twitch.requests)
    with yt.lock:
        yt_peers = {request.peer for request in yt.requests}
    assert count == 13 and len(twitch_peers) == 1, (count, twitch_peers)
    assert len(yt_peers) == 1, yt_peers


async def test_helix_channel_update_sends_title_and_category(twitch):
    row = await make_connection("twitch", "access-0", "refresh-0", expires_in=None)
    await helix.update_channel(creds(row), "Building a chat client", "Science & Technology")
    assert twitch.channel == {"title": "Building a chat client", "game_id": "509670"}
    assert twitch.calls("GET", "/helix/games")[-1].query == {"name": "Science & Technology"}


async def test_youtube_title_update_keeps_the_rest_of_the_snippet(yt):
    row = await make_connection("youtube", "ya29.old", "1//refresh", expires_in=None)
    await youtube.update_title(creds(row), "Building a chat client")
    assert yt.broadcast_snippet["title"] == "Building a chat client"
    assert yt.broadcast_snippet["scheduledStartTime"] == "2026-12-06T18:00:00Z"  # sent back as read
    assert yt.broadcast_snippet["description"] == "my stream"
    yt.live = False
    with pytest.raises(youtube.ApiError, match="no active live broadcast"):
        await youtube.update_title(creds(row), "x")


async def test_youtube_chat_polls_at_the_interval_with_the_page_token_and_sends(yt):
    from platforms.clients import Connection
    from platforms.youtube.chat import YouTubeClient

    row = await make_connection("youtube", "ya29.old", "1//refresh", expires_in=None, channel="UCstreamer")
    yt.say("old viewer", "said before we connected")  # history: not shown again
    got: list[dict] = []

    async def sink(data: dict) -> None:
        got.append(data)

    conn = Connection(
        row.pk, "youtube", "yt", "UCstreamer", "ya29.old", "1//refresh", None, "", "", True, "", "v"
    )
    client = YouTubeClient(conn, sink)
    connected = asyncio.Event()

    async def on_connected() -> None:
        connected.set()

    session = asyncio.create_task(client.session(on_connected))
    try:
        await asyncio.wait_for(connected.wait(), 5)
        yt.say("viewer", "hello")
        yt.say("viewer2", "<i>hi</i>")
        await wait_until(lambda: len(got) >= 2, 5, "two messages")
        assert [(m["author"], m["text"]) for m in got] == [("viewer", "hello"), ("viewer2", "<i>hi</i>")]
        assert set(got[0]) == {"platform", "channel", "id", "author", "text", "ts", "badges"}
        sent = await client.send("thanks!")
        await wait_until(lambda: any(m["text"] == "thanks!" for m in got), 5, "own message from the poll")
        assert sent["id"] and got[-1]["badges"] == ["owner"]
    finally:
        session.cancel()
        await asyncio.gather(session, return_exceptions=True)
    polls = yt.calls("GET", "/youtube/v3/liveChat/messages")
    assert "pageToken" not in polls[0].query
    assert all(p.query.get("pageToken", "").startswith("p") for p in polls[1:])
    assert polls[1].query["pageToken"] == "p1"  # the first page's nextPageToken
    assert [m["text"] for m in got].count("hello") == 1


async def test_youtube_ingestion_and_quota_exhausted(yt):
    row = await make_connection("youtube", "ya29.old", "1//refresh", expires_in=None)
    assert await youtube.ingestion(creds(row)) == youtube_contract.INGEST
    yt.quota_exhausted = True
    with pytest.raises(youtube.QuotaExceeded, match="quota"):
        await youtube.ingestion(creds(row))


async def test_quota_exhausted_shows_in_the_platforms_state(yt):
    from livestream.components.platform_supervisor import PlatformSupervisor

    yt.quota_exhausted = True
    row = await make_connection("youtube", "ya29.old", "1//refresh", expires_in=None)
    supervisor = PlatformSupervisor(str(row.user_id))
    task = asyncio.create_task(supervisor.run())

    async def shown() -> dict | None:
        frame = await get_redis().hget(keys.sticky(str(row.user_id)), "PlatformSupervisor:platforms")
        listed = json.loads(frame)["data"]["platforms"] if frame else []
        return next((p for p in listed if p["id"] == f"youtube:{row.pk}" and p["state"] == "failed"), None)

    try:
        deadline = time.monotonic() + 10
        while (state := await shown()) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert state["error"] == "YouTube API quota exhausted (quotaExceeded)", state
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_set_stream_info_sets_the_youtube_broadcast_title(yt):
    from livestream.components.platform_supervisor import PlatformSupervisor

    row = await make_connection("youtube", "ya29.old", "1//refresh", expires_in=None)
    supervisor = PlatformSupervisor(str(row.user_id))
    task = asyncio.create_task(supervisor.run())
    try:
        await wait_until(lambda: row.pk in supervisor.children, 5, "the YouTube child")
        result = await supervisor.on_command("set_stream_info", {"title": "Go!", "category": "Music"})
        assert result == {"results": {f"youtube:{row.pk}": {"ok": True}}}
        assert yt.broadcast_snippet["title"] == "Go!"
        assert len(yt.calls("PUT", "/youtube/v3/liveBroadcasts")) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@database_sync_to_async
def connect_through_allauth(provider: str, uid: str, extra: dict, token: str, refresh: str):
    """What allauth's connect flow stores (SOCIALACCOUNT_STORE_TOKENS): a SocialAccount and its SocialToken."""
    from allauth.socialaccount.models import SocialAccount, SocialApp, SocialToken
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username=f"oauth{uid}", email=f"{uid}@example.com")
    app = SocialApp.objects.create(provider=provider, name=provider, client_id="id", secret="secret")
    account = SocialAccount.objects.create(user=user, provider=provider, uid=uid, extra_data=extra)
    SocialToken.objects.create(
        app=app,
        account=account,
        token=token,
        token_secret=refresh,
        expires_at=timezone.now() + timedelta(hours=4),
    )
    rows = list(PlatformConnection.objects.filter(user=user))
    stored = SocialToken.objects.get(account=account)
    return rows, stored


async def test_an_allauth_connection_becomes_an_encrypted_platform_connection():
    rows, stored = await connect_through_allauth(
        "twitch",
        "141981764",
        {"id": "141981764", "login": "Streamer", "display_name": "Streamer"},
        "tok-abc",
        "ref-xyz",
    )
    assert len(rows) == 1
    row = rows[0]
    assert (row.platform, row.channel, row.name, row.uid) == ("twitch", "streamer", "Streamer", "141981764")
    assert row.access_token == "tok-abc" and row.refresh_token == "ref-xyz"
    assert "tok-abc" not in row.access_token_enc and row.expires_at is not None
    assert (stored.token, stored.token_secret) == ("", "")  # no plaintext token left at rest


async def test_the_platforms_are_outputs_of_the_broadcast(twitch, yt, configure_livestream):
    from broadcast.outputs import outputs_for

    configure_livestream(
        TWITCH_HELIX_URL=twitch.helix_url,
        TWITCH_TOKEN_URL=twitch.token_url,
        YOUTUBE_API_URL=yt.api_url,
        GOOGLE_TOKEN_URL=yt.token_url,
        TWITCH_INGEST_URL="rtmp://127.0.0.1:1/app",
    )
    tw = await make_connection("twitch", "access-0", "refresh-0", expires_in=None)

    @database_sync_to_async
    def more() -> tuple[PlatformConnection, PlatformConnection, PlatformConnection]:
        y = PlatformConnection(user_id=tw.user_id, platform="youtube", channel="UCx")
        y.access_token, y.refresh_token = "ya29.old", "1//refresh"
        y.save()
        c = PlatformConnection(
            user_id=tw.user_id, platform="custom", name="Backup", url="rtmp://backup.example/live"
        )
        c.key = "custom-key-1234"
        c.save()
        off = PlatformConnection(
            user_id=tw.user_id, platform="custom", name="Off", url="rtmp://off/live", enabled=False
        )
        off.key = "k"
        off.save()
        return y, c, off

    y, c, off = await more()
    specs = {s.id: s for s in await outputs_for(str(tw.user_id)) if ":" in s.id}
    assert (specs[tw.public_id].url, specs[tw.public_id].key) == (
        "rtmp://127.0.0.1:1/app",
        twitch_contract.STREAM_KEY,
    )
    assert (specs[y.public_id].url, specs[y.public_id].key) == youtube_contract.INGEST
    assert (specs[c.public_id].url, specs[c.public_id].key, specs[c.public_id].name) == (
        "rtmp://backup.example/live",
        "custom-key-1234",
        "Backup",
    )
    assert specs[off.public_id].enabled is False and specs[off.public_id].key == ""
    assert all(s.enabled for i, s in specs.items() if i != off.public_id)
    # A platform whose API fails is listed disabled; the others are unaffected.
    yt.quota_exhausted = True
    specs = {s.id: s for s in await outputs_for(str(tw.user_id)) if ":" in s.id}
    assert specs[y.public_id].enabled is False and specs[tw.public_id].enabled


async def test_youtube_without_a_live_broadcast_is_connecting_and_waiting(yt):
    from livestream.components.platform_supervisor import PlatformSupervisor

    yt.live = False
    row = await make_connection("youtube", "ya29.old", "1//refresh", expires_in=None)
    supervisor = PlatformSupervisor(str(row.user_id))
    task = asyncio.create_task(supervisor.run())
    try:
        await wait_until(lambda: len(yt.calls("GET", "/youtube/v3/liveBroadcasts")) >= 2, 5, "two looks")
        (state,) = supervisor.platforms()
        assert (state["state"], state["error"]) == ("connecting", "waiting for a live broadcast")
        yt.live = True
        await wait_until(lambda: supervisor.platforms()[0]["state"] == "connected", 5, "connected once live")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_youtube_chat_continues_at_the_saved_page_after_a_takeover(yt):
    """The owner dies (its session cancelled); the next one continues at the saved page token:
    what was said in between is shown once, nothing earlier again."""
    from platforms.clients import Connection
    from platforms.youtube.chat import YouTubeClient

    row = await make_connection("youtube", "ya29.old", "1//refresh", expires_in=None, channel="UCstreamer")
    conn = Connection(
        row.pk, "youtube", "yt", "UCstreamer", "ya29.old", "1//refresh", None, "", "", True, "", "v"
    )
    got: list[str] = []

    async def sink(data: dict) -> None:
        got.append(data["text"])

    async def run_client() -> asyncio.Task:
        connected = asyncio.Event()

        async def on_connected() -> None:
            connected.set()

        task = asyncio.create_task(YouTubeClient(conn, sink).session(on_connected))
        await asyncio.wait_for(connected.wait(), 5)
        return task

    yt.say("a", "history")
    first = await run_client()
    yt.say("a", "one")
    await wait_until(lambda: got == ["one"], 5, "the first line")
    first.cancel()  # the worker dies
    await asyncio.gather(first, return_exceptions=True)
    yt.say("a", "two")
    yt.say("a", "three")
    second = await run_client()
    try:
        await wait_until(lambda: len(got) >= 3, 5, "the lines said meanwhile")
        await asyncio.sleep(0.5)
        assert got == ["one", "two", "three"]
    finally:
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
