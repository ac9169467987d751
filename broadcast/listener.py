"""Wake-ups for the CloudflareManagers of one process when their user's input changes.

``broadcast.inputs.set_input`` PUBLISHes the user id on ``keys.broadcast_wake()``. Each
process keeps ONE subscriber connection (per event loop) while at least one user is
registered here, and sets that user's events; wake-ups for users not here are ignored.
A wake-up published while the subscriber was reconnecting is lost, so every (re)subscribe
wakes every registered user once (they re-read their state), and the CloudflareManager
also polls (INPUT_POLL_INTERVAL). Same pattern as alerts/wakeups.py, without the claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from livestream import keys
from livestream.tasks import per_loop, retry_delay

logger = logging.getLogger("broadcast.listener")


class InputListener:
    def __init__(self) -> None:
        self.waiters: dict[str, set[asyncio.Event]] = {}
        self.task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def register(self, user_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self.waiters.setdefault(user_id, set()).add(event)
        if self.task is None or self.task.done():
            self.subscribed.clear()
            self.task = asyncio.create_task(self._listen(), name="broadcast:wake")
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

    async def _listen(self) -> None:
        from streampai.redisconf import redis_client

        failures = 0
        while True:
            client = redis_client()
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(keys.broadcast_wake())
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    failures = 0
                    if message.get("type") == "subscribe":
                        self.subscribed.set()
                        for user_id in list(self.waiters):
                            self.wake(user_id)  # anything published before now was missed
                    elif message.get("type") == "message" and isinstance(message.get("data"), str):
                        self.wake(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = retry_delay(failures, 0.1, 2.0)
                if failures == 1:
                    logger.warning("[broadcast] input wake-up subscriber lost (%r); reconnecting", exc)
                self.subscribed.clear()
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()


listener = per_loop(InputListener)
