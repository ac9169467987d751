"""How every process talks to Redis: one place for URLs, pools and socket options.

Every Redis client of the app is built here, from one parsed ``REDIS_URL``:

* ``redis://``, ``rediss://`` and ``unix://`` (redis-py's own URL forms), and
* ``redis+sentinel://[:password@]host:port[,host:port...]/<service>[/<db>][?options]``
  (and ``rediss+sentinel://`` for TLS to the master), the redis-sentinel-url
  convention: every client then asks the sentinels for the current master and
  follows it through a failover.

Every pool is bounded and *waits* for a free connection (BlockingConnectionPool)
instead of opening more: a burst (1,000 sockets connecting, a worker pushing
statuses) queues for a moment instead of leaving thousands of idle connections
behind (a pool never shrinks) or failing with MaxConnectionsError.

The URL itself is parsed and checked in streampai/redisurl.py. Each of the three
pool classes documents the redis-py defect it works around; the redis-py internals
they rely on are checked at start by streampai/redis_internals.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.retry
import redis.sentinel
from redis.asyncio import retry as aioretry
from redis.backoff import NoBackoff

from streampai import redis_internals
from streampai.redisurl import (
    RedisTarget,
    parse_redis_url,
)

# redis-py 8 defaults socket_timeout to 5 s while channels-redis blocks in
# BZPOPMIN for 5 s, so an idle receive() would raise TimeoutError every ~5 s
# (channels_redis issue 422). 15 s is comfortably above the blocking pop and
# still notices a dead connection.
SOCKET_TIMEOUT = 15.0
CONNECT_TIMEOUT = 5.0
# The ceiling of each pool (LIVESTREAM["REDIS_MAX_CONNECTIONS"] overrides it).
# redis-py 8's plain asyncio pool caps at 100 and *raises* past it; a huge cap
# (this was 10,000) never shrinks after a burst. A bounded pool that waits keeps
# a process at a known number of connections: a process holds one pool per
# event loop for the app, one for the channel layer and one for the cache.
MAX_CONNECTIONS = 64
# How long a command waits for a free pooled connection before it fails with
# ConnectionError("No connection available."): long enough to ride out a burst,
# short enough that a leak shows up as an error rather than a hang.
POOL_TIMEOUT = 10.0
# Sentinels answer "who is the master" quickly or not at all.
SENTINEL_TIMEOUT = 2.0


def socket_options() -> dict[str, Any]:
    """Socket keyword arguments for every Redis connection we open."""
    return {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": 30,
    }


def connection_options() -> dict[str, Any]:
    """Keyword arguments for every Redis connection pool we create: sockets, and the ceiling."""
    return {**socket_options(), "max_connections": _max_connections(), "timeout": POOL_TIMEOUT}


# A pooled connection that was idle across a Redis restart is dead, but nothing tells
# the pool until it is used: its next command fails with ConnectionError ("Connection
# closed by server"), however long Redis has been back (issue 20.5: a tab's command got
# "cannot reach its workers" 15 s after a restart). redis-py retries nothing unless the
# *connection* carries a Retry (a client built from a pool ignores its own retry
# arguments), so every pool we build sets one: on a ConnectionError the connection is
# closed and the command sent once more on a fresh one. Only ConnectionError, never
# TimeoutError: a timed-out command may have run, and running it twice is worse than an
# error. While Redis is really down the retry fails too and the caller sees the error.
RETRIES = 1


def _retry(sync: bool = False) -> Any:
    """A fresh Retry (each connection mutates its own) for the async or the sync client."""
    if sync:
        return redis.retry.Retry(NoBackoff(), RETRIES, supported_errors=(redis.ConnectionError,))
    return aioretry.Retry(NoBackoff(), RETRIES, supported_errors=(redis.ConnectionError,))


def _sentinel_kwargs(target: RedisTarget) -> dict[str, Any]:
    return {
        "socket_timeout": SENTINEL_TIMEOUT,
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        **target.sentinel_kwargs,
    }


class _Permits:
    """A FIFO counting semaphore that hands each freed permit to exactly one live waiter."""

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self, timeout: float | None) -> None:
        while self._waiters and self._waiters[0].done():  # left by waiters that gave up
            self._waiters.popleft()
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a permit, but leaving (cancelled, timed out): pass it on
            else:
                waiter.cancel()
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class BoundedConnectionPool(aioredis.BlockingConnectionPool):
    """At most ``max_connections`` in use; a checkout beyond waits, first come first served,
    up to ``timeout`` ("No connection available.").

    redis-py's own wait is an asyncio.Condition whose release notifies one waiter; on
    Python < 3.13 a waiter notified and then cancelled before it runs (daphne cancels
    consumers of closed sockets all the time) swallows the notification, and the others
    sleep on until their timeout although a connection is free (seen in the churn soak).
    Waking every waiter on each release fixed that at O(waiters) per release, which a
    worker starting thousands of managers at once could not afford (docs/benchmarks.md,
    worker capacity). Here a release hands its permit to exactly one live waiter, and a
    waiter cancelled after it was handed one passes it on. The release is shielded so
    that a cancellation landing in it cannot leave the connection counted as in use.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._permits = _Permits(self.max_connections)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            await self._permits.acquire(self.timeout)
        except TimeoutError as exc:
            raise redis.ConnectionError("No connection available.") from exc
        try:
            connection = self.get_available_connection()
        except BaseException:
            self._permits.release()
            raise
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: Any) -> None:
        await asyncio.shield(self._release(connection))

    async def _release(self, connection: Any) -> None:
        try:
            await aioredis.ConnectionPool.release(self, connection)
        finally:
            self._permits.release()


