"""Token buckets for the alert webhook in Redis: per client IP and per user.

  alerts:rate:ip:<ip>      HASH tokens, ts   the IP's bucket (checked in streampai/asgi.py,
                                              before Django: a flood's refusals cost little)
  alerts:rate:user:<id>    HASH tokens, ts   the user's bucket (checked by the view after the
                                              secret, so a stranger cannot spend it)

One script per check, on Redis' clock (every daphne shares the buckets). ``take`` returns
0 when the request may go on, else the seconds to wait (the 429's Retry-After). If Redis
cannot be reached the request goes on: the queue push that follows answers 503 anyway.
"""

from __future__ import annotations

import math

from livestream import keys
from livestream.redis import LUA_NOW, get_redis, run_script, script

# KEYS: bucket. ARGV: rate (tokens/s), burst. Takes a token if there is one; returns
# 0, or the milliseconds until one is there.
_TAKE = script(
    "alerts.rate_take",
    LUA_NOW
    + """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate * 1000) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
""",
)


def ip_bucket(ip: str) -> str:
    return keys.key("alerts", "rate", "ip", ip[:64])


def user_bucket(user_id: str) -> str:
    return keys.key("alerts", "rate", "user", user_id)


async def take(bucket: str, rate: float, burst: int) -> int:
    """0: go on; else whole seconds to wait (at least 1). ``rate`` 0 turns the limit off."""
    if rate <= 0:
        return 0
    try:
        wait_ms = await run_script(get_redis(), _TAKE, [bucket], rate, max(1, burst))
    except Exception:  # Redis away: no limit now; the queue answers 503
        return 0
    return 0 if not wait_ms else max(1, math.ceil(int(wait_ms) / 1000))
