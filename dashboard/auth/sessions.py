"""Close a session's dashboard sockets when the session ends or changes user.

Channels authenticates a socket once, at connect, so logging out over HTTP
would leave that session's open tabs connected (and present) as the old user.
On ``user_logged_out``, ``user_logged_in`` (login rotates the session key),
``hijack_started`` and ``hijack_ended`` we publish ``session.ended`` to the
session's channel (``push.session_channel``; every daphne's hub delivers it to
the sockets opened with that session, dashboard/ws/hub.py); they untrack at once
and close with code 4001, and the pages reload.

Deactivating a user (any ``save()`` with ``is_active=False``: the admin, a shell)
publishes ``user.deactivated`` to the user's control channel once the transaction
commits; their sockets untrack and close with 4003 and the page shows "signed
out". The auth middleware refuses inactive users, so they cannot reconnect.

The session key is the one the browser sent (the cookie): that is the key its
sockets were opened with, whatever login()/logout() rotate it to. The send
waits until the view has returned (EndedSessionsMiddleware), because Django
fires ``user_logged_out`` before it deletes the session: a page reloading on
the close must not find the old session still valid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction
from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware
from hijack.signals import hijack_ended, hijack_started

from dashboard.ws.hub import control_channel
from livestream.pushes import channels as push

logger = logging.getLogger("dashboard.sessions")

_PENDING = "_streampai_ended_sessions"
# The same dict while a request runs through EndedSessionsMiddleware: a session row
# deleted meanwhile (dashboard/auth/revocation.py) is closed with the others after the
# view, and a more specific reason (logged out, signed in again) set for it wins.
pending_here: ContextVar[dict[str, str] | None] = ContextVar("streampai_ended_sessions", default=None)


async def close_session_sockets(session_keys: Iterable[str], reason: str) -> None:
    """Close every dashboard socket opened with one of ``session_keys``; never raises."""
    message = {"type": "session.ended", "reason": reason}
    await _publish([(push.session_channel(key), message) for key in set(session_keys)])


async def _publish(messages: list[tuple[str, dict[str, Any]]]) -> None:
    """PUBLISH each (channel, message) on a short-lived client (these are rare); never raises."""
    from streampai.redisconf import redis_client

    client = redis_client()
    try:
        for channel, message in messages:
            await push.publish(channel, message, client)
    except Exception as exc:  # Redis down: the sockets stay until they close or expire
        logger.warning("[sessions] could not close the sockets of an ended session: %r", exc)
    finally:
        await client.aclose()


def close_user_sockets(user_id: str, reason: str = "account deactivated") -> None:
    """Close every dashboard socket of ``user_id`` (all daphne processes) with 4003."""
    async_to_sync(_publish)([(control_channel(user_id), {"type": "user.deactivated", "user_id": user_id})])


def end_session(request: HttpRequest | None, reason: str) -> None:
    """Close the sockets of ``request``'s session once the response is ready."""
    if request is None:
        return
    session_key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return
    pending: dict[str, str] | None = getattr(request, _PENDING, None)
    if pending is not None:
        pending[session_key] = reason
    else:  # outside the middleware (a test client's logout()): send now
        async_to_sync(close_session_sockets)([session_key], reason)


@sync_and_async_middleware
def EndedSessionsMiddleware(
    get_response: Callable[[HttpRequest], Any],
) -> Callable[[HttpRequest], Any]:
    """Sends the closes that ``end_session`` collected, after the view has run."""

    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            pending: dict[str, str] = {}
            setattr(request, _PENDING, pending)
            token = pending_here.set(pending)
            try:
                response = await get_response(request)
            finally:
                pending_here.reset(token)
            for session_key, reason in pending.items():
                await close_session_sockets([session_key], reason)
            return response

        return middleware

    def sync_middleware(request: HttpRequest) -> HttpResponse:
        pending: dict[str, str] = {}
        setattr(request, _PENDING, pending)
        token = pending_here.set(pending)
        try:
            response = get_response(request)
        finally:
            pending_here.reset(token)
        for session_key, reason in pending.items():
            async_to_sync(close_session_sockets)([session_key], reason)
        return response

    return sync_middleware


@receiver(user_logged_out, dispatch_uid="dashboard.sessions.logged_out")
def _on_logout(sender: Any, request: HttpRequest | None = None, user: Any = None, **kwargs: Any) -> None:
    end_session(request, "logged out")


@receiver(user_logged_in, dispatch_uid="dashboard.sessions.logged_in")
def _on_login(sender: Any, request: HttpRequest | None = None, user: Any = None, **kwargs: Any) -> None:
    # login() rotates the session key: sockets opened with the old key would
    # otherwise outlive a later logout (which closes the new key's group).
    end_session(request, "signed in again")


@receiver(hijack_started, dispatch_uid="dashboard.sessions.hijack_started")
def _on_hijack_started(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    end_session(request, "now impersonating")


@receiver(hijack_ended, dispatch_uid="dashboard.sessions.hijack_ended")
def _on_hijack_ended(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    end_session(request, "impersonation ended")


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="dashboard.sessions.deactivated")
def _on_user_saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    if created or getattr(instance, "is_active", True):
        return
    user_id = str(instance.pk)
    transaction.on_commit(lambda: close_user_sockets(user_id))