class BlockingSentinelConnectionPool(aiosentinel.SentinelConnectionPool, BoundedConnectionPool):
    """A Sentinel pool (follows the master) that waits for a free connection at its ceiling.

    SentinelConnectionPool decides where connections go; BoundedConnectionPool
    how many there may be. Neither overrides what the other does, so the MRO
    combines them: get_connection/release come from the bounded pool,
    owns_connection/get_master_address from the Sentinel one.

    redis-py asks the sentinels only when it opens a connection. After a
    switchover (SENTINEL FAILOVER, or a master that was cut off and came back)
    the old master keeps accepting writes until the sentinels convert it to a
    replica, about 10 s later, and pooled connections to it would keep writing
    there: writes lost when it resyncs, reads that contradict them (seen: cleanup
    timers that never fired). So a checkout asks the sentinels again at most
    every MASTER_CHECK_INTERVAL, drops idle connections to a former master
    (get_master_address does that) and closes in-use ones when they come back.
    """

    MASTER_CHECK_INTERVAL = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._master_checked = 0.0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        await self._follow_master()
        return await super().get_connection(*args, **kwargs)

    async def _follow_master(self) -> None:
        now = time.monotonic()
        if not redis_internals.enabled(redis_internals.FOLLOW_MASTER):
            return
        if not self.is_master or now - self._master_checked < self.MASTER_CHECK_INTERVAL:
            return
        self._master_checked = now
        # Sentinels unreachable: the command itself finds out whether the master is.
        with contextlib.suppress(redis.RedisError, OSError):
            await self.get_master_address()

    async def release(self, connection: Any) -> None:
        stale = (
            redis_internals.enabled(redis_internals.FOLLOW_MASTER)
            and self.is_master
            and self.master_address not in (None, (connection.host, connection.port))
        )
        if stale:
            await connection.disconnect()  # reconnects to the current master when next used
        await super().release(connection)


