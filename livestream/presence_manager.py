"""PresenceManager: schedules one UserStreamManager per present user across the workers.

(It keeps the seed's name; it does not manage presence, which daphne writes:
it decides where and when each user's manager runs.)

Edge-triggered by the presence events daphne's scripts append (livestream/presence.py)
and by cleanup timers, level-triggered by a reconcile tick, so a lost message, a
crashed worker or a restarted Redis is repaired within a tick:

  events   -> read in batches (one BLPOP + LPOP); the joined users are placed in
              one round trip on the least loaded live worker (leases.place); a
              worker placed by another finds them on its start list.
  leave    -> nothing to do: the script that removed the last connection already
              scheduled ``cleanup:<user>`` CLEANUP_TIMEOUT after the close.
  cleanup  -> claimed by the lease owner (livestream/timers.py): if the user is
              still away, stop the manager and release the lease.
  tick     -> expire connections whose heartbeats stopped, claim present users
              nobody runs (a fair share), schedule cleanups a lost leave never
              scheduled, publish state and metrics.
  renewal  -> on a thread of its own (livestream/lease_keeper.py), so a busy
              worker is never mistaken for a dead one.
  fence    -> no renewal reached Redis for LEASE_TTL - RECONCILE_INTERVAL (Redis
              gone, the process frozen): cancel every manager at once, before
              another worker may claim them; resume them when the leases are ours
              again.

All state that matters is in Redis; ``managers`` only holds this process's tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from livestream import control, diffs, metrics
from livestream.conf import get_settings
from livestream.lease_keeper import LeaseKeeper, Renewal
from livestream.leases import LeaseStore
from livestream.liveness import process_identity
from livestream.presence import PresenceStore, cleanup_timer
from livestream.redis import get_redis, key, run_script
from livestream.tasks import TaskScope
from livestream.timers import TimerPump, TimerStore
from livestream.user_status import StatusPusher
from livestream.user_stream_manager import UserStreamManager, component_classes
from streampai.redisconf import redis_client

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[None]]

# Presence events handled per batch (one LPOP).
EVENTS_BATCH = 1000
# Managers whose state _publish_state serialises between two yields to the loop.
_STATE_CHUNK = 2000
# Managers started between two yields to the loop: a batch of joins must not hold
# up the ticks of the managers already running.
_START_CHUNK = 200

# KEYS: timers ZSET. ARGV: presence hash prefix, user ids...
# The users among ARGV that have no connection and no pending cleanup timer.
_UNATTENDED = """
local out = {}
for i = 2, #ARGV do
  local uid = ARGV[i]
  if redis.call('HLEN', ARGV[1] .. uid) == 0 and not redis.call('ZSCORE', KEYS[1], 'cleanup:' .. uid) then
    table.insert(out, uid)
  end
