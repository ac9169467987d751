"""The Redis-backed presence set: one entry per open dashboard connection.

Layout, under ``<prefix>:presence:<topic>``:
  ``:users``       SET of user ids with at least one connection
  ``:u:<user_id>`` HASH ref -> meta JSON ``{"email", "joined_at", "ref"}``
  ``:expiry``      ZSET ``<user_id>|<ref>`` -> deadline (Redis clock, seconds)
  ``:gone:<ref>``  a connection untracked for good (expires after PRESENCE_TTL)
  ``:events``      LIST of presence_diff JSON, oldest first, drained by the workers:
                   {"type": "presence_diff", "joins": {uid: {"metas": [meta]}},
                    "leaves": {}, "sessions": {uid: connections left},
                    "cleanup": {uid: seconds}}   (a leave that scheduled the cleanup)
  ``:rebuilt:<user_id>``  a heartbeat found the user's connection gone and tracked it
                   again (Redis lost its data): for LEASE_TTL no worker grants the user's
                   lease, so the worker still running their manager takes it back with its
                   next renewal instead of a second worker starting one (livestream/ownership/leases.py)

Every operation is one Lua script: atomic, one round trip (for one connection or
a batch), and it reports how many connections the user has left, so two daphne
processes never race on "first" or "last" connection. The same script announces
the change (``:events``) and schedules or cancels the user's ``cleanup:<user_id>``
timer (livestream/timers/store.py). Deadlines use Redis' own clock (TIME), so servers
with skewed clocks agree on who expired.

Its Lua scripts sit beside the methods that run them, with their KEYS/ARGV layout.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from livestream import keys
from livestream.conf import get_settings
from livestream.redis import LUA_NOW, Script, get_redis, run_script, script, text_set, texts

Meta = dict[str, Any]

# Timers named ``cleanup:<user_id>`` stop a user's manager once they have been
# away for CLEANUP_TIMEOUT (scheduled and cancelled by the scripts below).
CLEANUP_TIMER_PREFIX = "cleanup:"
# Presence changes the workers have not read yet, at most (see _PROLOGUE).
EVENTS_CAP = 100_000


def cleanup_timer(user_id: str) -> str:
    return CLEANUP_TIMER_PREFIX + user_id


# The scripts below share one layout. KEYS: users, expiry, timers, timer payloads,
# events. ARGV[1..5]: user hash prefix, gone prefix, cleanup timer prefix, worker
# channel, events cap; their own arguments follow.
_PROLOGUE = (
    LUA_NOW
    + """
local USER, GONE, TIMER, WORKER_CHANNEL, EVENTS_CAP = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])

-- Every change appends its presence_diff (Phoenix's shape, plus the user's session
-- count) to the events LIST the workers drain, in the same script: a change and its
-- announcement cannot be separated by a crash, and a connect or a disconnect costs
-- one round trip. The LIST is capped: the workers' reconcile tick repairs whatever
-- an overflow dropped.
local function emit(side, uid, meta, left, delay)
  local u = cjson.encode(uid)
  local entry = '{' .. u .. ':{"metas":[' .. meta .. ']}}'
  local joins, leaves, cleanup = '{}', '{}', ''
  if side == 'j' then joins = entry else leaves = entry end
  if delay then cleanup = ',"cleanup":{' .. u .. ':' .. cjson.encode(delay) .. '}' end
  redis.call('RPUSH', KEYS[5], '{"type":"presence_diff","joins":' .. joins .. ',"leaves":' .. leaves
    .. ',"sessions":{' .. u .. ':' .. left .. '}' .. cleanup .. '}')
  if redis.call('LLEN', KEYS[5]) > EVENTS_CAP then redis.call('LTRIM', KEYS[5], -EVENTS_CAP, -1) end
end