class SyncBlockingSentinelConnectionPool(redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """The same for the synchronous client (the cache).

    Its release already drops connections to a former master (owns_connection);
    the periodic check makes it notice that the master changed.
    """

    MASTER_CHECK_INTERVAL = BlockingSentinelConnectionPool.MASTER_CHECK_INTERVAL

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._master_checked = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        due = now - self._master_checked >= self.MASTER_CHECK_INTERVAL
        if due and redis_internals.enabled(redis_internals.FOLLOW_MASTER) and self.is_master:
            self._master_checked = now
            with contextlib.suppress(redis.RedisError, OSError):
                self.get_master_address()
        return super().get_connection(*args, **kwargs)


def _max_connections() -> int:
    """LIVESTREAM["REDIS_MAX_CONNECTIONS"] once settings are ready, else the default."""
    from django.conf import settings

    if not settings.configured:
        return MAX_CONNECTIONS
    from livestream.conf import get_settings

    return get_settings().REDIS_MAX_CONNECTIONS


def no_retry() -> Any:
    """A Retry that retries nothing (asyncio), for a connection whose owner must see every
    loss itself (the dashboard hub's pub/sub: it logs the loss and re-subscribes)."""
    return aioretry.Retry(NoBackoff(), 0)


def async_pool(target: RedisTarget, **overrides: Any) -> aioredis.ConnectionPool:
    """A bounded, waiting asyncio pool for ``target`` (a new one each call)."""
    base = {**connection_options(), "retry": _retry()}
    if not target.is_sentinel:
        return BoundedConnectionPool.from_url(target.url, **{**base, **overrides})
    manager = aiosentinel.Sentinel(list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(target))
    options = {**base, **target.client_kwargs, **overrides}
    return BlockingSentinelConnectionPool(target.service, manager, **options)


def redis_client(url: str | None = None, **overrides: Any) -> aioredis.Redis:
    """A new asyncio client with its own bounded pool, for ``url`` (default settings.REDIS_URL).

    ``overrides`` are connection kwargs (``decode_responses`` defaults to True;
    ``max_connections``, ``socket_timeout`` ... as needed, e.g. ``socket_timeout=None``
    for a dedicated blocking BLPOP). ``aclose()`` closes the pool too.
    """
    if url is None:
        from django.conf import settings

        url = settings.REDIS_URL
    pool = async_pool(parse_redis_url(url), **{"decode_responses": True, **overrides})
    return aioredis.Redis.from_pool(pool)


class CacheConnectionPool:
    """``OPTIONS["pool_class"]`` for Django's RedisCache: its ``from_url`` knows every REDIS_URL form.

    Django calls ``pool_class.from_url(location, **options)``; this returns a
    bounded, waiting synchronous pool (following the master under Sentinel).
    """

    @classmethod
    def from_url(cls, url: str, **options: Any) -> redis.ConnectionPool:
        target = parse_redis_url(url)
        base = {**connection_options(), "retry": _retry(sync=True)}
        if not target.is_sentinel:
            return redis.BlockingConnectionPool.from_url(target.url, **{**base, **options})
        manager = redis.sentinel.Sentinel(list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(target))
        options = {**base, **target.client_kwargs, **options}
        return SyncBlockingSentinelConnectionPool(target.service, manager, **options)


def sync_redis_client(url: str | None = None, **overrides: Any) -> redis.Redis:
    """The synchronous counterpart of redis_client (management commands, sync views)."""
    if url is None:
        from django.conf import settings

        url = settings.REDIS_URL
    pool = CacheConnectionPool.from_url(url, **{"decode_responses": True, **overrides})
    return redis.Redis.from_pool(pool)


def channel_layer_host(target: RedisTarget, max_connections: int | None = None) -> dict[str, Any]:
    """One channels-redis host entry for ``target``, in the shape channels-redis documents.

    streampai.channel_layer.RedisChannelLayer turns it into a bounded, waiting
    pool (create_pool); the stock layer would read it too. Without
    ``max_connections`` the ceiling is LIVESTREAM["REDIS_MAX_CONNECTIONS"], read
    when the pool is made (settings are not loaded yet when CHANNEL_LAYERS is).
    """
    options = socket_options()
    if max_connections:
        options["max_connections"] = max_connections
    if not target.is_sentinel:
        return {"address": target.url, **options}
    return {
        "sentinels": list(target.sentinels),
        "master_name": target.service,
        "sentinel_kwargs": _sentinel_kwargs(target),
        **target.client_kwargs,
        **options,
    }


def layer_pool(host: dict[str, Any]) -> aioredis.ConnectionPool:
    """channels-redis' create_pool(host), but bounded and waiting (see channel_layer_host)."""
    host = dict(host)
    host.setdefault("retry", _retry())
    host.setdefault("timeout", POOL_TIMEOUT)
    host.setdefault("max_connections", _max_connections())
    if "address" in host:
        return BoundedConnectionPool.from_url(host.pop("address"), **host)
    master_name = host.pop("master_name")
    manager = aiosentinel.Sentinel(host.pop("sentinels"), sentinel_kwargs=host.pop("sentinel_kwargs", None))
    return BlockingSentinelConnectionPool(master_name, manager, **host)


def channel_layers(
    redis_url: str, prefix: str = "asgi", max_connections: int | None = None
) -> dict[str, Any]:
    """The CHANNEL_LAYERS setting for a Redis at ``redis_url`` (any REDIS_URL form)."""
    return {
        "default": {
            # channels-redis, whose receive() waits out a Redis restart instead
            # of ending the consumer (and closing its WebSocket).
            "BACKEND": "streampai.channel_layer.RedisChannelLayer",
            "CONFIG": {
                "hosts": [channel_layer_host(parse_redis_url(redis_url), max_connections)],
                "prefix": prefix,
                # Unread messages vanish after this; the presence manager's
                # periodic reconcile repairs whatever a lost diff would have done.
                "expiry": 60,
                # Default capacity (100) suits per-connection channels. The
                # worker channel takes a message per connect and disconnect of
                # every dashboard socket (plus re-tracks, expiries, cleanup
                # timers): with 100, a few hundred tabs reconnecting at once
                # (a daphne restart) would raise ChannelFull. 20,000 is about
                # what one worker drains in 40 s (its join rate: docs/benchmarks.md),
                # inside the 60 s expiry: a longer queue would
                # mostly expire unread anyway. When it is full, diffs are
                # dropped with a warning and the reconcile tick (every
                # RECONCILE_INTERVAL) does what they would have done.
                "channel_capacity": {"presence-manager": 20_000},
            },
        }
    }


def caches(redis_url: str, key_prefix: str) -> dict[str, Any]:
    """The CACHES setting: Django's RedisCache on the same Redis, shared by every process.

    allauth's rate limits (and anything else cached) then count across daphne
    processes and survive their restarts. LOCATION is a list because RedisCache
    splits a string on commas, which a Sentinel URL has.
    """
    parse_redis_url(redis_url)
    return {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": [redis_url],
            "KEY_PREFIX": key_prefix,
            # A bounded, waiting pool that also knows redis+sentinel://.
            "OPTIONS": {"pool_class": "streampai.redisconf.CacheConnectionPool"},
        }
    }
