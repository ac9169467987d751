"""Sessions that end end everywhere (issue 20.1): their sockets close, their handshakes fail.

Channels checks a socket's session once, at connect, and the handshake cache
(dashboard/auth/ws_auth.py) remembers the answer for WS_AUTH_CACHE_TTL. Three ways
a session ends without a logout, each closed here:

* a Session row deleted through the ORM (``QuerySet.delete``: ``clearsessions``, the
  admin's bulk delete, an ops script; or one instance): ``post_delete`` of the Session
  model. With a receiver connected Django deletes row by row and sends it for each
  (no fast delete). After commit, in one batch: the cache entries are dropped and
  ``session.ended`` is published to each session's channel (its sockets close, 4001).
* a password change (``set_password`` + ``save``, from any session, the admin or a
  shell): every other session of the user is invalid (Django's session auth hash).
  ``user.reauth`` goes to the user's control channel; each of their sockets re-reads
  its session (one query) and closes with 4001 if it no longer names the user.
  The cache entries of the user were already dropped by the save (ws_auth).
* what bypasses both (expiry, raw SQL): each daphne sweeps the sessions of its open
  sockets every SESSION_SWEEP_INTERVAL seconds (one query per 500 sessions) and closes
  the sockets of the ones gone or expired. A cached handshake entry never outlives its
  session's expiry (ws_auth stores it with TTL = min(cache TTL, expiry)).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.sessions.models import Session
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from livestream.conf import get_settings

logger = logging.getLogger("dashboard.sessions")

REAUTH = "user.reauth"
SWEEP_BATCH = 500

# -- web side: signals -------------------------------------------------------------

_local = threading.local()


def _ended_later(session_key: str) -> None:
    """Collect ``session_key``; one flush per transaction closes them all after commit."""
    pending: set[str] | None = getattr(_local, "pending", None)
    if pending is not None and _flush_waiting():
        pending.add(session_key)
        return
    _local.pending = {session_key}
    transaction.on_commit(_flush)  # outside a transaction this runs at once


def _flush_waiting() -> bool:
    """Is a _flush registered in the open transaction? (A rollback drops it, and the
    keys collected for it with it: they were not deleted after all.)"""
    waiting = transaction.get_connection().run_on_commit
    return any(entry[1] is _flush for entry in waiting)


def _flush() -> None:
    pending: set[str] = getattr(_local, "pending", None) or set()
    _local.pending = None
    if pending:
        ended(sorted(pending), "session deleted")


def ended(session_keys: list[str], reason: str) -> None:
    """Drop the keys' cache entries and close their sockets (sync; never raises)."""
    from dashboard.auth.sessions import close_session_sockets
    from dashboard.auth.ws_auth import forget_sessions_now

    forget_sessions_now(session_keys)
    try:
        async_to_sync(close_session_sockets)(session_keys, reason)
    except Exception as exc:  # close_session_sockets logs Redis errors itself
        logger.warning("[sessions] sockets of %d ended sessions not closed: %r", len(session_keys), exc)


@receiver(post_delete, sender=Session, dispatch_uid="dashboard.revocation.session_deleted")
def _on_session_deleted(sender: Any, instance: Session, **kwargs: Any) -> None:
    from dashboard.auth.sessions import pending_here
    from dashboard.auth.ws_auth import forget_session

    pending = pending_here.get()
    if pending is None:  # a script, clearsessions, a shell: one batch after commit
        _ended_later(instance.session_key)
        return
    # In a request (logout, login, the admin's bulk delete): closed after the view, with
    # the view's own reason when it gave one (logout sets "logged out" before it deletes).
    forget_session(instance.session_key)
    pending.setdefault(instance.session_key, "session deleted")


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="dashboard.revocation.password")
def _on_user_saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    # set_password() keeps the raw password in _password until save() has run (post_save
    # comes first): the one sign that this save changed the password.
    if created or getattr(instance, "_password", None) is None:
        return
    user_id = str(instance.pk)
    transaction.on_commit(lambda: _reauth(user_id))


