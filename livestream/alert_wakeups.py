"""Wake a user's AlertManager when an alert is queued for them, without polling.

The webhook's push script PUBLISHes the user id on ``alerts:wake`` (livestream/keys.py)
in the same step as the RPUSH. Each process that runs AlertManagers keeps ONE
subscriber connection to that channel (per event loop), opened while at least one
AlertManager is registered here and closed with the last: 10,000 idle managers cost
one connection and no commands, where polling would cost 10,000 round trips per
interval. A wake-up for a user with no manager in this process is ignored.

Messages published while the subscriber was not connected are lost (pub/sub), so
every time the subscription is confirmed (first start, and after a reconnect) every
registered manager is woken once to look at its queue; a manager also looks when it
starts and every ALERT_RECHECK_INTERVAL. A lost wake-up therefore delays an alert,
never loses it: the alert itself is in the LIST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any

from livestream import keys

logger = logging.getLogger(__name__)

# Reconnect backoff after the subscriber connection failed (seconds).
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0


class WakeListener:
    """The registered AlertManagers of one event loop, and the subscriber that wakes them."""

    def __init__(self) -> None:
        self.waiters: dict[str, set[asyncio.Event]] = {}
        self.task: asyncio.Task[None] | None = None
        # Set each time the subscription is confirmed (tests await it).
        self.subscribed = asyncio.Event()

    def register(self, user_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self.waiters.setdefault(user_id, set()).add(event)
        if self.task is None or self.task.done():
            self.subscribed.clear()
            self.task = asyncio.create_task(self._listen(), name="alerts:wake")
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

    def wake_all(self) -> None:
        for events in self.waiters.values():
            for event in events:
                event.set()

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
            # Anything published before this moment was missed: everyone looks once.
            self.subscribed.set()
            self.wake_all()
        elif message.get("type") == "message":
            data = message.get("data")
            if isinstance(data, str):
                self.wake(data)


_listeners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WakeListener] = weakref.WeakKeyDictionary()


def listener() -> WakeListener:
    """This event loop's listener (clients and events cannot cross loops)."""
    loop = asyncio.get_running_loop()
    found = _listeners.get(loop)
    if found is None:
        found = _listeners[loop] = WakeListener()
    return found
