"""The one place that relies on redis-py's and channels-redis' internals.

Kept apart from dashboard/daphne/adapter.py (daphne, autobahn, Twisted) because every
process uses these (the worker too, which must not import the dashboard), and
streampai/ is where the project's Redis plumbing lives (streampai/redisconf.py,
streampai/channel_layer.py, the hub's connection names).

``check()`` looks once, at start (livestream/apps.py), for every attribute used and, if
one is missing, switches off only what needs it, in ONE warning line::

    redis adapter: switched off sentinel master check (redis-py asyncio SentinelConnectionPool.is_master missing)

A switched-off feature falls back to the library's own behaviour: no master check per
checkout, channels-redis' own pools, unnamed connections. Nothing here raises.
"""

from __future__ import annotations

import logging
from typing import Any

from streampai.internals import InternalsCheck, Requirements

logger = logging.getLogger("streampai.redis")

FOLLOW_MASTER = "sentinel master check"  # streampai/redisconf.py *SentinelConnectionPool
LAYER_POOLS = "bounded channel-layer pools"  # streampai/channel_layer.py create_pool
CONNECTION_NAMES = "connection names"  # dashboard/ws/hub.py named_client


def _blocking_pool() -> Any:
    import redis.asyncio as aioredis

    return aioredis.BlockingConnectionPool()  # opens no connection


def _sentinel_pools() -> Any:
    import redis.asyncio.sentinel as aiosentinel

    return aiosentinel.SentinelConnectionPool("check", None)


def _sync_sentinel_pools() -> Any:
    import redis.sentinel

    return redis.sentinel.SentinelConnectionPool("check", None)


def _layer_class() -> Any:
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer


def _layer() -> Any:
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer(hosts=[("127.0.0.1", 1)])  # connects nowhere until used


def _connection_class() -> Any:
    import redis.asyncio.connection

    return redis.asyncio.connection.Connection(host="127.0.0.1", port=1)


# feature -> [(where, a function returning the attribute's owner, attribute)]
REQUIREMENTS: Requirements = {
    FOLLOW_MASTER: [
        ("redis-py asyncio SentinelConnectionPool", _sentinel_pools, "is_master"),
        ("redis-py asyncio SentinelConnectionPool", _sentinel_pools, "master_address"),
        ("redis-py asyncio SentinelConnectionPool", _sentinel_pools, "get_master_address"),
        ("redis-py SentinelConnectionPool", _sync_sentinel_pools, "get_master_address"),
        ("redis-py asyncio Connection", _connection_class, "host"),
        ("redis-py asyncio Connection", _connection_class, "port"),
    ],
    LAYER_POOLS: [
        ("channels-redis RedisChannelLayer", _layer_class, "create_pool"),
        ("channels-redis RedisChannelLayer", _layer, "hosts"),
    ],
    CONNECTION_NAMES: [("redis-py BlockingConnectionPool", _blocking_pool, "connection_kwargs")],
}

_CHECK = InternalsCheck(
    REQUIREMENTS, logger, "redis adapter", "redis-py/channels-redis differ from the pinned versions"
)
# Look for every attribute of REQUIREMENTS once; log one line naming what is switched off.
check = _CHECK.check
enabled = _CHECK.enabled
