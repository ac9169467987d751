"""The checks a dashboard handshake passes before anything is written for it.

``handshake_rejection``: authenticated, and same-origin (the Origin header's host is
the Host and an allowed host; a refusal says which). ``handshake_limiter``: the
per-IP token bucket (HANDSHAKE_RATE, HANDSHAKE_BURST), one per event loop.
``refuse_log``: refusals are logged once per reason per minute, with a count,
so a storm of them is a few lines, not thousands.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import validate_host

from dashboard.ws.limits import KeyedBuckets, Throttled
from livestream.conf import get_settings

logger = logging.getLogger("dashboard.consumers")  # the consumer's lines, as before the split

_refusals = Throttled(60.0)  # one log line per reason per minute
_handshake_buckets: dict[int, KeyedBuckets] = {}


def handshake_rejection(scope: dict[str, Any]) -> str | None:
    """Why this handshake must be refused, or None to accept it."""
    user = scope.get("user")
    if user is None or not user.is_authenticated:
        return "not authenticated"
    headers = {name.lower(): value for name, value in scope.get("headers", [])}
    origin = headers.get(b"origin", b"").decode("latin-1")
    host = headers.get(b"host", b"").decode("latin-1")
    if not origin:
        return "no Origin header"
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"malformed Origin {origin!r}"
    if parts.netloc.lower() != host.lower():
        return f"cross-origin handshake from {origin!r} to host {host!r}"
    if not validate_host(parts.hostname or "", settings.ALLOWED_HOSTS):
        return f"Origin {origin!r} is not an allowed host"
    return None


def handshake_limiter() -> KeyedBuckets:
    conf = get_settings()
    loop_id = id(asyncio.get_running_loop())
    limiter = _handshake_buckets.get(loop_id)
    if limiter is None or (limiter.rate, limiter.burst) != (conf.HANDSHAKE_RATE, conf.HANDSHAKE_BURST):
        _handshake_buckets.clear()
        limiter = _handshake_buckets[loop_id] = KeyedBuckets(conf.HANDSHAKE_RATE, conf.HANDSHAKE_BURST)
    return limiter


def refuse_log(reason: str, detail: str) -> None:
    held = _refusals.due(reason)
    if held is not None:
        logger.warning(
            "[PresenceConsumer] refused handshake: %s (%d more like it since the last line)", detail, held
        )
