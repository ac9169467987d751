"""One running platform per connection: its chat session and what it can send.

The PlatformSupervisor (livestream/components/platform_supervisor.py) runs
``session()`` of each enabled connection's client in a loop of its own: a session
is one connection's lifetime; it calls ``connected()`` once it can chat and
raises when it ends (LoginFailed: the token was refused, do not retry; Reconnect:
retry at once; anything else: retry with backoff).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async

from livestream.conf import get_settings
from platforms.tokens import Credentials, ensure_fresh, refresh
from platforms.twitch.irc import IrcConnection, LoginFailed, Message, Reconnect, clean_text

__all__ = [
    "Connection",
    "CustomClient",
    "LoginFailed",
    "PlatformClient",
    "Reconnect",
    "TokenBucket",
    "TwitchClient",
]

ChatSink = Callable[[dict[str, Any]], Awaitable[None]]
Connected = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Connection:
    """A PlatformConnection row as the worker uses it (secrets decrypted, in memory only)."""

    pk: int
    platform: str
    name: str
    channel: str
    access_token: str
    refresh_token: str
    expires_at: float | None
    url: str
    key: str
    enabled: bool
    revoked: str
    version: str  # changes whenever the row is saved: a changed row restarts its child

    @property
    def public_id(self) -> str:
        return f"{self.platform}:{self.pk}"

    def __repr__(self) -> str:  # never the secrets, even in a traceback
        return f"Connection({self.public_id}, {self.channel or self.name!r}, enabled={self.enabled})"


def _load(user_id: str) -> list[Connection]:
    """The user's connections as plain ``platforms.clients.Connection`` values (one query)."""
    from platforms.models import PlatformConnection

    if not user_id.isdigit():
        return []
    rows = PlatformConnection.objects.filter(user_id=int(user_id)).order_by("id")
    return [
        Connection(
            pk=row.pk,
            platform=row.platform,
            name=row.display_name,
            channel=row.channel,
            access_token=row.access_token,
            refresh_token=row.refresh_token,
            expires_at=row.expires_at.timestamp() if row.expires_at else None,
            url=row.url,
            key=row.key,
            enabled=row.enabled,
            revoked=row.revoked,
            version=row.updated_at.isoformat(),
        )
        for row in rows
    ]


load_connections = database_sync_to_async(_load)


