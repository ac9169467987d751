"""The one rule for a request only the owner of a user's manager may act on: route it to the
owner, forward it once.

A request (a staff stop or restart, a change of the user's components) reaches whichever
worker reads it from the shared channel. The worker running the user's manager acts; a
worker that does not forwards it to the owner's inbox marked ``"forwarded": true``; a
forwarded request that finds the owner moved again is dropped with one line rather than
chasing the lease around (the next request finds the new owner).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from livestream import logformats
from livestream.ownership.leases import LeaseStore

logger = logging.getLogger(logformats.WORKER_LOGGER)

# Sends a message to a worker's inbox: (owner worker id, message).
Forwarder = Callable[[str, dict[str, Any]], Awaitable[None]]


async def route_to_owner(
    leases: LeaseStore, user_id: str, message: dict[str, Any], forward: Forwarder, *, here: bool
) -> bool:
    """True when this worker should act on ``message``: it runs the user (``here``), or no
    other worker does (a staff hold is not a worker). Otherwise the owner gets it, once."""
    if here:
        return True
    owner = await leases.runner(user_id)
    if not owner or owner == leases.worker_id:
        return True
    if message.get("forwarded"):
        logger.warning("[PresenceManager] %s of %s dropped: owner moved", message.get("type"), user_id)
    else:
        await forward(owner, {**message, "forwarded": True})
    return False
