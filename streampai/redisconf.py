"""How every process talks to Redis: one place for URLs and socket options."""

from __future__ import annotations

from typing import Any

# redis-py 8 defaults socket_timeout to 5 s while channels-redis blocks in
# BZPOPMIN for 5 s, so an idle receive() would raise TimeoutError every ~5 s
# (channels_redis issue 422). 15 s is comfortably above the blocking pop and
# still notices a dead connection.
SOCKET_TIMEOUT = 15.0
CONNECT_TIMEOUT = 5.0


def connection_options() -> dict[str, Any]:
    """Keyword arguments for every Redis connection pool we create."""
    return {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": 30,
    }


def channel_layers(redis_url: str, prefix: str = "asgi") -> dict[str, Any]:
    """The CHANNEL_LAYERS setting for a Redis at ``redis_url``."""
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": redis_url, **connection_options()}],
                "prefix": prefix,
                # Unread messages vanish after this; the presence manager's
                # periodic reconcile repairs whatever a lost diff would have done.
                "expiry": 60,
                # Default capacity (100) suits per-connection channels. The
                # worker channel takes one diff per connect/disconnect of every
                # user: 1,000 users opening a tab at once must not raise
                # ChannelFull, so it gets room for a burst of 20,000.
                "channel_capacity": {"presence-manager": 20_000},
            },
        }
    }
