"""Issue 4.5: bad input from browsers and on the channel layer.

Client frames: garbage is ignored (with a log line for non-JSON and binary),
frames over MAX_FRAME_BYTES (64 KiB) close that one socket with 1009 and a log
line, frames over daphne's own limit (1 MiB) are refused by autobahn. Layer
messages: unknown, malformed, type-less and undecodable ones are dropped with a
log line; the worker keeps serving. ChannelFull is logged and repaired by the
reconcile tick. Real daphne, runworker and redis-server processes.
"""

from __future__ import annotations

import json
import logging

import pytest
from channels.layers import get_channel_layer

from dashboard.consumers import FRAME_TOO_BIG
from devtools.clients import closed_with, create_accounts, open_socket, ping
from devtools.logs import log_problems, manager_runs, worker_id
from devtools.processes import Stack, wait_until
from livestream.ownership.leases import LeaseStore
from livestream.presence.store import PresenceStore
from livestream.pushes import channels as push
from livestream.timers.store import TimerPump, TimerStore
from livestream.worker.presence_manager import PresenceManager
from streampai.redisconf import channel_layers

ENV = {
    "LIVESTREAM_PRESENCE_TTL": "3",
    "LIVESTREAM_HEARTBEAT_INTERVAL": "1",
    "LIVESTREAM_CLEANUP_TIMEOUT": "2",
}


@pytest.fixture
def stack(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=ENV)
    yield stack
    stack.stop_all()


@pytest.mark.processes
async def test_garbage_frames_are_ignored_and_oversized_ones_close_only_that_socket(stack):
    web = stack.start_daphne()
    worker = stack.start_worker()
    accounts = create_accounts(stack, ["garbage@x.io", "bystander@x.io"])
    user, bystander = accounts["garbage@x.io"], accounts["bystander@x.io"]
    keep = await open_socket(web.url, user.session)
    other = await open_socket(web.url, bystander.session)
    for account in (user, bystander):
        await worker.log.wait_for(rf"UserStreamManager started: {account.user_id}$", timeout=10)

    # Ignored: the socket stays open and keeps answering.
    ws = await open_socket(web.url, user.session)
    for frame in [
        "not json {{{",
        "[" * 50_000,  # nested too deep for json (RecursionError), yet under 64 KiB
        "",
        "null",
        "[1, 2]",
        '{"type": 5}',
        '{"type": "no.such.thing", "payload": "x"}',
        "\x00\x01\x02",
        b"\x00\xff binary",
    ]:
        await ws.send(frame)
    await ping(ws)
    await web.log.wait_for(rf"ignored a non-JSON frame from user {user.user_id}", timeout=2, count=3)
    await web.log.wait_for(rf"ignored a binary frame from user {user.user_id}", timeout=2)

    # Over MAX_FRAME_BYTES: this socket alone is closed (4009) with a log line, and untracked.
    await ws.send("x" * (64 * 1024 + 1))
    assert await closed_with(ws) == FRAME_TOO_BIG
    await web.log.wait_for(rf"user {user.user_id} sent a 65537-byte frame; closing", timeout=2)
    # Over daphne's own --websocket-max-message-size (1 MiB): autobahn refuses it (1009) before
    # it reaches the application; still only that socket.
    huge = await open_socket(web.url, user.session)
    await huge.send(b"\x00" * (1024 * 1024 + 1))
    code = await closed_with(huge)
    assert code in (1009, None), code  # a close frame, or just the dropped connection
    # Invalid UTF-8 in a text frame: autobahn closes that socket (1007).
    bad_utf8 = await open_socket(web.url, user.session)
    # A raw masked text frame (FIN, opcode 1, 2 bytes, zero mask) carrying b"\xc3\x28".
    bad_utf8.transport.write(b"\x81\x82\x00\x00\x00\x00\xc3\x28")
    assert await closed_with(bad_utf8) in (1007, None)

    await ping(keep)
    await ping(other)
    store = PresenceStore()

    async def only_keep_left() -> bool:
        return await store.sessions(user.user_id) == 1

    await wait_until(only_keep_left, timeout=5, message="the closed sockets to be untracked")
    assert await store.sessions(bystander.user_id) == 1
    runs = manager_runs([worker])
    assert all(run.end is None for run in runs), runs  # nobody's manager stopped
    assert web.alive() and worker.alive()
    assert not log_problems([web, worker]), log_problems([web, worker])
    await keep.close()
    await other.close()


