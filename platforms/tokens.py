"""OAuth tokens of a connection: refreshed before they expire, one refresh at a time.

A connection's access token is refreshed when it expires within REFRESH_MARGIN
seconds, and once (forced) when an API answers 401. A Redis lock per connection
(``keys.platform_refresh_lock``) makes sure two workers never refresh at once: the
one that does not get it waits for the other and reads the token it stored (a
provider may invalidate a refresh token once used, so a second refresh racing the
first could log the user out). A refresh refused by the provider (400/401) means
the user revoked access: ``Revoked``; the caller marks the connection (the page
says "reconnect Twitch") and that platform stops.

The new tokens are written with a queryset ``update`` (encrypted), not ``save``:
a refresh must not look like a changed connection and restart its chat.
"""

from __future__ import annotations

import asyncio
import logging
import secrets as pysecrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from channels.db import database_sync_to_async
from django.conf import settings

from livestream import keys
from livestream.conf import get_settings
from livestream.redis import get_redis, run_script, script
from platforms import outbound
from streampai import secrets

logger = logging.getLogger("livestream.platforms")

REFRESH_MARGIN = 300.0  # seconds before expiry a token is refreshed
LOCK_MS = 15_000
PROVIDERS = {"twitch": "twitch", "youtube": "google"}

_RELEASE = script(
    "platforms.release_refresh_lock",
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
)


class Revoked(Exception):
    """The provider refused the token and the refresh: the user must connect again."""


@dataclass
class Credentials:
    """The live tokens of one connection (in memory only; the row keeps them encrypted)."""

    pk: int
    platform: str
    access_token: str
    refresh_token: str
    expires_at: float | None

    @property
    def public_id(self) -> str:
        return f"{self.platform}:{self.pk}"

    def __repr__(self) -> str:
        return f"Credentials({self.public_id}, expires_at={self.expires_at})"

    def expiring(self, margin: float = REFRESH_MARGIN) -> bool:
        return self.expires_at is not None and self.expires_at - time.time() < margin


def oauth_app(platform: str) -> tuple[str, str]:
    """(client id, client secret) of the platform's OAuth app (settings.SOCIALACCOUNT_PROVIDERS)."""
    provider = getattr(settings, "SOCIALACCOUNT_PROVIDERS", {}).get(PROVIDERS.get(platform, platform), {})
    apps = provider.get("APPS") or [{}]
    return str(apps[0].get("client_id", "")), str(apps[0].get("secret", ""))


def token_url(platform: str) -> str:
    conf = get_settings()
    return conf.TWITCH_TOKEN_URL if platform == "twitch" else conf.GOOGLE_TOKEN_URL


def _stored(pk: int) -> dict[str, Any]:
    from platforms.models import PlatformConnection

    row = PlatformConnection.objects.get(pk=pk)
    return {
        "access_token": row.access_token,
        "refresh_token": row.refresh_token,
        "expires_at": row.expires_at.timestamp() if row.expires_at else None,
    }


def _store(pk: int, access: str, refresh: str, expires_at: float | None) -> None:
    from platforms.models import PlatformConnection

    PlatformConnection.objects.filter(pk=pk).update(
        access_token_enc=secrets.encrypt(access),
        refresh_token_enc=secrets.encrypt(refresh) if refresh else "",
        expires_at=datetime.fromtimestamp(expires_at, UTC) if expires_at else None,
    )


def _mark_revoked(pk: int, reason: str) -> None:
    from platforms.models import PlatformConnection

    row = PlatformConnection.objects.filter(pk=pk).first()
    if row is not None and row.revoked != reason:
        row.revoked = reason[:200]
        row.save()  # a real change: the running supervisor stops this platform and shows why


stored = database_sync_to_async(_stored)
store = database_sync_to_async(_store)
mark_revoked = database_sync_to_async(_mark_revoked)


async def ensure_fresh(creds: Credentials) -> None:
    """Refresh ``creds`` if it expires soon (no-op otherwise)."""
    if creds.refresh_token and creds.expiring():
        await refresh(creds)


async def refresh(creds: Credentials, *, force: bool = False) -> None:
    """Get a new access token for ``creds`` (Revoked when refused). Across workers, only
    one refresh runs; the others adopt its result."""
    redis = get_redis()
    lock = keys.platform_refresh_lock(str(creds.pk))
    owner = pysecrets.token_hex(8)
    seen = creds.access_token
    while not await redis.set(lock, owner, nx=True, px=LOCK_MS):
        await asyncio.sleep(0.05)  # another worker refreshes: wait for it, then use its token
        if not await redis.exists(lock):
            row = await stored(creds.pk)
            if row["access_token"] and row["access_token"] != seen:
                _adopt(creds, row)
                return
    try:
        row = await stored(creds.pk)
        if row["access_token"] and row["access_token"] != seen:  # refreshed just before us
            _adopt(creds, row)
            return
        if not (force or creds.expiring()):
            return
        await _refresh_now(creds, row["refresh_token"] or creds.refresh_token)
    finally:
        await run_script(redis, _RELEASE, [lock], owner)


def _adopt(creds: Credentials, row: dict[str, Any]) -> None:
    creds.access_token = row["access_token"]
    creds.refresh_token = row["refresh_token"] or creds.refresh_token
    creds.expires_at = row["expires_at"]


async def _refresh_now(creds: Credentials, refresh_token: str) -> None:
    if not refresh_token:
        await mark_revoked(creds.pk, "token refused and no refresh token")
        raise Revoked("token refused and no refresh token")
    client_id, client_secret = oauth_app(creds.platform)
    form = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": client_id,
        "client_secret": client_secret,
    }
    response = await outbound.client().post(token_url(creds.platform), data=form)
    if response.status_code in (400, 401):
        body = _json(response)
        reason = str(
            body.get("message") or body.get("error_description") or body.get("error") or "refresh refused"
        )
        logger.warning("[platforms] token refresh of %s refused: %s", creds.public_id, reason)
        await mark_revoked(creds.pk, f"access revoked: {reason}")
        raise Revoked(reason)
    response.raise_for_status()
    body = _json(response)
    creds.access_token = str(body["access_token"])
    creds.refresh_token = str(body.get("refresh_token") or refresh_token)  # Google keeps the old one
    expires_in = body.get("expires_in")
    creds.expires_at = time.time() + float(expires_in) if expires_in else None
    await store(creds.pk, creds.access_token, creds.refresh_token, creds.expires_at)
    logger.info("[platforms] token of %s refreshed (expires in %ss)", creds.public_id, expires_in)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
