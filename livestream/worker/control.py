"""Control of one user's manager by message: staff's ``manager.stop`` and ``manager.restart``,
and ``component.config`` (the user's choice of components changed).

The admin debug page sends ``{"type": "manager.stop" | "manager.restart",
"user_id": ..., "by": <staff user id>}`` to the ``presence-manager`` channel.
Whichever worker receives it forwards it once to the lease owner's inbox; the
owner (or, if nobody runs the user, the receiving worker) acts
(livestream/ownership/routing.py: the rule, once for all of them).

Stopping a user who is still present would be undone by the next reconcile tick,
so the stop also puts a *hold* on the user: their lease key is set to
``held-by-staff:<staff id>``. A lease nobody renews as a worker is something every
existing path already respects (a join cannot acquire it, the tick's orphan claim
skips it), so no other code has to know about holds. The hold ends at the user's
next join (a new tab, a reload, a reconnect), when their cleanup runs, on a staff
restart, or after STAFF_STOP_HOLD seconds, whichever comes first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from channels.layers import get_channel_layer

from livestream import ids, logformats
from livestream.components import choices
from livestream.conf import get_settings
from livestream.ownership.holds import hold, release_hold
from livestream.ownership.routing import route_to_owner
from livestream.worker.local_managers import LocalManagers

logger = logging.getLogger(logformats.WORKER_LOGGER)  # the worker's own log lines

STOP = "manager.stop"
RESTART = "manager.restart"
ACTIONS = {"stop": STOP, "restart": RESTART}


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

# Publishes this worker's managers (livestream/observe/state.py) after a staff action.
Publish = Callable[[], Awaitable[None]]
StaffAction = Callable[[LocalManagers, Publish, str, str], Coroutine[Any, Any, None]]


async def route(local: LocalManagers, publish: Publish, message: dict[str, Any], action: StaffAction) -> None:
    """The owner of the user's manager acts; any other worker forwards the request to it, once."""
    user_id, by = parse(message)
    if await route_to_owner(local.leases, user_id, message, local.forward, here=user_id in local.managers):
        local.scope.spawn(action(local, publish, user_id, by), f"staff:{user_id}")


async def stop(local: LocalManagers, publish: Publish, user_id: str, by: str) -> None:
    """Stop now; a user still present is held down until their next join."""
    async with local.lock(user_id):
        present = await local.store.sessions(user_id) > 0
        # Hold first: nobody may claim the user while their manager stops.
        if present and not await hold(local.leases, user_id, by):
            logger.warning("[PresenceManager] staff %s: %s is run by another worker now", by, user_id)
            return
        await local.stop(user_id, release=not present)
        logger.info(
            "[PresenceManager] staff %s stopped the manager of %s%s",
            by,
            user_id,
            "; held until their next join" if present else "",
        )
    await publish()


async def restart(local: LocalManagers, publish: Publish, user_id: str, by: str) -> None:
    """A fresh manager now, for a user who has one, or is present (held or not)."""
    async with local.lock(user_id):
        held = await release_hold(local.leases, user_id)
        if user_id not in local.managers and not held and await local.store.sessions(user_id) == 0:
            logger.info("[PresenceManager] staff %s: no manager of %s to restart", by, user_id)
            return
        await local.stop(user_id, release=False)
        await local.stopped(user_id)  # one stopped by a fence just before, too
        if not await local.leases.acquire(user_id):
            logger.warning("[PresenceManager] staff %s: %s is run by another worker now", by, user_id)
            return
        local.start(user_id)
        logger.info("[PresenceManager] staff %s restarted the manager of %s", by, user_id)
    await publish()


async def reconfigure(local: LocalManagers, message: dict[str, Any]) -> None:
    """``component.config`` (livestream/components/choices.py): apply the user's new choice of
    components to their running manager, here or at its owner."""
    user_id = ids.user_id(message.get("user_id"))
    if await route_to_owner(local.leases, user_id, message, local.forward, here=user_id in local.managers):
        component = str(message.get("component") or "")
        local.scope.spawn(_apply_choice(local, user_id, component), f"components:{user_id}")


async def _apply_choice(local: LocalManagers, user_id: str, component: str = "") -> None:
    async with local.lock(user_id):
        manager = local.managers.get(user_id)
        if manager is None:
            return
        started, stopped = await manager.apply(await choices.for_user(user_id))
        # The message named a component whose own configuration changed (its rows): one that
        # just started read it already; a running one is told (its reconfigure() only wakes it).
        running = manager.component(component) if component and component not in started else None
        hook = getattr(running, "reconfigure", None)
        if hook is not None:
            try:
                await hook()
            except Exception:
                logger.exception("[UserStreamManager:%s] %s reconfigure failed", user_id, component)
    if started or stopped:
        logger.info(
            "[PresenceManager] components of %s changed: started %s, stopped %s",
            user_id,
            ", ".join(started) or "none",
            ", ".join(stopped) or "none",
        )
