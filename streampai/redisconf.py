"""How every process talks to Redis: one place for URLs and socket options."""

from __future__ import annotations

from typing import Any

# redis-py 8 defaults socket_timeout to 5 s while channels-redis blocks in
# BZPOPMIN for 5 s, so an idle receive() would raise TimeoutError every ~5 s
# (channels_redis issue 422). 15 s is comfortably above the blocking pop and
# still notices a dead connection.
SOCKET_TIMEOUT = 15.0
CONNECT_TIMEOUT = 5.0
# redis-py 8 also caps an asyncio pool at 100 connections by default (7 had no
# cap) and raises MaxConnectionsError past it instead of waiting: 1,000 sockets
# connecting at once, or a worker pushing statuses 256 at a time, failed
# (docs/benchmarks.md). Redis' own maxclients default is 10,000.
MAX_CONNECTIONS = 10_000


def connection_options() -> dict[str, Any]:
    """Keyword arguments for every Redis connection pool we create."""
    return {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": 30,
        "max_connections": MAX_CONNECTIONS,
    }


def channel_layers(redis_url: str, prefix: str = "asgi") -> dict[str, Any]:
    """The CHANNEL_LAYERS setting for a Redis at ``redis_url``."""
    return {
        "default": {
            # channels-redis, whose receive() waits out a Redis restart instead
            # of ending the consumer (and closing its WebSocket).
            "BACKEND": "streampai.channel_layer.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": redis_url, **connection_options()}],
                "prefix": prefix,
                # Unread messages vanish after this; the presence manager's
                # periodic reconcile repairs whatever a lost diff would have done.
                "expiry": 60,
                # Default capacity (100) suits per-connection channels. The
                # worker channel takes a message per connect and disconnect of
                # every dashboard socket (plus re-tracks, expiries, cleanup
                # timers): with 100, a few hundred tabs reconnecting at once
                # (a daphne restart) would raise ChannelFull. 20,000 is about
                # what one worker drains in 40 s (~500 join diffs/s measured on
                # 2 shared cores), inside the 60 s expiry: a longer queue would
                # mostly expire unread anyway. When it is full, diffs are
                # dropped with a warning and the reconcile tick (every
                # RECONCILE_INTERVAL) does what they would have done.
                "channel_capacity": {"presence-manager": 20_000},
            },
        }
    }


def redis_client(url: str | None = None) -> Any:
    """A new asyncio client (with a pool of its own) for ``url`` (default settings.REDIS_URL)."""
    import redis.asyncio as aioredis
    from django.conf import settings

    return aioredis.Redis.from_url(url or settings.REDIS_URL, decode_responses=True, **connection_options())
