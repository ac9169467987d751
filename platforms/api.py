"""Calls to a platform's HTTP API with a connection's token: fresh token first, 401 ->
one forced refresh and one retry, 429 -> RateLimited (the caller backs off).

Base URLs are settings (LIVESTREAM_TWITCH_HELIX_URL, LIVESTREAM_YOUTUBE_API_URL); the
tests point them at local contract servers (tests/contract/).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from platforms import outbound
from platforms.tokens import Credentials, Revoked, ensure_fresh, mark_revoked, oauth_app, refresh


class ApiError(Exception):
    """An API answered with an error the caller shows (its text is user-facing)."""


class Waiting(ApiError):
    """Nothing to connect to yet (YouTube: no live broadcast): shown as "connecting", retried."""


class RateLimited(ApiError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retrying in {retry_after:.0f}s")
        self.retry_after = retry_after


def retry_after(response: httpx.Response, default: float = 5.0) -> float:
    """Seconds to wait after a 429: Retry-After, or Twitch's Ratelimit-Reset (unix time)."""
    value = response.headers.get("Retry-After")
    if value and value.replace(".", "", 1).isdigit():
        return min(float(value), 300.0)
    reset = response.headers.get("Ratelimit-Reset")
    if reset and reset.isdigit():
        return min(max(int(reset) - time.time(), 0.5), 300.0)
    return default


def _headers(creds: Credentials) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {creds.access_token}"}
    if creds.platform == "twitch":
        headers["Client-Id"] = oauth_app("twitch")[0]  # Helix wants the app's id on every call
    return headers


async def request(creds: Credentials, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """``method url`` with the connection's token, on this event loop's one platform client
    (platforms/outbound.py); returns any non-401/429 response."""
    await ensure_fresh(creds)
    client = outbound.client()
    for attempt in (1, 2):
        response = await client.request(method, url, headers=_headers(creds), **kwargs)
        if response.status_code == 401:
            if attempt == 1 and creds.refresh_token:
                await refresh(creds, force=True)
                continue
            await mark_revoked(creds.pk, "access revoked: the token was refused")
            raise Revoked("the token was refused")
        if response.status_code == 429:
            raise RateLimited(retry_after(response))
        return response
    raise AssertionError("unreachable")


def error_reason(response: httpx.Response) -> str:
    """The API's own words for an error response (Helix: message; Google: error.errors[0].reason)."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            errors = error.get("errors") or [{}]
            reason = errors[0].get("reason") if isinstance(errors[0], dict) else None
            return str(reason or error.get("message") or f"HTTP {response.status_code}")
        return str(body.get("message") or error or f"HTTP {response.status_code}")
    return f"HTTP {response.status_code}"
