"""Channel-layer timers: a message delivered to a channel when it comes due.

channels-redis has no delayed send, so timers live in Redis:
  ``<prefix>:timers``          ZSET name -> due time (Redis clock)
  ``<prefix>:timers:payload``  HASH name -> {"channel", "message", "user"?} JSON

Timers are named (``cleanup:42``): scheduling a name again moves it, cancelling
removes it. They survive a worker restart; a worker's TimerPump delivers due
timers, each exactly once (claiming is one atomic script). A timer about a user
(payload ``"user"``) is claimed by the worker holding that user's lease, which
handles it in-process; any other goes through the channel layer. The presence
scripts (livestream/presence/store.py) schedule and cancel the ``cleanup:<user>`` timers
themselves, in the same payload format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from livestream import keys
from livestream.ownership.leases import HOLD_PREFIX
from livestream.redis import LUA_NOW, get_redis, run_script, script

# A timer about a user is claimed by the worker running them; once it is overdue
# by this much (seconds), by anyone (see _CLAIM).
OWNER_GRACE = 1.0

# Delivers timers for this process's own channel without the channel layer.
LocalDelivery = Callable[[list[dict[str, Any]]], Awaitable[None]]

logger = logging.getLogger("livestream.timers")


# KEYS: due, payload. ARGV: name, delay, payload json. Returns the due time.
_SCHEDULE = script(
    "timers.schedule",
    LUA_NOW
    + """
local due = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], due, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return tostring(due)
""",
)

_CANCEL = script(
    "timers.cancel",
    """
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
""",
)

# KEYS: due, payload, dead workers. ARGV: limit, me, lease prefix, hold prefix, owner grace s.
# Returns {seconds to the next timer or -1, {name, payload, ...}}. A timer whose
# payload names a ``user`` belongs to the worker holding that user's lease: only
# that worker claims it (it runs the manager the timer is about, so it acts at
# once, with no hop), unless the lease is free, a staff hold or a dead worker's,
# or the timer is overdue by more than the grace (its owner is stuck: anyone may
# claim it and forward it). Owned timers left for their owner are looked at again
# shortly.
_CLAIM = script(
    "timers.claim",
    LUA_NOW
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local out, left = {}, false
for i = 1, #due, 2 do
  local name, at = due[i], tonumber(due[i + 1])
  local payload = redis.call('HGET', KEYS[2], name)
  local take = true
  if payload and ARGV[2] ~= '' and now - at < tonumber(ARGV[5]) then
    local ok, decoded = pcall(cjson.decode, payload)
    if ok and type(decoded) == 'table' and type(decoded.user) == 'string' then
      local owner = redis.call('GET', ARGV[3] .. decoded.user)
      if owner and owner ~= ARGV[2] and string.sub(owner, 1, #ARGV[4]) ~= ARGV[4]
          and redis.call('SISMEMBER', KEYS[3], owner) == 0 then
        take = false
      end
    end
  end
  if take then
    redis.call('ZREM', KEYS[1], name)
    redis.call('HDEL', KEYS[2], name)
    if payload then
      table.insert(out, name)
      table.insert(out, payload)
    end
  else
    left = true
  end
end
local nxt = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local wait = -1
if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now) end
if left and (wait < 0 or wait > 0.05) then wait = 0.05 end
return {tostring(wait), out}
""",
)

# KEYS: due. Returns {now, {name, due, ...}}.
_PENDING = script(
    "timers.pending",
    LUA_NOW
    + """
return {tostring(now), redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
""",
)


