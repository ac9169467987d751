"""The input state of each user's ingest (is OBS publishing?), in Redis, and waking its owner.

``keys.broadcast_input(user)`` is a HASH:

  state   "connected" | "disconnected"
  since   unix seconds of the last change
  ref     the presence ref the stream holds for the user (see below), while it holds one
  publishers  the self-hosted ingest's publishes in progress (a second OBS on the same
          key is refused by nginx but still reported to us, and must not end the first)

Both backends report through ``set_input`` (the self-hosted ingest's callbacks, Cloudflare's
webhooks and polling). One script stores the change and PUBLISHes the user id on
``keys.broadcast_wake()``; the worker running the user's CloudflareManager listens there
(broadcast/listener.py) and emits the sticky ``input`` event to every tab.

**A stream counts as presence** (issue 18, item 6): a publish adds a pseudo-connection for
the user to the presence set (ref ``stream-<random>``, meta ``{"kind": "stream"}``), as a tab
would, so a publish with no tab open starts the user's manager, and the manager's cleanup
rule (stop CLEANUP_TIMEOUT after the last connection is gone) covers tabs and stream alike.
The CloudflareManager heartbeats it while the input is connected or the stream is live and
untracks it when both are over (``release_presence``); if nobody heartbeats it (no worker at
all), the sweeper expires it after PRESENCE_TTL like a tab of a dead daphne.
"""

from __future__ import annotations

import logging
import secrets as pysecrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from livestream import keys
from livestream.presence.store import PresenceStore
from livestream.redis import get_redis, run_script, script, text_map

logger = logging.getLogger("broadcast.inputs")

CONNECTED, DISCONNECTED = "connected", "disconnected"

# KEYS: input hash, wake channel. ARGV: state, now, user id.
# Returns 1 when the state changed (published), 0 when it was already that.
_SET = script(
    "broadcast.set_input",
    """
if redis.call('HGET', KEYS[1], 'state') == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'since', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 1
""",
)


# KEYS: publishers hash (client -> user), the user's input hash. ARGV: client, user.
_STARTED = script(
    "broadcast.publish_started",
    """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HINCRBY', KEYS[2], 'publishers', 1)
""",
)

# KEYS: publishers hash. ARGV: client, input hash prefix. Returns {user, publishes left} or false.
_ENDED = script(
    "broadcast.publish_ended",
    """
local user = redis.call('HGET', KEYS[1], ARGV[1])
if not user then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
local left = redis.call('HINCRBY', ARGV[2] .. user, 'publishers', -1)
if left < 0 then redis.call('HSET', ARGV[2] .. user, 'publishers', 0); left = 0 end
return {user, left}
""",
)


async def publish_started(user_id: str, client_id: str, *, client: aioredis.Redis | None = None) -> int:
    """An ingest accepted a publish (connection ``client_id``) for the user; publishes now."""
    keys_ = [keys.broadcast_publishers(), keys.broadcast_input(user_id)]
    return int(await run_script(client or get_redis(), _STARTED, keys_, client_id, user_id))


async def publish_ended(client_id: str, *, client: aioredis.Redis | None = None) -> tuple[str | None, int]:
    """Connection ``client_id`` stopped publishing: (its user, their publishes left), or (None, 0)."""
    prefix = keys.broadcast_input("")
    found = await run_script(client or get_redis(), _ENDED, [keys.broadcast_publishers()], client_id, prefix)
    if not found:
        return None, 0
    return str(found[0]), int(found[1])


async def forget_publishes(user_id: str, *, client: aioredis.Redis | None = None) -> None:
    """The ingest says nobody publishes for the user (a poll): drop what callbacks left behind
    (an ingest restarted without reporting its publishes done)."""
    await (client or get_redis()).hset(keys.broadcast_input(user_id), "publishers", 0)


@dataclass(frozen=True)
class InputState:
    connected: bool
    since: float | None
    ref: str | None  # the stream's presence ref, if it holds one


async def set_input(user_id: str, connected: bool, *, client: aioredis.Redis | None = None) -> bool:
    """Record the user's input as connected or not and wake their owner; True if it changed.

    A connect also makes sure the stream holds a presence connection for the user (so their
    manager runs even with no tab open)."""
    redis = client or get_redis()
    state = CONNECTED if connected else DISCONNECTED
    changed = bool(
        int(
            await run_script(
                redis,
                _SET,
                [keys.broadcast_input(user_id), keys.broadcast_wake()],
                state,
                f"{time.time():.3f}",
                user_id,
            )
        )
    )
    if connected:
        await hold_presence(user_id, client=redis)
    return changed


async def get_input(user_id: str, *, client: aioredis.Redis | None = None) -> InputState:
    return parse_input(text_map(await (client or get_redis()).hgetall(keys.broadcast_input(user_id))))


def parse_input(fields: dict[str, str]) -> InputState:
    """An InputState from the fields of ``keys.broadcast_input(user)`` (HGETALL's reply)."""
    since = fields.get("since")
    return InputState(
        fields.get("state") == CONNECTED, float(since) if since else None, fields.get("ref") or None
    )


def _meta(ref: str) -> dict[str, object]:
    return {"ref": ref, "email": "", "joined_at": time.time(), "kind": "stream"}


async def hold_presence(user_id: str, *, client: aioredis.Redis | None = None) -> str:
    """Track (or refresh) the stream's presence connection for the user; returns its ref.

    The ref is kept in the input hash (HSETNX: two callers agree on one). An untracked
    ref is never revived by the presence store, so ``release_presence`` drops it from the
    hash in the same breath and the next hold makes a fresh one."""
    redis = client or get_redis()
    key = keys.broadcast_input(user_id)
    await redis.hsetnx(key, "ref", "stream-" + pysecrets.token_hex(8))
    ref = str(await redis.hget(key, "ref"))
    await PresenceStore(client=redis).track_many([(user_id, _meta(ref))], heartbeat=False)
    return ref


async def refresh_presence(user_id: str, ref: str, *, client: aioredis.Redis | None = None) -> None:
    """The heartbeat of the stream's presence connection (as a tab's socket sends one)."""
    await PresenceStore(client=client or get_redis()).track_many([(user_id, _meta(ref))], heartbeat=True)


async def release_presence(user_id: str, *, client: aioredis.Redis | None = None) -> bool:
    """Untrack the stream's presence connection (the stream is over); True if it held one.
    If it was the user's last connection, their cleanup timer starts as after a tab's close."""
    redis = client or get_redis()
    key = keys.broadcast_input(user_id)
    ref = await redis.hget(key, "ref")
    if not ref:
        return False
    await redis.hdel(key, "ref")
    await PresenceStore(client=redis).untrack(user_id, str(ref))
    return True
