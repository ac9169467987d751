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
from livestream.ownership import fencing
from livestream.redis import get_redis, run_script

EVENT = "component.event"
REPLY = "component.reply"

# Every script here is fenced (livestream/ownership/fencing.py): -1 when the writer's token
# is stale, and nothing is written or published.

# KEYS: sticky hash, control channel, token, refused counter. ARGV: sticky field ('' = not
# sticky), frame, message, token.
_EMIT = fencing.script(
    "components.emit",
    """
if not fence_ok(KEYS[3], ARGV[4], KEYS[4]) then return -1 end
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return redis.call('PUBLISH', KEYS[2], ARGV[3])
""",
)

# KEYS: sticky hash, token, refused counter. ARGV: field prefix ("<Component>:"), token.
# Drops a component's sticky events.
_FORGET = fencing.script(
    "components.forget_sticky",
    """
if not fence_ok(KEYS[2], ARGV[2], KEYS[3]) then return -1 end
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
    token: int | None = None,
) -> int:
    """Publish an event to every open tab of ``user_id`` (one round trip); returns how many
    daphne processes received it, or -1 if ``token`` is stale (nothing sent or kept).
    ``data`` must be JSON-serializable (TypeError if not)."""
    frame = event_frame(component, event, data)
    message = _encode({"type": EVENT, "user_id": user_id, "frame": frame})
    field = sticky_field(component, event) if sticky else ""
    keys_ = [keys.sticky(user_id), keys.control(user_id), keys.fence_token(user_id), keys.fence_refused()]
    args = (field, frame, message, fencing.arg(token))
    return int(await run_script(client or get_redis(), _EMIT, keys_, *args))


def sticky_field(component: str, event: str) -> str:
    """The field of ``keys.sticky(user)`` that keeps ``component``'s last ``event``."""
    return f"{component}:{event}"


def sticky_data(frame: str | bytes | None) -> dict[str, Any] | None:
    """The ``data`` of a kept frame (what a tab that connects now is sent), or None."""
    if not frame:
        return None
    try:
        data = json.loads(frame).get("data")
    except (ValueError, AttributeError):
        return None
    return data if isinstance(data, dict) else None


async def forget_sticky(
    user_id: str, component: str, client: aioredis.Redis | None = None, token: int | None = None
) -> int:
    """Drop ``component``'s sticky events of ``user_id`` (it was disabled for them); -1 if
    ``token`` is stale."""
    keys_ = [keys.sticky(user_id), keys.fence_token(user_id), keys.fence_refused()]
    return int(await run_script(client or get_redis(), _FORGET, keys_, component + ":", fencing.arg(token)))


def reply_message(user_id: str, to: str, key: str, frame: str) -> str:
    """The control-channel message carrying the reply frame of command ``key`` to the socket
    whose token is ``to``."""
    return _encode({"type": REPLY, "user_id": user_id, "to": to, "key": key, "frame": frame})


# KEYS: control channel, token, refused counter. ARGV: message, token.
_REPLY = fencing.script(
    "components.reply",
    """
if not fence_ok(KEYS[2], ARGV[2], KEYS[3]) then return -1 end
return redis.call('PUBLISH', KEYS[1], ARGV[1])
""",
)


async def send_reply(
    user_id: str,
    to: str,
    key: str,
    frame: str,
    client: aioredis.Redis | None = None,
    token: int | None = None,
) -> int:
    """Publish a reply frame for the socket ``to`` of ``user_id``; daphne processes reached,
    or -1 if ``token`` is stale (the reply is not sent)."""
    message = reply_message(user_id, to, key, frame)
    if token is None:
        return int(await (client or get_redis()).publish(keys.control(user_id), message))
    keys_ = [keys.control(user_id), keys.fence_token(user_id), keys.fence_refused()]
    return int(await run_script(client or get_redis(), _REPLY, keys_, message, fencing.arg(token)))
