"""The dashboard WebSocket consumer, through the real ASGI stack (auth middleware, routing)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from dashboard.consumers import FRAME_TOO_BIG
from devtools.processes import wait_until
from livestream.presence.store import PresenceStore
from streampai.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def session_for(email: str) -> tuple[str, str]:
    user = get_user_model().objects.create_user(
        username=email.split("@")[0], email=email, password="x-pass-123"
    )
    client = Client()
    client.force_login(user)
    return str(user.pk), client.cookies["sessionid"].value


def communicator(
    session: str | None,
    origin: str | None = "http://localhost",
    host: str = "localhost",
    path: str = "/ws/presence/",
):
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if session:
        headers.append((b"cookie", f"sessionid={session}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def worker_inbox() -> list[dict]:
    """The presence_diffs waiting for the workers (the store's events LIST), taken."""
    return [json.loads(e) for e in await PresenceStore().take_events(10_000)]


async def tracked(user_id: str, sessions: int) -> None:
    async def done() -> bool:
        return await PresenceStore().sessions(user_id) == sessions

    await wait_until(done, 3, f"{sessions} tracked connections of {user_id}")


async def next_output(ws, wanted, timeout: float = 3) -> dict:
    """The next output matching ``wanted``, skipping the live status pushes."""
    async with asyncio.timeout(timeout):
        while True:
            output = await ws.receive_output(timeout)
            if wanted(output):
                return output


async def test_anonymous_user_is_rejected_before_anything_is_written(caplog):
    ws = communicator(session=None)
    connected, _ = await ws.connect()
    assert not connected
    assert await PresenceStore().list() == {}
    assert await worker_inbox() == []
    assert "rejected handshake: not authenticated" in caplog.text


@pytest.mark.parametrize(
    ("origin", "host", "reason"),
    [
        (None, "localhost", "no Origin header"),
        ("http://evil.example", "localhost", "cross-origin handshake"),
        ("http://localhost:9999", "localhost", "cross-origin handshake"),
        ("null", "localhost", "malformed Origin"),
        ("http://evil.example", "evil.example", "is not an allowed host"),
    ],
)
async def test_cross_origin_handshakes_are_rejected(origin, host, reason, caplog):
    caplog.set_level(logging.INFO, logger="dashboard")
    _, session = await session_for("a@example.com")
    connected, _ = await communicator(session, origin=origin, host=host).connect()
    assert not connected
    assert await PresenceStore().list() == {}
    assert reason in caplog.text


async def test_each_connection_is_tracked_and_untracked_with_a_diff():
    user_id, session = await session_for("a@example.com")
    first, second = communicator(session), communicator(session)
    assert (await first.connect())[0]
    assert (await second.connect())[0]
    # Tracked before the accept: a completed handshake is a present connection.
    assert await PresenceStore().sessions(user_id) == 2
    presence = await PresenceStore().list()
    metas = presence[user_id]["metas"]
    assert len(metas) == 2
    assert {m["email"] for m in metas} == {"a@example.com"}
    assert len({m["ref"] for m in metas}) == 2
    assert all(isinstance(m["joined_at"], int) for m in metas)
    joins = await worker_inbox()
    assert [d["type"] for d in joins] == ["presence_diff", "presence_diff"]
    assert [list(d["joins"]) for d in joins] == [[user_id], [user_id]]
    assert {d["joins"][user_id]["metas"][0]["ref"] for d in joins} == {m["ref"] for m in metas}

    await first.disconnect()
    assert len((await PresenceStore().list())[user_id]["metas"]) == 1
    await second.disconnect()
    assert await PresenceStore().list() == {}
    leaves = await worker_inbox()
    assert [list(d["leaves"]) for d in leaves] == [[user_id], [user_id]]
    assert all(d["joins"] == {} for d in leaves)


async def test_garbage_frames_are_ignored_and_huge_frames_close_the_socket(caplog):
    caplog.set_level(logging.INFO, logger="dashboard")
    _, session = await session_for("a@example.com")
    ws = communicator(session)
    assert (await ws.connect())[0]
    await ws.send_to(text_data="not json {")
    await ws.send_to(bytes_data=b"\x00\x01binary")
    await ws.send_json_to({"type": "ping"})
    assert await next_output(ws, lambda o: o.get("text") == '{"type": "pong"}')
    await ws.send_to(text_data="x" * (64 * 1024 + 1))
    closed = await next_output(ws, lambda o: o["type"] == "websocket.close")
    assert closed == {"type": "websocket.close", "code": FRAME_TOO_BIG}  # 1009 is not allowed to apps
    assert "ignored a non-JSON frame" in caplog.text
    assert "ignored a binary frame" in caplog.text
    assert "65537-byte frame; closing" in caplog.text


async def test_heartbeat_retracks_a_connection_that_redis_lost(configure_livestream, aredis, key_prefix):
    configure_livestream(HEARTBEAT_INTERVAL=0.1)
    user_id, session = await session_for("a@example.com")
    ws = communicator(session)
    assert (await ws.connect())[0]
    store = PresenceStore()
    await tracked(user_id, 1)
    ref = (await store.list())[user_id]["metas"][0]["ref"]
    # As if Redis restarted empty: every presence key of this test's namespace is gone.
    lost = [k async for k in aredis.scan_iter(f"{key_prefix}:presence:*")]
    assert lost and await aredis.delete(*lost)
    assert await store.sessions(user_id) == 0
    await tracked(user_id, 1)  # by the next heartbeat
    assert (await store.list())[user_id]["metas"][0]["ref"] == ref
    await ws.disconnect()
    assert await store.sessions(user_id) == 0


# -- issue 8 item 7 / issue 9: no ghost, limits, deactivation ----------------------


async def test_a_failed_untrack_is_retried_until_it_succeeds_and_never_retracked(
    configure_livestream, monkeypatch, caplog
):
    """Redis times out on the disconnect's untrack: the disconnect returns anyway, the
    untrack is retried in the background until it works, and the heartbeat (running
    meanwhile) never brings the closed connection back."""
    configure_livestream(HEARTBEAT_INTERVAL=0.05)
    user_id, session = await session_for("a@example.com")
    ws = communicator(session)
    assert (await ws.connect())[0]
    store = PresenceStore()
    assert await store.sessions(user_id) == 1
    real = PresenceStore.untrack_many
    failures = 3

    async def flaky(self, connections, **kwargs):
        nonlocal failures
        if failures > 0:
            failures -= 1
            raise TimeoutError("Timeout connecting to server")
        return await real(self, connections, **kwargs)

    monkeypatch.setattr(PresenceStore, "untrack_many", flaky)
    began = asyncio.get_running_loop().time()
    await ws.disconnect()
    assert asyncio.get_running_loop().time() - began < 2.0  # UNTRACK_WAIT, not the retries
    await tracked(user_id, 0)
    assert failures == 0
    await asyncio.sleep(0.3)  # several heartbeats later: still gone
    assert await store.sessions(user_id) == 0
    assert "untrack of 1 connections failed" in caplog.text
    assert "re-tracked" not in caplog.text


async def test_deactivating_a_user_closes_their_sockets_with_4003():
    from dashboard.consumers import DEACTIVATED

    user_id, session = await session_for("a@example.com")
    ws = communicator(session)
    assert (await ws.connect())[0]

    @database_sync_to_async
    def deactivate():
        user = get_user_model().objects.get(pk=user_id)
        user.is_active = False
        user.save()

    await deactivate()
    closed = await next_output(ws, lambda o: o["type"] == "websocket.close")
    assert closed["code"] == DEACTIVATED
    assert await PresenceStore().sessions(user_id) == 0  # untracked before the close
    assert not (await communicator(session).connect())[0]  # and cannot come back


async def test_the_per_user_socket_cap_holds_under_racing_connects(configure_livestream, caplog):
    from dashboard.consumers import TOO_MANY_SOCKETS

    configure_livestream(MAX_SOCKETS_PER_USER=3)
    user_id, session = await session_for("a@example.com")
    sockets = [communicator(session) for _ in range(10)]
    results = await asyncio.gather(*(ws.connect() for ws in sockets))
    assert all(ok for ok, _ in results)  # accepted, so the page can be told why ...

    async def refused(ws) -> bool:
        if await ws.receive_nothing(0.5):  # (receive_output's timeout would cancel the consumer)
            return False
        output = await ws.receive_output(1)
        assert output == {"type": "websocket.close", "code": TOO_MANY_SOCKETS}  # ... then closed
        return True

    outcome = await asyncio.gather(*(refused(ws) for ws in sockets))
    assert outcome.count(False) == 3, outcome
    assert await PresenceStore().sessions(user_id) == 3
    assert "MAX_SOCKETS_PER_USER 3" in caplog.text


async def test_handshakes_over_the_per_ip_rate_are_refused(configure_livestream, caplog):
    configure_livestream(HANDSHAKE_RATE=0.01, HANDSHAKE_BURST=2)
    user_id, session = await session_for("a@example.com")
    sockets = [communicator(session) for _ in range(4)]  # kept: a dropped communicator cancels its app
    results = [(await ws.connect())[0] for ws in sockets]
    assert results == [True, True, False, False]
    assert await PresenceStore().sessions(user_id) == 2
    assert len([r for r in caplog.records if "over HANDSHAKE_RATE" in r.getMessage()]) == 1  # one line


async def test_frames_over_the_rate_are_dropped_with_one_log_line(configure_livestream, caplog):
    configure_livestream(FRAME_RATE=5, FRAME_BURST=5)
    _, session = await session_for("a@example.com")
    ws = communicator(session)
    assert (await ws.connect())[0]
    for _ in range(30):
        await ws.send_json_to({"type": "ping"})
    pongs = 0
    while not await ws.receive_nothing(0.3):
        output = await ws.receive_output(1)
        pongs += output.get("text") == '{"type": "pong"}'
    assert 5 <= pongs <= 7, pongs  # the burst, plus what refilled meanwhile
    lines = [r for r in caplog.records if "sends frames faster than" in r.getMessage()]
    assert len(lines) == 1, lines
    await ws.disconnect()


class FakePubSub:
    """Records the hub's SUBSCRIBE / UNSUBSCRIBE commands; Redis' replies are fed by hand."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []

    async def subscribe(self, *channels: str) -> None:
        self.sent.append("SUBSCRIBE")
        self.subscribed.extend(channels)

    async def unsubscribe(self, *channels: str) -> None:
        self.sent.append("UNSUBSCRIBE")
        self.unsubscribed.extend(channels)


def bare_hub():
    """A Hub without Redis, driving its bookkeeping alone, and its writer task."""
    from dashboard.consumers import HUB_HANDLERS
    from dashboard.ws.hub import Hub

    hub = Hub(HUB_HANDLERS)
    hub._start = lambda: None
    hub._pubsub = pubsub = FakePubSub()
    return hub, pubsub, asyncio.ensure_future(hub._write_loop())


async def test_the_hub_waits_for_the_last_subscribe_of_a_channel_that_came_and_went():
    """Subscribe, unsubscribe and subscribe again before Redis answered: a socket joining
    last is ready only at the reply to the last SUBSCRIBE (before it, Redis may still
    have the channel unsubscribed, and a push would be lost). Replies fed by hand."""
    hub, pubsub, writer = bare_hub()
    channel = "c"
    first, second = object(), object()
    try:
        joined_first = asyncio.ensure_future(hub.join(first, [channel]))
        await wait_until(lambda: pubsub.sent == ["SUBSCRIBE"], 1, "the first SUBSCRIBE")
        hub.leave(first, [channel])
        await wait_until(lambda: pubsub.sent[-1:] == ["UNSUBSCRIBE"], 1, "the UNSUBSCRIBE")
        joined_second = asyncio.ensure_future(hub.join(second, [channel]))
        await wait_until(lambda: len(pubsub.sent) == 3, 1, "the second SUBSCRIBE")
        await hub._handle({"type": "subscribe", "channel": channel})  # reply to the first
        await asyncio.sleep(0.01)
        assert not joined_second.done()
        await hub._handle({"type": "unsubscribe", "channel": channel})
        await hub._handle({"type": "subscribe", "channel": channel})  # reply to the last
        await asyncio.wait_for(joined_second, 1)
        await asyncio.wait_for(joined_first, 1)
        assert hub.subscribed() == {channel}
    finally:
        writer.cancel()


async def test_the_hub_subscribes_each_channel_once_however_its_sockets_come_and_go():
    """300 sockets on 100 channels (three a channel) join and leave interleaved: a channel is
    subscribed when its first socket joins and unsubscribed when its last leaves, once each,
    and the hub ends subscribed to exactly the channels somebody still needs."""
    hub, pubsub, writer = bare_hub()
    sockets = [(object(), f"c{i % 100}") for i in range(300)]
    try:
        joins = [asyncio.ensure_future(hub.join(sock, [ch])) for sock, ch in sockets]
        await wait_until(lambda: len(pubsub.subscribed) == 100, 1, "100 SUBSCRIBEs")
        for channel in sorted(set(pubsub.subscribed)):
            await hub._handle({"type": "subscribe", "channel": channel})
        await asyncio.wait_for(asyncio.gather(*joins), 1)
        for sock, channel in sockets[:250]:  # channels c50..c99 keep one socket each
            hub.leave(sock, [channel])
            await asyncio.sleep(0)
        await wait_until(lambda: len(pubsub.unsubscribed) == 50, 1, "50 UNSUBSCRIBEs")
        await asyncio.sleep(0.05)
        assert sorted(pubsub.subscribed) == sorted(f"c{i}" for i in range(100))
        assert sorted(pubsub.unsubscribed) == sorted(f"c{i}" for i in range(50))
        assert hub.subscribed() == {f"c{i}" for i in range(50, 100)}
    finally:
        writer.cancel()


async def test_a_status_push_that_beats_the_accept_is_sent_right_after_it(monkeypatch, aredis):
    """The track tells the worker of the join, and its answer (a "sessions" count, sent only
    when the count changes) can reach daphne's hub before this socket is accepted: daphne
    drops a send to a socket not yet accepted, and a second tab never learnt it was the
    second. Here the push arrives during the track; it must come right after the accept."""
    from dashboard.consumers import HUB_HANDLERS
    from dashboard.ws.hub import get_hub
    from dashboard.ws.tracker import get_tracker
    from livestream.pushes import channels as push

    user_id, session = await session_for("early@example.com")
    delivered = asyncio.Event()

    class Probe:  # another local socket of the user: delivered in the same pass as the new one
        async def hub_sessions(self, event: dict, raw: str) -> None:
            delivered.set()

    probe = Probe()
    hub = get_hub(HUB_HANDLERS)
    await hub.join(probe, [push.user_channel(user_id)])
    tracker = get_tracker()
    real_track = tracker.track
    sent = json.dumps({"type": "sessions", "user_id": user_id, "sessions": 2})

    async def track_answered_at_once(uid: str, meta: dict):
        change = await real_track(uid, meta)
        await aredis.publish(push.user_channel(uid), sent)
        await asyncio.wait_for(delivered.wait(), 3)
        return change

    monkeypatch.setattr(tracker, "track", track_answered_at_once)
    ws = communicator(session, path="/ws/presence/?live=1")
    connected, _ = await ws.connect()
    assert connected
    first = await next_output(
        ws, lambda output: json.loads(output.get("text") or "{}").get("type") == "sessions"
    )
    assert json.loads(first["text"]) == json.loads(sent)
    await ws.disconnect()
    hub.leave(probe, [push.user_channel(user_id)])
