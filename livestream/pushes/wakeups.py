"""Wake-ups without polling: one pub/sub subscriber per event loop for a channel whose
messages are user ids, and the local waiters (an asyncio.Event each) of those users.

A process may run thousands of managers whose components wait for "something changed for
my user" (an alert queued, the ingest's input changed). Rather than a subscription each,
the process keeps ONE subscriber connection to the channel, open while at least one waiter
is registered, and sets the events of the user each message names; a message for a user
with no waiter here is ignored.

Messages published while the subscriber was not connected are lost (pub/sub): each time
the subscription is confirmed (the first start, after a reconnect) ``resubscribed()`` runs,
so a subclass re-reads what it may have missed (the default wakes every waiter). A lost
wake-up must only delay what it announces: the state itself is kept elsewhere in Redis.

Used by alerts/wakeups.py (the AlertManagers: plus batched claims and periodic re-checks)
and broadcast/listener.py (the CloudflareManagers' input state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from livestream.tasks import retry_delay, stop_requested

# Reconnect backoff after the subscriber connection failed (seconds).
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0


class WakeSubscriber:
    """The registered waiters of one event loop and the subscriber task that serves them.

    ``channel`` names the pub/sub channel (called at each subscribe); ``label`` prefixes the
    one warning line a lost subscriber writes ("[<label>] wake-up subscriber lost ...").
    """

    def __init__(self, channel: Callable[[], str], label: str, logger: logging.Logger) -> None:
        self.channel = channel
        self.label = label
        self.logger = logger
        self.waiters: dict[str, set[asyncio.Event]] = {}
        self.task: asyncio.Task[None] | None = None
        # Set each time the subscription is confirmed (tests await it).
        self.subscribed = asyncio.Event()

    def register(self, user_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self.waiters.setdefault(user_id, set()).add(event)
        if self.task is None or self.task.done():
            self.subscribed.clear()
            self.task = asyncio.create_task(self.serve(), name=f"{self.label}:wake")
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

    def resubscribed(self) -> None:
        """The subscription is confirmed: anything published before now was missed."""
        for user_id in list(self.waiters):
            self.wake(user_id)

    async def serve(self) -> None:
        """The subscriber task (a subclass may run more beside it)."""
        await self.listen()

    async def listen(self) -> None:
        from streampai.redisconf import redis_client

        failures = 0
        while True:
            client = redis_client()
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self.channel())
                while True:
                    # A bounded wait, so an idle subscriber never trips the socket timeout.
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        failures = 0
                        self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stop_requested():
                    raise asyncio.CancelledError from exc
                failures += 1
                delay = retry_delay(failures, BACKOFF_MIN, BACKOFF_MAX)
                if failures == 1:  # one line per outage, not one per attempt
                    self.logger.warning("[%s] wake-up subscriber lost (%r); reconnecting", self.label, exc)
                self.subscribed.clear()
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()

    def _handle(self, message: dict[str, Any]) -> None:
        if message.get("type") == "subscribe":
            self.subscribed.set()
            self.resubscribed()
        elif message.get("type") == "message":
            data = message.get("data")
            if isinstance(data, str):
                self.wake(data)
