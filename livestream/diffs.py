"""presence_diff messages, in Phoenix's shape, and where they go.

    {"type": "presence_diff",
     "joins":  {user_id: {"metas": [meta, ...]}},
     "leaves": {user_id: {"metas": [meta, ...]}}}

Every track and untrack is broadcast to the channel-layer group ``users_presence``
(anyone may listen) and sent to the worker channel ``presence-manager``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from livestream.conf import get_settings
from livestream.presence import Change

logger = logging.getLogger(__name__)

Diff = dict[str, Any]


def presence_diff(joins: Iterable[Change] = (), leaves: Iterable[Change] = ()) -> Diff:
    return {"type": "presence_diff", "joins": _group(joins), "leaves": _group(leaves)}


def _group(changes: Iterable[Change]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for change in changes:
        grouped.setdefault(change.user_id, {"metas": []})["metas"].append(change.meta)
    return grouped


async def broadcast(diff: Diff) -> None:
    """Send a diff to the topic group and to the worker channel.

    ChannelFull is logged, not raised: presence itself is already in Redis and
    the workers' periodic reconcile acts on it within a second.
    """
    conf = get_settings()
    layer = get_channel_layer()
    await layer.group_send(conf.TOPIC, diff)
    try:
        await layer.send(conf.WORKER_CHANNEL, diff)
    except ChannelFull:
        logger.warning(
            "[presence] %s is full; diff for %s left to the reconcile loop",
            conf.WORKER_CHANNEL,
            ", ".join(sorted({*diff["joins"], *diff["leaves"]})),
        )


def user_ids(diff: Diff) -> tuple[list[str], list[str]]:
    """The user ids joining and leaving in ``diff``; ValueError if it is malformed."""
    joins, leaves = diff.get("joins"), diff.get("leaves")
    if not isinstance(joins, dict) or not isinstance(leaves, dict):
        raise ValueError("presence_diff needs 'joins' and 'leaves' objects")
    for side in (joins, leaves):
        for user_id, entry in side.items():
            if not isinstance(user_id, str) or not user_id or len(user_id) > 64:
                raise ValueError(f"bad user id {user_id!r}")
            if not isinstance(entry, dict) or not isinstance(entry.get("metas"), list):
                raise ValueError(f"entry for {user_id!r} has no 'metas' list")
    return list(joins), list(leaves)
