"""The live part of the dashboard socket: per-user pushes and per-session closes.

Every accepted dashboard socket joins up to two channel-layer groups:

  user_group(user_id)        (sockets opened with ``?live=1``, as the dashboard
                             page's are) the worker pushes that user's manager
                             status here (livestream/user_status.py) and the
                             sockets push the user's open-session count on
                             track/untrack;
  session_group(session_key) logging out or starting/ending impersonation in
                             that session closes its sockets (dashboard/sessions.py),
                             because Channels checks auth only at connect.

What reaches the browser (presence.js turns each into a ``streampai:message``):

  {"type": "manager", "user_id": "7", "state": "running", "started_at": ...,
   "components": {"ConsoleLogger": {"state": "running", "restarts": 0, "count": 12}}}
  {"type": "sessions", "user_id": "7", "sessions": 3}
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qs

from channels.layers import get_channel_layer

_GROUP_SAFE = re.compile(r"[^a-zA-Z0-9_.-]")


def user_group(user_id: str) -> str:  # interim: being replaced by livestream/push.py
    return "dashboard-user-" + _GROUP_SAFE.sub("_", user_id)[:64]


logger = logging.getLogger(__name__)

# WebSocket close code telling the page its session ended (logout, impersonation
# switch): presence.js reloads instead of reconnecting with a stale page.
SESSION_ENDED = 4001


def wants_pushes(scope: dict[str, Any]) -> bool:
    """Only a socket opened with ``?live=1`` (the dashboard page's) gets status pushes.

    A client that never reads its socket (a script, a test) would otherwise
    fill its receive queue with a push a second, stop reading, and lose the
    connection to its own keepalive timeout.
    """
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return query.get("live") == ["1"]


def session_group(session_key: str) -> str:
    """The group of one session's sockets; hashed, as a session key is a credential."""
    return "dashboard-session-" + hashlib.sha256(session_key.encode()).hexdigest()[:40]


class LiveDashboardMixin:
    """For PresenceConsumer: group membership and the handlers of group messages."""

    user_id: str | None
    live_groups: tuple[str, ...] = ()
    closing = False

    async def join_live_groups(self) -> None:
        scope = self.scope  # type: ignore[attr-defined]
        session_key = getattr(scope.get("session"), "session_key", None)
        groups = [user_group(self.user_id or "")] if wants_pushes(scope) else []
        if session_key:
            groups.append(session_group(session_key))
        layer = get_channel_layer()
        for group in groups:
            await layer.group_add(group, self.channel_name)  # type: ignore[attr-defined]
        self.live_groups = tuple(groups)

    async def leave_live_groups(self) -> None:
        groups, self.live_groups = self.live_groups, ()
        layer = get_channel_layer()
        for group in groups:
            try:
                await layer.group_discard(group, self.channel_name)  # type: ignore[attr-defined]
            except Exception as exc:  # the group expires on its own
                logger.warning("[PresenceConsumer] could not leave %s: %r", group, exc)

    async def push_sessions(self, sessions: int) -> None:
        """Tell all of this user's tabs how many are open (never fails the caller)."""
        message = {"type": "dashboard.sessions", "user_id": self.user_id, "sessions": sessions}
        try:
            await get_channel_layer().group_send(user_group(self.user_id or ""), message)
        except Exception as exc:
            logger.warning("[PresenceConsumer] session count of %s not pushed: %r", self.user_id, exc)

    # -- group message handlers ------------------------------------------------

    async def dashboard_manager(self, event: dict[str, Any]) -> None:
        status = event.get("status")
        if self._is_mine(event) and isinstance(status, dict):
            await self._forward({**status, "type": "manager", "user_id": self.user_id})

    async def dashboard_sessions(self, event: dict[str, Any]) -> None:
        sessions = event.get("sessions")
        if self._is_mine(event) and isinstance(sessions, int):
            await self._forward({"type": "sessions", "user_id": self.user_id, "sessions": sessions})

    async def session_ended(self, event: dict[str, Any]) -> None:
        logger.info(
            "[PresenceConsumer] closing a socket of user %s: session %s",
            self.user_id,
            event.get("reason", "ended"),
        )
        self.closing = True
        await self.leave_live_groups()
        await self.end_presence()  # type: ignore[attr-defined]  # leaves at once, not at disconnect
        await self.close(code=SESSION_ENDED)  # type: ignore[attr-defined]

    def _is_mine(self, event: dict[str, Any]) -> bool:
        """Defence in depth: a message for another user is dropped, never forwarded."""
        if event.get("user_id") == self.user_id:
            return True
        logger.error(
            "[PresenceConsumer] dropped %s for user %r on a socket of user %s",
            event.get("type"),
            event.get("user_id"),
            self.user_id,
        )
        return False

    async def _forward(self, message: dict[str, Any]) -> None:
        if self.closing:
            return
        try:
            await self.send(text_data=json.dumps(message))  # type: ignore[attr-defined]
        except Exception as exc:
            # The client is closing (daphne raises on a send in that state); its
            # disconnect follows. Raising here would kill the consumer before it
            # could untrack the connection.
            logger.debug("[PresenceConsumer] push to a closing socket of %s dropped: %r", self.user_id, exc)
