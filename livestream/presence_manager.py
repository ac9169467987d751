"""PresenceManager: runs one UserStreamManager per present user, in a worker.

Edge-triggered by presence_diff messages and cleanup timers, and level-triggered
by a reconcile tick, so a lost message, a crashed worker or a restarted Redis is
repaired within a tick instead of leaking or losing a manager:

  join     -> cancel the user's pending cleanup; take the lease and start a
              manager unless a live worker already runs one.
  leave    -> if the user has no connection left, schedule ``cleanup:<user>``
              (a channel-layer timer) CLEANUP_TIMEOUT seconds out.
  cleanup  -> if the user is still away, the lease owner stops the manager (a
              non-owner forwards the request to the owner's inbox channel).
  tick     -> renew our leases (stop what we lost), expire connections whose
              heartbeats stopped, claim our share of present users nobody runs,
              schedule cleanups a lost leave never scheduled, publish state.

All state that matters is in Redis; ``managers`` only holds this process's tasks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer

from livestream import diffs
from livestream.conf import get_settings
from livestream.leases import LeaseStore
from livestream.presence import PresenceStore
from livestream.redis import get_redis, key, run_script
from livestream.timers import TimerPump, TimerStore
from livestream.user_stream_manager import UserStreamManager

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[None]]

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

# KEYS: epoch. Returns 1 if Redis still has our epoch marker, else sets it and returns 0.
_EPOCH = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
redis.call('SET', KEYS[1], ARGV[1])
return 0
"""


