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
from typing import Protocol

from livestream import logformats
from livestream.components.user_manager import UserStreamManager
from livestream.conf import get_settings
from livestream.ownership.keeper import LeaseKeeper
from livestream.ownership.leases import LeaseStore
from livestream.ownership.policy import Ownership
from livestream.presence.store import PresenceStore
from livestream.timers import cleanups
from livestream.timers.store import TimerPump, TimerStore
from livestream.worker import feed as events
from livestream.worker.local_managers import LocalManagers

logger = logging.getLogger(logformats.WORKER_LOGGER)


class Worker(Protocol):
    """What the tick uses of the worker (the PresenceManager)."""

    store: PresenceStore
    leases: LeaseStore
    timers: TimerStore
    pump: TimerPump
    core: Ownership
    keeper: LeaseKeeper
    local: LocalManagers
    managers: dict[str, UserStreamManager]
    live_workers: int

    async def publish_state(self) -> None: ...


async def tick(pm: Worker) -> None:
    for dead in await pm.leases.bury_dead_workers():
        logger.warning("[PresenceManager] worker %s died; its users are taken over now", dead)
    for change in await pm.store.expire_stale():  # their leaves reach the events LIST
        logger.info("[PresenceManager] expired connection %s of %s", change.meta.get("ref"), change.user_id)
    plan = pm.core.tick(pm.keeper.last_renewal, time.monotonic())
    if plan.claim_orphans:
        running = len(pm.managers) + len(pm.core.fenced)
        claimed = await pm.leases.claim_orphans(pm.store, pm.live_workers, running)
        await pm.local.start_many(claimed, time.monotonic())
    if plan.schedule_cleanups:
        for user_id in await pm.store.unattended(list(pm.managers)):
            await schedule_cleanup(pm, user_id)
    await pm.publish_state()


async def schedule_cleanup(pm: Worker, user_id: str) -> None:
    """For a lost leave: the store's scripts schedule all others."""
    delay = get_settings().CLEANUP_TIMEOUT
    await cleanups.schedule(pm.timers, user_id, delay)
    pm.pump.wake()
    events.log_cleanup(user_id, delay)
