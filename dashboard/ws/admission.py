"""Admission control for dashboard handshakes: a few at a time, the rest wait their turn.

Each handshake costs daphne its session and user lookups (AuthMiddlewareStack,
in Django's one thread for database work), the origin check and the track. When
thousands arrive at once (a deploy hands every tab of a daphne to this one), all
of them starting that work together made each take longer than daphne's handshake
timeout: they were refused after the work was done, the pages backed off and came
back as a wave, and the throughput collapsed. So at most MAX_PENDING_HANDSHAKES run
their handshake at once in a process; the others wait in arrival order (costing a
socket and a coroutine, nothing else), and one that cannot start within
HANDSHAKE_QUEUE_WAIT is refused at once (HTTP 403, before any work) so the page
retries later with its backoff instead of timing out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from livestream.conf import get_settings
from livestream.tasks import per_loop

logger = logging.getLogger("dashboard.consumers")

_semaphore = per_loop(lambda: asyncio.Semaphore(get_settings().MAX_PENDING_HANDSHAKES))
_refused = {"count": 0, "logged_at": 0.0}


class HandshakeGate:
    """ASGI middleware for the ``websocket`` scope (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        slots = _semaphore()
        try:
            async with asyncio.timeout(get_settings().HANDSHAKE_QUEUE_WAIT):
                await slots.acquire()
        except TimeoutError:
            await _refuse(receive, send)
            return
        gated = _ReleasingSend(send, slots)
        try:
            await self.app(scope, receive, gated.send)
        finally:
            gated.release()


class _ReleasingSend:
    """``send`` for the app: frees the slot when the handshake ends (accept or close).

    Keeps the wrapped callable as ``real_send``, the way Channels' session middleware
    does, so PresenceConsumer can still find daphne's protocol under both.
    """

    def __init__(self, real_send: Any, slots: asyncio.Semaphore) -> None:
        self.real_send = real_send
        self.slots = slots
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.slots.release()

    async def send(self, message: dict[str, Any]) -> None:
        if message.get("type") in ("websocket.accept", "websocket.close"):
            self.release()  # the handshake is over: the next one may start
        await self.real_send(message)


async def _refuse(receive: Any, send: Any) -> None:
    message = await receive()
    if message.get("type") == "websocket.connect":
        await send({"type": "websocket.close"})  # before accept: daphne answers 403
    _refused["count"] += 1
    now = time.monotonic()
    if now - _refused["logged_at"] >= 1.0:  # one line a second, however many
        logger.warning(
            "[PresenceConsumer] refused %d handshakes that waited %.0fs for one of %d slots",
            _refused["count"],
            get_settings().HANDSHAKE_QUEUE_WAIT,
            get_settings().MAX_PENDING_HANDSHAKES,
        )
        _refused.update(count=0, logged_at=now)
