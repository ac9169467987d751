"""The cleanup timer from the worker's side: schedule the ones no script scheduled, read the due ones' facts.

``cleanup:<user>`` stops a user's manager CLEANUP_TIMEOUT after their last
connection closed. daphne's untrack script schedules it in the same round trip as
the close (livestream/presence/store.py); the worker schedules it only for leaves it
learnt of otherwise: a lost leave (the reconcile tick finds a manager whose user
is away with no timer pending) and a presence_diff sent to the worker channel by
hand. When due, the timer delivers to the worker channel

    {"type": "presence.cleanup", "user_id": "<user>"}

and the worker reads, for all the cleanups of a burst in one round trip, what
livestream/ownership/policy.py decides on (``facts``).
"""

from __future__ import annotations

from typing import Any

from livestream import ids
from livestream.conf import get_settings
from livestream.ownership.leases import LeaseStore, held_by
from livestream.ownership.policy import CleanupFacts
from livestream.presence import diffs
from livestream.presence.store import PresenceStore, cleanup_timer
from livestream.redis import text_or_none
from livestream.timers.store import TimerStore

CLEANUP = "presence.cleanup"


def message(user_id: str) -> dict[str, str]:
    return {"type": CLEANUP, "user_id": user_id}


async def schedule(timers: TimerStore, user_id: str, delay: float) -> None:
    await timers.schedule(cleanup_timer(user_id), get_settings().WORKER_CHANNEL, message(user_id), delay)


def split_due(messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Due timer messages: the users of the cleanups (valid ids only), and every other message."""
    cleanups = [
        m["user_id"] for m in messages if m.get("type") == CLEANUP and ids.is_user_id(m.get("user_id"))
    ]
    return cleanups, [m for m in messages if m.get("type") != CLEANUP]


async def facts(store: PresenceStore, leases: LeaseStore, user_ids: list[str]) -> list[CleanupFacts]:
    """Each user's connections and lease (a worker, a staff hold, nobody), in one round trip."""
    if not user_ids:
        return []
    async with store.redis.pipeline(transaction=False) as pipe:
        for user_id in user_ids:
            pipe.hlen(store.user_prefix + user_id)
            pipe.get(leases.lease_key(user_id))
        replies = await pipe.execute()
    found = []
    for i in range(len(user_ids)):
        owner = text_or_none(replies[2 * i + 1])
        found.append(CleanupFacts(int(replies[2 * i]), owner, held_by(owner) is not None))
    return found


async def schedule_for_diff(store: PresenceStore, timers: TimerStore, diff: dict[str, Any]) -> dict[str, Any]:
    """A presence_diff sent to the worker channel by hand: cancel its joins' cleanups, schedule
    those of users it left with no connection; returns it with the session counts and
    scheduled cleanups that the store's own diffs carry."""
    joins, leaves = diffs.user_ids(diff)
    users = [*joins, *leaves]
    counts: dict[str, int] = dict(zip(users, await store.session_counts(users), strict=True))
    delay = get_settings().CLEANUP_TIMEOUT
    for user_id in joins:
        await timers.cancel(cleanup_timer(user_id))
    gone = {u: delay for u in leaves if counts[u] == 0}
    for user_id in gone:
        await schedule(timers, user_id, delay)
    return {**diff, "sessions": counts, "cleanup": gone}
