"""YouTube live chat: liveChatMessages.list polled at the interval it returns, with its
page token; liveChatMessages.insert to send.

The first page is the chat's recent history: it only gives the page token. Each next
page token is saved in Redis (``keys.platform_chat_page``) *before* that page's lines are
emitted, so the user's next owner (a failover, a restart) continues exactly there: no
line twice, and none lost unless the owner died between the save and the emit. 429 waits as the
API says; an exhausted quota ends the session with QuotaExceeded (the supervisor shows
it and retries with backoff).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from livestream import keys
from livestream.redis import get_redis, text
from platforms.api import ApiError, RateLimited, Waiting
from platforms.clients import ChatSink, Connected, Connection, PlatformClient
from platforms.youtube import api

PAGE_TTL = 120  # seconds a saved page token is continued from (older: start afresh)
MIN_POLL = 0.2  # seconds: never poll faster, whatever the API says (it says 1-10 s in practice)
MAX_POLL = 30.0


def _ts(published: str) -> float:
    try:
        return datetime.fromisoformat(published.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def chat_data(channel: str, item: dict[str, Any]) -> dict[str, Any] | None:
    """The ``chat`` event's data of a liveChatMessage resource (None: not a text message)."""
    snippet = item.get("snippet") or {}
    author = item.get("authorDetails") or {}
    text = snippet.get("displayMessage") or (snippet.get("textMessageDetails") or {}).get("messageText")
    if not isinstance(text, str) or not item.get("id"):
        return None
    badges = [
        name
        for name, flag in (
            ("owner", "isChatOwner"),
            ("moderator", "isChatModerator"),
            ("member", "isChatSponsor"),
            ("verified", "isVerified"),
        )
        if author.get(flag)
    ]
    return {
        "platform": "youtube",
        "channel": channel,
        "id": str(item["id"]),
        "author": str(author.get("displayName") or "?"),
        "text": text,
        "ts": _ts(str(snippet.get("publishedAt") or "")),
        "badges": badges,
    }


async def saved_page(pk: int) -> str | None:
    value = await get_redis().get(keys.platform_chat_page(str(pk)))
    return text(value) if value else None


async def save_page(pk: int, token: Any) -> None:
    if isinstance(token, str) and token:
        await get_redis().set(keys.platform_chat_page(str(pk)), token, ex=PAGE_TTL)


class YouTubeClient(PlatformClient):
    max_length = 200

    def __init__(self, conn: Connection, on_chat: ChatSink) -> None:
        super().__init__(conn, on_chat)
        self.chat_id: str | None = None  # while a session polls: its live chat (send() needs it)

    async def session(self, connected: Connected) -> None:
        chat_id = await api.active_chat_id(self.creds)
        if chat_id is None:
            raise Waiting("waiting for a live broadcast")
        self.chat_id = chat_id
        try:
            saved = await saved_page(self.conn.pk)
            page: dict[str, Any]
            if saved:  # continue where the last owner stopped: this page's lines are new
                page = {"nextPageToken": saved, "pollingIntervalMillis": 0}
            else:
                page = await api.messages(self.creds, chat_id, None)
                await save_page(self.conn.pk, page.get("nextPageToken"))
            self.connected = True
            await connected()
            while True:
                interval = page.get("pollingIntervalMillis")
                wait = float(5000 if interval is None else interval) / 1000
                await asyncio.sleep(min(max(wait, MIN_POLL), MAX_POLL))
                try:
                    next_page = await api.messages(self.creds, chat_id, page.get("nextPageToken"))
                except RateLimited as exc:
                    await asyncio.sleep(exc.retry_after)
                    continue
                await save_page(self.conn.pk, next_page.get("nextPageToken"))
                for item in next_page.get("items") or []:
                    data = chat_data(self.conn.channel, item)
                    if data is not None:
                        await self.on_chat(data)
                page = next_page
        finally:
            self.connected = False
            self.chat_id = None

    async def send(self, text: str) -> dict[str, Any]:
        if self.chat_id is None:
            raise ConnectionError("not connected")
        try:
            sent = await api.insert(self.creds, self.chat_id, text)
        except ApiError as exc:
            raise ConnectionError(str(exc)) from exc
        # The message comes back in the next poll, like everyone else's: not emitted here.
        return {"id": str(sent.get("id") or "")}
