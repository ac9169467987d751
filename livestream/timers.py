"""Channel-layer timers: a message delivered to a channel when it comes due.

channels-redis has no delayed send, so timers live in Redis:
  ``<prefix>:timers``          ZSET name -> due time (Redis clock)
  ``<prefix>:timers:payload``  HASH name -> {"channel", "message"} JSON

Timers are named (``cleanup:42``): scheduling a name again moves it, cancelling
removes it. They survive a worker restart; any worker's TimerPump delivers any
due timer, each exactly once (claiming is one atomic script), then the message
takes the normal path through the channel layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import redis.asyncio as aioredis
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from livestream.redis import LUA_NOW, get_redis, key, run_script

logger = logging.getLogger(__name__)


# KEYS: due, payload. ARGV: name, delay, payload json. Returns the due time.
_SCHEDULE = (
    LUA_NOW
    + """
local due = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], due, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return tostring(due)
"""
)

_CANCEL = """
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

# KEYS: due, payload. ARGV: limit. Returns {seconds to the next timer or -1, {name, payload, ...}}.
_CLAIM = (
    LUA_NOW
    + """
local names = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, name in ipairs(names) do
  local payload = redis.call('HGET', KEYS[2], name)
  redis.call('ZREM', KEYS[1], name)
  redis.call('HDEL', KEYS[2], name)
  if payload then
    table.insert(out, name)
    table.insert(out, payload)
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = '-1'
if nxt[2] then wait = tostring(math.max(0, tonumber(nxt[2]) - now)) end
return {wait, out}
"""
)

# KEYS: due. Returns {now, {name, due, ...}}.
_PENDING = (
    LUA_NOW
    + """
return {tostring(now), redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
"""
)


class TimerStore:
    def __init__(self, client: aioredis.Redis | None = None) -> None:
        self.redis = client or get_redis()
        self.due_key = key("timers")
        self.payload_key = key("timers", "payload")

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

    async def claim_due(self, limit: int = 500) -> tuple[list[tuple[str, str, dict[str, Any]]], float | None]:
        """Take the due timers (no other pump will see them) and the wait until the next one."""
        wait, flat = await run_script(self.redis, _CLAIM, [self.due_key, self.payload_key], limit)
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
    """Delivers due timers through the channel layer. Runs in every worker."""

    IDLE_POLL = 0.5  # other processes' timers are noticed at least this often
    RETRY_DELAY = 0.1
    FULL_RETRY_DELAY = 1.0
    BATCH = 500

    def __init__(self, store: TimerStore | None = None) -> None:
        self.store = store or TimerStore()
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
        """Send every due timer; returns how long to sleep before looking again."""
        layer = get_channel_layer()
        claimed, next_in = await self.store.claim_due(self.BATCH)
        for name, channel, message in claimed:
            try:
                await layer.send(channel, message)
            except ChannelFull:  # the worker channel is backed up: keep the timer, try again later
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
