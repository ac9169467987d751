"""A worker's inputs from Redis lists: presence events and the users placed on it.

Two LISTs, read with one BLPOP on a connection of their own, a batch at a time:

  PresenceStore.events_key   presence_diffs appended by daphne's track/untrack
                             scripts (livestream/presence/store.py); every worker reads
                             from it, each diff goes to one of them
  LeaseStore.starts_key()    users another worker placed on this one
                             (LeaseStore.place)

Each batch of diffs is also published, merged, to the ``users_presence`` group
(livestream/presence/diffs.py). A malformed entry is dropped with one log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from livestream import logformats
from livestream.ownership.leases import LeaseStore
from livestream.presence import diffs
from livestream.presence.store import PresenceStore
from livestream.redis import text, texts
from livestream.tasks import Backoff
from streampai.redisconf import redis_client

logger = logging.getLogger("livestream.events")
# The worker's own log lines (their format is part of the interface).
worker_log = logging.getLogger(logformats.WORKER_LOGGER)

# Entries taken per batch (one LPOP).
BATCH = 1000


async def read(
    store: PresenceStore,
    leases: LeaseStore,
    on_diffs: Callable[[list[dict[str, Any]]], Awaitable[None]],
    on_starts: Callable[[list[str]], Awaitable[None]],
    closing: Callable[[], bool],
) -> None:
    """Hand every batch to ``on_diffs`` / ``on_starts`` until ``closing()``."""
    client = redis_client()  # a connection of its own: BLPOP holds it
    events, starts = store.events_key, leases.starts_key()
    pending: set[asyncio.Task[None]] = set()
    backoff = Backoff(cap=1.0)
    try:
        while not closing():
            try:
                head = await client.blpop([starts, events], timeout=1)
                if head is None:
                    continue
                source, first = text(head[0]), text(head[1])
                rest = texts(await client.lpop(source, BATCH - 1) or [])
            except Exception as exc:
                logger.warning("[PresenceManager] reading presence events failed: %r", exc)
                await asyncio.sleep(backoff.failed())
                continue
            backoff.reset()
            if source == starts:
                await on_starts([first, *rest])
                continue
            batch = parse([first, *rest])
            if not batch:
                continue
            try:
                await on_diffs(batch)
            except Exception as exc:
                logger.warning(
                    "[PresenceManager] presence events failed (%r); the reconcile tick repairs", exc
                )
            # In the background: the topic's listeners must never hold up the next batch.
            publishing = asyncio.ensure_future(diffs.publish_to_topic(diffs.merge(batch)))
            pending.add(publishing)
            publishing.add_done_callback(pending.discard)
    finally:
        for publishing in pending:
            publishing.cancel()
        await client.aclose()


def parse(raw: list[str]) -> list[dict[str, Any]]:
    parsed = []
    for entry in raw:
        try:
            diff = json.loads(entry)
            diffs.user_ids(diff)  # validates
            parsed.append(diff)
        except (ValueError, TypeError, AttributeError) as exc:
            logger.warning("[PresenceManager] dropped malformed presence event: %s", exc)
    return parsed


def changes(batch: list[dict[str, Any]]) -> tuple[list[str], dict[str, int]]:
    """Log every change of ``batch`` (a line per connection), in order; return the users
    who joined (once each, in order) and each user's last session count."""
    joined: dict[str, None] = {}
    sessions: dict[str, int] = {}
    for diff in batch:
        counts: dict[str, int] = diff.get("sessions") or {}
        for user_id, entry in diff["joins"].items():
            for _ in entry["metas"] or [None]:
                worker_log.info(logformats.PRESENCE_JOIN, user_id)
            joined[user_id] = None
        for user_id, entry in diff["leaves"].items():
            for _ in entry["metas"] or [None]:
                worker_log.info(logformats.PRESENCE_LEAVE, user_id, counts.get(user_id, 0))
            if user_id in (diff.get("cleanup") or {}):
                log_cleanup(user_id, diff["cleanup"][user_id])
        sessions.update(counts)
    return list(joined), sessions


def log_cleanup(user_id: str, delay: float) -> None:
    # To a tenth of a second: daphne takes the time a close waited for its untrack off the
    # delay (microseconds, usually), and "in 5s" is the line people and tests look for.
    worker_log.info(logformats.CLEANUP_SCHEDULED, user_id, f"{round(float(delay), 1):g}")
