"""The PresenceManager in a real (in-process) runworker Worker over the real Redis channel layer."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest
from channels.layers import get_channel_layer
from django.conf import settings

from devtools.processes import wait_until
from livestream.conf import get_settings
from livestream.ownership.leases import LeaseStore
from livestream.presence.store import PresenceStore
from livestream.timers.store import TimerStore
from streampai.channel_layer import RedisChannelLayer


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="livestream")
    return caplog


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def count(caplog, pattern: str) -> int:
    return sum(1 for m in messages(caplog) if re.fullmatch(pattern, m))


async def wait_log(caplog, pattern: str, timeout: float = 5, n: int = 1) -> None:
    await wait_until(lambda: count(caplog, pattern) >= n, timeout, f"{n}x {pattern!r}")


async def connect(user_id: str, ref: str) -> None:
    """What the dashboard consumer does on connect."""
    meta = {"email": f"{user_id}@example.com", "joined_at": int(time.time()), "ref": ref}
    await PresenceStore().track(user_id, meta)  # announces the join itself


async def disconnect(user_id: str, ref: str) -> None:
    await PresenceStore().untrack(user_id, ref)  # announces the leave, schedules the cleanup


async def test_join_starts_exactly_one_manager(run_worker, caplog):
    worker = await run_worker()
    await connect("1", "a")
    await connect("1", "b")
    await wait_log(caplog, r"\[PresenceManager\] presence join: 1", n=2)
    await wait_log(caplog, r"\[PresenceManager\] UserStreamManager started: 1")
    assert count(caplog, r"\[PresenceManager\] UserStreamManager started: 1") == 1
    assert list(worker.manager.local.managers) == ["1"]
    assert await LeaseStore("x").owner("1") == worker.manager.worker_id
    await wait_log(caplog, r"\[UserStreamManager:1\] Console log #1 - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}Z")


async def test_leave_keeps_manager_while_a_session_remains(run_worker, caplog, configure_livestream):
    configure_livestream(CLEANUP_TIMEOUT=0.3)
    worker = await run_worker()
    await connect("1", "a")
    await connect("1", "b")
    await wait_log(caplog, r".*UserStreamManager started: 1")
    await disconnect("1", "a")
    await wait_log(caplog, r"\[PresenceManager\] presence leave: 1 \(1 sessions left\)")
    assert await TimerStore().pending() == {}
    assert "1" in worker.manager.local.managers
    assert count(caplog, r".*cleanup scheduled.*") == 0


async def test_last_leave_stops_the_manager_after_the_cleanup_timeout(
    run_worker, caplog, configure_livestream
):
    configure_livestream(CLEANUP_TIMEOUT=0.5)
    worker = await run_worker()
    await connect("1", "a")
    await wait_log(caplog, r".*UserStreamManager started: 1")
    left_at = time.monotonic()
    await disconnect("1", "a")
    await wait_log(caplog, r"\[PresenceManager\] presence leave: 1 \(0 sessions left\)")
    await wait_log(caplog, r"\[PresenceManager\] cleanup scheduled: 1 in 0.5s")
    assert set(await TimerStore().pending()) == {"cleanup:1"}  # kept in Redis, not in the worker
    await wait_log(caplog, r"\[PresenceManager\] UserStreamManager stopped: 1", timeout=3)
    elapsed = time.monotonic() - left_at
    assert 0.5 <= elapsed < 1.0, elapsed
    assert worker.manager.local.managers == {}
    await wait_until(lambda: _lease_free("1"), 1, "lease released after the stop")
    assert await TimerStore().pending() == {}


async def test_rejoin_within_the_window_keeps_the_same_manager(run_worker, caplog, configure_livestream):
    configure_livestream(CLEANUP_TIMEOUT=0.6, CONSOLE_LOG_INTERVAL=0.05)
    worker = await run_worker()
    await connect("1", "a")
    await wait_log(caplog, r".*UserStreamManager started: 1")
    manager = worker.manager.local.managers["1"]
    await disconnect("1", "a")
    await wait_log(caplog, r".*cleanup scheduled: 1 in 0.6s")
    await connect("1", "b")
    await wait_log(caplog, r"\[PresenceManager\] presence join: 1", n=2)
    assert await TimerStore().pending() == {}  # the join cancelled the cleanup
    # Well past the window, by the logger's own count (0.05 s a line): still the same manager.
    await wait_log(caplog, r"\[UserStreamManager:1\] Console log #30 - .*", timeout=5)
    assert worker.manager.local.managers["1"] is manager
    assert count(caplog, r".*UserStreamManager (started|stopped): 1") == 1
    numbers = [int(m) for m in re.findall(r"Console log #(\d+)", "\n".join(messages(caplog)))]
    assert numbers == list(range(1, len(numbers) + 1))  # one counter, never restarted


async def test_a_cleanup_that_fires_while_the_user_is_back_stops_nothing(run_worker, caplog):
    """The second guard: the timer fires, presence is checked again."""
    worker = await run_worker()
    await connect("1", "a")
    await wait_log(caplog, r".*UserStreamManager started: 1")
    # A cleanup the join did not cancel (e.g. scheduled by a slower worker after the join).
    await TimerStore().schedule(
        "cleanup:1", get_settings().WORKER_CHANNEL, {"type": "presence.cleanup", "user_id": "1"}, 0.05
    )
    await wait_until(lambda: _no_pending(), 3, "timer delivered")
    await connect("2", "probe")  # a later message proves the cleanup was handled
    await wait_log(caplog, r".*UserStreamManager started: 2")
    assert "1" in worker.manager.local.managers
    assert count(caplog, r".*UserStreamManager stopped: 1") == 0


async def _lease_free(user_id: str) -> bool:
    return await LeaseStore("x").owner(user_id) is None


async def _no_pending() -> bool:
    return await TimerStore().pending() == {}


async def test_worker_start_runs_present_users_and_overdue_cleanups(run_worker, caplog):
    store = PresenceStore()
    for user_id in ("1", "2"):
        await store.track(user_id, {"email": "x@example.com", "joined_at": 1, "ref": f"r{user_id}"})
    # User 3 left while no worker ran: their cleanup came due, and a dead worker's lease lingers.
    await TimerStore().schedule(
        "cleanup:3", get_settings().WORKER_CHANNEL, {"type": "presence.cleanup", "user_id": "3"}, 0
    )
    dead = LeaseStore("dead-worker")
    await dead.check_epoch()  # as its lease keeper did, before it died
    await dead.acquire("3")
    worker = await run_worker()
    await wait_log(caplog, r".*UserStreamManager started: 1")
    await wait_log(caplog, r".*UserStreamManager started: 2")
    await wait_until(_no_pending, 3, "overdue cleanup delivered")
    assert sorted(worker.manager.local.managers) == ["1", "2"]


async def test_bad_messages_are_dropped_and_the_worker_keeps_consuming(run_worker, caplog):
    worker = await run_worker()
    await connect("1", "a")
    await wait_log(caplog, r".*UserStreamManager started: 1")
    manager = worker.manager.local.managers["1"]
    layer = get_channel_layer()
    channel = get_settings().WORKER_CHANNEL
    for bad in (
        {"type": "no.such.type"},
        {"type": "presence_diff", "joins": "not a map", "leaves": {}},
        {"type": "presence_diff", "joins": {"9": {"no": "metas"}}, "leaves": {}},
        {"type": "presence.cleanup", "user_id": 12},
        {"type": "presence.cleanup"},
        {"not": "typed"},
        {"type": ""},
    ):
        await layer.send(channel, bad)
    await connect("2", "b")
    await wait_log(caplog, r".*UserStreamManager started: 2")
    assert worker.manager.local.managers["1"] is manager
    assert count(caplog, r"\[PresenceManager\] dropped message of unknown type 'no.such.type'") == 1
    assert count(caplog, r"\[PresenceManager\] dropped malformed .*") == 4
    assert count(caplog, r"Dropped a message without a type on .*") == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_graceful_stop_stops_managers_and_releases_leases(run_worker, caplog):
    worker = await run_worker()
    await connect("1", "a")
    await wait_log(caplog, r".*UserStreamManager started: 1")
    await worker.stop()
    assert count(caplog, r"\[PresenceManager\] UserStreamManager stopped: 1") == 1
    assert await _lease_free("1")


async def test_diffs_reach_the_topic_group_too(run_worker):
    """Anyone can listen to users_presence, like Phoenix.PubSub subscribers (the worker
    publishes each batch of presence events it reads there)."""
    await run_worker()
    # A listener in a process of its own (its own layer instance): in-process, the
    # worker's inbox receive would share channels-redis' receive loop with it.
    layer = RedisChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])
    listener = await layer.new_channel()
    await layer.group_add(get_settings().TOPIC, listener)
    await connect("5", "r5")
    diff = await asyncio.wait_for(layer.receive(listener), 2)
    assert diff["type"] == "presence_diff"
    assert diff["leaves"] == {}
    assert diff["joins"]["5"]["metas"][0]["ref"] == "r5"
    await disconnect("5", "r5")
    diff = await asyncio.wait_for(layer.receive(listener), 2)
    assert list(diff["leaves"]) == ["5"] and diff["joins"] == {}
