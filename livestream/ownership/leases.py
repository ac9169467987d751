"""Who runs which manager: per-user ownership leases and the live workers.

``<prefix>:lease:<user_id>`` holds the id of the worker running that user's
UserStreamManager, with a TTL its owner renews. At most one worker holds a
lease, so at most one manager runs per user across all workers; a worker that
dies stops renewing and its users are claimed by the others.

``<prefix>:workers`` (ZSET worker_id -> last seen, Redis clock) and
``<prefix>:worker:<id>`` (HASH: inbox channel, host, pid, proc identity) say
which workers are alive and how to reach each one. ``<prefix>:workers:dead``
(SET) names workers whose process a worker on the same machine saw end: their
leases are free at once rather than after LEASE_TTL (livestream/ownership/liveness.py).

``<prefix>:epoch`` tells a restarted-empty Redis from one that kept its data;
``<prefix>:epoch:hold`` (LEASE_TTL after a loss) grants no new lease while the
workers take back the leases that vanished with the data (see _EPOCH).

(Over 300 lines on purpose: half of it is its eight Lua scripts, each kept beside
the method that runs it with its KEYS/ARGV header; their rules are policy.py's, in
the Lua of policy_lua.py. Leases, placement and the
worker registry share those scripts' keys, which is why they are one store.)
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from livestream import keys
from livestream.conf import get_settings
from livestream.ownership.liveness import is_dead
from livestream.ownership.policy import failover_hold
from livestream.ownership.policy_lua import GRANTS
from livestream.redis import LUA_NOW, get_redis, run_script, script, text_map, text_or_none, texts

if TYPE_CHECKING:
    from livestream.presence.store import PresenceStore

# A lease whose value starts with this is a staff hold, not a worker
# (livestream/worker/control.py): a join ends it.
HOLD_PREFIX = "held-by-staff:"

# Every grant composes policy_lua.GRANTS: the rules (livestream/ownership/policy.py's Lua
# twin), the one epoch guard (may_grant) and the fencing token (grant).

# KEYS: lease, dead workers SET, epoch, epoch hold, the user's token. ARGV: me, ttl ms, the
# epoch we know, failover hold ms. Our token if we hold the lease now, else 0. A lease that
# vanished after Redis lost its data may still be running on a worker that has not taken it
# back yet (see check_epoch): may_grant refuses until that is over.
_ACQUIRE = script(
    "leases.acquire",
    GRANTS
    + """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return redis.call('GET', KEYS[5]) or grant(KEYS[1], ARGV[1], ARGV[2], KEYS[5])
end
if not may_grant(KEYS[3], KEYS[4], ARGV[3], ARGV[4]) then return 0 end
local function dead(w) return redis.call('SISMEMBER', KEYS[2], w) == 1 end
local function never() return false end
if claimable('', cur, never, dead, false, '') then return grant(KEYS[1], ARGV[1], ARGV[2], KEYS[5]) end
return 0
""",
)

# KEYS: epoch, epoch hold. ARGV: a new epoch, the epoch we know ("" if none), hold ms,
# failover hold ms. Returns {epoch, 1 if it is new or changed since we looked}. Redis
# losing its data loses the epoch; the first worker to look makes a new one. A worker that
# knew the old one (so knows it is a loss, not a first start) puts a hold on new leases for
# LEASE_TTL: meanwhile every live worker takes its vanished leases back (renew does),
# or has fenced itself because it could not. A new master (same data) holds grants too
# (master_changed), but is no loss: presence is not rebuilt.
_EPOCH = script(
    "leases.epoch",
    GRANTS
    + """
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1])
  cur = ARGV[1]
end
master_changed(KEYS[1], KEYS[2], ARGV[4])
if ARGV[2] ~= '' and cur ~= ARGV[2] then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3], 'NX')
  return {cur, 1}
end
if cur == ARGV[1] then return {cur, 1} end
return {cur, 0}
""",
)

# KEYS: leases. ARGV: me, ttl ms. Returns {lost, taken back}: the indexes (1-based) of
# leases lost to another worker, and of leases that had vanished (Redis restarted empty, or
# a failover lost our last renewals) and were taken back: we are still running them.
# Their tokens go back with _RESTORE_TOKENS (rare: not worth 10,000 tokens on every round).
_RENEW = script(
    "leases.renew",
    """
local lost, taken = {}, {}
for i, lease in ipairs(KEYS) do
  local cur = redis.call('GET', lease)
  if cur == ARGV[1] then redis.call('PEXPIRE', lease, ARGV[2])
  elseif not cur then redis.call('SET', lease, ARGV[1], 'PX', ARGV[2]) table.insert(taken, i)
  else table.insert(lost, i) end