class TimerStore:
    def __init__(self, client: aioredis.Redis | None = None) -> None:
        self.redis = client or get_redis()
        self.due_key = keys.timers()
        self.payload_key = keys.timer_payloads()

    async def schedule(self, name: str, channel: str, message: dict[str, Any], delay: float) -> float:
        """Deliver ``message`` to ``channel`` in ``delay`` seconds; returns the due time."""
        payload = json.dumps({"channel": channel, "message": message})
        due = await run_script(self.redis, _SCHEDULE, [self.due_key, self.payload_key], name, delay, payload)
        return float(due)

    async def cancel(self, name: str) -> bool:
        return bool(await run_script(self.redis, _CANCEL, [self.due_key, self.payload_key], name))

    async def pending(self) -> dict[str, float]:
        """Every pending timer and the seconds until it is due (negative: overdue)."""
        now, flat = await run_script(self.redis, _PENDING, [self.due_key])
        return {flat[i]: float(flat[i + 1]) - float(now) for i in range(0, len(flat), 2)}

    async def claim_due(
        self, limit: int = 500, worker_id: str = ""
    ) -> tuple[list[tuple[str, str, dict[str, Any]]], float | None]:
        """Take the due timers (no other pump will see them) and the wait until the next one.

        With ``worker_id``, a timer about a user whose lease another live worker
        holds is left to that worker for OWNER_GRACE (see _CLAIM).
        """
        names = [self.due_key, self.payload_key, keys.dead_workers()]
        args = [limit, worker_id, keys.lease_prefix(), HOLD_PREFIX, OWNER_GRACE]
        wait, flat = await run_script(self.redis, _CLAIM, names, *args)
        claimed = []
        for i in range(0, len(flat), 2):
            try:
                payload = json.loads(flat[i + 1])
                claimed.append((flat[i], payload["channel"], payload["message"]))
            except (ValueError, KeyError, TypeError):
                logger.warning("[timers] dropped malformed timer %r", flat[i])
        next_in = float(wait)
        return claimed, (None if next_in < 0 else next_in)


class TimerPump:
    """Delivers due timers. Runs in every worker.

    Timers for ``local_channel`` (the worker channel) are handed to ``deliver``
    in this process, a batch at a time; others go through the channel layer.
    """

    IDLE_POLL = 0.5  # other processes' timers are noticed at least this often
    RETRY_DELAY = 0.1
    FULL_RETRY_DELAY = 1.0
    BATCH = 500

    def __init__(
        self,
        store: TimerStore | None = None,
        *,
        worker_id: str = "",
        local_channel: str | None = None,
        deliver: LocalDelivery | None = None,
    ) -> None:
        self.store = store or TimerStore()
        self.worker_id = worker_id
        self.local_channel = local_channel
        self.deliver = deliver
        self._wake = asyncio.Event()
        self.stopped = False

    def wake(self) -> None:
        """Look again now (a timer was scheduled in this process)."""
        self._wake.set()

    def stop(self) -> None:
        """End run() at its next turn, even if a cancellation gets lost on the way."""
        self.stopped = True
        self._wake.set()

    async def run(self) -> None:
        while not self.stopped:
            self._wake.clear()  # before claiming, so a wake() during the claim is not lost
            try:
                wait = await self._deliver_due()
            except Exception as exc:  # Redis restarting: try again shortly
                logger.warning("[timers] delivering due timers failed (%r); retrying in 1s", exc)
                wait = 1.0
            if wait > 0:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
                # the cancellation that shutdown sends when the wake-up races it.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    async def _deliver_due(self) -> float:
        """Deliver every due timer we may claim; returns how long to sleep before looking again."""
        layer = get_channel_layer()
        claimed, next_in = await self.store.claim_due(self.BATCH, self.worker_id)
        local = [message for _name, channel, message in claimed if self._is_local(channel)]
        if local and self.deliver is not None:
            await self.deliver(local)
        for name, channel, message in claimed:
            if self._is_local(channel):
                continue
            try:
                await layer.send(channel, message)
            except ChannelFull:  # the channel is backed up: keep the timer, try again later
                logger.warning(
                    "[timers] %s is full; %s delivered in %gs", channel, name, self.FULL_RETRY_DELAY
                )
                await self.store.schedule(name, channel, message, self.FULL_RETRY_DELAY)
            except Exception:
                logger.exception("[timers] delivering %s failed; retrying shortly", name)
                await self.store.schedule(name, channel, message, self.RETRY_DELAY)
        if len(claimed) >= self.BATCH:
            return 0.0
        return self.IDLE_POLL if next_in is None else min(next_in, self.IDLE_POLL)

    def _is_local(self, channel: str) -> bool:
        return self.deliver is not None and channel == self.local_channel