def _reauth(user_id: str) -> None:
    from dashboard.auth.sessions import _publish
    from dashboard.ws.hub import control_channel

    async_to_sync(_publish)([(control_channel(user_id), {"type": REAUTH, "user_id": user_id})])


# -- daphne side: re-checks and the sweep ---------------------------------------------


def session_valid(session_key: str, user_id: str) -> bool:
    """Does ``session_key`` still log ``user_id`` in (row present, not expired, the user's
    current session auth hash, active)? As django.contrib.auth.get_user decides."""
    from importlib import import_module

    from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.utils.crypto import constant_time_compare

    data = import_module(settings.SESSION_ENGINE).SessionStore(session_key).load()
    if str(data.get(SESSION_KEY)) != user_id:
        return False
    user = get_user_model()._default_manager.filter(pk=user_id).first()
    if user is None or not getattr(user, "is_active", True):
        return False
    stored = data.get(HASH_SESSION_KEY) or ""
    return bool(constant_time_compare(stored, user.get_session_auth_hash()))


async def still_valid(session_key: str, user_id: str) -> bool:
    return await database_sync_to_async(session_valid)(session_key, user_id)


def _database_sessions() -> bool:
    """The sweep reads the django_session table: only meaningful if sessions live there
    (a signed-cookie engine has no rows, and every socket would look ended)."""
    from importlib import import_module

    from django.contrib.sessions.backends.db import SessionStore as DatabaseStore

    return issubclass(import_module(settings.SESSION_ENGINE).SessionStore, DatabaseStore)


def _live_keys(session_keys: list[str]) -> set[str]:
    now = timezone.now()
    found: set[str] = set()
    for start in range(0, len(session_keys), SWEEP_BATCH):
        chunk = session_keys[start : start + SWEEP_BATCH]
        found.update(
            Session.objects.filter(session_key__in=chunk, expire_date__gt=now).values_list(
                "session_key", flat=True
            )
        )
    return found


class Sweeper:
    """This daphne's open sockets by session key, and the periodic check of those sessions."""

    def __init__(self) -> None:
        self.sockets: dict[str, set[Any]] = {}
        self.task: asyncio.Task[None] | None = None

    def add(self, session_key: str, consumer: Any) -> None:
        self.sockets.setdefault(session_key, set()).add(consumer)
        interval = get_settings().SESSION_SWEEP_INTERVAL
        if interval > 0 and _database_sessions() and (self.task is None or self.task.done()):
            self.task = asyncio.ensure_future(self._run(interval))

    def discard(self, session_key: str, consumer: Any) -> None:
        sockets = self.sockets.get(session_key)
        if sockets is not None:
            sockets.discard(consumer)
            if not sockets:
                del self.sockets[session_key]

    async def _run(self, interval: float) -> None:
        while self.sockets:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception as exc:  # the database away: try again next round
                logger.warning("[sessions] session sweep failed: %r", exc)

    async def sweep(self) -> list[str]:
        """Close the sockets whose session is gone or expired; the keys closed."""
        keys = list(self.sockets)
        if not keys:
            return []
        live = await database_sync_to_async(_live_keys)(keys)
        gone = [key for key in keys if key not in live]
        if gone:
            logger.info("[sessions] %d sessions with open sockets ended (expired or deleted)", len(gone))
            await database_sync_to_async(_forget)(gone)
        for key in gone:
            for consumer in list(self.sockets.get(key, ())):
                consumer.session_gone("session expired or deleted")
        return gone


def _forget(session_keys: Iterable[str]) -> None:
    from dashboard.auth.ws_auth import forget_sessions_now

    forget_sessions_now(list(session_keys))


_sweeper: Sweeper | None = None


def sweeper() -> Sweeper:
    global _sweeper
    if _sweeper is None:
        _sweeper = Sweeper()
    return _sweeper