@pytest.mark.processes
async def test_bad_layer_messages_are_dropped_and_the_worker_keeps_serving(stack, aredis, key_prefix):
    web = stack.start_daphne()
    worker = stack.start_worker()
    await worker.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=20)
    layer = get_channel_layer()
    channel = "presence-manager"
    for message in [
        {"type": "no.such.type"},
        {"type": 42},
        {"type": "presence_diff", "joins": "everyone", "leaves": {}},
        {"type": "presence_diff", "joins": {"": {"metas": []}}, "leaves": {}},
        {"type": "presence_diff", "joins": {"1": {"metas": "x"}}, "leaves": {}},
        {"type": "presence.cleanup", "user_id": 5},
        {"type": "presence.cleanup"},
        {"type": "presence.stop", "user_id": "x" * 500},
        {"no_type": True},
        {"type": ""},
    ]:
        await layer.send(channel, message)
    # Not even msgpack, or msgpack of a non-dict, written straight into the channel.
    key = f"{key_prefix}:asgi{channel}"
    await aredis.zadd(key, {b"\xc1 not msgpack": 1, b"\x93\x01\x02\x03": 2, b"\x05": 3})

    async def registered_inbox() -> str | None:
        return (await LeaseStore("observer").worker_info(worker_id(worker))).get("inbox")

    inbox = await wait_until(registered_inbox, timeout=5, message="the worker to register")
    await layer.send(inbox, {"type": "presence_diff"})
    await layer.send(inbox, {"type": "what.is.this"})

    log = worker.log
    await log.wait_for(r"dropped message of unknown type 'no.such.type'", timeout=5)
    await log.wait_for(r"dropped message of unknown type 42", timeout=5)
    await log.wait_for(r"dropped malformed presence_diff", timeout=5, count=4)
    await log.wait_for(r"dropped malformed presence.cleanup", timeout=5, count=2)
    await log.wait_for(r"dropped malformed presence.stop", timeout=5)
    await log.wait_for(r"Dropped a message without a type", timeout=5, count=2)
    await log.wait_for(r"Receiving on presence-manager failed", timeout=5)
    await log.wait_for(r"dropped message of unknown type 'what.is.this'", timeout=5)

    # Still serving: a real join starts a manager.
    (user,) = create_accounts(stack, ["after@x.io"]).values()
    ws = await open_socket(web.url, user.session, path="/ws/presence/?live=1")  # in its user's group
    await log.wait_for(rf"UserStreamManager started: {user.user_id}$", timeout=5)

    # The dashboard socket's push channel gets nonsense too (issue 9 item 9): only the
    # allowlisted types are dispatched; anything else, client-only ASGI types included,
    # is dropped with one log line and the tab stays open.
    await ping(ws)  # the socket was subscribed before its handshake completed
    channel = push.user_channel(user.user_id)
    nonsense = [
        {"type": "no.handler.here"},
        {"type": "_private"},
        {"type": "websocket.send.x"},
        {"type": "websocket.disconnect", "code": 1000},
        {"type": "websocket.receive", "text": '{"type": "ping"}'},
        {"type": "websocket.connect"},
        {"type": 5},
        {"no_type": True},
    ]
    for message in nonsense:
        await push.publish(channel, message)
    for raw in ["not json", "[1, 2]", "\n[hub] forged line"]:
        await aredis.publish(channel, raw)
    await web.log.wait_for(r"\[hub\] dropped a message of type", timeout=5, count=len(nonsense) + 3)
    assert len(web.log.findall(r"\[hub\] dropped a message of type")) == len(nonsense) + 3  # one line each
    assert not web.log.findall(r"^\[hub\] forged line")  # logged with %r: no forged line
    await ping(ws)
    assert ws.close_code is None
    assert "Traceback" not in web.log.text()
    assert worker.alive()
    assert "Traceback" not in log.text()
    await ws.close()


async def test_lost_presence_events_and_full_channels_are_repaired(
    settings, redis_url, key_prefix, caplog, aredis, monkeypatch
):
    """Presence events no worker read (the LIST is capped; a worker can die holding a
    batch) are repaired by the next reconcile tick; a timer coming due into a full
    channel is kept for later, not lost or raised."""
    caplog.set_level(logging.INFO, logger="livestream")
    store = PresenceStore()
    monkeypatch.setattr("livestream.presence.store.EVENTS_CAP", 3)
    for uid in ("71", "72", "73", "74", "75"):
        await store.track(uid, {"email": "full@x.io", "joined_at": 1, "ref": f"r{uid}"})
    # The oldest were dropped, the newest kept: a bounded LIST, however long no worker reads.
    kept = [json.loads(e)["joins"] for e in await aredis.lrange(store.events_key, 0, -1)]
    assert [list(j) for j in kept] == [["73"], ["74"], ["75"]]
    await aredis.delete(store.events_key)  # and now none reaches a worker at all

    layers = channel_layers(redis_url, prefix=f"{key_prefix}:asgi")
    layers["default"]["CONFIG"]["channel_capacity"] = {"elsewhere": 2}
    settings.CHANNEL_LAYERS = layers
    layer = get_channel_layer()
    await layer.send("elsewhere", {"type": "filler"})
    await layer.send("elsewhere", {"type": "filler"})
    timers = TimerStore()
    await timers.schedule("ping:78", "elsewhere", {"type": "ping"}, 0)
    await TimerPump(timers)._deliver_due()
    assert "[timers] elsewhere is full; ping:78 delivered in 1s" in caplog.text
    assert 0 < (await timers.pending())["ping:78"] <= 1

    manager = PresenceManager()
    try:
        await manager.leases.check_epoch()  # what its lease keeper's first round does
        await manager.tick()
        assert sorted(manager.local.managers) == ["71", "72", "73", "74", "75"]
    finally:
        for user_id in list(manager.local.managers):
            await manager.local.stop(user_id, release=True)
