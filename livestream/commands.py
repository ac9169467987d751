"""Commands from a dashboard tab to a component in the user's running manager.

The path (one per command; no channel layer in daphne's hot paths but this send):

  tab --{"type": "command", ...}--> daphne (dashboard/commands.py: validation, rate
    limit, the user from the socket's session)
    --route(): one script reads the lease owner and its inbox-->
    --channel layer send to that worker's inbox-->
  worker: PresenceManager.on_component_command -> handle() here -> the component's
    on_command(name, args), as a task (the inbox never waits for a component)
    --component_events.send_reply: PUBLISH on the user's control channel-->
  daphne: the socket whose token the reply names forwards it, matched by its key.

The message a worker receives:

  {"type": "component.command", "user_id": "7", "component": "StreamStateServer",
   "command": "go_live", "args": {}, "id": "c1", "key": "<uuid>", "to": "<socket token>",
   "sent": <unix time>}

``key`` is daphne's own id for the command (not the tab's ``id``, which a page may
reuse). A worker claims ``keys.command(user, key)`` (SET NX) before running it, so a
command daphne sends once more after a failover never runs twice: the second owner
finds it taken and replies with an error. A worker drops a command older than
COMMAND_TIMEOUT (the tab had its "timed out" reply already).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from channels.layers import get_channel_layer

from livestream import component_events, ids, keys
from livestream.components.base import CommandError
from livestream.conf import get_settings
from livestream.leases import HOLD_PREFIX
from livestream.redis import get_redis, run_script, script

if TYPE_CHECKING:
    from livestream.presence_manager import PresenceManager

logger = logging.getLogger("livestream.presence_manager")  # the worker's own log lines

COMMAND = "component.command"
NO_MANAGER = "no running stream manager for you right now; try again in a moment"

# KEYS: lease. ARGV: hold prefix, worker key prefix. {owner, inbox} of the worker
# running the user, or false when nobody does (no lease, a staff hold).
_ROUTE = script(
    "commands.route",
    """
local owner = redis.call('GET', KEYS[1])
if not owner or string.sub(owner, 1, #ARGV[1]) == ARGV[1] then return false end
local inbox = redis.call('HGET', ARGV[2] .. owner, 'inbox')
if not inbox then return false end
return {owner, inbox}
""",
)


@dataclass(frozen=True)
class Route:
    """Where a user's manager runs: the worker and its channel-layer inbox."""

    owner: str
    inbox: str


@dataclass(frozen=True)
class Command:
    user_id: str
    component: str
    command: str
    args: dict[str, Any]
    id: Any  # the tab's id, echoed in the reply
    key: str
    to: str
    sent: float


# -- daphne's side ----------------------------------------------------------------


async def route(user_id: str, client: aioredis.Redis | None = None) -> Route | None:
    """The worker running ``user_id``'s manager (one round trip), or None."""
    found = await run_script(
        client or get_redis(), _ROUTE, [keys.lease_prefix() + user_id], HOLD_PREFIX, keys.worker("")
    )
    return Route(str(found[0]), str(found[1])) if found else None


async def submit(target: Route, command: Command) -> None:
    """Send ``command`` to the owner's inbox; ChannelFull when that inbox is full (a dead worker's)."""
    await get_channel_layer().send(target.inbox, to_message(command))


def to_message(command: Command) -> dict[str, Any]:
    return {
        "type": COMMAND,
        "user_id": command.user_id,
        "component": command.component,
        "command": command.command,
        "args": command.args,
        "id": command.id,
        "key": command.key,
        "to": command.to,
        "sent": command.sent,
    }


def parse(message: dict[str, Any]) -> Command:
    """A worker's view of a command message; ValueError if malformed (dropped, logged)."""
    user_id = ids.user_id(message.get("user_id"))
    fields = {name: message.get(name) for name in ("component", "command", "key", "to")}
    for name, value in fields.items():
        if not isinstance(value, str) or not value or len(value) > 200:
            raise ValueError(f"{name!r} must be a short string")
    args, sent = message.get("args"), message.get("sent")
    if not isinstance(args, dict):
        raise ValueError("'args' must be an object")
    if not isinstance(sent, int | float) or isinstance(sent, bool):
        raise ValueError("'sent' must be a number")
    return Command(
        user_id=user_id,
        component=message["component"],
        command=message["command"],
        args=args,
        id=message.get("id"),
        key=message["key"],
        to=message["to"],
        sent=float(sent),
    )


# -- the worker's side ------------------------------------------------------------


async def handle(pm: PresenceManager, message: dict[str, Any]) -> None:
    """A command message reached this worker's inbox: run it as a task of its own."""
    command = parse(message)
    pm.scope.spawn(execute(pm, command), f"command:{command.user_id}")


async def execute(pm: PresenceManager, command: Command) -> None:
    """Run ``command`` once and publish its reply; every failure is a reply and one log line."""
    timeout = get_settings().COMMAND_TIMEOUT
    age = time.time() - command.sent
    if age > timeout:
        logger.warning(
            "[PresenceManager] command %s.%s of %s dropped: %.1fs old (the tab timed out)",
            command.component,
            command.command,
            command.user_id,
            age,
        )
        return
    ok, payload = await _outcome(pm, command, timeout - age)
    frame = component_events.reply_frame(command.id, ok, payload)
    try:
        await component_events.send_reply(command.user_id, command.to, command.key, frame)
    except Exception as exc:  # Redis down: the tab times out
        logger.warning("[PresenceManager] reply to %s not sent: %r", command.user_id, exc)


async def _outcome(pm: PresenceManager, command: Command, budget: float) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, error message)``."""
    where = f"command {command.component}.{command.command} of {command.user_id}"
    manager = pm.managers.get(command.user_id)
    if manager is None:
        logger.info("[PresenceManager] %s: no manager here", where)
        return False, NO_MANAGER
    component = manager.component(command.component)
    if component is None:
        running = manager.supervisor(command.component) is not None
        why = f"component {command.component!r} is not running" if running else None
        logger.info("[PresenceManager] %s: %s", where, why or "unknown component")
        return False, why or f"unknown component {command.component!r}"
    if not await claim(command, pm.worker_id):
        logger.warning("[PresenceManager] %s: already taken by another worker; not run again", where)
        return False, "this command was already received by a worker that stopped; not run again"
    try:
        async with asyncio.timeout(max(budget, 0.1)):
            result = await component.on_command(command.command, command.args)
        component_events.reply_frame(command.id, True, result)  # JSON-serializable?
    except CommandError as exc:
        logger.info("[PresenceManager] %s refused: %s", where, exc)
        return False, str(exc)
    except TimeoutError:
        logger.warning("[PresenceManager] %s timed out in the component", where)
        return False, "timed out"
    except Exception as exc:
        logger.warning("[PresenceManager] %s failed: %r", where, exc)
        return False, "internal error"
    if not isinstance(result, dict):
        logger.warning("[PresenceManager] %s returned %.100r, not a dict", where, type(result).__name__)
        return False, "internal error"
    return True, result


async def claim(command: Command, worker_id: str) -> bool:
    """Take ``command`` for this worker; False if a worker took it before (run it nowhere twice)."""
    ttl = max(60, int(get_settings().COMMAND_TIMEOUT * 4))
    return bool(await get_redis().set(keys.command(command.user_id, command.key), worker_id, nx=True, ex=ttl))
