"""What the AlertManagers of one process share: wake-ups without polling, batched claims.

A worker may run 10,000 managers, each with an AlertManager, started in a burst of
thousands. Nothing here costs Redis a command per idle AlertManager:

* **Wake-ups.** The webhook's push script PUBLISHes the user id on ``alerts:wake``
  (livestream/keys.py) in the same step as the RPUSH. Each process keeps ONE
  subscriber connection to that channel (per event loop; livestream/pushes/wakeups.py),
  open while at least one AlertManager is registered here, and sets that user's event;
  a wake-up for a user with no manager here is ignored.
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

import redis.asyncio as aioredis

from alerts.queue import Claimed, claim_many, lengths
from livestream import keys
from livestream.conf import get_settings
from livestream.pushes.wakeups import WakeSubscriber
from livestream.tasks import per_loop, stop_requested

logger = logging.getLogger("livestream.alert_wakeups")

# Users per claim script call / per pipelined LLEN round trip.
BATCH = 500


class WakeListener(WakeSubscriber):
    """The registered AlertManagers of one event loop, and the tasks that serve them."""

    def __init__(self) -> None:
        super().__init__(keys.alerts_wake, "alerts", logger)
        # Claims and re-checks go through a client of their own: a burst of other
        # components' commands on the shared pool cannot starve them.
        self.client: aioredis.Redis | None = None
        self._claims: list[tuple[str, str, int | None, asyncio.Future[Claimed]]] = []
        self._claimer: asyncio.Task[None] | None = None
        self._recheck_now = asyncio.Event()

    def register(self, user_id: str) -> asyncio.Event:
        if self.task is None or self.task.done():
            from streampai.redisconf import redis_client

            self.client = redis_client()  # closed by serve() when the last waiter leaves
        return super().register(user_id)

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

    async def serve(self) -> None:
        client = self.client
        recheck = asyncio.create_task(self._recheck_loop(), name="alerts:recheck")
        try:
            await self.listen()
        finally:
            recheck.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({recheck}, timeout=1.0)  # it stops before its client closes
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    def resubscribed(self) -> None:
        # Anything published before this moment was missed: look at every queue.
        self._recheck_now.set()

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
