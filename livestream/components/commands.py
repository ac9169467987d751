"""Commands from a dashboard tab to a component in the user's running manager.

The path (two Redis round trips in daphne, none of them the channel layer's):

  tab --{"type": "command", ...}--> daphne (dashboard/ws/commands.py: validation, rate
    limit, the user from the socket's session)
    --submit(): ONE script reads the user's lease owner and appends the command to
      that worker's LIST ``keys.worker_commands(owner)`` (or says nobody runs them)-->
  worker: read() takes its LIST a batch at a time (BLPOP + LPOP, a connection of
    its own) and runs each command as a task (no command waits for another)
    --component_events.send_reply: PUBLISH on the user's control channel-->
  daphne: the socket whose token the reply names forwards it, matched by its key.

(Not the channel layer's inbox: it takes four round trips per message, one message
at a time: far fewer commands a second, docs/benchmarks.md.) An entry of the
LIST (JSON):

  {"user_id": "7", "component": "StreamStateServer", "command": "go_live", "args": {},
   "id": "c1", "key": "<uuid>", "to": "<socket token>", "sent": <unix time>}

The LIST expires a while after its last command (a dead worker's is never read).

``key`` is daphne's own id for the command (not the tab's ``id``, which a page may
reuse). A worker claims ``keys.command(user, key)`` (SET NX) before running it, so a
command daphne sends once more after a failover never runs twice: the second owner
finds it taken and replies with an error. A worker drops a command older than
COMMAND_TIMEOUT (the tab had its "timed out" reply already).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from livestream import ids, keys
from livestream.components import emitter as component_events
from livestream.components.base import CommandError
from livestream.components.user_manager import UserStreamManager
from livestream.conf import get_settings
from livestream.ownership.leases import HOLD_PREFIX
from livestream.redis import get_redis, run_script, script
from livestream.tasks import TaskScope
from streampai.redisconf import redis_client

logger = logging.getLogger("livestream.presence_manager")  # the worker's own log lines

NO_MANAGER = "no running stream manager for you right now; try again in a moment"

# Commands read per LPOP by a worker; queued for one worker at most (the oldest go).
BATCH = 100
QUEUE_CAP = 10_000

# KEYS: lease. ARGV: hold prefix, worker key prefix, command JSON, list ttl ms, cap.
# Appends the command to the LIST of the worker running the user and returns that
# worker's id; false when nobody runs them (no lease, a staff hold, a worker gone
# from the registry).
_SUBMIT = script(
    "commands.submit",
    """
local owner = redis.call('GET', KEYS[1])
if not owner or string.sub(owner, 1, #ARGV[1]) == ARGV[1] then return false end
if redis.call('EXISTS', ARGV[2] .. owner) == 0 then return false end
local queue = ARGV[2] .. owner .. ':commands'
redis.call('RPUSH', queue, ARGV[3])
if redis.call('LLEN', queue) > tonumber(ARGV[5]) then redis.call('LTRIM', queue, -tonumber(ARGV[5]), -1) end
redis.call('PEXPIRE', queue, ARGV[4])
return owner
""",
)


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


async def submit(command: Command, client: aioredis.Redis | None = None) -> str | None:
    """Queue ``command`` for the worker running its user (one round trip); that worker's
    id, or None when nobody runs the user's manager."""
    ttl_ms = int(get_settings().COMMAND_TIMEOUT * 4000)
    found = await run_script(
        client or get_redis(),
        _SUBMIT,
        [keys.lease_prefix() + command.user_id],
        HOLD_PREFIX,
        keys.worker(""),
        json.dumps(to_message(command), separators=(",", ":")),
        ttl_ms,
        QUEUE_CAP,
    )
    return str(found) if found else None


async def owner(user_id: str, client: aioredis.Redis | None = None) -> str | None:
    """The worker running ``user_id``'s manager now (None: nobody, or a staff hold)."""
    found = await (client or get_redis()).get(keys.lease_prefix() + user_id)
    value = None if found is None else str(found)
    return None if value is None or value.startswith(HOLD_PREFIX) else value


def to_message(command: Command) -> dict[str, Any]:
    return {
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


# The managers this worker runs (livestream/worker/local_managers.py), by user id.
Managers = Mapping[str, UserStreamManager]


async def read(worker_id: str, managers: Managers, scope: TaskScope) -> None:
    """Run the commands queued for ``worker_id`` until ``scope`` closes, each as a task of its own."""
    client = redis_client()  # a connection of its own: BLPOP holds it
    queue = keys.worker_commands(worker_id)
    try:
        while not scope.closing:
            try:
                head = await client.blpop([queue], timeout=1)
                if head is None:
                    continue
                raw = [head[1], *(await client.lpop(queue, BATCH - 1) or [])]
            except Exception as exc:
                logger.warning("[PresenceManager] reading commands failed: %r", exc)
                await asyncio.sleep(1.0)
                continue
            for entry in raw:
                try:
                    command = parse(json.loads(entry))
                except (ValueError, TypeError) as exc:
                    logger.warning("[PresenceManager] dropped malformed command: %s", exc)
                    continue
                scope.spawn(execute(managers, worker_id, command), f"command:{command.user_id}")
    finally:
        await client.aclose()


async def execute(managers: Managers, worker_id: str, command: Command) -> None:
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
    ok, payload = await _outcome(managers, worker_id, command, timeout - age)
    frame = component_events.reply_frame(command.id, ok, payload)
    manager = managers.get(command.user_id)
    token = manager.token if manager is not None else None  # a stale owner's reply is refused
    try:
        await component_events.send_reply(command.user_id, command.to, command.key, frame, token=token)
    except Exception as exc:  # Redis down: the tab times out
        logger.warning("[PresenceManager] reply to %s not sent: %r", command.user_id, exc)


async def _outcome(managers: Managers, worker_id: str, command: Command, budget: float) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, error message)``."""
    where = f"command {command.component}.{command.command} of {command.user_id}"
    manager = managers.get(command.user_id)
    if manager is None:
        logger.info("[PresenceManager] %s: no manager here", where)
        return False, NO_MANAGER
    component = manager.component(command.component)
    if component is None:
        running = manager.supervisor(command.component) is not None
        why = f"component {command.component!r} is not running" if running else None
        logger.info("[PresenceManager] %s: %s", where, why or "unknown component")
        return False, why or f"unknown component {command.component!r}"
    try:
        claimed = await claim(command, worker_id)
    except Exception as exc:  # Redis unreachable: the tab gets an answer now, not a timeout
        logger.warning("[PresenceManager] %s not claimed: %r", where, exc)
        return False, "the server cannot reach Redis right now; try again"
    if not claimed:
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
