"""PresenceManager: schedules one UserStreamManager per present user across the workers.

(The seed's name. It does not manage presence, which daphne writes: it decides
where and when each user's manager runs, and runs them.) This is the shell: it
reads facts from Redis, asks livestream/ownership.py what to do, and does it.

  events   presence_diffs daphne appended (livestream/events.py), a batch at a
           time: the joined users are placed in one round trip on the least
           loaded live worker (LeaseStore.place); one placed elsewhere reaches
           that worker's start list. A leave needs nothing: the script that
           removed the last connection scheduled ``cleanup:<user>`` already.
  timers   due cleanups, claimed by the lease owner (livestream/timers.py).
  tick     every RECONCILE_INTERVAL: expire connections whose heartbeats
           stopped, claim present users nobody runs (a fair share), schedule the
           cleanups lost leaves never scheduled, publish state.
  renewal  on a thread of its own (livestream/lease_keeper.py): a busy worker is
           never mistaken for a dead one; the fence checks its clock.
  channel  ``presence-manager`` messages (staff actions, hand-written diffs,
           component choices), dispatched by name: ``presence.cleanup`` ->
           ``on_presence_cleanup``.
  commands tabs' commands for our components, from our own LIST (livestream/commands.py).

All state that matters is in Redis; ``managers`` only holds this process's tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import defaultdict
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from livestream import choices, commands, control, diffs, events, ids, metrics, state
from livestream.conf import get_settings
from livestream.lease_keeper import LeaseKeeper, Renewal
from livestream.leases import LeaseStore
from livestream.liveness import process_identity
from livestream.ownership import Action, CleanupFacts, Forward, Ownership, Release, ReleaseHold, Start, Stop
from livestream.presence import PresenceStore, cleanup_timer
from livestream.tasks import TaskScope
from livestream.timers import TimerPump, TimerStore
from livestream.user_status import StatusPusher
from livestream.user_stream_manager import UserStreamManager, component_classes

logger = logging.getLogger(__name__)

# Managers started between two yields to the loop: a batch of joins must not hold
# up the ticks of the managers already running.
_START_CHUNK = 200


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class PresenceManager:
    def __init__(self, worker_id: str | None = None) -> None:
        conf = get_settings()
        self.worker_id = worker_id or new_worker_id()
        self.managers: dict[str, UserStreamManager] = {}
        self.core = Ownership(self.worker_id, conf)
        self.store, self.timers, self.leases = PresenceStore(), TimerStore(), LeaseStore(self.worker_id)
        self.pump = TimerPump(
            self.timers, worker_id=self.worker_id, local_channel=conf.WORKER_CHANNEL, deliver=self.take_timers
        )
        self.status = StatusPusher(self.managers)  # live dashboards
        self.keeper = LeaseKeeper(
            self.leases,
            owned=lambda: (*self.managers, *self.core.fenced),
            running=lambda: len(self.managers),
            info=lambda: self._info,
            on_renewal=self._renewed,
            on_stale=self._fence,
        )
        self.scope = TaskScope("PresenceManager", logger)
        self.inbox: str | None = None
        self.live_workers = 1
        self._info: dict[str, str] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._publishing = asyncio.Lock()
        self._restarts, self._latency = metrics.RestartCounter(), metrics.JoinLatency()
        self._components = component_classes()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start the loops. Nothing here needs Redis: a worker started before Redis is up
        retries in its loops instead of failing to start."""
        self.inbox = await get_channel_layer().new_channel("presence-manager-inbox")
        self._info = {"inbox": self.inbox, "host": socket.gethostname(), "pid": str(os.getpid())}
        self._info["proc"] = process_identity()  # lets workers on this machine see that we died
        self.keeper.start()
        # Often: after a freeze (a paused VM, SIGSTOP) this timer should come due first.
        self.scope.every("fence", lambda: get_settings().RECONCILE_INTERVAL / 10, self._check_fence)
        self.scope.spawn(self.status.run(), "status-push")
        self.scope.spawn(self._inbox_loop(), "inbox")
        self.scope.spawn(commands.read(self), "commands")  # tabs' commands (livestream/commands.py)
        self.scope.spawn(self._boot(), "boot")
        logger.info("[PresenceManager] worker %s started", self.worker_id)

    async def _boot(self) -> None:
        """One tick first (it buries workers that died, so their overdue timers and users
        are ours at once), then the timers, the presence events and the periodic work."""
        with contextlib.suppress(Exception):  # Redis down: the loops below retry
            await self.tick()
        interval = lambda: get_settings().RECONCILE_INTERVAL  # noqa: E731
        self.scope.spawn(self.pump.run(), "timer-pump")
        closing = lambda: self.scope.closing  # noqa: E731
        self.scope.spawn(
            events.read(self.store, self.leases, self.take_diffs, self.take_starts, closing), "events"
        )
        self.scope.every("reconcile tick", interval, self.tick, first_delay=interval())
        self.scope.every("metrics", interval, self._latency.flush)

    async def shutdown(self) -> None:
        """Stop our managers cleanly and hand their users to the other workers at once."""
        self.pump.stop()  # its flag, not only its task's cancellation: see TimerPump.stop
        await self.scope.close(timeout=2.0)
        await asyncio.to_thread(self.keeper.stop)
        users = list(self.managers)
        await asyncio.gather(*(self.stop_local(u, release=True) for u in users))
        await self.status.flush()
        try:
            await self.leases.leave()
            if users:
                await get_channel_layer().send(get_settings().WORKER_CHANNEL, {"type": "presence.reconcile"})
        except Exception as exc:  # Redis gone: the leases expire by themselves
            logger.warning("[PresenceManager] could not hand over cleanly: %s", exc)
        logger.info("[PresenceManager] worker %s stopped", self.worker_id)

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
        await self._start_many(await self.leases.place(joined, self.store.user_prefix), received)
        for user_id in joined:
            self.status.announce(user_id)  # the new tab shows the state at once
        for user_id, count in sessions.items():
            self.status.announce_sessions(user_id, count)

    async def take_starts(self, user_ids: list[str]) -> None:
        """Users another worker placed on us: run those whose lease we hold."""
        await self._start_many(await self.leases.mine(user_ids), time.monotonic())

    async def take_timers(self, messages: list[dict[str, Any]]) -> None:
        """Due timers for the worker channel that we claimed. Cleanups come due in bursts
        (every tab of a daphne closing): two round trips for the lot keep the last as
        punctual as the first."""
        cleanups = [
            m["user_id"]
            for m in messages
            if m.get("type") == "presence.cleanup" and ids.is_user_id(m.get("user_id"))
        ]
        for message in messages:
            if message.get("type") != "presence.cleanup":
                await self.handle(message)
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for user_id in cleanups:
                pipe.hlen(self.store.user_prefix + user_id)
                pipe.get(self.leases.lease_key(user_id))
            replies = await pipe.execute() if cleanups else []
        for i, user_id in enumerate(cleanups):
            owner = replies[2 * i + 1]
            facts = CleanupFacts(replies[2 * i], owner, control.held_by(owner) is not None)
            await self._apply(self.core.cleanup(user_id, facts, self.managers))

    async def on_presence_diff(self, message: dict[str, Any]) -> None:
        """A diff sent to the worker channel by hand: unlike the store's, its session counts
        are read and its timers scheduled here."""
        joins, leaves = diffs.user_ids(message)
        users = [*joins, *leaves]
        counts = dict(zip(users, await self.store.session_counts(users), strict=True))
        cleanup = get_settings().CLEANUP_TIMEOUT
        for user_id in joins:
            await self.timers.cancel(cleanup_timer(user_id))
        for user_id in [u for u in leaves if counts[u] == 0]:
            await self.timers.schedule(
                cleanup_timer(user_id), get_settings().WORKER_CHANNEL, _cleanup_message(user_id), cleanup
            )
        zero = {u: cleanup for u in leaves if counts[u] == 0}
        await self.take_diffs([{**message, "sessions": counts, "cleanup": zero}])
        self.pump.wake()

    async def on_presence_cleanup(self, message: dict[str, Any]) -> None:
        await self.take_timers([{**message, "user_id": _user_id(message)}])

    async def on_presence_stop(self, message: dict[str, Any]) -> None:
        user_id = _user_id(message)
        self.scope.spawn(self.stop_manager(user_id), f"stop:{user_id}")

    async def on_presence_reconcile(self, message: dict[str, Any]) -> None:
        await self.tick()

    async def on_manager_stop(self, message: dict[str, Any]) -> None:
        await control.route(self, message, control.stop)

    async def on_manager_restart(self, message: dict[str, Any]) -> None:
        await control.route(self, message, control.restart)

    async def on_component_config(self, message: dict[str, Any]) -> None:
        await choices.reconfigure(self, message)  # a user's components changed

    # -- managers --------------------------------------------------------------

    def lock(self, user_id: str) -> asyncio.Lock:
        return self._locks[user_id]

    async def schedule_cleanup(self, user_id: str) -> None:
        """For a lost leave (the reconcile tick): the store's scripts schedule all others."""
        delay = get_settings().CLEANUP_TIMEOUT
        await self.timers.schedule(
            cleanup_timer(user_id), get_settings().WORKER_CHANNEL, _cleanup_message(user_id), delay
        )
        self.pump.wake()
        events.log_cleanup(user_id, delay)

    async def stop_manager(self, user_id: str) -> None:
        """Stop our manager for an absent user; start it again if they came back meanwhile."""
        async with self.lock(user_id):
            if user_id not in self.managers or await self.store.sessions(user_id) > 0:
                return
            await self.stop_local(user_id, release=False)
            if not await self.leases.release_if_absent(user_id, self.store.user_prefix + user_id):
                self.start_local(user_id)

    async def _start_many(self, user_ids: list[str], received: float) -> None:
        """A manager for each of ``user_ids`` (whose lease we hold) not running yet."""
        for i, user_id in enumerate(user_ids, 1):
            if user_id not in self.managers and not self.lock(user_id).locked():
                manager = self.start_local(user_id)
                manager.on_running = lambda: self._latency.observe(time.monotonic() - received)
            if i % _START_CHUNK == 0:
                await asyncio.sleep(0)

    def start_local(self, user_id: str) -> UserStreamManager:
        self.core.started(user_id)
        manager = self.managers[user_id] = UserStreamManager(
            user_id, self._components, choose=choices.for_user
        )
        manager.start()
        self.status.announce(user_id)
        logger.info("[PresenceManager] UserStreamManager started: %s", user_id)
        return manager

    async def stop_local(self, user_id: str, *, release: bool) -> None:
        manager = self.managers.pop(user_id, None)
        if manager is None:
            return
        self.status.announce(user_id, "stopping", manager)
        await manager.stop()
        self.status.announce(user_id, "stopped", manager)
        logger.info("[PresenceManager] UserStreamManager stopped: %s", user_id)
        if release:
            try:
                await self.leases.release(user_id)
            except Exception as exc:
                logger.warning("[PresenceManager] lease of %s not released: %s", user_id, exc)

    async def _apply(self, action: Action | None) -> None:
        """Do what livestream/ownership.py decided."""
        match action:
            case Start(user_id):
                self.start_local(user_id)
            case Stop(user_id, "cleanup"):
                self.scope.spawn(self.stop_manager(user_id), f"stop:{user_id}")
            case Stop(user_id, why):
                if why == "lost":
                    logger.warning(
                        "[PresenceManager] lease of %s taken by another worker; stopping here", user_id
                    )
                self.scope.spawn(self.stop_local(user_id, release=False), f"{why}:{user_id}")
            case Release(user_id):
                await self.leases.release(user_id)
            case ReleaseHold(user_id):
                await control.release_hold(self.leases, user_id)  # their cleanup ends a staff stop
            case Forward(owner, user_id):
                await self.forward(owner, {"type": "presence.stop", "user_id": user_id})

    # -- leases: renewal results and the fence --------------------------------

    def _renewed(self, renewal: Renewal) -> None:
        """A renewal round reached Redis (livestream/lease_keeper.py); runs on our loop."""
        self.live_workers = renewal.live_workers
        now = time.monotonic()
        actions, resumable = self.core.renewed(
            renewal.users, renewal.lost, self.managers, renewal.epoch_changed, now
        )
        if renewal.epoch_changed and (self.managers or self.core.fenced):
            grace = self.core.rebuild_until - now
            logger.warning("[PresenceManager] Redis lost its data; rebuilding presence for %.0fs", grace)
        for action in actions:
            self.scope.spawn(self._apply(action), "renewal")
        if resumable:
            self.scope.spawn(self._resume(resumable), "resume-fenced")

    async def _resume(self, user_ids: list[str]) -> None:
        """Fenced users whose leases are ours again: run them again now rather than after someone's claim."""
        for user_id in user_ids:
            async with self.lock(user_id):
                if user_id not in self.managers:
                    present = await self.store.sessions(user_id) > 0
                    await self._apply(self.core.resume(user_id, present, time.monotonic()))

    async def _check_fence(self) -> None:
        self._fence()

    def _fence(self) -> None:
        """Unable to renew: stop everything before our leases can expire and be claimed."""
        last, now = self.keeper.last_renewal, time.monotonic()
        if not self.managers or not self.core.fence_due(last, now):
            return
        logger.warning(
            "[PresenceManager] leases not renewed for %.1fs; stopping %d managers",
            now - last,
            len(self.managers),
        )
        for action in self.core.fence(list(self.managers), last, now):
            self.managers[action.user_id].cancel()  # now: a worker waking from a freeze must not act first
            self.scope.spawn(self._apply(action), "fence")

    # -- the reconcile tick ----------------------------------------------------

    async def tick(self) -> None:
        """One level-triggered pass over everything this worker is responsible for."""
        for dead in await self.leases.bury_dead_workers():
            logger.warning("[PresenceManager] worker %s died; its users are taken over now", dead)
        for change in await self.store.expire_stale():  # their leaves reach the events LIST
            logger.info(
                "[PresenceManager] expired connection %s of %s", change.meta.get("ref"), change.user_id
            )
        if not self.core.fence_due(self.keeper.last_renewal, time.monotonic()):
            running = len(self.managers) + len(self.core.fenced)
            claimed = await self.leases.claim_orphans(self.store.users_key, self.live_workers, running)
            await self._start_many(claimed, time.monotonic())
        if not self.core.rebuilding(time.monotonic()):
            for user_id in await self.store.unattended(list(self.managers)):
                await self.schedule_cleanup(user_id)
        await self.publish_state()

    async def publish_state(self) -> None:
        """Our managers, for presence_debug, the admin and metrics (livestream/state.py)."""
        async with self._publishing:  # one at a time: each writes the same scratch key
            statuses = await state.publish_managers(
                self.worker_id, self.managers, get_settings().LEASE_TTL * 3
            )
            await self._restarts.publish(statuses)

    # -- plumbing --------------------------------------------------------------

    async def forward(self, owner: str, message: dict[str, Any]) -> None:
        """Send ``message`` to the worker ``owner``'s inbox (a dead owner's may be full: dropped)."""
        inbox = (await self.leases.worker_info(owner)).get("inbox")
        if inbox:
            try:
                await get_channel_layer().send(inbox, message)
            except ChannelFull:  # a dead owner's inbox fills up; its leases lapse anyway
                logger.warning(
                    "[PresenceManager] inbox of %s is full; %s dropped", owner, message.get("type")
                )

    async def _inbox_loop(self) -> None:
        layer = get_channel_layer()
        while not self.scope.closing:
            try:
                message = await layer.receive(self.inbox)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("[PresenceManager] inbox receive failed: %r", exc)
                await asyncio.sleep(1.0)
                continue
            await self.handle(message)


def _cleanup_message(user_id: str) -> dict[str, str]:
    return {"type": "presence.cleanup", "user_id": user_id}


def _user_id(message: dict[str, Any]) -> str:
    return ids.user_id(message.get("user_id"))
