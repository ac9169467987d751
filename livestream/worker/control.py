"""Staff control of one user's manager: ``manager.stop`` and ``manager.restart``.

The admin debug page sends ``{"type": "manager.stop" | "manager.restart",
"user_id": ..., "by": <staff user id>}`` to the ``presence-manager`` channel.
Whichever worker receives it forwards it once to the lease owner's inbox; the
owner (or, if nobody runs the user, the receiving worker) acts.

Stopping a user who is still present would be undone by the next reconcile tick,
so the stop also puts a *hold* on the user: their lease key is set to
``held-by-staff:<staff id>``. A lease nobody renews as a worker is something every
existing path already respects (a join cannot acquire it, the tick's orphan claim
skips it), so no other code has to know about holds. The hold ends at the user's
next join (a new tab, a reload, a reconnect), when their cleanup runs, on a staff
restart, or after STAFF_STOP_HOLD seconds, whichever comes first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from channels.layers import get_channel_layer

from livestream import ids, logformats
from livestream.components.user_manager import UserStreamManager
from livestream.conf import get_settings
from livestream.ownership.leases import HOLD_PREFIX, LeaseStore, held_by  # noqa: F401  (held_by: its old home)
from livestream.presence.store import PresenceStore
from livestream.redis import run_script, script
from livestream.tasks import TaskScope

logger = logging.getLogger(logformats.WORKER_LOGGER)  # the worker's own log lines

STOP = "manager.stop"
RESTART = "manager.restart"
ACTIONS = {"stop": STOP, "restart": RESTART}

# KEYS: lease. ARGV: me (the worker), hold value, ttl ms, hold prefix.
# Holds the lease unless another worker owns it; 1 if held.
_HOLD = script(
    "control.hold",
    """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and string.sub(cur, 1, #ARGV[4]) ~= ARGV[4] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
""",
)

# KEYS: lease. ARGV: hold prefix. Deletes the lease only if it is a hold; 1 if it was.
_RELEASE_HOLD = script(
    "control.release_hold",
    """
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, #ARGV[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
)


async def hold(leases: LeaseStore, user_id: str, by: str) -> bool:
    """Keep ``user_id``'s manager down; False if another worker owns it meanwhile."""
    ttl_ms = int(get_settings().STAFF_STOP_HOLD * 1000)
    keys = [leases.lease_key(user_id)]
    return bool(
        await run_script(leases.redis, _HOLD, keys, leases.worker_id, HOLD_PREFIX + by, ttl_ms, HOLD_PREFIX)
    )


async def release_hold(leases: LeaseStore, user_id: str) -> bool:
    """End a hold (no-op, and False, when the lease is a worker's or absent)."""
    return bool(await run_script(leases.redis, _RELEASE_HOLD, [leases.lease_key(user_id)], HOLD_PREFIX))


def parse(message: dict[str, Any]) -> tuple[str, str]:
    """``(user_id, by)`` of a stop/restart request; ValueError if malformed."""
    by = message.get("by")
    if isinstance(by, int) and not isinstance(by, bool):
        by = str(by)
    return ids.user_id(message.get("user_id")), ids.user_id(by, "'by' (staff id)")


async def request(action: str, user_id: str, by: str) -> None:
    """Ask the workers to stop or restart ``user_id``'s manager (``action``: stop/restart)."""
    message = {"type": ACTIONS[action], "user_id": user_id, "by": by}
    await get_channel_layer().send(get_settings().WORKER_CHANNEL, message)


# -- the worker side: what the owner of a user's manager does ----------------------


class Owner(Protocol):
    """What staff actions use of the worker (the PresenceManager)."""

    worker_id: str
    managers: dict[str, UserStreamManager]
    leases: LeaseStore
    store: PresenceStore
    scope: TaskScope

    def lock(self, user_id: str) -> asyncio.Lock: ...
    def start_local(self, user_id: str) -> UserStreamManager: ...
    async def stop_local(self, user_id: str, *, release: bool) -> None: ...
    async def forward(self, owner: str, message: dict[str, Any]) -> None: ...
    async def publish_state(self) -> None: ...


StaffAction = Callable[[Owner, str, str], Coroutine[Any, Any, None]]


async def route(pm: Owner, message: dict[str, Any], action: StaffAction) -> None:
    """The owner of the user's manager acts; any other worker forwards the request to it, once."""
    user_id, by = parse(message)
    if user_id not in pm.managers:
        owner = await pm.leases.runner(user_id)
        if owner and owner != pm.worker_id:
            if message.get("forwarded"):
                logger.warning("[PresenceManager] %s of %s dropped: owner moved", message["type"], user_id)
            else:
                await pm.forward(owner, {**message, "forwarded": True})
            return
    pm.scope.spawn(action(pm, user_id, by), f"staff:{user_id}")


async def stop(pm: Owner, user_id: str, by: str) -> None:
    """Stop now; a user still present is held down until their next join."""
    async with pm.lock(user_id):
        present = await pm.store.sessions(user_id) > 0
        # Hold first: nobody may claim the user while their manager stops.
        if present and not await hold(pm.leases, user_id, by):
            logger.warning("[PresenceManager] staff %s: %s is run by another worker now", by, user_id)
            return
        await pm.stop_local(user_id, release=not present)
        logger.info(
            "[PresenceManager] staff %s stopped the manager of %s%s",
            by,
            user_id,
            "; held until their next join" if present else "",
        )
    await pm.publish_state()


async def restart(pm: Owner, user_id: str, by: str) -> None:
    """A fresh manager now, for a user who has one, or is present (held or not)."""
    async with pm.lock(user_id):
        held = await release_hold(pm.leases, user_id)
        if user_id not in pm.managers and not held and await pm.store.sessions(user_id) == 0:
            logger.info("[PresenceManager] staff %s: no manager of %s to restart", by, user_id)
            return
        await pm.stop_local(user_id, release=False)
        if not await pm.leases.acquire(user_id):
            logger.warning("[PresenceManager] staff %s: %s is run by another worker now", by, user_id)
            return
        pm.start_local(user_id)
        logger.info("[PresenceManager] staff %s restarted the manager of %s", by, user_id)
    await pm.publish_state()
