"""SIGTERM's hand-off (dashboard/shutdown.py) against a consumer daphne already cancelled.

daphne's kill_all_applications can cancel a consumer just before our shutdown
trigger runs; the consumer's own ``finally`` then runs before the hand-off's
coroutine. The hand-off must still untrack that connection, with the hand-off
delay (the worker logs the leave and schedules the cleanup CLEANUP_TIMEOUT +
HANDOFF_GRACE later), and the consumer must not untrack it a second time.
"""

from __future__ import annotations

import asyncio

import pytest

from dashboard import shutdown
from livestream.presence import PresenceStore
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
