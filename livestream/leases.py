"""Who runs which manager: per-user ownership leases and the live workers.

``<prefix>:lease:<user_id>`` holds the id of the worker running that user's
UserStreamManager, with a TTL its owner renews. At most one worker holds a
lease, so at most one manager runs per user across all workers; a worker that
dies stops renewing and its users are claimed by the others.

``<prefix>:workers`` (ZSET worker_id -> last seen, Redis clock) and
``<prefix>:worker:<id>`` (HASH: inbox channel, host, pid, started_at) say which
workers are alive and how to reach each one.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from livestream.conf import get_settings
from livestream.redis import get_redis, key, run_script

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 "

# KEYS: lease. ARGV: me, ttl ms. 1 if we hold it now.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""

# KEYS: leases. ARGV: me, ttl ms. Returns the indexes (1-based) of leases lost to another worker.
# A lease that vanished (Redis restarted empty) is taken back: we are still running it.
_RENEW = """
local lost = {}
for i, lease in ipairs(KEYS) do
  local cur = redis.call('GET', lease)
  if cur == ARGV[1] then redis.call('PEXPIRE', lease, ARGV[2])
  elseif not cur then redis.call('SET', lease, ARGV[1], 'PX', ARGV[2])
  else table.insert(lost, i) end
end
return lost
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lease, the user's presence hash. ARGV: me. Releases our lease unless
# the user is present again; returns 1 if released, 0 if they came back.
_RELEASE_IF_ABSENT = """
if redis.call('HLEN', KEYS[2]) > 0 then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: present users SET. ARGV: me, ttl ms, lease prefix, live workers.
# Claims this worker's fair share of the present users whom nobody runs.
_CLAIM_ORPHANS = """
local orphans = {}
for _, uid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[3] .. uid) == 0 then table.insert(orphans, uid) end
end
local share = math.ceil(#orphans / math.max(1, tonumber(ARGV[4])))
local claimed = {}
for i = 1, share do
  redis.call('SET', ARGV[3] .. orphans[i], ARGV[1], 'PX', ARGV[2])
  table.insert(claimed, orphans[i])
end
return claimed
"""

# KEYS: workers ZSET, this worker's HASH. ARGV: me, horizon s, fields...
# Marks us alive, forgets workers silent for 10 horizons, returns how many are alive.
_BEAT = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
if #ARGV > 2 then redis.call('HSET', KEYS[2], unpack(ARGV, 3)) end
redis.call('PEXPIRE', KEYS[2], math.floor(tonumber(ARGV[2]) * 10000))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10 * tonumber(ARGV[2]))
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[2]), '+inf')
"""
)


class LeaseStore:
    """Leases held by one worker (``worker_id``)."""

    def __init__(self, worker_id: str, client: aioredis.Redis | None = None) -> None:
        self.worker_id = worker_id
        self.redis = client or get_redis()
        self.prefix = key("lease", "")
        self.workers_key = key("workers")

    @property
    def ttl_ms(self) -> int:
        return int(get_settings().LEASE_TTL * 1000)

    def lease_key(self, user_id: str) -> str:
        return self.prefix + user_id

    async def acquire(self, user_id: str) -> bool:
        return bool(
            await run_script(self.redis, _ACQUIRE, [self.lease_key(user_id)], self.worker_id, self.ttl_ms)
        )

    async def owner(self, user_id: str) -> str | None:
        return await self.redis.get(self.lease_key(user_id))

    async def renew(self, user_ids: list[str]) -> list[str]:
        """Extend our leases; returns the users whose lease another worker holds now."""
        if not user_ids:
            return []
        keys = [self.lease_key(u) for u in user_ids]
        lost = await run_script(self.redis, _RENEW, keys, self.worker_id, self.ttl_ms)
        return [user_ids[int(i) - 1] for i in lost]

    async def release(self, user_id: str) -> None:
        await run_script(self.redis, _RELEASE, [self.lease_key(user_id)], self.worker_id)

    async def release_if_absent(self, user_id: str, presence_hash: str) -> bool:
        keys = [self.lease_key(user_id), presence_hash]
        return bool(await run_script(self.redis, _RELEASE_IF_ABSENT, keys, self.worker_id))

    async def claim_orphans(self, users_key: str, live_workers: int) -> list[str]:
        return list(
            await run_script(
                self.redis,
                _CLAIM_ORPHANS,
                [users_key],
                self.worker_id,
                self.ttl_ms,
                self.prefix,
                live_workers,
            )
        )

    async def beat(self, info: dict[str, str] | None = None) -> int:
        """Mark this worker alive (and publish ``info``); returns the live workers."""
        fields = [x for pair in (info or {}).items() for x in pair]
        keys = [self.workers_key, key("worker", self.worker_id)]
        horizon = get_settings().LEASE_TTL
        return int(await run_script(self.redis, _BEAT, keys, self.worker_id, horizon, *fields))

    async def worker_info(self, worker_id: str) -> dict[str, str]:
        return await self.redis.hgetall(key("worker", worker_id))

    async def leave(self) -> None:
        """Forget this worker (clean shutdown)."""
        await self.redis.zrem(self.workers_key, self.worker_id)
        await self.redis.delete(key("worker", self.worker_id))