end
return {lost, taken}
""",
)

# KEYS: the tokens of leases taken back. ARGV: our token of each. A token goes back unless
# a newer grant's is there (then the take-back was of a lease granted since: the renewal
# after this finds it held by another, or our writes are refused until it does).
_RESTORE_TOKENS = script(
    "leases.restore_tokens",
    """
for i, key in ipairs(KEYS) do
  if tonumber(ARGV[i]) > tonumber(redis.call('GET', key) or '0') then redis.call('SET', key, ARGV[i]) end
end
return #KEYS
""",
)

_RELEASE = script(
    "leases.release",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
)

# KEYS: lease, the user's presence hash. ARGV: me. Releases our lease unless
# the user is present again; returns 1 if released, 0 if they came back.
_RELEASE_IF_ABSENT = script(
    "leases.release_if_absent",
    """
if redis.call('HLEN', KEYS[2]) > 0 then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
""",
)

# KEYS: present users SET, dead workers SET, epoch hold, epoch. ARGV: me, ttl ms, lease
# prefix, live workers, managers I run, the epoch we know, rebuilt-marker prefix, failover
# hold ms, token prefix. Claims present users nobody runs (policy.claimable: no lease, or a
# dead worker's; not one a heartbeat re-tracked in the last LEASE_TTL: right after Redis
# restarted empty, the heartbeats re-track everyone while the leases are gone and their
# managers still run), policy.fair_share of them. Returns {user, token, ...}.
_CLAIM_ORPHANS = script(
    "leases.claim_orphans",
    GRANTS
    + """
if not may_grant(KEYS[4], KEYS[3], ARGV[6], ARGV[8]) then return {} end
local function dead(w) return redis.call('SISMEMBER', KEYS[2], w) == 1 end
local function rebuilt(uid) return redis.call('EXISTS', ARGV[7] .. uid) == 1 end
local users = redis.call('SMEMBERS', KEYS[1])
local orphans = {}
for _, uid in ipairs(users) do
  if claimable(uid, redis.call('GET', ARGV[3] .. uid), rebuilt, dead, false, '') then
    table.insert(orphans, uid)
  end
end
local share = fair_share(#users, tonumber(ARGV[4]), tonumber(ARGV[5]), #orphans)
local claimed = {}
for i = 1, share do
  local uid = orphans[i]
  table.insert(claimed, uid)
  table.insert(claimed, grant(ARGV[3] .. uid, ARGV[1], ARGV[2], ARGV[9] .. uid))
end
return claimed
""",
)

# KEYS: workers ZSET, worker loads HASH, dead workers SET, epoch, epoch hold.
# ARGV: me, ttl ms, lease prefix, the epoch we know, horizon s, presence hash prefix,
# start list prefix, held prefix, rebuilt-marker prefix, failover hold ms, token prefix,
# user ids... Places each present user nobody runs (policy.claimable, where a join ends a
# staff hold) on the least loaded live worker (policy.least_loaded): its lease is granted
# to that worker, whose load goes up by one, and a worker other than us finds the user on
# its start list. Returns {user, token, ...} to run here: placed here, or ours already.
_PLACE = script(
    "leases.place",
    GRANTS
    + LUA_NOW
    + """
if not may_grant(KEYS[4], KEYS[5], ARGV[4], ARGV[10]) then return {} end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[5]), '+inf')
local loads, me_live = {}, false
for i, w in ipairs(live) do
  loads[i] = tonumber(redis.call('HGET', KEYS[2], w) or '0') or 0
  if w == ARGV[1] then me_live = true end
end
if not me_live then table.insert(live, ARGV[1]) table.insert(loads, 0) end
local function dead(w) return redis.call('SISMEMBER', KEYS[3], w) == 1 end
local function rebuilt(uid) return redis.call('EXISTS', ARGV[9] .. uid) == 1 end
local mine = {}
for i = 12, #ARGV do
  local uid = ARGV[i]
  if redis.call('HLEN', ARGV[6] .. uid) > 0 then
    local lease, token_key = ARGV[3] .. uid, ARGV[11] .. uid
    local cur = redis.call('GET', lease)
    if cur == ARGV[1] then
      table.insert(mine, uid)
      table.insert(mine, redis.call('GET', token_key) or grant(lease, cur, ARGV[2], token_key))
    elseif claimable(uid, cur, rebuilt, dead, true, ARGV[8]) then
      local best = least_loaded(loads)
      local owner = live[best]
      loads[best] = loads[best] + 1
      redis.call('HINCRBY', KEYS[2], owner, 1)
      local token = grant(lease, owner, ARGV[2], token_key)
      if owner == ARGV[1] then
        table.insert(mine, uid)
        table.insert(mine, token)
      else
        local starts = ARGV[7] .. owner .. ':starts'
        redis.call('RPUSH', starts, uid)
        redis.call('PEXPIRE', starts, ARGV[2])
      end
    end
  end
