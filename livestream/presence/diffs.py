"""presence_diff messages, in Phoenix's shape, and where they go.

    {"type": "presence_diff",
     "joins":  {user_id: {"metas": [meta, ...]}},
     "leaves": {user_id: {"metas": [meta, ...]}},
     "sessions": {user_id: connections left}}       (ours; Phoenix has no such field)

Every track and untrack appends its diff to the presence events LIST in the same
Lua script (livestream/presence/store.py). The workers drain that LIST in batches, act
on them, and publish each batch as one merged diff to the channel-layer group
``users_presence``, which anyone may listen to. A diff sent to the worker channel
``presence-manager`` (by hand, or by other code) is handled the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from channels.layers import get_channel_layer

from livestream.conf import get_settings
from livestream.ids import is_user_id
from livestream.presence.store import Change

logger = logging.getLogger("livestream.diffs")

Diff = dict[str, Any]

# A topic publish that takes longer than this (seconds) is given up, with a line.
PUBLISH_TIMEOUT = 5.0


def presence_diff(joins: Iterable[Change] = (), leaves: Iterable[Change] = ()) -> Diff:
    joins, leaves = list(joins), list(leaves)
    sessions = {change.user_id: change.sessions for change in [*joins, *leaves]}
    return {"type": "presence_diff", "joins": _group(joins), "leaves": _group(leaves), "sessions": sessions}


def _group(changes: Iterable[Change]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for change in changes:
        grouped.setdefault(change.user_id, {"metas": []})["metas"].append(change.meta)
    return grouped


async def publish_to_topic(diff: Diff) -> None:
    """Send a diff to the topic group, for anyone listening (Phoenix.PubSub's subscribers).

    The workers call this once per batch of presence changes they read; a failure
    is logged, not raised: presence itself is in Redis.
    """
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT):
            await get_channel_layer().group_send(get_settings().TOPIC, diff)
    except Exception as exc:
        logger.warning("[presence] diff not published to %s: %r", get_settings().TOPIC, exc)


def merge(diffs: Iterable[Diff]) -> Diff:
    """One diff with every join and leave of ``diffs``, in order; the last session count per user."""
    merged: Diff = {"type": "presence_diff", "joins": {}, "leaves": {}, "sessions": {}}
    for diff in diffs:
        for side in ("joins", "leaves"):
            for user_id, entry in diff[side].items():
                merged[side].setdefault(user_id, {"metas": []})["metas"].extend(entry["metas"])
        merged["sessions"].update(diff.get("sessions") or {})
    return merged


def user_ids(diff: Diff) -> tuple[list[str], list[str]]:
    """The user ids joining and leaving in ``diff``; ValueError if it is malformed."""
    joins, leaves = diff.get("joins"), diff.get("leaves")
    if not isinstance(joins, dict) or not isinstance(leaves, dict):
        raise ValueError("presence_diff needs 'joins' and 'leaves' objects")
    for side in (joins, leaves):
        for user_id, entry in side.items():
            if not is_user_id(user_id):
                raise ValueError(f"bad user id {user_id!r:.80}")
            if not isinstance(entry, dict) or not isinstance(entry.get("metas"), list):
                raise ValueError(f"entry for {user_id!r} has no 'metas' list")
    return list(joins), list(leaves)
