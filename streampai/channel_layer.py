"""channels-redis' RedisChannelLayer, with a receive() that rides out a Redis restart.

The stock receive() raises when its connection to Redis breaks. In a consumer
that ends the consumer, and daphne then closes its WebSocket: every open
dashboard tab would drop whenever Redis restarts (and with it, before the
consumer's own clean-up existed, its presence heartbeat lived on). Here receive()
waits and tries again with backoff instead, so sockets stay open and group
messages flow again once Redis is back. Sending still raises: the caller knows
what a lost message means to it.

Its pools are bounded and wait for a free connection, and follow a Sentinel
master (streampai.redisconf.layer_pool), instead of channels-redis' unbounded
default.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import redis.exceptions
from channels_redis.core import RedisChannelLayer as StockRedisChannelLayer

from streampai.redisconf import layer_pool

logger = logging.getLogger(__name__)

# Backoff between attempts. The ceiling bounds how late a receiver notices that
# Redis is back; jitter keeps a daphne's many sockets from retrying in step.
RETRY_MIN, RETRY_MAX = 0.1, 1.0
# What a Redis going away looks like to redis-py (a reset socket, a refused or
# timed-out connection, a server still loading its data).
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class RedisChannelLayer(StockRedisChannelLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._down_since: float | None = None  # one log line per outage, not one per consumer

    def create_pool(self, index: int) -> Any:
        return layer_pool(self.hosts[index])

    async def receive(self, channel: str) -> dict[str, Any]:
        delay = RETRY_MIN
        while True:
            try:
                message = await super().receive(channel)
            except REDIS_DOWN as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # We are being cancelled and the cancellation surfaced as a
                    # Redis error (it can, mid-command): end, never retry.
                    raise asyncio.CancelledError from exc
                loop = asyncio.get_running_loop()
                if self._down_since is None:
                    self._down_since = loop.time()
                    logger.warning(
                        "[channel layer] Redis unreachable (%r); receivers retry until it is back", exc
                    )
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self._down_since is not None:
                logger.info(
                    "[channel layer] Redis is back after %.1fs",
                    asyncio.get_running_loop().time() - self._down_since,
                )
                self._down_since = None
            return message
