"""The session engine (settings.SESSION_ENGINE): Django's database sessions, plus
one rule: a deleted session is forgotten by the handshake cache too.

Django deletes a session on logout (flush), on login (cycle_key: the old key),
and when impersonation starts or ends (both log in). Each goes through
``delete``, so this is the one place the WebSocket auth cache
(dashboard/auth/ws_auth.py) learns that a session key no longer names a user.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore

from dashboard.auth.ws_auth import forget_session


class SessionStore(DatabaseSessionStore):
    def delete(self, session_key: str | None = None) -> None:
        key = session_key if session_key is not None else self.session_key
        super().delete(session_key)
        if key:
            forget_session(key)

    async def adelete(self, session_key: str | None = None) -> None:
        key = session_key if session_key is not None else self.session_key
        await super().adelete(session_key)
        if key:
            await sync_to_async(forget_session)(key)