class TokenBucket:
    """``capacity`` sends at once, refilled at ``capacity / window`` per second."""

    def __init__(self, capacity: int, window: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / window
        self.tokens = float(capacity)
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def available(self) -> bool:
        self._refill()
        return self.tokens >= 1.0

    def take(self) -> None:
        self._refill()
        self.tokens -= 1.0


class PlatformClient:
    """What every platform offers the supervisor; a platform without chat refuses sends."""

    max_length = 0  # 0: no chat

    def __init__(self, conn: Connection, on_chat: ChatSink) -> None:
        self.conn = conn
        self.on_chat = on_chat
        self.connected = False
        self.creds = Credentials(
            conn.pk, conn.platform, conn.access_token, conn.refresh_token, conn.expires_at
        )

    @property
    def has_chat(self) -> bool:
        return self.max_length > 0

    async def session(self, connected: Connected) -> None:
        raise NotImplementedError

    def refusal(self, text: str) -> str | None:
        """Why ``text`` cannot be sent now (None: it can). Checked for every target before
        any is sent to, so a refused send_chat sends nothing anywhere."""
        if not self.has_chat:
            return "has no chat"
        if not self.connected:
            return "not connected"
        if len(text) > self.max_length:
            return f"message too long ({len(text)} characters, at most {self.max_length})"
        return None

    def reserve(self) -> None:
        """Count a send against the platform's limit (right after ``refusal`` said yes)."""

    async def send(self, text: str) -> dict[str, Any]:
        raise NotImplementedError


class CustomClient(PlatformClient):
    """A custom RTMP target: an output of the broadcast only, no chat; always "connected"."""

    async def session(self, connected: Connected) -> None:
        self.connected = True
        await connected()
        await asyncio.Event().wait()


class TwitchClient(PlatformClient):
    """Twitch chat over IRC (platforms/twitch/irc.py), with Twitch's send limits."""

    max_length = 500
    # No traffic for this long: we PING; none again for as long: the connection is dead.
    IDLE = 330.0
    # Twitch answers each PRIVMSG with USERSTATE (sent) or a NOTICE whose msg-id starts with
    # "msg_" (not sent: duplicate, slow mode, followers-only, banned ...); waited this long.
    CONFIRM_TIMEOUT = 3.0

    def __init__(self, conn: Connection, on_chat: ChatSink) -> None:
        super().__init__(conn, on_chat)
        conf = get_settings()
        self.bucket = TokenBucket(conf.TWITCH_SEND_LIMIT, conf.TWITCH_SEND_WINDOW)
        self.irc: IrcConnection | None = None
        self._local_ids = itertools.count(1)
        # Our PRIVMSGs awaiting Twitch's answer, oldest first: None (sent) or why not.
        self._pending: deque[asyncio.Future[str | None]] = deque()

    @property
    def login(self) -> str:
        return self.conn.channel.lstrip("#").lower()

    async def session(self, connected: Connected) -> None:
        url = get_settings().TWITCH_IRC_URL
        await ensure_fresh(self.creds)
        try:
            irc = await IrcConnection.open(url, self.login, self.creds.access_token, self.login)
        except LoginFailed:
            if not self.creds.refresh_token:
                raise
            # An expired or revoked token: one refresh (Revoked if refused), then once more.
            await refresh(self.creds, force=True)
            irc = await IrcConnection.open(url, self.login, self.creds.access_token, self.login)
        self.irc = irc
        try:
            self.connected = True
            await connected()
            waited = False
            while True:
                try:
                    msg = await asyncio.wait_for(irc.read(), self.IDLE)
                except TimeoutError:
                    if waited:
                        raise ConnectionError(f"no data from the server for {2 * self.IDLE:.0f}s") from None
                    waited = True
                    await irc.send_line("PING :streampai")
                    continue
                waited = False
                if msg.command == "PRIVMSG" and len(msg.params) >= 2:
                    await self.on_chat(self.chat_data(msg))
                elif msg.command == "USERSTATE":
                    self._answer(None)
                elif msg.command == "NOTICE" and msg.tags.get("msg-id", "").startswith("msg_"):
                    self._answer(msg.params[-1] if msg.params else msg.tags["msg-id"])
        finally:
            self.connected = False
            self.irc = None
            irc.close()
            while self._pending:
                self._answer("the connection was lost before Twitch confirmed it")

    def _answer(self, refusal: str | None) -> None:
        """Twitch's answer to our oldest unanswered PRIVMSG."""
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_result(refusal)
                return

    @staticmethod
    def chat_data(msg: Message) -> dict[str, Any]:
        """The ``chat`` event's data of a PRIVMSG (tags when the server sends them)."""
        tags = msg.tags
        sent = tags.get("tmi-sent-ts", "")
        badges = [b for b in tags.get("badges", "").split(",") if b]
        return {
            "platform": "twitch",
            "channel": msg.params[0].lstrip("#"),
            "id": tags.get("id") or uuid.uuid4().hex,
            "author": tags.get("display-name") or msg.nick,
            "text": _action(msg.params[-1]),
            "ts": int(sent) / 1000 if sent.isdigit() else time.time(),
            "badges": badges,
        }

    def refusal(self, text: str) -> str | None:
        why = super().refusal(text)
        if why is None and not self.bucket.available():
            conf = get_settings()
            why = f"rate limited ({conf.TWITCH_SEND_LIMIT} messages per {conf.TWITCH_SEND_WINDOW:g} s)"
        return why

    def reserve(self) -> None:
        """Count a send against the limit (right after ``refusal`` said yes, before any await)."""
        self.bucket.take()

    async def send(self, text: str) -> dict[str, Any]:
        irc = self.irc
        if irc is None:
            raise ConnectionError("not connected")
        if irc.tags:  # Twitch (tags + commands): wait for its verdict, never drop a refusal silently
            answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            self._pending.append(answer)
            await irc.privmsg(text)
            try:
                refusal = await asyncio.wait_for(asyncio.shield(answer), self.CONFIRM_TIMEOUT)
            except TimeoutError:
                refusal = None  # no verdict: Twitch sends one for a refusal, so it went out
            if refusal is not None:
                raise ConnectionError(refusal)
        else:  # a plain IRC server says nothing about a PRIVMSG it accepted
            await irc.privmsg(text)
        # Twitch does not echo our own messages: every tab is shown it here.
        data = {
            "platform": "twitch",
            "channel": self.login,
            "id": f"sent-{uuid.uuid4().hex}",
            "author": self.login,
            "text": clean_text(text),
            "ts": time.time(),
            "badges": ["broadcaster/1"],
        }
        await self.on_chat(data)
        return {"id": data["id"]}


def _action(text: str) -> str:
    """``/me waves`` arrives as CTCP ``\x01ACTION waves\x01``: shown as the text it says."""
    if text.startswith("\x01ACTION ") and text.endswith("\x01"):
        return text[8:-1]
    return text


def client_for(conn: Connection, on_chat: ChatSink) -> PlatformClient:
    if conn.platform == "twitch":
        return TwitchClient(conn, on_chat)
    if conn.platform == "youtube":
        from platforms.youtube.chat import YouTubeClient

        return YouTubeClient(conn, on_chat)
    return CustomClient(conn, on_chat)