-- The user's cleanup timer (livestream/timers/store.py) is scheduled by the change that
-- leaves them with no connection and cancelled by the one that brings one back, in
-- the same script: the cleanup timeout counts from the close itself, however late
-- a worker reads the leave, and a reconnect can never race a firing cleanup.
local function schedule_cleanup(uid, delay)
  local name = TIMER .. uid
  redis.call('ZADD', KEYS[3], now + delay, name)
  redis.call('HSET', KEYS[4], name, cjson.encode({channel = WORKER_CHANNEL,
    message = {type = 'presence.cleanup', user_id = uid}, user = uid}))
end
local function cancel_cleanup(uid)
  redis.call('ZREM', KEYS[3], TIMER .. uid)
  redis.call('HDEL', KEYS[4], TIMER .. uid)
end

-- Remove one connection; returns the sessions left, or nil if it was not tracked.
local function remove(uid, ref, meta, delay)
  local hash = USER .. uid
  redis.call('HDEL', hash, ref)
  redis.call('ZREM', KEYS[2], uid .. '|' .. ref)
  local left = redis.call('HLEN', hash)
  if left == 0 then
    redis.call('SREM', KEYS[1], uid)
    schedule_cleanup(uid, delay)
    emit('l', uid, meta, left, delay)
  else
    emit('l', uid, meta, left)
  end
  return left
end
"""
)

# ARGV[6]: ttl seconds, ARGV[7]: sticky-events hash prefix ('' for none: heartbeats),
# ARGV[8]: rebuilt-marker prefix ('' unless a heartbeat), ARGV[9]: its ttl ms; then
# (user_id, ref, meta json) per connection. Returns {added, sessions, sticky frames}
# per connection: a connect also reads the user's sticky component events
# (livestream/components/emitter.py) in the same round trip. Tracking one already tracked
# only pushes its deadline back (a heartbeat); a heartbeat that has to add it again
# marks the user rebuilt (see the module docstring). A connection untracked for good
# (``gone``) is never tracked again: a heartbeat sent just before the disconnect's
# untrack can reach Redis after it and must not bring the closed connection back as a ghost.
_TRACK = script(
    "presence.track",
    _PROLOGUE
    + """
local out = {}
local ttl = tonumber(ARGV[6])
local sticky = ARGV[7]
local rebuilt = ARGV[8]
for i = 10, #ARGV, 3 do
  local uid, ref, meta = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local hash = USER .. uid
  local added = 0
  if redis.call('EXISTS', GONE .. ref) == 0 then
    added = redis.call('HSET', hash, ref, meta)
    redis.call('ZADD', KEYS[2], now + ttl, uid .. '|' .. ref)
    if added == 1 then
      if rebuilt ~= '' then redis.call('SET', rebuilt .. uid, '1', 'PX', ARGV[9]) end
      redis.call('SADD', KEYS[1], uid)
      cancel_cleanup(uid)
      emit('j', uid, meta, redis.call('HLEN', hash))
    end
  end
  table.insert(out, added)
  table.insert(out, redis.call('HLEN', hash))
  if sticky ~= '' and added == 1 then
    table.insert(out, redis.call('HVALS', sticky .. uid))
  else
    table.insert(out, {})
  end
end
return out
""",
)

# ARGV[6]: gone ttl ms; then (user_id, ref, cleanup delay seconds) per connection.
# Returns {sessions left, meta json} per connection, {-1, ''} for one that was not
# tracked. The connection is marked gone either way. Each connection has its own
# delay: the caller takes off the time since it saw the close (a batch waits its turn).
_UNTRACK = script(
    "presence.untrack",
    _PROLOGUE
    + """
local out = {}
for i = 7, #ARGV, 3 do
  local uid, ref = ARGV[i], ARGV[i + 1]
  redis.call('SET', GONE .. ref, '1', 'PX', ARGV[6])
  local meta = redis.call('HGET', USER .. uid, ref)
  if meta then
    table.insert(out, remove(uid, ref, meta, tonumber(ARGV[i + 2])))
    table.insert(out, meta)
  else
    table.insert(out, -1)
    table.insert(out, '')
  end
