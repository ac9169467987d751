"""The reconcile tick: one level-triggered pass over everything a worker is responsible for.

Events and timers act at once; this pass, every RECONCILE_INTERVAL, repairs what a
lost event left behind (the capped events LIST, a crash between two steps):

  1. bury workers whose process certainly ended: their leases are claimable now;
  2. expire connections whose heartbeats stopped (a daphne killed): their leaves
     reach the events LIST like any other;
  3. claim a fair share of present users nobody runs, unless the fence is due;
  4. schedule the cleanup of our users who are away with none pending (a lost
     leave), unless presence is being rebuilt after Redis lost its data;
  5. publish our managers (livestream/observe/state.py).

Whether 3 and 4 happen is decided by the pure core (``Ownership.tick``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from livestream import logformats
from livestream.conf import get_settings
from livestream.ownership.keeper import LeaseKeeper
from livestream.timers import cleanups
from livestream.timers.store import TimerPump
from livestream.worker import feed as events
from livestream.worker.control import Publish
from livestream.worker.local_managers import LocalManagers

logger = logging.getLogger(logformats.WORKER_LOGGER)


async def tick(
    local: LocalManagers,
    pump: TimerPump,
    keeper: LeaseKeeper,
    live_workers: Callable[[], int],
    publish: Publish,
) -> None:
    """One pass. ``keeper``: when our leases were last renewed (the fence's clock);
    ``live_workers()``: how many workers share the orphans; ``publish``: publishes our managers."""
    for dead in await local.leases.bury_dead_workers():
        logger.warning("[PresenceManager] worker %s died; its users are taken over now", dead)
    for change in await local.store.expire_stale():  # their leaves reach the events LIST
        logger.info("[PresenceManager] expired connection %s of %s", change.meta.get("ref"), change.user_id)
    plan = local.core.tick(keeper.last_renewal, time.monotonic())
    if plan.claim_orphans:
        running = len(local.managers) + len(local.core.fenced)
        claimed = await local.leases.claim_orphans(local.store, live_workers(), running)
        await local.start_many(claimed, time.monotonic())
    if plan.schedule_cleanups:
        for user_id in await local.store.unattended(list(local.managers)):
            await schedule_cleanup(pump, user_id)
    await publish()


async def schedule_cleanup(pump: TimerPump, user_id: str) -> None:
    """For a lost leave: the store's scripts schedule all others."""
    delay = get_settings().CLEANUP_TIMEOUT
    await cleanups.schedule(pump.store, user_id, delay)
    pump.wake()
    events.log_cleanup(user_id, delay)
