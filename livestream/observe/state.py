"""What is going on right now, read from Redis by any process (web, CLI, metrics).

Sources, all written by other modules:
  presence          PresenceStore.list()                       (livestream/presence/store.py)
  running managers  ``<prefix>:managers:<worker_id>`` HASH uid -> status JSON, published by
                    every worker each reconcile tick (publish_managers, below)
  live workers      ``<prefix>:workers`` ZSET, last seen on Redis' clock (livestream/ownership/leases.py)
  pending cleanups  TimerStore.pending() entries named ``cleanup:<uid>`` (livestream/timers/store.py)
  staff holds       lease values ``held-by-staff:<id>`` (livestream/worker/control.py)

A worker that stopped beating (killed) is dropped at once, although its last
published HASH lingers until its TTL: only workers seen within LEASE_TTL count,
the same horizon the workers use among themselves. Published statuses are at
most one RECONCILE_INTERVAL old.

The write side (publish_managers, StatePublisher) is here too, so one module
writes and reads ``managers:*``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from asgiref.sync import async_to_sync
from django.conf import settings
from redis.typing import EncodableT

from livestream import keys
from livestream.conf import get_settings
from livestream.ownership.leases import LeaseStore, held_by
from livestream.presence.store import CLEANUP_TIMER_PREFIX, Meta, PresenceStore
from livestream.redis import get_redis, texts_or_none
from livestream.timers.store import TimerStore
from streampai.redisconf import redis_client

logger = logging.getLogger("livestream.state")

T = TypeVar("T")


@dataclass(frozen=True)
class ComponentStatus:
    state: str  # starting, running, restarting, failed, stopped
    restarts: int
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. ConsoleLogger's {"count": n}


@dataclass(frozen=True)
class ManagerStatus:
    worker: str
    started_at: datetime
    components: dict[str, ComponentStatus]

    def as_json(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "started_at": self.started_at.isoformat(),
            "components": {
                name: {"state": c.state, "restarts": c.restarts} for name, c in self.components.items()
            },
        }


@dataclass(frozen=True)
class WorkerStatus:
    host: str
    pid: str
    seen_ago: float  # seconds since its last reconcile tick


@dataclass(frozen=True)
class Snapshot:
    presence: dict[str, list[Meta]]
    managers: dict[str, ManagerStatus]
    pending_cleanups: dict[str, float]  # user id -> seconds until due
    workers: dict[str, WorkerStatus]
    held: dict[str, str]  # present user id -> id of the staff member who stopped them
    taken_at: datetime

    @property
    def totals(self) -> dict[str, int]:
        return {
            "present_users": len(self.presence),
            "open_sessions": sum(len(metas) for metas in self.presence.values()),
            "running_managers": len(self.managers),
            "pending_cleanups": len(self.pending_cleanups),
            "live_workers": len(self.workers),
            "held_by_staff": len(self.held),
        }

    def as_json(self) -> dict[str, Any]:
        """The documented ``presence_debug --json`` shape, exactly."""
        return {
            "presence": {uid: {"metas": metas} for uid, metas in self.presence.items()},
            "managers": {uid: m.as_json() for uid, m in self.managers.items()},
            "pending_cleanups": {uid: {"due_in": due} for uid, due in self.pending_cleanups.items()},
        }

    def as_detail(self) -> dict[str, Any]:
        """as_json() plus component extras, workers, holds and totals (the admin's JSON)."""
        data = self.as_json()
        for uid, m in self.managers.items():
            for name, c in m.components.items():
                data["managers"][uid]["components"][name].update(c.extra)
        data["workers"] = {
            wid: {"host": w.host, "pid": w.pid, "seen_ago": w.seen_ago} for wid, w in self.workers.items()
        }
        data["held"] = {uid: {"by": by} for uid, by in self.held.items()}
        data["totals"] = self.totals
        data["taken_at"] = self.taken_at.isoformat()
        return data


async def read_state(client: aioredis.Redis | None = None) -> Snapshot:
    """Everything above, in five round trips, as of now."""
    redis = client or get_redis()
    conf = get_settings()
    presence = {uid: entry["metas"] for uid, entry in (await PresenceStore(client=redis).list()).items()}
    pending = await TimerStore(redis).pending()

    async with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zrange(keys.workers(), 0, -1, withscores=True)
        (seconds, micros), beats = await pipe.execute()
    now = seconds + micros / 1e6
    alive = {wid: now - seen for wid, seen in beats if now - seen <= conf.LEASE_TTL}

    async with redis.pipeline(transaction=False) as pipe:
        for wid in alive:
            pipe.hgetall(keys.managers(wid))
            pipe.hgetall(keys.worker(wid))
        published = await pipe.execute()

    candidates: dict[str, list[ManagerStatus]] = {}
    workers: dict[str, WorkerStatus] = {}
    for i, (wid, seen_ago) in enumerate(alive.items()):
        statuses, info = published[2 * i], published[2 * i + 1]
        workers[wid] = WorkerStatus(info.get("host", ""), info.get("pid", ""), round(max(0.0, seen_ago), 3))
        for uid, raw in statuses.items():
            status = _parse_manager(wid, uid, raw)
            if status is not None:
                candidates.setdefault(uid, []).append(status)

    users = sorted(set(presence) | set(candidates), key=natural)
    lease_keys = [LeaseStore("", redis).lease_key(u) for u in users]
    owners = dict(zip(users, texts_or_none(await redis.mget(lease_keys)), strict=True)) if users else {}
    held = {uid: by for uid in presence if (by := held_by(owners.get(uid))) is not None}

    return Snapshot(
        presence={uid: presence[uid] for uid in sorted(presence, key=natural)},
        managers={uid: _pick(candidates[uid], owners.get(uid)) for uid in users if uid in candidates},
        pending_cleanups={
            name.removeprefix(CLEANUP_TIMER_PREFIX): round(max(0.0, due_in), 3)
            for name, due_in in sorted(pending.items(), key=lambda kv: kv[1])
            if name.startswith(CLEANUP_TIMER_PREFIX)
        },
        workers=workers,
        held=held,
        taken_at=datetime.fromtimestamp(now, UTC),
    )


# -- the write side: each worker publishes its managers every reconcile tick -----

# Managers serialised per round trip (each one a yield to the worker's loop).
PUBLISH_CHUNK = 200


class Publishable(Protocol):
    """What publishing needs of a manager (a UserStreamManager)."""

    def status(self) -> dict[str, Any]: ...


async def publish_managers(worker_id: str, managers: Mapping[str, Publishable], ttl: float) -> None:
    """Write ``worker_id``'s running managers (user id -> UserStreamManager) to
    ``<prefix>:managers:<worker_id>``, replacing what it wrote before.

    Written PUBLISH_CHUNK at a time into a scratch key renamed over the old one at
    the end: readers never see half a worker, and 10,000 managers never hold the
    worker's loop up for one long serialisation (docs/benchmarks.md).
    """
    redis = get_redis()
    state_key = keys.managers(worker_id)
    scratch = keys.managers(worker_id) + ":next"
    running = list(managers.items())
    published = 0
    await redis.delete(scratch)
    for start in range(0, len(running), PUBLISH_CHUNK):
        chunk: dict[EncodableT, EncodableT] = {}
        for uid, manager in running[start : start + PUBLISH_CHUNK]:
            if managers.get(uid) is not manager:
                continue  # stopped while we yielded
            chunk[uid] = json.dumps(manager.status())
        if chunk:
            published += len(chunk)
            await redis.hset(scratch, mapping=chunk)
    async with redis.pipeline(transaction=True) as pipe:
        if published:
            pipe.rename(scratch, state_key)
            pipe.pexpire(state_key, int(ttl * 1000))
        else:
            pipe.delete(state_key)
        await pipe.execute()


class StatePublisher:
    """One worker's write side: its managers every reconcile tick (and after a staff action),
    one publish at a time (each writes the same scratch key)."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._publishing = asyncio.Lock()

    async def publish(self, managers: Mapping[str, Publishable]) -> None:
        async with self._publishing:
            await publish_managers(self.worker_id, managers, get_settings().LEASE_TTL * 3)


def run_sync(fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    """Run ``fn(client)`` from sync code (views, commands) with a client of its own.

    The client lives for this call only: under daphne async_to_sync runs ``fn`` on
    the server's loop, in a command on a throwaway one, and a client cannot
    outlive or cross loops.
    """

    async def call() -> T:
        client = redis_client(settings.REDIS_URL)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    return async_to_sync(call)()


def read_state_sync() -> Snapshot:
    return run_sync(read_state)


def session_counts_sync() -> dict[str, int]:
    """Open sessions per present user (the admin's "online" column and filter)."""

    async def counts(client: aioredis.Redis) -> dict[str, int]:
        return {
            uid: len(entry["metas"]) for uid, entry in (await PresenceStore(client=client).list()).items()
        }

    return run_sync(counts)


def describe(exc: BaseException) -> str:
    """An error for people (redis-py 8's repr of a ConnectionError is just "network:ConnectionError")."""
    return f"{type(exc).__name__}: {exc}"


def natural(user_id: str) -> tuple[int, int | str]:
    """Sort numeric user ids numerically, then any others by text."""
    return (0, int(user_id)) if user_id.isdigit() else (1, user_id)


def _parse_manager(worker: str, user_id: str, raw: str) -> ManagerStatus | None:
    try:
        data = json.loads(raw)
        components = {
            str(name): ComponentStatus(
                state=str(c["state"]),
                restarts=int(c.get("restarts", 0)),
                extra={k: v for k, v in c.items() if k not in ("state", "restarts")},
            )
            for name, c in data["components"].items()
        }
        return ManagerStatus(worker, datetime.fromtimestamp(float(data["started_at"]), UTC), components)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        logger.warning("[state] ignored malformed status of %s from %s: %r", user_id, worker, exc)
        return None


def _pick(candidates: list[ManagerStatus], owner: str | None) -> ManagerStatus:
    """During a hand-over two workers may list one user for a tick: trust the lease."""
    for status in candidates:
        if status.worker == owner:
            return status
    return max(candidates, key=lambda s: s.started_at)


def format_duration(seconds: float, sep: str = "") -> str:
    """A short human duration for the debug surfaces: "42s", "3m07s", "2h05m" (``sep`` between units)."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{sep}{minutes:02d}m"
    return f"{minutes}m{sep}{secs:02d}s" if minutes else f"{secs}s"