end
return out
"""


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _log_cleanup(user_id: str, delay: float) -> None:
    logger.info("[PresenceManager] cleanup scheduled: %s in %ss", user_id, f"{delay:g}")


class PresenceManager:
    def __init__(self, worker_id: str | None = None) -> None:
        self.worker_id = worker_id or new_worker_id()
        self.managers: dict[str, UserStreamManager] = {}
        self.store = PresenceStore()
        self.timers = TimerStore()
        self.leases = LeaseStore(self.worker_id)
        conf = get_settings()
        self.pump = TimerPump(
            self.timers, worker_id=self.worker_id, local_channel=conf.WORKER_CHANNEL, deliver=self.on_timers
        )
        self.status = StatusPusher(self.managers)  # live dashboards
        self.keeper = LeaseKeeper(
            self.leases,
            owned=lambda: (*self.managers, *self._fenced),
            running=lambda: len(self.managers),
            info=lambda: self._info,
            on_renewal=self._on_renewal,
            on_stale=self._fence,
        )
        self.scope = TaskScope("PresenceManager", logger)
        self.inbox: str | None = None
        self.live_workers = 1
        self._info: dict[str, str] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._fenced: set[str] = set()  # users stopped by _fence whose lease we may still hold
        self._rebuild_until = 0.0
        self._restarts = metrics.RestartCounter()
        self._latency = metrics.JoinLatency()
        self._components = component_classes()
        self._handlers: dict[str, Handler] = {
            "presence_diff": self.on_diff,
            "presence.cleanup": self.on_cleanup,
            "presence.stop": self.on_stop_request,
            "presence.reconcile": self.on_reconcile,
            control.STOP: self.on_staff_request,
            control.RESTART: self.on_staff_request,
        }

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start the loops; the first tick starts managers for users already present.

        Nothing here needs Redis, so a worker started before Redis is up simply
        retries in its loops instead of failing to start.
        """
        self.inbox = await get_channel_layer().new_channel("presence-manager-inbox")
        self._info = {
            "inbox": self.inbox,
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "proc": process_identity(),  # lets workers on this machine see that we died
        }
        self.keeper.start()
        # Often: after a freeze (a paused VM, SIGSTOP) this timer should come due first.
        self.scope.every("fence", lambda: get_settings().RECONCILE_INTERVAL / 10, self._check_fence)
        self.scope.spawn(self.status.run(), "status-push")
        self.scope.spawn(self._inbox_loop(), "inbox")
        self.scope.spawn(self._boot(), "boot")
        logger.info("[PresenceManager] worker %s started", self.worker_id)

    async def _boot(self) -> None:
        """One tick first (it buries workers that died, so their overdue timers and users
        are ours at once), then the timers, the presence events and the periodic work."""
        with contextlib.suppress(Exception):  # Redis down: the loops below retry
            await self.tick()
        interval = lambda: get_settings().RECONCILE_INTERVAL  # noqa: E731
        self.scope.spawn(self.pump.run(), "timer-pump")
        self.scope.spawn(self._events_loop(), "presence-events")
        self.scope.every("reconcile", interval, self.tick, first_delay=interval())
        self.scope.every("metrics", interval, self._latency.flush)

    async def shutdown(self) -> None:
        """Stop our managers cleanly and hand their users to the other workers at once."""
        self.pump.stop()  # its flag, not only its task's cancellation: see TimerPump.stop
        await self.scope.close(timeout=2.0)
        await asyncio.to_thread(self.keeper.stop)
        users = list(self.managers)
        await asyncio.gather(*(self._stop_local(u, release=True) for u in users))
        await self.status.flush()
        try:
            await self.leases.leave()
            if users:
                await get_channel_layer().send(get_settings().WORKER_CHANNEL, {"type": "presence.reconcile"})
        except Exception as exc:  # Redis gone: the leases expire by themselves
            logger.warning("[PresenceManager] could not hand over cleanly: %s", exc)
        logger.info("[PresenceManager] worker %s stopped", self.worker_id)

    # -- messages --------------------------------------------------------------

    async def handle(self, message: dict[str, Any]) -> None:
        """Dispatch one channel message; bad input is logged and dropped, never raised."""
        kind = message.get("type") if isinstance(message, dict) else None
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            logger.warning("[PresenceManager] dropped message of unknown type %r", kind)
            return
        try:
            await handler(message)
        except ValueError as exc:
            logger.warning("[PresenceManager] dropped malformed %s: %s", kind, exc)

    async def on_diff(self, message: dict[str, Any]) -> None:
        """A presence_diff sent to the worker channel: not from the store, so nothing was scheduled."""
        await self.apply_diffs([message], from_store=False)

    async def apply_diffs(self, batch: list[dict[str, Any]], *, from_store: bool) -> None:
        """Act on presence diffs, in order: log each change, then decide once per user."""
        received = time.monotonic()
        joined: dict[str, None] = {}
        sessions: dict[str, int] = {}
        for diff in batch:
            joins, leaves = diffs.user_ids(diff)
            counts: dict[str, int] = diff.get("sessions") or {}
            cleanups: dict[str, float] = diff.get("cleanup") or {}
            for user_id in joins:
                for _ in diff["joins"][user_id]["metas"] or [None]:  # one line per connection
                    logger.info("[PresenceManager] presence join: %s", user_id)
                joined[user_id] = None
            for user_id in leaves:
                left = counts.get(user_id) if from_store else None
                if left is None:
                    left = await self.store.sessions(user_id)
                for _ in diff["leaves"][user_id]["metas"] or [None]:
                    logger.info("[PresenceManager] presence leave: %s (%d sessions left)", user_id, left)
                if user_id in cleanups:
                    _log_cleanup(user_id, cleanups[user_id])
                elif left == 0 and not from_store:
                    await self.schedule_cleanup(user_id)
            sessions.update(counts)
        if joined and not from_store:
            for user_id in joined:
                await self.timers.cancel(cleanup_timer(user_id))
        mine = await self.leases.place(list(joined), self.store.user_prefix)
        await self._start_many(mine, received)
        for user_id in joined:
            self.status.announce(user_id)  # the new tab shows the state at once
        for user_id, count in sessions.items():
            self.status.announce_sessions(user_id, count)

    async def on_starts(self, user_ids: list[str]) -> None:
        """Users another worker placed on us (see leases.place): run those whose lease we hold."""
        received = time.monotonic()
        await self._start_many(await self.leases.mine(user_ids), received)

    async def on_timers(self, messages: list[dict[str, Any]]) -> None:
        """Due timers for the worker channel, claimed by this worker (livestream/timers.py).

        Cleanups come due in bursts (every tab of a daphne closing at once): they
        are taken together, two round trips for the lot, so the last of them is
        as punctual as the first.
        """
        cleanups: list[str] = []
        for message in messages:
            if message.get("type") == "presence.cleanup" and isinstance(message.get("user_id"), str):
                cleanups.append(message["user_id"])
            else:
                await self.handle(message)
        if cleanups:
            await self.on_cleanups(cleanups)

    async def on_cleanups(self, user_ids: list[str]) -> None:
        """Stop the managers of those of ``user_ids`` still away (ours; others' are forwarded)."""
        async with get_redis().pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.hlen(self.store.user_prefix + user_id)
                pipe.get(self.leases.lease_key(user_id))
            replies = await pipe.execute()
        for i, user_id in enumerate(user_ids):
            sessions, owner = replies[2 * i], replies[2 * i + 1]
            if sessions:
                logger.debug("[PresenceManager] %s came back; cleanup skipped", user_id)
            elif control.held_by(owner) is not None:
                await control.release_hold(self.leases, user_id)  # their cleanup ends a staff stop
            elif user_id in self.managers:
                self.scope.spawn(self.stop_manager(user_id), f"stop:{user_id}")
            elif owner and owner != self.worker_id:
                await self._forward(owner, {"type": "presence.stop", "user_id": user_id})

    async def on_cleanup(self, message: dict[str, Any]) -> None:
        user_id = _user_id(message)
        if await self.store.sessions(user_id) > 0:
            logger.debug("[PresenceManager] %s came back; cleanup skipped", user_id)
            return
        await control.release_hold(self.leases, user_id)
        if user_id in self.managers:
            self.scope.spawn(self.stop_manager(user_id), f"stop:{user_id}")
            return
        owner = await self.leases.owner(user_id)
        if owner and owner != self.worker_id:
            await self._forward(owner, {"type": "presence.stop", "user_id": user_id})

    async def on_stop_request(self, message: dict[str, Any]) -> None:
        user_id = _user_id(message)
        self.scope.spawn(self.stop_manager(user_id), f"stop:{user_id}")

    async def on_reconcile(self, message: dict[str, Any]) -> None:
        await self.tick()

    async def on_staff_request(self, message: dict[str, Any]) -> None:
        """manager.stop / manager.restart from the admin: the owner acts (livestream/control.py)."""
        user_id, by = control.parse(message)
        kind = message["type"]
        if user_id not in self.managers:
            owner = await self.leases.owner(user_id)
            if owner and owner != self.worker_id and control.held_by(owner) is None:
                if message.get("forwarded"):
                    logger.warning("[PresenceManager] %s of %s dropped: owner moved", kind, user_id)
                else:
                    await self._forward(owner, {**message, "forwarded": True})
                return
        action = self._staff_stop if kind == control.STOP else self._staff_restart
        self.scope.spawn(action(user_id, by), f"staff:{user_id}")

    # -- decisions -------------------------------------------------------------

    async def ensure_manager(self, user_id: str) -> bool:
        """Exactly one manager for ``user_id`` across all workers (idempotent); True if started here."""
        async with self._locks[user_id]:
            if user_id in self.managers:
                return False
            if await self.leases.acquire(user_id):
                self._start_local(user_id)
                return True
            return False

    async def schedule_cleanup(self, user_id: str) -> None:
        delay = get_settings().CLEANUP_TIMEOUT
        message = {"type": "presence.cleanup", "user_id": user_id}
        await self.timers.schedule(cleanup_timer(user_id), get_settings().WORKER_CHANNEL, message, delay)
        self.pump.wake()
        _log_cleanup(user_id, delay)

    async def stop_manager(self, user_id: str) -> None:
        """Stop our manager for an absent user; start it again if they came back meanwhile."""
        async with self._locks[user_id]:
            if user_id not in self.managers or await self.store.sessions(user_id) > 0:
                return
            await self._stop_local(user_id, release=False)
            released = await self.leases.release_if_absent(user_id, self.store.user_prefix + user_id)
            if not released:
                self._start_local(user_id)

    async def _staff_stop(self, user_id: str, by: str) -> None:
        """Stop now; a user still present is held down until their next join."""
        async with self._locks[user_id]:
            present = await self.store.sessions(user_id) > 0
            # Hold first: nobody may claim the user while their manager stops.
            if present and not await control.hold(self.leases, user_id, by):
                logger.warning("[PresenceManager] staff %s: %s is run by another worker now", by, user_id)
                return
            await self._stop_local(user_id, release=not present)
            logger.info(
                "[PresenceManager] staff %s stopped the manager of %s%s",
                by,
                user_id,
                "; held until their next join" if present else "",
            )
        await self._publish_state(get_settings().LEASE_TTL * 3)

    async def _staff_restart(self, user_id: str, by: str) -> None:
        """A fresh manager now, for a user who has one, or is present (held or not)."""
        async with self._locks[user_id]:
            held = await control.release_hold(self.leases, user_id)
            if user_id not in self.managers and not held and await self.store.sessions(user_id) == 0:
                logger.info("[PresenceManager] staff %s: no manager of %s to restart", by, user_id)
                return
            await self._stop_local(user_id, release=False)
            if not await self.leases.acquire(user_id):
                logger.warning("[PresenceManager] staff %s: %s is run by another worker now", by, user_id)
                return
            self._start_local(user_id)
            logger.info("[PresenceManager] staff %s restarted the manager of %s", by, user_id)
        await self._publish_state(get_settings().LEASE_TTL * 3)

    async def _start_many(self, user_ids: list[str], received: float) -> None:
        """Start a manager for each of ``user_ids`` whose lease we hold (checked by the caller)."""
        for i, user_id in enumerate(user_ids, 1):
            if user_id not in self.managers and not self._locks[user_id].locked():
                manager = self._start_local(user_id)
                manager.on_running = lambda m=manager: self._latency.observe(time.monotonic() - received)
            if i % _START_CHUNK == 0:
                await asyncio.sleep(0)

    def _start_local(self, user_id: str) -> UserStreamManager:
        self._fenced.discard(user_id)
        manager = UserStreamManager(user_id, self._components)
        self.managers[user_id] = manager
        manager.start()
        self.status.announce(user_id)
        logger.info("[PresenceManager] UserStreamManager started: %s", user_id)
        return manager

    async def _stop_local(self, user_id: str, *, release: bool) -> None:
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

    # -- leases: renewal results and the fence --------------------------------

    def _on_renewal(self, renewal: Renewal) -> None:
        """A renewal round reached Redis (livestream/lease_keeper.py); runs on our loop."""
        self.live_workers = renewal.live_workers
        if renewal.epoch_changed:
            # Empty Redis (first start, or restarted without its data; whichever
            # worker noticed first): until every open socket's heartbeat has
            # re-tracked it, absence means nothing.
            grace = get_settings().HEARTBEAT_INTERVAL + 2 * get_settings().RECONCILE_INTERVAL
            self._rebuild_until = time.monotonic() + grace
            if self.managers or self._fenced:
                logger.warning("[PresenceManager] Redis lost its data; rebuilding presence for %.0fs", grace)
        lost = set(renewal.lost)
        for user_id in lost & set(self.managers):
            logger.warning("[PresenceManager] lease of %s taken by another worker; stopping here", user_id)
            self.scope.spawn(self._stop_local(user_id, release=False), f"lost:{user_id}")
        # Managers we fenced whose lease is ours again (still, or taken back after
        # Redis lost it): run them again now rather than after someone's claim.
        resumable = [u for u in renewal.users if u in self._fenced and u not in lost]
        self._fenced.difference_update(u for u in renewal.users if u in lost)
        if resumable:
            self.scope.spawn(self._resume(resumable), "resume-fenced")

    async def _resume(self, user_ids: list[str]) -> None:
        rebuilding = time.monotonic() < self._rebuild_until
        for user_id in user_ids:
            async with self._locks[user_id]:
                if user_id in self.managers or user_id not in self._fenced:
                    continue
                if rebuilding or await self.store.sessions(user_id) > 0:
                    self._start_local(user_id)
                else:
                    self._fenced.discard(user_id)
                    await self.leases.release(user_id)

    async def _check_fence(self) -> None:
        if self.keeper.stale():
            self._fence()

    def _fence(self) -> None:
        """Unable to renew: stop everything before our leases can expire and be claimed."""
        if not self.managers or not self.keeper.stale():
            return
        logger.warning(
            "[PresenceManager] leases not renewed for %.1fs; stopping %d managers",
            time.monotonic() - self.keeper.last_renewal,
            len(self.managers),
        )
        for user_id, manager in list(self.managers.items()):
            manager.cancel()  # now: a worker waking from a freeze must not act first
            self._fenced.add(user_id)
            self.scope.spawn(self._stop_local(user_id, release=False), f"fence:{user_id}")

    # -- the reconcile tick ----------------------------------------------------

    async def tick(self) -> None:
        """One level-triggered pass over everything this worker is responsible for."""
        conf = get_settings()
        for dead in await self.leases.bury_dead_workers():
            logger.warning("[PresenceManager] worker %s died; its users are taken over now", dead)
        for change in await self.store.expire_stale():  # their leaves reach the events LIST
            logger.info(
                "[PresenceManager] expired connection %s of %s", change.meta.get("ref"), change.user_id
            )
        if not self.keeper.stale():
            running = len(self.managers) + len(self._fenced)
            claimed = await self.leases.claim_orphans(self.store.users_key, self.live_workers, running)
            await self._start_many(claimed, time.monotonic())
        rebuilding = time.monotonic() < self._rebuild_until
        if not rebuilding and self.managers:
            unattended = await run_script(
                get_redis(), _UNATTENDED, [self.timers.due_key], self.store.user_prefix, *self.managers
            )
            for user_id in unattended:
                await self.schedule_cleanup(user_id)
        await self._publish_state(conf.LEASE_TTL * 3)

    async def _publish_state(self, ttl: float) -> None:
        """This worker's managers, for presence_debug and the admin (see livestream/state.py)."""
        state_key = key("managers", self.worker_id)
        running = list(self.managers.items())
        statuses: dict[str, dict[str, Any]] = {}
        snapshot: dict[str, str] = {}
        for i, (uid, manager) in enumerate(running, 1):
            statuses[uid] = manager.status()
            snapshot[uid] = json.dumps(statuses[uid])
            if i % _STATE_CHUNK == 0:
                # 10,000 managers take ~0.1 s of CPU here: let their ticks run in
                # between instead of all being late together (docs/benchmarks.md).
                await asyncio.sleep(0)
        for uid, manager in running:
            if self.managers.get(uid) is not manager:  # stopped while we yielded
                del statuses[uid], snapshot[uid]
        async with get_redis().pipeline(transaction=True) as pipe:
            pipe.delete(state_key)
            if snapshot:
                pipe.hset(state_key, mapping=snapshot)
                pipe.pexpire(state_key, int(ttl * 1000))
            await pipe.execute()
        await self._restarts.publish(statuses)  # for livestream/metrics.py

    # -- plumbing --------------------------------------------------------------

    async def _events_loop(self) -> None:
        """Presence events (livestream/presence.py) and our start list, a batch at a time."""
        client = redis_client()  # a connection of its own: BLPOP holds it
        try:
            await self._read_events(client)
        finally:
            await client.aclose()

    async def _read_events(self, client: Any) -> None:
        events, starts = self.store.events_key, self.leases.starts_key()
        while not self.scope.closing:
            try:
                head = await client.blpop([starts, events], timeout=1)
                if head is None:
                    continue
                if head[0] == starts:
                    await self.on_starts([head[1], *(await client.lpop(starts, EVENTS_BATCH) or [])])
                    continue
                batch = [head[1], *await self.store.take_events(EVENTS_BATCH - 1)]
            except Exception as exc:
                logger.warning("[PresenceManager] reading presence events failed: %r", exc)
                await asyncio.sleep(1.0)
                continue
            parsed = []
            for raw in batch:
                try:
                    diff = json.loads(raw)
                    diffs.user_ids(diff)
                    parsed.append(diff)
                except (ValueError, TypeError, AttributeError) as exc:
                    logger.warning("[PresenceManager] dropped malformed presence event: %s", exc)
            if not parsed:
                continue
            try:
                await self.apply_diffs(parsed, from_store=True)
            except Exception as exc:
                logger.warning(
                    "[PresenceManager] presence events failed (%r); the reconcile tick repairs", exc
                )
            await diffs.publish_to_topic(diffs.merge(parsed))

    async def _forward(self, owner: str, message: dict[str, Any]) -> None:
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


def _user_id(message: dict[str, Any]) -> str:
    user_id = message.get("user_id")
    if not isinstance(user_id, str) or not user_id or len(user_id) > 64:
        raise ValueError(f"bad user_id {user_id!r}")
    return user_id
