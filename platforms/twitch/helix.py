"""Twitch Helix calls (https://dev.twitch.tv/docs/api/reference): the stream key for the
RTMP output and the channel's title/category.

  GET   /users                                   -> data[0].id (the token's user)
  GET   /streams/key?broadcaster_id=<id>         -> data[0].stream_key   (channel:read:stream_key)
  GET   /games?name=<category>                   -> data[0].id
  PATCH /channels?broadcaster_id=<id> {"title", "game_id"} -> 204       (channel:manage:broadcast)
"""

from __future__ import annotations

from typing import Any

import httpx

from livestream.conf import get_settings
from platforms.api import ApiError, error_reason, request
from platforms.tokens import Credentials


def _url(path: str) -> str:
    return get_settings().TWITCH_HELIX_URL.rstrip("/") + path


def _first(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code >= 400:
        raise ApiError(f"Twitch {what}: {error_reason(response)}")
    data = response.json().get("data") or []
    if not data or not isinstance(data[0], dict):
        raise ApiError(f"Twitch {what}: nothing returned")
    return data[0]


async def broadcaster_id(creds: Credentials) -> str:
    return str(_first(await request(creds, "GET", _url("/users")), "user")["id"])


async def stream_key(creds: Credentials) -> str:
    bid = await broadcaster_id(creds)
    response = await request(creds, "GET", _url("/streams/key"), params={"broadcaster_id": bid})
    return str(_first(response, "stream key")["stream_key"])


async def update_channel(creds: Credentials, title: str, category: str) -> None:
    bid = await broadcaster_id(creds)
    body: dict[str, str] = {}
    if title:
        body["title"] = title
    if category:
        response = await request(creds, "GET", _url("/games"), params={"name": category})
        body["game_id"] = str(_first(response, f"category {category!r}")["id"])
    if not body:
        return
    response = await request(creds, "PATCH", _url("/channels"), params={"broadcaster_id": bid}, json=body)
    if response.status_code >= 400:
        raise ApiError(f"Twitch channel update: {error_reason(response)}")