end
return out
""",
)

# ARGV[6]: limit, ARGV[7]: cleanup delay seconds. Removes connections whose deadline
# passed (their daphne died), each as an untrack would; returns {user_id, meta, left}.
_EXPIRE = script(
    "presence.expire",
    _PROLOGUE
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))
local out = {}
for _, member in ipairs(due) do
  local sep = string.find(member, '|[^|]*$')
  local uid = string.sub(member, 1, sep - 1)
  local ref = string.sub(member, sep + 1)
  local meta = redis.call('HGET', USER .. uid, ref)
  redis.call('ZREM', KEYS[2], member)
  if meta then
    table.insert(out, uid)
    table.insert(out, meta)
    table.insert(out, remove(uid, ref, meta, tonumber(ARGV[7])))
  end
end
return out
""",
)

# ARGV[6..]: user ids. The users among them with no connection and no cleanup timer
# (a leave that was lost: the reconcile tick schedules their cleanup).
_UNATTENDED = script(
    "presence.unattended",
    _PROLOGUE
    + """
local out = {}
for i = 6, #ARGV do
  local uid = ARGV[i]
  if redis.call('HLEN', USER .. uid) == 0 and not redis.call('ZSCORE', KEYS[3], TIMER .. uid) then
    table.insert(out, uid)
  end
end
return out
""",
)

# KEYS: users. ARGV: user hash prefix. Returns {user_id, {ref, meta, ...}, ...}.
_LIST = script(
    "presence.list",
    """
local out = {}
for _, uid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  table.insert(out, uid)
  table.insert(out, redis.call('HGETALL', ARGV[1] .. uid))
end
return out
""",
)


@dataclass(frozen=True)
class Change:
    """One connection joining or leaving, and how many the user has after it."""

    user_id: str
    meta: Meta
    sessions: int
    # A connect's sticky component events (frames to send once accepted; track_many(sticky=True)).
    sticky: tuple[str, ...] = ()