def cleanup_timer(user_id: str) -> str:
    return f"cleanup:{user_id}"


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class PresenceManager:
    def __init__(self, worker_id: str | None = None) -> None:
        self.worker_id = worker_id or new_worker_id()
        self.managers: dict[str, UserStreamManager] = {}
        self.store = PresenceStore()
        self.timers = TimerStore()
        self.leases = LeaseStore(self.worker_id)
        self.pump = TimerPump(self.timers)
        self.inbox: str | None = None
        self.live_workers = 1
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._last_renewal = time.monotonic()
        self._rebuild_until = 0.0
        self._handlers: dict[str, Handler] = {
            "presence_diff": self.on_diff,
            "presence.cleanup": self.on_cleanup,
            "presence.stop": self.on_stop_request,
            "presence.reconcile": self.on_reconcile,
        }

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start the loops; the first tick starts managers for users already present.

        Nothing here needs Redis, so a worker started before Redis is up simply
        retries in its loops instead of failing to start.
        """
        self.inbox = await get_channel_layer().new_channel("presence-manager-inbox")
        self._loops = [
            asyncio.create_task(self._tick_loop(), name="reconcile"),
            asyncio.create_task(self.pump.run(), name="timer-pump"),
            asyncio.create_task(self._inbox_loop(), name="inbox"),
        ]
        logger.info("[PresenceManager] worker %s started", self.worker_id)

    async def shutdown(self) -> None:
        """Stop our managers cleanly and hand their users to the other workers at once."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        users = list(self.managers)
        await asyncio.gather(*(self._stop_local(u, release=True) for u in users))
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
        joins, leaves = diffs.user_ids(message)
        for user_id in joins:
            logger.info("[PresenceManager] presence join: %s", user_id)
            await self.timers.cancel(cleanup_timer(user_id))
            await self.ensure_manager(user_id)
        for user_id in leaves:
            sessions = await self.store.sessions(user_id)
            logger.info("[PresenceManager] presence leave: %s (%d sessions left)", user_id, sessions)
            if sessions == 0:
                await self.schedule_cleanup(user_id)

    async def on_cleanup(self, message: dict[str, Any]) -> None:
        user_id = _user_id(message)
        if await self.store.sessions(user_id) > 0:
            logger.debug("[PresenceManager] %s came back; cleanup skipped", user_id)
            return
        if user_id in self.managers:
            self._spawn(self.stop_manager(user_id))
            return
        owner = await self.leases.owner(user_id)
        if owner and owner != self.worker_id:
            await self._forward(owner, {"type": "presence.stop", "user_id": user_id})

    async def on_stop_request(self, message: dict[str, Any]) -> None:
        self._spawn(self.stop_manager(_user_id(message)))

    async def on_reconcile(self, message: dict[str, Any]) -> None:
        await self.tick()

    # -- decisions -------------------------------------------------------------

    async def ensure_manager(self, user_id: str) -> None:
        """Exactly one manager for ``user_id`` across all workers (idempotent)."""
        async with self._locks[user_id]:
            if user_id in self.managers:
                return
            if await self.leases.acquire(user_id):
                self._start_local(user_id)

    async def schedule_cleanup(self, user_id: str) -> None:
        delay = get_settings().CLEANUP_TIMEOUT
        message = {"type": "presence.cleanup", "user_id": user_id}
        await self.timers.schedule(cleanup_timer(user_id), get_settings().WORKER_CHANNEL, message, delay)
        self.pump.wake()
        logger.info("[PresenceManager] cleanup scheduled: %s in %ss", user_id, f"{delay:g}")

    async def stop_manager(self, user_id: str) -> None:
        """Stop our manager for an absent user; start it again if they came back meanwhile."""
        async with self._locks[user_id]:
            if user_id not in self.managers or await self.store.sessions(user_id) > 0:
                return
            await self._stop_local(user_id, release=False)
            released = await self.leases.release_if_absent(user_id, self.store.user_prefix + user_id)
            if not released:
                self._start_local(user_id)

    def _start_local(self, user_id: str) -> None:
        manager = UserStreamManager(user_id)
        self.managers[user_id] = manager
        manager.start()
        logger.info("[PresenceManager] UserStreamManager started: %s", user_id)

    async def _stop_local(self, user_id: str, *, release: bool) -> None:
        manager = self.managers.pop(user_id, None)
        if manager is None:
            return
        await manager.stop()
        logger.info("[PresenceManager] UserStreamManager stopped: %s", user_id)
        if release:
            try:
                await self.leases.release(user_id)
            except Exception as exc:
                logger.warning("[PresenceManager] lease of %s not released: %s", user_id, exc)

    # -- the reconcile tick ----------------------------------------------------

    async def tick(self) -> None:
        """One level-triggered pass over everything this worker is responsible for."""
        conf = get_settings()
        self.live_workers = await self._register()
        rebuilding = await self._check_epoch()
        await self._renew_leases()
        stale = await self.store.expire_stale()
        if stale:
            for change in stale:
                logger.info(
                    "[PresenceManager] expired connection %s of %s", change.meta.get("ref"), change.user_id
                )
            await diffs.broadcast(diffs.presence_diff(leaves=stale))
        for user_id in await self.leases.claim_orphans(self.store.users_key, self.live_workers):
            async with self._locks[user_id]:
                if user_id not in self.managers:
                    self._start_local(user_id)
        if not rebuilding and self.managers:
            unattended = await run_script(
                get_redis(), _UNATTENDED, [self.timers.due_key], self.store.user_prefix, *self.managers
            )
            for user_id in unattended:
                await self.schedule_cleanup(user_id)
        await self._publish_state(conf.LEASE_TTL * 3)

    async def _tick_loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:
                logger.warning("[PresenceManager] reconcile tick failed: %r", exc)
                self._fence()
            await asyncio.sleep(get_settings().RECONCILE_INTERVAL)

    async def _renew_leases(self) -> None:
        lost = await self.leases.renew(list(self.managers))
        self._last_renewal = time.monotonic()
        for user_id in lost:
            logger.warning("[PresenceManager] lease of %s taken by another worker; stopping here", user_id)
            await self._stop_local(user_id, release=False)

    def _fence(self) -> None:
        """Unable to renew: stop everything before our leases can expire and be claimed."""
        conf = get_settings()
        if (
            self.managers
            and time.monotonic() - self._last_renewal >= conf.LEASE_TTL - conf.RECONCILE_INTERVAL
        ):
            logger.warning(
                "[PresenceManager] leases not renewed for %.1fs; stopping %d managers",
                time.monotonic() - self._last_renewal,
                len(self.managers),
            )
            for user_id in list(self.managers):
                self._spawn(self._stop_local(user_id, release=False))

    async def _register(self) -> int:
        info = {"inbox": self.inbox or "", "host": socket.gethostname(), "pid": str(os.getpid())}
        return await self.leases.beat(info)

    async def _check_epoch(self) -> bool:
        """True while presence is being rebuilt after Redis lost its data."""
        if not await run_script(get_redis(), _EPOCH, [key("epoch")], self.worker_id):
            # Empty Redis (first start, or restarted without its data): until every
            # open socket's heartbeat has re-tracked it, absence means nothing.
            grace = get_settings().HEARTBEAT_INTERVAL + 2 * get_settings().RECONCILE_INTERVAL
            self._rebuild_until = time.monotonic() + grace
            if self.managers:
                logger.warning("[PresenceManager] Redis lost its data; rebuilding presence for %.0fs", grace)
        return time.monotonic() < self._rebuild_until

    async def _publish_state(self, ttl: float) -> None:
        """This worker's managers, for presence_debug and the admin (see livestream/state.py)."""
        state_key = key("managers", self.worker_id)
        snapshot = {uid: json.dumps(m.status()) for uid, m in self.managers.items()}
        async with get_redis().pipeline(transaction=True) as pipe:
            pipe.delete(state_key)
            if snapshot:
                pipe.hset(state_key, mapping=snapshot)
                pipe.pexpire(state_key, int(ttl * 1000))
            await pipe.execute()

    # -- plumbing --------------------------------------------------------------

    async def _forward(self, owner: str, message: dict[str, Any]) -> None:
        inbox = (await self.leases.worker_info(owner)).get("inbox")
        if inbox:
            await get_channel_layer().send(inbox, message)

    async def _inbox_loop(self) -> None:
        layer = get_channel_layer()
        while True:
            try:
                message = await layer.receive(self.inbox)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("[PresenceManager] inbox receive failed: %r", exc)
                await asyncio.sleep(1.0)
                continue
            await self.handle(message)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("[PresenceManager] background task failed", exc_info=task.exception())


def _user_id(message: dict[str, Any]) -> str:
    user_id = message.get("user_id")
    if not isinstance(user_id, str) or not user_id or len(user_id) > 64:
        raise ValueError(f"bad user_id {user_id!r}")
    return user_id
