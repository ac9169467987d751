"""daphne's per-process presence I/O (dashboard/ws/tracker.py), against the real Redis."""

from __future__ import annotations

import asyncio
import time

from dashboard.ws.tracker import Tracker
from livestream.presence.store import PresenceStore, cleanup_timer
from livestream.timers.store import TimerStore


async def test_a_close_that_waited_for_its_batch_still_stops_the_manager_on_time(
    configure_livestream, monkeypatch
):
    """A close queued behind a slow untrack batch: its cleanup is due CLEANUP_TIMEOUT after
    the close itself, not after the batch finally reached Redis."""
    configure_livestream(CLEANUP_TIMEOUT=5.0)
    tracker = Tracker()
    for uid in ("1", "2"):
        await tracker.track(uid, {"email": f"{uid}@x.io", "joined_at": 1, "ref": "r" + uid})
    real = PresenceStore.untrack_many
    slow = asyncio.Event()

    async def first_batch_slow(self, connections, **kwargs):
        if not slow.is_set():
            slow.set()
            await asyncio.sleep(1.0)  # Redis slow to answer the first batch
        return await real(self, connections, **kwargs)

    monkeypatch.setattr(PresenceStore, "untrack_many", first_batch_slow)
    first = tracker.untrack("1", "r1")
    await slow.wait()
    closed_at = time.time()
    second = tracker.untrack("2", "r2")  # queued behind the slow batch
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    due_in = (await TimerStore().pending())[cleanup_timer("2")]
    due_at = time.time() + due_in
    assert time.time() - closed_at >= 0.9  # it did wait for the slow batch
    assert abs(due_at - (closed_at + 5.0)) < 0.3, due_at - closed_at
