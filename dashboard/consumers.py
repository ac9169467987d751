"""The dashboard's WebSocket: one presence entry per open connection.

connect    -> reject anonymous users and cross-origin handshakes before
              anything is written; accept; track the connection; broadcast
              the join; start a heartbeat.
heartbeat  -> every HEARTBEAT_INTERVAL refresh the connection's deadline (and
              re-track it if Redis lost it, broadcasting a join).
disconnect -> untrack; broadcast the leave. Kept cheap: daphne kills slow
              disconnect handlers on shutdown.
live       -> the user's manager status and session count are pushed to the
              page, and a session's sockets close when it logs out
              (dashboard/live.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http.request import validate_host

from dashboard import shutdown
from dashboard.live import LiveDashboardMixin
from livestream.conf import get_settings
from livestream.presence import PresenceStore

logger = logging.getLogger(__name__)

# Close code for a frame over MAX_FRAME_BYTES. Not 1009 ("message too big"):
# autobahn lets an application close only with 1000 or 3000-4999, and raises
# (killing the consumer) on anything else.
FRAME_TOO_BIG = 4009


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


class PresenceConsumer(LiveDashboardMixin, AsyncWebsocketConsumer):
    user_id: str | None = None
    meta: dict[str, Any] | None = None
    heartbeat: asyncio.Task[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.end_for_good()

    async def end_for_good(self) -> None:
        """However the consumer ended (a handler raised, daphne cancelled it or is
        stopping, see dashboard/shutdown.py), end its presence.

        Channels does not cancel tasks a dead consumer spawned: its heartbeat would
        keep re-tracking a closed socket, and the user would stay present for ever.
        """
        shutdown.forget(self)
        if self.heartbeat is not None:
            self.heartbeat.cancel()
        await self.leave_live_groups()  # no-op after disconnect(); never raises
        if self.meta is None:  # disconnect() already did it
            return
        try:
            await self.end_presence()
        except Exception as exc:  # Redis down: the entry expires after PRESENCE_TTL instead
            logger.warning("[PresenceConsumer] connection of user %s not untracked: %r", self.user_id, exc)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """A layer message nobody here handles is dropped with a log line.

        Channels raises instead, which ends the consumer and closes the user's tab.
        """
        try:
            handler = getattr(self, get_handler_name(message), None)
        except ValueError:  # no type, or a malformed one
            handler = None
        if handler is None:
            logger.warning(
                "[PresenceConsumer] dropped a message of unknown type %.100r for user %s",
                message.get("type") if isinstance(message, dict) else message,
                self.user_id,
            )
            return
        await super().dispatch(message)

    async def connect(self) -> None:
        reason = handshake_rejection(self.scope)
        if reason is not None:
            logger.warning("[PresenceConsumer] rejected handshake: %s", reason)
            await self.close()
            return
        user = self.scope["user"]
        await self.accept()
        self.user_id = str(user.pk)
        self.meta = {"email": user.email, "joined_at": int(time.time()), "ref": uuid.uuid4().hex}
        self.store = PresenceStore()
        join = await self.store.track(self.user_id, self.meta)
        await self.join_live_groups()
        if join is not None:
            await self.push_sessions(join.sessions)  # this tab is in the group now: it gets it too
        self.heartbeat = asyncio.create_task(self._heartbeat())
        shutdown.register(self)

    async def disconnect(self, code: int) -> None:
        if self.heartbeat is not None:
            self.heartbeat.cancel()
        await self.end_presence()
        await self.leave_live_groups()

    async def end_presence(self) -> None:
        """Untrack this connection (once) and tell the worker and the user's other tabs."""
        if self.user_id is None or self.meta is None:
            return
        leave = await self.store.untrack(self.user_id, self.meta["ref"])
        self.meta = None
        if leave is not None:
            await self.push_sessions(leave.sessions)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > get_settings().MAX_FRAME_BYTES:
            logger.warning("[PresenceConsumer] user %s sent a %d-byte frame; closing", self.user_id, size)
            await self.close(code=FRAME_TOO_BIG)
            return
        if bytes_data is not None:
            logger.info("[PresenceConsumer] ignored a binary frame from user %s", self.user_id)
            return
        try:
            message = json.loads(text_data or "")
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
            logger.info("[PresenceConsumer] ignored a non-JSON frame from user %s", self.user_id)
            return
        if isinstance(message, dict) and message.get("type") == "ping":
            await self.send(text_data=json.dumps({"type": "pong"}))

    async def _heartbeat(self) -> None:
        interval = get_settings().HEARTBEAT_INTERVAL
        while True:
            await asyncio.sleep(interval)
            if self.meta is None:
                return
            try:
                join = await self.store.refresh(self.user_id, self.meta)
                if join is not None:
                    logger.info("[PresenceConsumer] re-tracked connection of user %s", self.user_id)
            except Exception as exc:  # Redis restarting: the next beat tries again
                logger.warning("[PresenceConsumer] heartbeat of user %s failed: %r", self.user_id, exc)