end
return mine
""",
)

# KEYS: workers ZSET, this worker's HASH, worker loads HASH. ARGV: me, horizon s, load, fields...
# Marks us alive, forgets workers silent for 10 horizons, returns how many are alive.
_BEAT = script(
    "leases.beat",
    LUA_NOW
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
if #ARGV > 3 then redis.call('HSET', KEYS[2], unpack(ARGV, 4)) end
redis.call('PEXPIRE', KEYS[2], math.floor(tonumber(ARGV[2]) * 10000))
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 10 * tonumber(ARGV[2]))
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[3], unpack(gone))
end
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[2]), '+inf')
""",
)


def held_by(lease_value: str | None) -> str | None:
    """The staff id holding a user down, if ``lease_value`` is a hold rather than a worker."""
    if lease_value and lease_value.startswith(HOLD_PREFIX):
        return lease_value.removeprefix(HOLD_PREFIX)
    return None


def new_worker_id() -> str:
    """``host:pid:random``: unique per worker process, and says where it runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class LeaseStore:
    """Leases held by one worker (``worker_id``)."""

    def __init__(self, worker_id: str, client: aioredis.Redis | None = None) -> None:
        self.worker_id = worker_id
        self.redis = client or get_redis()
        self.prefix = keys.lease_prefix()
        self.workers_key = keys.workers()
        self.dead_key = keys.dead_workers()
        self.loads_key = keys.worker_loads()
        self.epoch_key = keys.epoch()
        self.hold_key = keys.epoch_hold()
        self.epoch = ""  # the Redis epoch this worker knows; "" until check_epoch
        self.token_prefix = keys.fence_prefix()
        # The fencing token of each lease this worker was granted (livestream/ownership/fencing.py):
        # a manager started here carries its user's. Written on the worker's loop only; the
        # lease keeper reads a copy (dict(tokens) is one C call under the GIL).
        self.tokens: dict[str, int] = {}

    @property
    def ttl_ms(self) -> int:
        return int(get_settings().LEASE_TTL * 1000)

    @property
    def failover_hold_ms(self) -> int:
        conf = get_settings()
        return int(failover_hold(conf.LEASE_TTL, conf.RECONCILE_INTERVAL) * 1000)

    def _granted(self, pairs: list[object]) -> list[str]:
        """``[user, token, ...]`` from a grant script: the users, their tokens remembered."""
        users = [str(u) for u in pairs[::2]]
        for user_id, token in zip(users, pairs[1::2], strict=True):
            self.tokens[user_id] = int(str(token))
        return users

    def lease_key(self, user_id: str) -> str:
        return self.prefix + user_id

    async def acquire(self, user_id: str) -> bool:
        names = [
            self.lease_key(user_id),
            self.dead_key,
            self.epoch_key,
            self.hold_key,
            self.token_key(user_id),
        ]
        token = int(
            await run_script(
                self.redis, _ACQUIRE, names, self.worker_id, self.ttl_ms, self.epoch, self.failover_hold_ms
            )
        )
        if token:
            self.tokens[user_id] = token
        return bool(token)

    def token_key(self, user_id: str) -> str:
        return self.token_prefix + user_id

    async def owner(self, user_id: str) -> str | None:
        """The lease's value as it is: a worker id, a staff hold (``held-by-staff:<id>``), or None."""
        return text_or_none(await self.redis.get(self.lease_key(user_id)))

    async def runner(self, user_id: str) -> str | None:
        """The worker running ``user_id``'s manager; None if nobody does (a staff hold included)."""
        owner = await self.owner(user_id)
        return None if held_by(owner) is not None else owner

    async def renew(self, user_ids: list[str]) -> list[str]:
        """Extend our leases; returns the users whose lease another worker holds now. Leases
        that vanished are taken back, and their tokens with them."""
        if not user_ids:
            return []
        names = [self.lease_key(u) for u in user_ids]
        lost, taken = await run_script(self.redis, _RENEW, names, self.worker_id, self.ttl_ms)
        back = [(user_ids[int(i) - 1], self.tokens.get(user_ids[int(i) - 1])) for i in taken]
        back = [(u, t) for u, t in back if t is not None]
        if back:
            keys_ = [self.token_key(u) for u, _ in back]
            await run_script(self.redis, _RESTORE_TOKENS, keys_, *(t for _, t in back))
        return [user_ids[int(i) - 1] for i in lost]

    async def release(self, user_id: str) -> None:
        await run_script(self.redis, _RELEASE, [self.lease_key(user_id)], self.worker_id)

    async def release_if_absent(self, user_id: str, presence_hash: str) -> bool:
        names = [self.lease_key(user_id), presence_hash]
        return bool(await run_script(self.redis, _RELEASE_IF_ABSENT, names, self.worker_id))

    async def claim_orphans(self, presence: PresenceStore, live_workers: int, running: int = 0) -> list[str]:
        """Present users to start here (see _CLAIM_ORPHANS); ``running``: managers we run now."""
        return self._granted(
            await run_script(
                self.redis,
                _CLAIM_ORPHANS,
                [presence.users_key, self.dead_key, self.hold_key, self.epoch_key],
                self.worker_id,
                self.ttl_ms,
                self.prefix,
                live_workers,
                running,
                self.epoch,
                presence.rebuilt_prefix,
                self.failover_hold_ms,
                self.token_prefix,
            )
        )

    async def check_epoch(self) -> bool:
        """True if Redis is new to us: first look, or it lost its data since the last one."""
        epoch, changed = await run_script(
            self.redis,
            _EPOCH,
            [self.epoch_key, self.hold_key],
            secrets.token_hex(8),
            self.epoch,
            self.ttl_ms,
            self.failover_hold_ms,
        )
        self.epoch = epoch
        return bool(int(changed))

    async def place(self, user_ids: list[str], presence: PresenceStore) -> list[str]:
        """Place present users nobody runs on the least loaded live worker (see _PLACE);
        returns those to run here (placed here, or ours already)."""
        if not user_ids:
            return []
        names = [self.workers_key, self.loads_key, self.dead_key, self.epoch_key, self.hold_key]
        args = [
            self.worker_id,
            self.ttl_ms,
            self.prefix,
            self.epoch,
            get_settings().LEASE_TTL,
            presence.user_prefix,
            keys.worker(""),
            HOLD_PREFIX,
            presence.rebuilt_prefix,
            self.failover_hold_ms,
            self.token_prefix,
        ]
        return self._granted(await run_script(self.redis, _PLACE, names, *args, *user_ids))

    def starts_key(self, worker_id: str | None = None) -> str:
        """The LIST of users placed on ``worker_id`` (default: us) by another worker."""
        return keys.worker_starts(worker_id or self.worker_id)

    async def mine(self, user_ids: list[str]) -> list[str]:
        """Those of ``user_ids`` whose lease we hold (their tokens remembered)."""
        if not user_ids:
            return []
        n = len(user_ids)
        found = await self.redis.mget(
            [self.lease_key(u) for u in user_ids] + [self.token_key(u) for u in user_ids]
        )
        owners, tokens = found[:n], found[n:]
        mine = []
        for user_id, owner, token in zip(user_ids, owners, tokens, strict=True):
            if owner == self.worker_id:
                mine.append(user_id)
                if token:
                    self.tokens[user_id] = int(token)
        return mine

    async def beat(self, info: dict[str, str] | None = None, load: int = 0) -> int:
        """Mark this worker alive with ``load`` managers (and publish ``info``); returns the live workers."""
        fields = [x for pair in (info or {}).items() for x in pair]
        names = [self.workers_key, keys.worker(self.worker_id), self.loads_key]
        horizon = get_settings().LEASE_TTL
        return int(await run_script(self.redis, _BEAT, names, self.worker_id, horizon, load, *fields))

    async def worker_info(self, worker_id: str) -> dict[str, str]:
        return text_map(await self.redis.hgetall(keys.worker(worker_id)))

    async def leave(self) -> None:
        """Forget this worker (clean shutdown)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.workers_key, self.worker_id)
            pipe.hdel(self.loads_key, self.worker_id)
            pipe.delete(keys.worker(self.worker_id), self.starts_key())
            await pipe.execute()

    async def bury_dead_workers(self) -> list[str]:
        """Find registered workers whose process certainly ended (kill -9 on this machine).

        They leave the registry (so they stop counting as live) for the dead set,
        whose leases every worker's orphan claim takes at once instead of after
        LEASE_TTL. livestream/ownership/liveness.py says why a live worker is never judged dead.
        """
        ids = [w for w in texts(await self.redis.zrange(self.workers_key, 0, -1)) if w != self.worker_id]
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hget(keys.worker(worker_id), "proc")
            identities = await pipe.execute()
        dead = [w for w, ident in zip(ids, identities, strict=True) if ident and is_dead(ident)]
        if dead:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self.workers_key, *dead)
                pipe.hdel(self.loads_key, *dead)
                pipe.delete(*(keys.worker(w) for w in dead))
                pipe.sadd(self.dead_key, *dead)
                # Past this, every lease a dead worker held has lapsed anyway.
                pipe.pexpire(self.dead_key, self.ttl_ms * 2)
                await pipe.execute()
        return dead
