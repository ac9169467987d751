"""AlertManager: delivers a user's queued alerts (donations, ...) to their open dashboard tabs.

The webhook (alerts/views.py) queues alerts in Redis whether or not this runs
(alerts/queue.py); while the user's manager runs, this component emits
them, oldest first, one every ALERT_DISPLAY_INTERVAL seconds:

  {"type": "event", "component": "AlertManager", "event": "alert",
   "data": {"id": "3f9c...", "kind": "donation", "from": "Ana", "amount": 5, "currency": "EUR",
            "message": "gg", "queued_at": 1764477000.123}}

and dashboard/static/dashboard/alerts.js shows each in the page's overlay.

Delivery rule: each alert at most once, in order; exactly once unless a worker dies
in the few milliseconds between taking an alert and emitting it.

1. A new instance (first start, a supervisor restart, a takeover by another worker
   after a kill -9) first *claims* the queue with a fresh token (batched with the
   other starts of the process, alerts/wakeups.py): from then on only it
   can take, and an older instance still running somewhere (a fenced worker not yet
   stopped) gets SUPERSEDED and stops delivering instead of racing it. An idle
   instance sends no command: it waits for a wake-up.
2. *Take* moves the head of the queue into the user's in-flight slot (one script,
   only for the owner). *Emit* follows at once, then *ack* clears the slot and
   counts the alert. Nothing else happens in between: the display wait comes after
   the ack. Take, emit and ack run as one step that a cancellation (the manager
   stopping, a restart, a fence) does not split: the cancellation waits for the step
   (at most STEP_TIMEOUT), so a stop never leaves an alert taken and not emitted.
3. An alert still in flight when a new instance claims was taken by an instance that
   died (kill -9, power loss) before its ack, and nobody can tell whether its emit
   reached the tabs. It is **not** sent again (at most once): the claim removes it,
   and it is logged with its id and counted in status() as ``lost_in_flight``. The
   window is one or two Redis round trips per alert, against seconds of display
   wait, so after a kill -9 every alert still queued is delivered exactly once.
   Under Sentinel a take is acknowledged by a replica before the emit (alerts/queue.py),
   so a failover cannot put an alert already shown back into the queue.
4. An emit that raises (Redis unreachable) is treated the same way: logged, counted,
   not retried. A take whose reply was lost, or an ack that failed, leaves the alert
   in flight; the owner's next take finds it there and logs it the same way. Redis
   errors are retried with backoff rather than crashing the component into its
   restart limit.

5. An alert is taken only while the user has a connection in presence (checked in the
   take script). The manager keeps running CLEANUP_TIMEOUT after the last tab closed,
   and a deploy's hand-off leaves tabs reconnecting for a few seconds: meanwhile the
   alerts stay queued (AWAY, looked at every AWAY_POLL) instead of being emitted to
   nobody. A tab whose socket drops without a close (its daphne killed) still counts
   as present until the sweeper expires it, and the user's other tabs, if any, show
   what is emitted meanwhile: events are not replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

from alerts.queue import AWAY, SUPERSEDED, Alert, AlertQueue
from alerts.wakeups import WakeListener, listener
from livestream.components.base import Component
from livestream.conf import get_settings
from livestream.tasks import stop_requested

logger = logging.getLogger(__name__)

# A cancelled delivery step may finish for this long (one take + emit + ack).
STEP_TIMEOUT = 1.0
# While the user has no open tab, look again this often (seconds): the manager still runs
# for CLEANUP_TIMEOUT after the last tab closed, and tabs handed off by a deploy come back
# within seconds; nothing wakes the component when a tab returns.
AWAY_POLL = 0.5
# Backoff after a Redis error (seconds), doubling.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0


class AlertManager(Component):
    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.queue = AlertQueue(user_id)
        self.claim_token = secrets.token_hex(8)  # not .token: that is the lease's fencing token
        self.queued = 0
        self.delivered = 0  # all time, for this user (kept in Redis)
        self.lost_in_flight = 0  # by this instance: see rule 3
        self.emit_failed = 0
        self.unreplicated = 0  # takes no replica had within REPLICA_WAIT (held until one does)
        self.superseded = False

    def status(self) -> dict[str, Any]:
        return {
            "queued": self.queued,
            "delivered": self.delivered,
            "lost_in_flight": self.lost_in_flight,
            "emit_failed": self.emit_failed,
            "unreplicated": self.unreplicated,
        }

    async def run(self) -> None:
        wakeups = listener()
        wake = wakeups.register(self.user_id)
        try:
            if await self._claim(wakeups):
                wake.set()
            await self._deliver(wake)
        finally:
            wakeups.unregister(self.user_id, wake)

    async def _claim(self, wakeups: WakeListener) -> bool:
        """Claim the queue (batched with other starts); True if alerts are waiting."""
        backoff = BACKOFF_MIN
        while True:
            try:
                claimed = await wakeups.claim(self.user_id, self.claim_token, self.token)
                break
            except Exception as exc:  # Redis down: the listener logged it once for the batch; retry
                if stop_requested():
                    raise asyncio.CancelledError from exc
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        if claimed.fenced:  # our lease token is stale: the current owner's instance keeps the queue
            self.fence.refused("alert queue claim")
            return False
        self.queued, self.delivered = claimed.queued, claimed.delivered
        if claimed.stale is not None:
            self._lost(claimed.stale, "was in flight when its previous instance stopped")
        return claimed.queued > 0

    async def _deliver(self, wake: asyncio.Event) -> None:
        """Sleep until woken (an alert was queued), then deliver until the queue is empty."""
        display = get_settings().ALERT_DISPLAY_INTERVAL
        backoff = BACKOFF_MIN
        while True:
            await wake.wait()
            wake.clear()  # a wake-up from now on means another look after this drain
            while True:
                try:
                    taken = await self._step()
                    backoff = BACKOFF_MIN
                except Exception as exc:
                    if stop_requested():  # a cancellation reported as a Redis error
                        raise asyncio.CancelledError from exc
                    backoff = await self._redis_trouble("taking an alert", exc, backoff)
                    continue
                if taken == SUPERSEDED:
                    self.superseded = True
                    logger.warning(
                        "[UserStreamManager:%s] AlertManager superseded by a newer instance; stops delivering",
                        self.user_id,
                    )
                    return
                if taken is None:
                    break
                if taken == AWAY:  # no open tab: an emit would reach nobody; the alerts wait
                    await asyncio.sleep(AWAY_POLL)
                    continue
                await asyncio.sleep(display)

    async def _step(self) -> Alert | str | None:
        """Take, emit, ack as one step a cancellation waits for (rule 2)."""
        step = asyncio.ensure_future(self._take_emit_ack())
        try:
            return await asyncio.shield(step)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait({step}, timeout=STEP_TIMEOUT)
            raise

    async def _take_emit_ack(self) -> Alert | str | None:
        taken = await self.queue.take(self.claim_token, fence=self.fence)
        if isinstance(taken, str):
            return AWAY if taken == AWAY else SUPERSEDED
        self.queued = taken.queued
        if taken.previous is not None:
            self._lost(taken.previous, "was left in flight by a failed step")
        alert = taken.alert
        if alert is None:
            return None
        if taken.replicated is False and not await self._confirmed(_alert_id(alert)):
            return alert  # left in flight: the next take or claim reports it lost, with its reason
        emitted = True
        try:
            await self.emit("alert", alert)
        except Exception as exc:
            emitted = False
            self.emit_failed += 1
            logger.warning(
                "[UserStreamManager:%s] AlertManager: alert %s could not be emitted (%r); not retried (at most once)",
                self.user_id,
                _alert_id(alert),
                exc,
            )
        delivered = await self.queue.ack(_alert_id(alert), delivered=emitted, fence=self.fence)
        if delivered >= 0:  # -1: our lease token is stale (logged once by the fence)
            self.delivered = delivered
        return alert

    async def _confirmed(self, alert_id: str) -> bool:
        """A take no replica acknowledged within REPLICA_WAIT: shown only once one does (a
        failover could otherwise put it back into the queue, to be shown twice). Asked
        again (each ask waits up to REPLICA_WAIT) until a replica has it (without Sentinel:
        or the master reports none any more), or the alert left the slot (superseded):
        a lagging replica delays alerts, it never repeats or drops one. A stop meanwhile
        cancels the step after STEP_TIMEOUT: the alert stays in flight and the next owner
        reports it lost, with its reason."""
        self.unreplicated += 1
        logger.warning(
            "[UserStreamManager:%s] AlertManager: alert %s waits for a replica's acknowledgement",
            self.user_id,
            alert_id,
        )
        while True:
            confirmed = await self.queue.confirm(alert_id)
            if confirmed != "waiting":
                return confirmed == "replicated"

    def _lost(self, alert: Alert, why: str) -> None:
        self.lost_in_flight += 1
        logger.warning(
            "[UserStreamManager:%s] AlertManager: alert %s %s; not sent again (at most once)",
            self.user_id,
            _alert_id(alert),
            why,
        )

    async def _redis_trouble(self, doing: str, exc: Exception, backoff: float) -> float:
        """Wait before retrying; one log line per outage (the first failure of a streak)."""
        if backoff == BACKOFF_MIN:
            logger.warning(
                "[UserStreamManager:%s] AlertManager: Redis error while %s (%r); retrying until it answers",
                self.user_id,
                doing,
                exc,
            )
        await asyncio.sleep(backoff)
        return min(backoff * 2, BACKOFF_MAX)


def _alert_id(alert: Alert) -> str:
    return str(alert.get("id", "?"))[:64]
