"""The asyncio Redis client of this process (one per event loop)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import NoScriptError

from streampai.redisconf import redis_client

# Lua prologue: ``now`` is Redis' own clock in seconds, so processes with skewed
# clocks agree on deadlines, expiries and timers.
LUA_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 "

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[str, aioredis.Redis]] = (
    weakref.WeakKeyDictionary()
)


def get_redis() -> aioredis.Redis:
    """A client for settings.REDIS_URL bound to the running loop (clients cannot cross loops).

    Its pool is bounded (LIVESTREAM["REDIS_MAX_CONNECTIONS"]) and, under Sentinel,
    follows the master. For a dedicated connection (a blocking pop, pub/sub) call
    streampai.redisconf.redis_client() instead: a fresh client with its own pool.
    """
    loop = asyncio.get_running_loop()
    url = settings.REDIS_URL
    cached = _clients.get(loop)
    if cached is None or cached[0] != url:
        client = redis_client(url)
        _clients[loop] = (url, client)
        return client
    return cached[1]


@dataclass(frozen=True)
class Script:
    """A Lua script with a name that says what it does ("presence.track"), and its SHA1."""

    name: str
    source: str
    sha: str


# Every script the app runs, by SHA1: what EVALSHA a MONITOR or SLOWLOG shows is named
# here (benchmarks/monitor.py).
SCRIPTS: dict[str, Script] = {}


def script(name: str, source: str) -> Script:
    """Declare a script (at import time, next to the store that runs it)."""
    found = Script(name, source, hashlib.sha1(source.encode()).hexdigest())
    SCRIPTS[found.sha] = found
    return found


async def run_script(client: aioredis.Redis, lua: Script, keys: list[str], *args: Any) -> Any:
    """EVALSHA ``lua`` (one round trip); load it first only if Redis forgot it."""
    try:
        return await client.evalsha(lua.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.eval(lua.source, len(keys), *keys, *args)


# -- writes that must survive a failover -----------------------------------------------
# Redis replicates asynchronously: a write the master acknowledged can be missing on the
# replica Sentinel promotes. For the few writes whose loss would repeat an effect (an alert
# taken from the queue and then shown: lost, it would be shown again), the script is
# followed by WAIT on the same connection, in the same round trip.

# How long such a write waits for a replica (seconds); past it the effect goes ahead
# (availability first) and the caller counts it.
REPLICA_WAIT = 0.25
# How long the number of replicas the master reports is reused (seconds).
REPLICAS_CHECK_INTERVAL = 5.0
_replicas: weakref.WeakKeyDictionary[Any, tuple[float, int]] = weakref.WeakKeyDictionary()


async def connected_replicas(client: aioredis.Redis) -> int:
    """How many replicas a write must reach: 1 under Sentinel (where a failover can promote
    a replica that lacks it), else the replicas the master reports (INFO replication, per
    pool, re-read every REPLICAS_CHECK_INTERVAL). Under Sentinel this is never 0: a master
    whose replica link is down is the one about to be failed over (the third 30-minute
    nemesis run found takes skipped the WAIT there, and 12 alerts shown twice)."""
    from streampai.redisconf import BlockingSentinelConnectionPool

    pool = client.connection_pool
    if isinstance(pool, BlockingSentinelConnectionPool):
        return 1
    checked = _replicas.get(pool)
    now = time.monotonic()
    if checked is None or now - checked[0] >= REPLICAS_CHECK_INTERVAL:
        info = await client.info("replication")
        checked = _replicas[pool] = (now, int(info.get("connected_slaves", 0) or 0))
    return checked[1]


async def run_script_replicated(
    client: aioredis.Redis, lua: Script, keys: list[str], *args: Any
) -> tuple[Any, bool | None]:
    """``run_script``, then WAIT for one replica on the same connection (one round trip):
    (its result, whether a replica has it; None when the master has no replica)."""
    if await connected_replicas(client) == 0:
        return await run_script(client, lua, keys, *args), None
    for attempt in (1, 2):
        async with client.pipeline(transaction=False) as pipe:
            pipe.evalsha(lua.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", 1, int(REPLICA_WAIT * 1000))
            try:
                result, acked = await pipe.execute()
            except NoScriptError:
                if attempt == 2:
                    raise
                await client.script_load(lua.source)
                continue
        return result, int(acked) >= 1
    raise AssertionError("unreachable")


# -- replies as the app's clients return them -------------------------------------
# Every client of the app decodes replies (``decode_responses=True``, streampai/redisconf.py),
# but redis-py types each reply ``bytes | str``. These say "decoded" once, at the edge, at no
# cost (a cast, not a copy: a 12,000-member set is not walked again).


def text(reply: bytes | str) -> str:
    """One decoded reply."""
    return cast(str, reply)


def text_or_none(reply: bytes | str | None) -> str | None:
    """One decoded reply, or None (a missing key)."""
    return cast("str | None", reply)


def texts(reply: Iterable[Any]) -> list[str]:
    """A decoded list reply (LRANGE, ZRANGE, LPOP with a count: redis-py types it as "a list or
    one reply", as the same command without a count returns one)."""
    return cast("list[str]", reply)


def texts_or_none(reply: Iterable[Any]) -> list[str | None]:
    """A decoded MGET reply (None: a missing key)."""
    return cast("list[str | None]", reply)


def text_set(reply: set[bytes | str]) -> set[str]:
    """A decoded SMEMBERS reply."""
    return cast("set[str]", reply)


def text_map(reply: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A decoded HGETALL reply."""
    return cast("dict[str, str]", reply)
