"""Messages to a user's open dashboard tabs: Redis pub/sub, one channel per audience.

  user_channel(user_id)         every live tab of that user (sockets opened with
                                ``?live=1``): the worker publishes its manager's
                                status and the session count here
  session_channel(session_key)  every socket opened with that browser session:
                                logging out there closes them (dashboard/auth/sessions.py)

Each daphne process keeps one subscriber connection and hands each message to the
sockets it has for that channel (dashboard/ws/hub.py). A message is a JSON object:

  {"type": "manager", "user_id": "7", "state": "running", "started_at": ...,
   "components": {"ConsoleLogger": {"state": "running", "restarts": 0, "count": 12}}}
  {"type": "sessions", "user_id": "7", "sessions": 3}
  {"type": "session.ended", "reason": "logged out"}          (closes, never forwarded)

Why pub/sub and not channel-layer groups: a PUBLISH is one command that reaches
only the processes with a subscriber and tells how many there were (0: nobody is
watching, so the worker can stop pushing to that user); a thousand of them
pipeline into one round trip. channels-redis' group_send costs three round trips
and a Lua call per message, and group_add/discard two per socket.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from livestream import keys
from livestream.redis import get_redis

Message = dict[str, Any]

# Publishes per pipeline: one round trip each (a yield to the loop between two),
# small enough not to hold Redis or the worker up.
BATCH = 250


def user_channel(user_id: str) -> str:
    return keys.push("user", user_id)


def session_channel(session_key: str) -> str:
    """Hashed: a session key is a credential, and channel names are visible to PUBSUB CHANNELS."""
    return keys.push("session", hashlib.sha256(session_key.encode()).hexdigest()[:40])


def encode(message: Message) -> str:
    return json.dumps(message, separators=(",", ":"))


async def publish(channel: str, message: Message, client: aioredis.Redis | None = None) -> int:
    """Send ``message`` to ``channel``'s subscribers; returns how many daphne processes got it."""
    return int(await (client or get_redis()).publish(channel, encode(message)))


async def publish_many(
    messages: Sequence[tuple[str, str]], client: aioredis.Redis | None = None
) -> list[int]:
    """PUBLISH each ``(channel, encoded message)``, BATCH per round trip; receivers per message."""
    redis = client or get_redis()
    receivers: list[int] = []
    for start in range(0, len(messages), BATCH):
        async with redis.pipeline(transaction=False) as pipe:
            for channel, data in messages[start : start + BATCH]:
                pipe.publish(channel, data)
            receivers.extend(int(n) for n in await pipe.execute())
    return receivers
