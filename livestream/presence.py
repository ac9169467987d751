"""The Redis-backed presence set: one entry per open dashboard connection.

Layout, under ``<prefix>:presence:<topic>``:
  ``:users``       SET of user ids with at least one connection
  ``:u:<user_id>`` HASH ref -> meta JSON ``{"email", "joined_at", "ref"}``
  ``:expiry``      ZSET ``<user_id>|<ref>`` -> deadline (Redis clock, seconds)
  ``:gone:<ref>``  a connection untracked for good (expires after PRESENCE_TTL)

Every operation is one Lua script: atomic, one round trip, and it reports how
many connections the user has left, so two daphne processes never race on
"first" or "last" connection. Deadlines use Redis' own clock (TIME), so servers
with skewed clocks agree on who expired.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from livestream.conf import get_settings
from livestream.redis import LUA_NOW, get_redis, key, run_script

Meta = dict[str, Any]


# KEYS: users, user hash, expiry, gone. ARGV: user_id, ref, meta json, ttl.
# Returns {1 if newly added else 0, sessions after}. A connection untracked for good
# is never tracked again: a heartbeat's refresh sent just before the disconnect's
# untrack can reach Redis after it (from another pooled connection), and must not
# bring the closed connection back as a ghost that only the sweeper would remove.
_TRACK = (
    LUA_NOW
    + """
if redis.call('EXISTS', KEYS[4]) == 1 then return {0, redis.call('HLEN', KEYS[2])} end
local added = redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1] .. '|' .. ARGV[2])
redis.call('SADD', KEYS[1], ARGV[1])
return {added, redis.call('HLEN', KEYS[2])}
"""
)

# KEYS: users, user hash, expiry, gone. ARGV: user_id, ref, gone ttl ms.
# Returns {sessions left, meta json} or {-1} if the connection was not tracked.
_UNTRACK = """
redis.call('SET', KEYS[4], '1', 'PX', ARGV[3])
local meta = redis.call('HGET', KEYS[2], ARGV[2])
if not meta then return {-1} end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[1] .. '|' .. ARGV[2])
local left = redis.call('HLEN', KEYS[2])
if left == 0 then redis.call('SREM', KEYS[1], ARGV[1]) end
return {left, meta}
"""

# KEYS: users, expiry. ARGV: limit, user hash prefix.
# Removes connections whose deadline passed; returns {user_id, meta, left} triples.
_EXPIRE = (
    LUA_NOW
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, member in ipairs(due) do
  local sep = string.find(member, '|[^|]*$')
  local uid = string.sub(member, 1, sep - 1)
  local ref = string.sub(member, sep + 1)
  local hash = ARGV[2] .. uid
  local meta = redis.call('HGET', hash, ref)
  redis.call('ZREM', KEYS[2], member)
  if meta then
    redis.call('HDEL', hash, ref)
    local left = redis.call('HLEN', hash)
    if left == 0 then redis.call('SREM', KEYS[1], uid) end
    table.insert(out, uid)
    table.insert(out, meta)
    table.insert(out, left)
  end
end
return out
"""
)

# KEYS: users. ARGV: user hash prefix. Returns {user_id, {ref, meta, ...}, ...}.
_LIST = """
local out = {}
for _, uid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  table.insert(out, uid)
  table.insert(out, redis.call('HGETALL', ARGV[1] .. uid))
end
return out
"""


@dataclass(frozen=True)
class Change:
    """One connection joining or leaving, and how many the user has after it."""

    user_id: str
    meta: Meta
    sessions: int


class PresenceStore:
    """Presence of ``topic`` in Redis. Cheap to build; holds no state of its own."""

    def __init__(self, topic: str | None = None, client: aioredis.Redis | None = None) -> None:
        self.topic = topic or get_settings().TOPIC
        self.redis = client or get_redis()
        base = key("presence", self.topic)
        self.users_key = f"{base}:users"
        self.user_prefix = f"{base}:u:"
        self.expiry_key = f"{base}:expiry"
        self.gone_prefix = f"{base}:gone:"

    def _keys(self, user_id: str, ref: str) -> list[str]:
        return [self.users_key, self.user_prefix + user_id, self.expiry_key, self.gone_prefix + ref]

    async def track(self, user_id: str, meta: Meta) -> Change | None:
        """Add one connection. Returns the join, or None if that ref was already tracked."""
        added, sessions = await run_script(
            self.redis,
            _TRACK,
            self._keys(user_id, meta["ref"]),
            user_id,
            meta["ref"],
            json.dumps(meta),
            _ttl(),
        )
        return Change(user_id, meta, int(sessions)) if added else None

    async def untrack(self, user_id: str, ref: str) -> Change | None:
        """Remove one connection for good. Returns the leave, or None if it was not tracked."""
        gone_ms = max(1000, int(_ttl() * 1000))
        result = await run_script(self.redis, _UNTRACK, self._keys(user_id, ref), user_id, ref, gone_ms)
        if int(result[0]) < 0:
            return None
        return Change(user_id, json.loads(result[1]), int(result[0]))

    async def refresh(self, user_id: str, meta: Meta) -> Change | None:
        """Heartbeat: push the connection's deadline back; re-track it if Redis lost it.

        Returns the join when the connection had to be tracked again (Redis was
        restarted, or the sweeper expired it), else None. Never revives a
        connection that was untracked (see _TRACK).
        """
        return await self.track(user_id, meta)

    async def expire_stale(self, limit: int = 1000) -> list[Change]:
        """Remove connections whose heartbeat deadline passed (a daphne that died)."""
        flat = await run_script(
            self.redis, _EXPIRE, [self.users_key, self.expiry_key], limit, self.user_prefix
        )
        return [Change(flat[i], json.loads(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)]

    async def list(self) -> dict[str, dict[str, list[Meta]]]:
        """Phoenix.Presence.list/1: ``{user_id: {"metas": [...]}}``, metas by join time."""
        flat = await run_script(self.redis, _LIST, [self.users_key], self.user_prefix)
        presence: dict[str, dict[str, list[Meta]]] = {}
        for i in range(0, len(flat), 2):
            pairs = flat[i + 1]
            metas = [json.loads(pairs[j + 1]) for j in range(0, len(pairs), 2)]
            if metas:
                metas.sort(key=lambda m: (m.get("joined_at", 0), m.get("ref", "")))
                presence[flat[i]] = {"metas": metas}
        return presence

    async def sessions(self, user_id: str) -> int:
        """How many connections ``user_id`` has open."""
        return int(await self.redis.hlen(self.user_prefix + user_id))

    async def user_ids(self) -> set[str]:
        return set(await self.redis.smembers(self.users_key))


def _ttl() -> float:
    return get_settings().PRESENCE_TTL
