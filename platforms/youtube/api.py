"""YouTube Data API v3 calls (https://developers.google.com/youtube/v3/live/docs):

  GET  /liveBroadcasts?part=snippet&broadcastStatus=active   -> items[0].snippet.liveChatId
  GET  /liveStreams?part=cdn&mine=true                        -> items[0].cdn.ingestionInfo
                                                                 .{ingestionAddress, streamName}
  GET  /liveChat/messages?liveChatId&part=snippet,authorDetails[&pageToken]
                                  -> {pollingIntervalMillis, nextPageToken, items: [...]}
  POST /liveChat/messages?part=snippet  {"snippet": {"liveChatId", "type": "textMessageEvent",
                                          "textMessageDetails": {"messageText"}}}
  PUT  /liveBroadcasts?part=snippet  {"id", "snippet": {"title", "scheduledStartTime", ...}}
                                  -> the broadcast; a snippet update must carry the title and
                                     the scheduledStartTime (kept as they were, but the title)

An exhausted daily quota is a 403 whose error reason is ``quotaExceeded``: QuotaExceeded,
shown on the page as the platform's error.
"""

from __future__ import annotations

from typing import Any

import httpx

from livestream.conf import get_settings
from platforms.api import ApiError, error_reason, request
from platforms.tokens import Credentials

QUOTA_REASONS = ("quotaExceeded", "dailyLimitExceeded", "rateLimitExceeded")


class QuotaExceeded(ApiError):
    pass


def _url(path: str) -> str:
    return get_settings().YOUTUBE_API_URL.rstrip("/") + path


def _body(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code >= 400:
        reason = error_reason(response)
        if reason in QUOTA_REASONS:
            raise QuotaExceeded(f"YouTube API quota exhausted ({reason})")
        raise ApiError(f"YouTube {what}: {reason}")
    body = response.json()
    return body if isinstance(body, dict) else {}


async def active_broadcast(creds: Credentials) -> dict[str, Any] | None:
    """The channel's active live broadcast (``id``, ``snippet``), or None."""
    params = {"part": "snippet", "broadcastStatus": "active", "broadcastType": "all"}
    body = _body(await request(creds, "GET", _url("/liveBroadcasts"), params=params), "broadcasts")
    for item in body.get("items") or []:
        if isinstance(item, dict) and item.get("id"):
            return item
    return None


async def active_chat_id(creds: Credentials) -> str | None:
    broadcast = await active_broadcast(creds)
    chat_id = ((broadcast or {}).get("snippet") or {}).get("liveChatId")
    return str(chat_id) if chat_id else None


async def update_title(creds: Credentials, title: str) -> None:
    """Set the active broadcast's title. YouTube replaces the whole snippet on update, so the
    rest of it (scheduled start, description) is sent back as read. YouTube broadcasts have no
    category (a video's is set elsewhere): the page's category goes to Twitch only."""
    broadcast = await active_broadcast(creds)
    if broadcast is None:
        raise ApiError("YouTube: no active live broadcast to set the title of")
    old = broadcast.get("snippet") or {}
    snippet = {"title": title[:100], "scheduledStartTime": old.get("scheduledStartTime")}
    if old.get("description"):
        snippet["description"] = old["description"]
    body = {"id": broadcast["id"], "snippet": snippet}
    response = await request(creds, "PUT", _url("/liveBroadcasts"), params={"part": "snippet"}, json=body)
    _body(response, "title")


async def ingestion(creds: Credentials) -> tuple[str, str]:
    """(RTMP server URL, stream name) of the user's live stream."""
    params = {"part": "cdn", "mine": "true"}
    body = _body(await request(creds, "GET", _url("/liveStreams"), params=params), "live streams")
    for item in body.get("items") or []:
        info = (item.get("cdn") or {}).get("ingestionInfo") or {}
        if info.get("ingestionAddress") and info.get("streamName"):
            return str(info["ingestionAddress"]), str(info["streamName"])
    raise ApiError("YouTube: no live stream set up on the channel")


async def messages(creds: Credentials, chat_id: str, page_token: str | None) -> dict[str, Any]:
    params = {"liveChatId": chat_id, "part": "snippet,authorDetails"}
    if page_token:
        params["pageToken"] = page_token
    return _body(await request(creds, "GET", _url("/liveChat/messages"), params=params), "chat")


async def insert(creds: Credentials, chat_id: str, text: str) -> dict[str, Any]:
    body = {
        "snippet": {
            "liveChatId": chat_id,
            "type": "textMessageEvent",
            "textMessageDetails": {"messageText": text},
        }
    }
    response = await request(creds, "POST", _url("/liveChat/messages"), params={"part": "snippet"}, json=body)
    return _body(response, "send")
