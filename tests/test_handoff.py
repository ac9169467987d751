"""SIGTERM's hand-off (dashboard/daphne/shutdown.py) against a consumer daphne already cancelled.

daphne's kill_all_applications can cancel a consumer just before our shutdown
trigger runs; the consumer's own ``finally`` then runs before the hand-off's
coroutine. The hand-off must still untrack that connection, with the hand-off
delay (the worker logs the leave and schedules the cleanup CLEANUP_TIMEOUT +
HANDOFF_GRACE later), and the consumer must not untrack it a second time.
"""

from __future__ import annotations

import asyncio

import pytest

from dashboard.daphne import shutdown
from livestream.presence.store import PresenceStore
from tests.test_presence_consumer import communicator, session_for, worker_inbox

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_consumer_cancelled_by_daphne_just_before_the_trigger_is_still_handed_off():
    user_id, session = await session_for("a@example.com")
    ws = communicator(session)
    assert (await ws.connect())[0]
    assert [list(d["joins"]) for d in await worker_inbox()] == [[user_id]]
    consumers = [c for c in list(shutdown._open) if c.user_id == user_id]
    assert len(consumers) == 1

    ws.future.cancel()  # daphne's kill_all_applications, first
    pairs = shutdown.take_refs(consumers)  # then the trigger, synchronously
    await asyncio.sleep(0.05)  # the cancelled consumer's finally runs before the hand-off coroutine
    await shutdown.hand_off(consumers, pairs)

    assert await PresenceStore().list() == {}
    leaves = [d for d in await worker_inbox() if d["leaves"]]
    assert [list(d["leaves"]) for d in leaves] == [[user_id]]  # once: by the hand-off only
    assert leaves[0]["cleanup"] == {user_id: shutdown.handoff_delay()}


def test_the_reconnect_window_grows_with_the_sockets_handed_off(configure_livestream):
    configure_livestream(HANDOFF_RECONNECT_RATE=300)  # explicit: the default may change
    assert shutdown.reconnect_spread(1) == 2.0  # presence.js' own window for a few
    assert shutdown.reconnect_spread(3000) == 10.0  # 300 reconnects/s
    assert shutdown.reconnect_spread(1_000_000) == 30.0  # never longer than this


def test_the_pages_policy_follows_the_window_the_close_asks_for():
    import random

    from tests.reconnect_policy import ReconnectPolicy

    waits = [ReconnectPolicy(random.Random(seed)).next_wait(1012, "spread=10.0") for seed in range(400)]
    assert all(0.1 <= w <= 10.0 for w in waits)
    assert max(waits) > 8.0 and min(waits) < 2.0  # the whole window is used
    assert all(0.1 <= ReconnectPolicy().next_wait(1012, None) <= 2.0 for _ in range(100))
    assert all(0.1 <= ReconnectPolicy().next_wait(1012, "spread=999") <= 30.0 for _ in range(100))
