"""The platforms' RTMP targets as outputs of the broadcast (issue 18's register_source).

Each connection of the user is one output, id ``"<platform>:<pk>"`` (its public id):
Twitch: TWITCH_INGEST_URL + the stream key from Helix; YouTube: the live stream's
ingestion address and stream name; custom: the URL and key as typed. A disabled or
revoked connection, or one whose API call fails, is listed disabled (with its name, so
the page shows it), never with a key it could not get; the failure is logged without
any key or token.
"""

from __future__ import annotations

import logging

from broadcast.outputs import OutputSpec
from livestream.conf import get_settings
from platforms.clients import Connection, load_connections
from platforms.tokens import Credentials
from platforms.twitch import helix
from platforms.youtube import api as youtube

logger = logging.getLogger("platforms")


async def target(conn: Connection) -> tuple[str, str]:
    """(RTMP URL, stream key) of one enabled connection."""
    creds = Credentials(conn.pk, conn.platform, conn.access_token, conn.refresh_token, conn.expires_at)
    if conn.platform == "twitch":
        return get_settings().TWITCH_INGEST_URL, await helix.stream_key(creds)
    if conn.platform == "youtube":
        return await youtube.ingestion(creds)
    return conn.url, conn.key


async def platform_outputs(user_id: str) -> list[OutputSpec]:
    specs = []
    for conn in await load_connections(user_id):
        url, key, enabled = "", "", conn.enabled and not conn.revoked
        if enabled:
            try:
                url, key = await target(conn)
            except Exception as exc:  # this platform only; the others still go out
                logger.warning(
                    "[platforms] no RTMP target for %s of user %s: %s", conn.public_id, user_id, exc
                )
                enabled = False
        specs.append(
            OutputSpec(id=conn.public_id, name=conn.name, url=url, key=key, enabled=enabled and bool(url))
        )
    return specs
