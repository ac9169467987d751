"""Component events out to every open dashboard tab of one user, and command replies.

Both travel on the user's control channel (``keys.control(user_id)``), which every
dashboard socket of the user subscribes to at connect, live or not
(dashboard/ws/hub.py hands them to the sockets through its allowlist). The wire frame
is encoded once, here, and forwarded by daphne as-is:

  {"type": "component.event", "user_id": "7",
   "frame": '{"type":"event","component":"StreamStateServer","event":"state","data":{...}}'}
  {"type": "component.reply", "user_id": "7", "to": "<socket token>", "key": "<command key>",
   "frame": '{"type":"reply","id":"c1","ok":true,"result":{...}}'}

A reply is forwarded only by the socket whose private token is ``to`` (the tab that
sent the command); an event by every socket of the user.

Sticky events (``emit(..., sticky=True)``) are also kept in ``keys.sticky(user)``, a
HASH ``"<Component>:<event>" -> frame``; the script that tracks a new connection
returns them (livestream/presence/store.py), so a tab gets the current state right after
it connects without another round trip. Keeping and publishing is one script: a
connect can never read a sticky value older than an event it missed.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from livestream import keys
from livestream.redis import get_redis, run_script, script

EVENT = "component.event"
REPLY = "component.reply"

# KEYS: sticky hash, control channel. ARGV: sticky field ('' = not sticky), frame, message.
_EMIT = script(
    "components.emit",
    """
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return redis.call('PUBLISH', KEYS[2], ARGV[3])
""",
)

# KEYS: sticky hash. ARGV: field prefix ("<Component>:"). Drops a component's sticky events.
_FORGET = script(
    "components.forget_sticky",
    """
local gone = 0
local fields = redis.call('HKEYS', KEYS[1])
for _, field in ipairs(fields) do
  if string.sub(field, 1, #ARGV[1]) == ARGV[1] then gone = gone + redis.call('HDEL', KEYS[1], field) end
end
return gone
""",
)


def _encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def event_frame(component: str, event: str, data: dict[str, Any]) -> str:
    """The wire frame a tab receives (issue 11's format, exactly)."""
    return _encode({"type": "event", "component": component, "event": event, "data": data})


def reply_frame(command_id: Any, ok: bool, payload: Any) -> str:
    """``{"type": "reply", "id", "ok": true, "result"}`` or ``{..., "ok": false, "error"}``."""
    if ok:
        return _encode({"type": "reply", "id": command_id, "ok": True, "result": payload})
    return _encode({"type": "reply", "id": command_id, "ok": False, "error": str(payload)})


async def emit(
    user_id: str,
    component: str,
    event: str,
    data: dict[str, Any],
    *,
    sticky: bool = False,
    client: aioredis.Redis | None = None,
) -> int:
    """Publish an event to every open tab of ``user_id`` (one round trip); returns how many
    daphne processes received it. ``data`` must be JSON-serializable (TypeError if not)."""
    frame = event_frame(component, event, data)
    message = _encode({"type": EVENT, "user_id": user_id, "frame": frame})
    field = f"{component}:{event}" if sticky else ""
    keys_ = [keys.sticky(user_id), keys.control(user_id)]
    return int(await run_script(client or get_redis(), _EMIT, keys_, field, frame, message))


async def forget_sticky(user_id: str, component: str, client: aioredis.Redis | None = None) -> int:
    """Drop ``component``'s sticky events of ``user_id`` (it was disabled for them)."""
    return int(await run_script(client or get_redis(), _FORGET, [keys.sticky(user_id)], component + ":"))


def reply_message(user_id: str, to: str, key: str, frame: str) -> str:
    """The control-channel message carrying the reply frame of command ``key`` to the socket
    whose token is ``to``."""
    return _encode({"type": REPLY, "user_id": user_id, "to": to, "key": key, "frame": frame})


async def send_reply(
    user_id: str, to: str, key: str, frame: str, client: aioredis.Redis | None = None
) -> int:
    """Publish a reply frame for the socket ``to`` of ``user_id``; daphne processes reached."""
    message = reply_message(user_id, to, key, frame)
    return int(await (client or get_redis()).publish(keys.control(user_id), message))
