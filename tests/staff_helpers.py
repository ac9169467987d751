"""Helpers for the staff-surface tests (state, presence_debug, admin, metrics)."""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from devtools.processes import wait_until
from livestream.keys import key
from livestream.ownership.leases import LeaseStore
from livestream.presence.store import PresenceStore


async def connect(
    user_id: str, ref: str, email: str | None = None, client: aioredis.Redis | None = None
) -> None:
    """What the dashboard consumer does on connect."""
    meta = {"email": email or f"user{user_id}@example.com", "joined_at": int(time.time()), "ref": ref}
    await PresenceStore(client=client).track(user_id, meta)  # announces the join itself


async def disconnect(user_id: str, ref: str) -> None:
    await PresenceStore().untrack(user_id, ref)  # announces the leave, schedules the cleanup


def status(started_at: float, state: str = "running", restarts: int = 0, count: int = 3) -> dict[str, Any]:
    """A manager status as UserStreamManager.status() publishes it."""
    return {
        "started_at": started_at,
        "components": {"ConsoleLogger": {"state": state, "restarts": restarts, "count": count}},
    }


async def publish_fake_worker(
    client: aioredis.Redis, worker_id: str, managers: dict[str, dict[str, Any]], seen_ago: float = 0.0
) -> None:
    """Register a worker (last seen ``seen_ago`` s ago, on Redis' clock) publishing ``managers``."""
    await LeaseStore(worker_id, client).beat({"inbox": "", "host": "fakehost", "pid": "4242"})
    if seen_ago:
        seconds, micros = await client.time()
        await client.zadd(key("workers"), {worker_id: seconds + micros / 1e6 - seen_ago})
    if managers:
        await client.hset(key("managers", worker_id), mapping={u: json.dumps(s) for u, s in managers.items()})


async def ticks(worker_id: str, n: int, client: aioredis.Redis, timeout: float = 10) -> None:
    """Wait for ``n`` more reconcile ticks of ``worker_id`` (each one beats the registry)."""
    seen: list[float] = []

    async def advanced() -> bool:
        score = await client.zscore(key("workers"), worker_id)
        if score is not None and (not seen or score > seen[-1]):
            seen.append(score)
        return len(seen) > n

    await wait_until(advanced, timeout, f"{n} ticks of {worker_id}")