class PresenceStore:
    """Presence of ``topic`` in Redis. Cheap to build; holds no state of its own."""

    def __init__(self, topic: str | None = None, client: aioredis.Redis | None = None) -> None:
        self.topic = topic or get_settings().TOPIC
        self.redis = client or get_redis()
        base = keys.presence(self.topic)
        self.users_key = f"{base}:users"
        self.user_prefix = f"{base}:u:"
        self.expiry_key = f"{base}:expiry"
        self.gone_prefix = f"{base}:gone:"
        self.events_key = f"{base}:events"
        self.rebuilt_prefix = f"{base}:rebuilt:"

    async def _run(self, lua: Script, *args: Any) -> Any:
        conf = get_settings()
        names = [self.users_key, self.expiry_key, keys.timers(), keys.timer_payloads(), self.events_key]
        common = (self.user_prefix, self.gone_prefix, CLEANUP_TIMER_PREFIX, conf.WORKER_CHANNEL, EVENTS_CAP)
        return await run_script(self.redis, lua, names, *common, *args)

    async def track(self, user_id: str, meta: Meta) -> Change | None:
        """Add one connection. Returns the join, or None if that ref was already tracked."""
        return (await self.track_many([(user_id, meta)]))[0]

    async def track_many(
        self, connections: Sequence[tuple[str, Meta]], *, sticky: bool = False, heartbeat: bool = False
    ) -> list[Change | None]:
        """Track (or, for one tracked already, refresh) each connection, in one round trip.

        Returns, per connection, its join if it was not tracked before (new, or
        re-tracked after Redis lost it or the sweeper expired it), else None. A
        connection that was untracked is never revived (see _TRACK). With
        ``sticky`` (connects), each join also carries the user's sticky events.
        ``heartbeat``: these connections were open all along, so one that has to be
        added again was lost by Redis: its user is marked rebuilt.
        """
        if not connections:
            return []
        args = [x for uid, meta in connections for x in (uid, meta["ref"], json.dumps(meta))]
        rebuilt = self.rebuilt_prefix if heartbeat else ""
        grace_ms = int(get_settings().LEASE_TTL * 1000)
        flat = await self._run(
            _TRACK, _ttl(), keys.sticky_prefix() if sticky else "", rebuilt, grace_ms, *args
        )
        return [
            Change(uid, meta, int(flat[3 * i + 1]), tuple(flat[3 * i + 2] or ()))
            if int(flat[3 * i])
            else None
            for i, (uid, meta) in enumerate(connections)
        ]

    async def refresh(self, user_id: str, meta: Meta) -> Change | None:
        """Heartbeat of one connection: ``track_many`` of one."""
        return (await self.track_many([(user_id, meta)], heartbeat=True))[0]

    async def untrack(self, user_id: str, ref: str, *, cleanup_delay: float | None = None) -> Change | None:
        """Remove one connection for good. Returns the leave, or None if it was not tracked."""
        return (await self.untrack_many([(user_id, ref)], cleanup_delay=cleanup_delay))[0]

    async def untrack_many(
        self,
        connections: Sequence[tuple[str, str]],
        *,
        cleanup_delay: float | None = None,
        closed_ago: Sequence[float] | None = None,
    ) -> list[Change | None]:
        """Remove each ``(user_id, ref)`` for good, in one round trip; the leaves (None: not tracked).

        A user left with no connection gets their cleanup timer, due ``cleanup_delay``
        seconds (default CLEANUP_TIMEOUT) after the close: ``closed_ago`` says, per
        connection, how long ago that was (a batch that waited for Redis still
        stops the manager on time).
        """
        if not connections:
            return []
        delay = get_settings().CLEANUP_TIMEOUT if cleanup_delay is None else cleanup_delay
        ago = closed_ago if closed_ago is not None else [0.0] * len(connections)
        gone_ms = max(1000, int(_ttl() * 1000))
        args = [
            x
            for (uid, ref), since in zip(connections, ago, strict=True)
            for x in (uid, ref, round(max(0.0, delay - since), 6))
        ]
        flat = await self._run(_UNTRACK, gone_ms, *args)
        return [
            Change(uid, json.loads(flat[2 * i + 1]), int(flat[2 * i])) if int(flat[2 * i]) >= 0 else None
            for i, (uid, _ref) in enumerate(connections)
        ]

    async def expire_stale(self, limit: int = 1000) -> list[Change]:
        """Remove connections whose heartbeat deadline passed (a daphne that died)."""
        flat = await self._run(_EXPIRE, limit, get_settings().CLEANUP_TIMEOUT)
        return [Change(flat[i], json.loads(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)]

    async def unattended(self, user_ids: Sequence[str]) -> list[str]:
        """Those of ``user_ids`` with no connection and no pending cleanup (see _UNATTENDED)."""
        return list(await self._run(_UNATTENDED, *user_ids)) if user_ids else []

    async def take_events(self, limit: int) -> list[str]:
        """Up to ``limit`` presence_diffs (JSON) from the head of the events LIST, removed."""
        return texts(await self.redis.lpop(self.events_key, limit) or [])

    async def session_counts(self, user_ids: Sequence[str]) -> list[int]:
        """How many connections each of ``user_ids`` has open (one round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.hlen(self.user_prefix + user_id)
            return [int(n) for n in await pipe.execute()] if user_ids else []

    async def sessions(self, user_id: str) -> int:
        """How many connections ``user_id`` has open."""
        return int(await self.redis.hlen(self.user_prefix + user_id))

    async def user_ids(self) -> set[str]:
        return set(text_set(await self.redis.smembers(self.users_key)))

    # Last: inside the class body, ``list`` would name this method in the annotations below it.
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


def _ttl() -> float:
    return get_settings().PRESENCE_TTL
