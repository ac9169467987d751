"""What the AlertManagers of one process share: wake-ups without polling, batched claims.

A worker may run 10,000 managers, each with an AlertManager, started in a burst of
thousands. Nothing here costs Redis a command per idle AlertManager:

* **Wake-ups.** The webhook's push script PUBLISHes the user id on ``alerts:wake``
  (livestream/keys.py) in the same step as the RPUSH. Each process keeps ONE
  subscriber connection to that channel (per event loop), open while at least one
  AlertManager is registered here, and sets that user's event; a wake-up for a user
  with no manager here is ignored.
* **Missed wake-ups.** Messages published while the subscriber was not connected are
  lost (pub/sub). So each time the subscription is confirmed (first start, after a
  reconnect), and every ALERT_RECHECK_INTERVAL as a safety net, the listener reads the
  queue length of every registered user (pipelined, BATCH per round trip) and wakes
  those with alerts waiting. A lost wake-up delays an alert, never loses it: the
  alert itself is in the LIST.
* **Claims.** Each AlertManager claims its user's queue when it starts
  (alerts/queue.py). Claims arriving together are sent together, up to
  BATCH users per script call, on a client of the listener's own: a burst of starts
  does not queue thousands of coroutines for the shared connection pool, and other
  components' bursts on that pool cannot starve the claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis

from alerts.queue import Claimed, claim_many, lengths
from livestream import keys
from livestream.conf import get_settings
from livestream.tasks import per_loop

logger = logging.getLogger("livestream.alert_wakeups")

# Users per claim script call / per pipelined LLEN round trip.
BATCH = 500
# Reconnect backoff after the subscriber connection failed (seconds).
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0


def stop_requested() -> bool:
    """True once this task was asked to stop, even if a library turned the cancellation into
    another error on the way (redis-py's connect and pool waits can report a cancel that
    lands in their timeout as a ConnectionError): a retry loop must then stop, not retry."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class WakeListener:
    """The registered AlertManagers of one event loop, and the tasks that serve them."""

    def __init__(self) -> None:
        self.waiters: dict[str, set[asyncio.Event]] = {}
        self.task: asyncio.Task[None] | None = None
        # Set each time the subscription is confirmed (tests await it).
        self.subscribed = asyncio.Event()
        # Claims and re-checks go through a client of their own: a burst of other
        # components' commands on the shared pool cannot starve them.
        self.client: aioredis.Redis | None = None
        self._claims: list[tuple[str, str, int | None, asyncio.Future[Claimed]]] = []
        self._claimer: asyncio.Task[None] | None = None
        self._recheck_now = asyncio.Event()

    # -- registration ---------------------------------------------------------

    def register(self, user_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self.waiters.setdefault(user_id, set()).add(event)
        if self.task is None or self.task.done():
            from streampai.redisconf import redis_client

            self.subscribed.clear()
            self.client = redis_client()
            self.task = asyncio.create_task(self._serve(self.client), name="alerts:wake")
        return event

    def unregister(self, user_id: str, event: asyncio.Event) -> None:
        events = self.waiters.get(user_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self.waiters[user_id]
        if not self.waiters and self.task is not None:
            self.task.cancel()
            self.task = None

    def wake(self, user_id: str) -> None:
        for event in self.waiters.get(user_id, ()):
            event.set()

    # -- batched claims ---------------------------------------------------------

    async def claim(self, user_id: str, token: str, fence: int | None = None) -> Claimed:
        """``AlertQueue(user_id).claim(token, fence)``, sent together with the other claims waiting."""
        future: asyncio.Future[Claimed] = asyncio.get_running_loop().create_future()
        self._claims.append((user_id, token, fence, future))
        if self._claimer is None or self._claimer.done():
            self._claimer = asyncio.create_task(self._send_claims(), name="alerts:claims")
        return await future

    async def _send_claims(self) -> None:
        while self._claims:
            batch, self._claims = self._claims[:BATCH], self._claims[BATCH:]
            try:
                results = await claim_many(
                    [(user_id, token) for user_id, token, _, _ in batch],
                    self.client,
                    [fence for _, _, fence, _ in batch],
                )
            except Exception as exc:
                logger.warning(
                    "[alerts] claiming the queues of %d users failed (%r); they retry", len(batch), exc
                )
                for _, _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (user_id, _, _, future), claimed in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(claimed)
                elif claimed.stale is not None:  # its AlertManager stopped meanwhile
                    logger.warning(
                        "[UserStreamManager:%s] AlertManager: alert %s was in flight when its previous "
                        "instance stopped; not sent again (at most once)",
                        user_id,
                        str(claimed.stale.get("id", "?"))[:64],
                    )

    # -- the subscriber and the re-checks ----------------------------------------

    async def _serve(self, client: aioredis.Redis) -> None:
        recheck = asyncio.create_task(self._recheck_loop(), name="alerts:recheck")
        try:
            await self._listen()
        finally:
            recheck.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({recheck}, timeout=1.0)  # it stops before its client closes
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _listen(self) -> None:
        from streampai.redisconf import redis_client

        backoff = BACKOFF_MIN
        while True:
            client = redis_client()
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(keys.alerts_wake())
                while True:
                    # A bounded wait, so an idle subscriber never trips the socket timeout.
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        backoff = BACKOFF_MIN
                        self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stop_requested():
                    raise asyncio.CancelledError from exc
                logger.warning("[alerts] wake-up subscriber lost (%r); reconnecting in %.1fs", exc, backoff)
                self.subscribed.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()

    def _handle(self, message: dict[str, Any]) -> None:
        if message.get("type") == "subscribe":
            # Anything published before this moment was missed: look at every queue.
            self.subscribed.set()
            self._recheck_now.set()
        elif message.get("type") == "message":
            data = message.get("data")
            if isinstance(data, str):
                self.wake(data)

    async def _recheck_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recheck_now.wait(), get_settings().ALERT_RECHECK_INTERVAL)
            self._recheck_now.clear()
            try:
                await self.wake_pending()
            except Exception as exc:  # Redis trouble: the next re-check tries again
                if stop_requested():
                    raise asyncio.CancelledError from exc
                logger.warning("[alerts] queue re-check failed: %r", exc)

    async def wake_pending(self) -> int:
        """Wake every registered user whose queue holds alerts; how many were woken."""
        users = list(self.waiters)
        woken = 0
        for start in range(0, len(users), BATCH):
            chunk = users[start : start + BATCH]
            for user_id, length in zip(chunk, await lengths(chunk, self.client), strict=True):
                if length > 0:
                    self.wake(user_id)
                    woken += 1
        return woken


# This event loop's listener (clients and events cannot cross loops).
listener = per_loop(WakeListener)
