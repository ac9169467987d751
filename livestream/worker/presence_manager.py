"""PresenceManager: schedules one UserStreamManager per present user across the workers.

(The seed's name. It does not manage presence, which daphne writes: it decides
where and when each user's manager runs, and runs them.) This is the shell: it
reads facts from Redis, asks livestream/ownership/policy.py what to do, and does it.

  events   presence_diffs daphne appended (livestream/worker/feed.py), a batch at a
           time: the joined users are placed in one round trip on the least
           loaded live worker (LeaseStore.place); one placed elsewhere reaches
           that worker's start list. A leave needs nothing: the script that
           removed the last connection scheduled ``cleanup:<user>`` already.
  timers   due cleanups, claimed by the lease owner (livestream/timers/store.py).
  tick     every RECONCILE_INTERVAL (livestream/worker/reconcile.py): expire connections
           whose heartbeats stopped, claim present users nobody runs (a fair
           share), schedule the cleanups lost leaves never scheduled, publish state.
  renewal  on a thread of its own (livestream/ownership/keeper.py): a busy worker is
           never mistaken for a dead one; the fence checks its clock.
  channel  ``presence-manager`` messages (staff actions, hand-written diffs,
           component choices), dispatched by name: ``presence.cleanup`` ->
           ``on_presence_cleanup``; the worker's own inbox (livestream/worker/inbox.py) is
           dispatched the same way.
  commands tabs' commands for our components, from our own LIST (livestream/components/commands.py).

All state that matters is in Redis; ``managers`` only holds this process's tasks
(livestream/worker/local_managers.py starts and stops them and applies the core's
actions; staff actions are in livestream/worker/control.py, due cleanups' facts in
livestream/timers/cleanups.py, publishing in livestream/observe/state.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from channels.layers import get_channel_layer

from livestream import ids, logformats
from livestream.components import commands
from livestream.conf import get_settings
from livestream.observe.state import StatePublisher
from livestream.ownership.keeper import LeaseKeeper, Renewal
from livestream.ownership.leases import LeaseStore, new_worker_id
from livestream.ownership.liveness import worker_identity
from livestream.ownership.policy import Ownership
from livestream.presence.store import PresenceStore
from livestream.tasks import TaskScope
from livestream.timers import cleanups
from livestream.timers.store import TimerPump, TimerStore
from livestream.worker import control, inbox, reconcile
from livestream.worker import feed as events
from livestream.worker.local_managers import LocalManagers

logger = logging.getLogger(logformats.WORKER_LOGGER)


class PresenceManager:
    """Schedules this worker's share of UserStreamManagers: places joined users, starts the ones
    whose lease it holds, stops them on their cleanup, and repairs what events missed (the tick)."""

    def __init__(self, worker_id: str | None = None) -> None:
        conf = get_settings()
        self.worker_id = worker_id or new_worker_id()
        self.core = Ownership(self.worker_id, conf)
        self.store, self.timers, self.leases = PresenceStore(), TimerStore(), LeaseStore(self.worker_id)
        self.scope = TaskScope("PresenceManager", logger)
        self.local = LocalManagers(self.core, self.store, self.leases, self.scope, self.forward)
        self.pump = TimerPump(
            self.timers, worker_id=self.worker_id, local_channel=conf.WORKER_CHANNEL, deliver=self.take_timers
        )
        self.keeper = LeaseKeeper(
            self.leases,
            owned=lambda: (*self.local.managers, *self.core.fenced),
            running=lambda: len(self.local.managers),
            info=lambda: self._info,
            on_renewal=self._renewed,
            on_stale=lambda: self.local.fence(self.keeper.last_renewal),
        )
        self.publisher = StatePublisher(self.worker_id)
        self.inbox: str | None = None
        self.live_workers = 1
        self._info: dict[str, str] = {}
        # Set by the first renewal round: the epoch is known, so leases can be granted.
        self._first_renewal = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start the loops. Nothing here needs Redis: a worker started before Redis is up
        retries in its loops instead of failing to start."""
        self.inbox = await get_channel_layer().new_channel("presence-manager-inbox")
        self._info = {"inbox": self.inbox, **worker_identity()}
        self.keeper.start()
        # Often: after a freeze (a paused VM, SIGSTOP) this timer should come due first.
        self.scope.every("fence", lambda: get_settings().RECONCILE_INTERVAL / 10, self._check_fence)
        self.scope.spawn(self.local.status.run(), "status-push")
        self.scope.spawn(inbox.receive(self.inbox, self.handle, self._closing), "inbox")
        # Tabs' commands for our components (livestream/components/commands.py).
        self.scope.spawn(commands.read(self.worker_id, self.local.managers, self.scope), "commands")
        self.scope.spawn(self._boot(), "boot")
        logger.info(logformats.WORKER_STARTED, self.worker_id)

    async def _boot(self) -> None:
        """One tick first (it buries workers that died, so their overdue timers and users
        are ours at once), then the timers, the presence events and the periodic work.

        The tick waits (a moment) for the first renewal round: until this worker has seen
        Redis' epoch it may grant no lease (livestream/ownership/leases.py), so a tick or a join
        before it would start nobody."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(get_settings().RECONCILE_INTERVAL):
                await self._first_renewal.wait()
        with contextlib.suppress(Exception):  # Redis down: the loops below retry
            await self.tick()
        interval = lambda: get_settings().RECONCILE_INTERVAL  # noqa: E731
        self.scope.spawn(self.pump.run(), "timer-pump")
        reader = events.read(self.store, self.leases, self.take_diffs, self.take_starts, self._closing)
        self.scope.spawn(reader, "events")
        self.scope.every("reconcile tick", interval, self.tick, first_delay=interval())
        self.scope.every("metrics", interval, self.local.series.flush)

    def _closing(self) -> bool:
        return self.scope.closing

    async def shutdown(self) -> None:
        """Stop our managers cleanly and hand their users to the other workers at once."""
        self.pump.stop()  # its flag, not only its task's cancellation: see TimerPump.stop
        await self.scope.close(timeout=2.0)
        await asyncio.to_thread(self.keeper.stop)
        users = list(self.local.managers)
        await asyncio.gather(*(self.local.stop(u, release=True) for u in users))
        await self.local.all_stopped()  # those a fence or a lost lease was stopping meanwhile
        await self.local.status.flush()
        try:
            await self.leases.leave()
            if users:
                await get_channel_layer().send(get_settings().WORKER_CHANNEL, {"type": "presence.reconcile"})
        except Exception as exc:  # Redis gone: the leases expire by themselves
            logger.warning("[PresenceManager] could not hand over cleanly: %s", exc)
        logger.info(logformats.WORKER_STOPPED, self.worker_id)

    # -- inputs ----------------------------------------------------------------

    async def handle(self, message: dict[str, Any]) -> None:
        """Dispatch a channel message by its type; bad input is logged and dropped, never raised."""
        kind = message.get("type") if isinstance(message, dict) else None
        name = "on_" + kind.replace(".", "_") if isinstance(kind, str) and kind.isascii() else ""
        handler = getattr(self, name, None) if name.isidentifier() else None
        if handler is None:
            logger.warning("[PresenceManager] dropped message of unknown type %r", kind)
            return
        try:
            await handler(message)
        except ValueError as exc:
            logger.warning("[PresenceManager] dropped malformed %s: %s", kind, exc)  # kind: a handler's name

    async def take_diffs(self, batch: list[dict[str, Any]]) -> None:
        """Presence diffs from the store, in order: a line per change, then one decision per user."""
        received = time.monotonic()
        joined, sessions = events.changes(batch)
        await self.local.start_many(await self.leases.place(joined, self.store), received)
        for user_id in joined:
            self.local.status.announce(user_id)  # the new tab shows the state at once
        for user_id, count in sessions.items():
            self.local.status.announce_sessions(user_id, count)

    async def take_starts(self, user_ids: list[str]) -> None:
        """Users another worker placed on us: run those whose lease we hold."""
        await self.local.start_many(await self.leases.mine(user_ids), time.monotonic())

    async def take_timers(self, messages: list[dict[str, Any]]) -> None:
        """Due timers for the worker channel that we claimed. Cleanups come due in bursts
        (every tab of a daphne closing): one round trip for the lot keeps the last as
        punctual as the first."""
        users, others = cleanups.split_due(messages)
        for message in others:
            await self.handle(message)
        for user_id, facts in zip(users, await cleanups.facts(self.store, self.leases, users), strict=True):
            await self.local.apply(self.core.cleanup(user_id, facts, self.local.managers))

    async def on_presence_diff(self, message: dict[str, Any]) -> None:
        """A diff sent to the worker channel by hand: unlike the store's, its session counts
        are read and its timers scheduled here."""
        await self.take_diffs([await cleanups.schedule_for_diff(self.store, self.timers, message)])
        self.pump.wake()

    async def on_presence_cleanup(self, message: dict[str, Any]) -> None:
        await self.take_timers([{**message, "user_id": ids.user_id(message.get("user_id"))}])

    async def on_presence_stop(self, message: dict[str, Any]) -> None:
        user_id = ids.user_id(message.get("user_id"))
        self.scope.spawn(self.local.stop_if_absent(user_id), f"stop:{user_id}")

    async def on_presence_reconcile(self, message: dict[str, Any]) -> None:
        await self.tick()

    async def on_manager_stop(self, message: dict[str, Any]) -> None:
        await control.route(self.local, self.publish_state, message, control.stop)

    async def on_manager_restart(self, message: dict[str, Any]) -> None:
        await control.route(self.local, self.publish_state, message, control.restart)

    async def on_component_config(self, message: dict[str, Any]) -> None:
        await control.reconfigure(self.local, message)  # a user's components changed

    def _renewed(self, renewal: Renewal) -> None:
        self._first_renewal.set()
        self.live_workers = renewal.live_workers
        self.local.renewed(renewal)

    async def _check_fence(self) -> None:
        self.local.fence(self.keeper.last_renewal)

    async def tick(self) -> None:
        """One reconcile pass (livestream/worker/reconcile.py)."""
        await reconcile.tick(
            self.local, self.pump, self.keeper, lambda: self.live_workers, self.publish_state
        )

    async def publish_state(self) -> None:
        """Our managers, for presence_debug, the admin and metrics (livestream/observe/state.py)."""
        await self.publisher.publish(self.local.managers)

    async def forward(self, owner: str, message: dict[str, Any]) -> None:
        await inbox.forward(self.leases, owner, message)
