"""Each worker's own channel (its "inbox"): where other workers send what only this one may do.

A worker publishes its inbox's channel name with its heartbeat (the ``inbox`` field of
``<prefix>:worker:<id>``, livestream/ownership/leases.py). Another worker forwards to it what
the owner of a user's manager must do: a due cleanup's stop
(``{"type": "presence.stop", "user_id": ...}``) and staff requests
(``manager.stop`` / ``manager.restart`` with ``"forwarded": true``, livestream/worker/control.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from livestream import logformats
from livestream.ownership.leases import LeaseStore
from livestream.tasks import Backoff

logger = logging.getLogger(logformats.WORKER_LOGGER)


async def forward(leases: LeaseStore, owner: str, message: dict[str, Any]) -> None:
    """Send ``message`` to the worker ``owner``'s inbox (a dead owner's may be full: dropped)."""
    inbox = (await leases.worker_info(owner)).get("inbox")
    if inbox:
        try:
            await get_channel_layer().send(inbox, message)
        except ChannelFull:  # a dead owner's inbox fills up; its leases lapse anyway
            logger.warning("[PresenceManager] inbox of %s is full; %s dropped", owner, message.get("type"))


async def receive(
    inbox: str, handle: Callable[[dict[str, Any]], Awaitable[None]], closing: Callable[[], bool]
) -> None:
    """Hand each message of ``inbox`` to ``handle`` until ``closing()``."""
    layer = get_channel_layer()
    backoff = Backoff(cap=1.0)
    while not closing():
        try:
            message = await layer.receive(inbox)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("[PresenceManager] inbox receive failed: %r", exc)
            await asyncio.sleep(backoff.failed())
            continue
        backoff.reset()
        await handle(message)
