"""Who is on the other end of a dashboard WebSocket: the session's user, cached in Redis.

Channels' ``AuthMiddlewareStack`` loads the session and then the user from the
database on every handshake, on Channels' one database thread. A reconnect
storm (a deploy, a network blip) is thousands of handshakes from sessions that
have not changed since their last connect, so ``SessionAuthMiddleware`` asks
Redis first: one GET, no thread, no SQL. A miss does exactly what Channels does
(``channels.auth.get_user``: session, backend, session auth hash, active) and
then stores the answer.

  wsauth:s:<sha256(session key)[:40]>  STRING JSON of the user's fields, TTL WS_AUTH_CACHE_TTL
  wsauth:u:<user id>                   SET    that user's wsauth:s keys
  wsauth:gen                           STRING bumped by every invalidation

The rule: a hit answers what ``get_user`` would. So an entry is dropped
  - with its session (logout, flush, login's key rotation, impersonation start
    and end): ``dashboard.session_store.SessionStore.delete``;
  - with every entry of its user on any save or delete of the user (password
    change, deactivation, staff change, login's last_login): the signals below.
Both after the transaction commits. A fill that read the database before an
invalidation must not store what it read: it stores only if ``wsauth:gen`` is
still what it was before the read (one script). Only authenticated, active users
are stored. If Redis is down a handshake asks the database (and is then refused
by the consumer, which cannot track it anyway); an invalidation that cannot
reach Redis is logged, and the entry ends with its TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from typing import Any

from channels.auth import get_user
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from redis.exceptions import RedisError

from livestream import keys
from livestream.conf import get_settings
from livestream.observe.state import run_sync
from livestream.redis import run_script, script
from livestream.tasks import per_loop

logger = logging.getLogger("dashboard.ws_auth")

# The user fields a dashboard socket reads (consumers, live pushes, staff checks).
FIELDS = ("email", "is_active", "is_staff", "is_superuser")

# KEYS: generation, session entry, user set. ARGV: generation read before the
# database lookup, entry JSON, ttl (seconds). Stores only if nothing was
# invalidated since that read.
_FILL = script(
    "ws_auth.fill",
    """
local gen = redis.call('GET', KEYS[1]) or '0'
if gen ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('SADD', KEYS[3], KEYS[2])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 1
""",
)
# KEYS: generation, then a user set or nothing. ARGV: session entries to drop.
_FORGET = script(
    "ws_auth.forget",
    """
redis.call('INCR', KEYS[1])
for _, entry in ipairs(ARGV) do redis.call('DEL', entry) end
if KEYS[2] then
  for _, entry in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('DEL', entry) end
  redis.call('DEL', KEYS[2])
end
return 1
""",
)


def session_entry(session_key: str) -> str:
    """Hashed: a session key is a credential, and KEYS/MONITOR show key names."""
    return keys.ws_auth_session(hashlib.sha256(session_key.encode()).hexdigest()[:40])


def _user_from(raw: str) -> AbstractBaseUser | None:
    """The cached user as an unsaved-looking model instance with its pk (no query)."""
    try:
        data = json.loads(raw)
        model = get_user_model()
        user = model(pk=data["pk"], **{name: data[name] for name in FIELDS if name in data})
    except (ValueError, KeyError, TypeError):
        return None
    user._state.adding = False  # a row that exists: a save() would UPDATE, not INSERT
    return user


def _entry_of(user: Any) -> str:
    data = {"pk": user.pk, **{name: getattr(user, name) for name in FIELDS if hasattr(user, name)}}
    return json.dumps(data, separators=(",", ":"))


class _Reads:
    """The cache reads of concurrent handshakes, one MGET per batch on one connection
    (like the tracker's tracks): a burst of handshakes neither waits on one round
    trip each nor opens a pooled connection each."""

    BATCH = 500

    def __init__(self) -> None:
        from dashboard.ws.hub import named_client

        # Two connections at most: the batched reads use one; the fills after a miss
        # (each after its own database lookup) queue for the other instead of opening more.
        self.client = named_client("auth", max_connections=2)
        self.pending: list[tuple[str, asyncio.Future[tuple[str | None, str]]]] = []
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def get(self, entry: str) -> tuple[str | None, str]:
        """The entry's value (None: not cached) and the generation read with it."""
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._loop())
        future: asyncio.Future[tuple[str | None, str]] = asyncio.get_running_loop().create_future()
        self.pending.append((entry, future))
        self.wake.set()
        return await asyncio.shield(future)

    async def _loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                batch, self.pending = self.pending[: self.BATCH], self.pending[self.BATCH :]
                try:
                    generation, *values = await self.client.mget(
                        keys.ws_auth_generation(), *(entry for entry, _ in batch)
                    )
                except Exception as exc:  # each handshake falls back to the database
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), value in zip(batch, values, strict=True):
                    if not future.done():
                        future.set_result((value, generation or "0"))


_reader = per_loop(_Reads)


async def cached_user(scope: dict[str, Any]) -> Any:
    """scope's user: from the cache, else as Channels finds it (and then cached)."""
    ttl = get_settings().WS_AUTH_CACHE_TTL
    session_key = scope["cookies"].get(settings.SESSION_COOKIE_NAME)
    if not session_key or ttl <= 0:
        return await get_user(scope)
    entry = session_entry(session_key)
    reads = _reader()
    try:
        raw, generation = await reads.get(entry)
    except Exception:  # Redis away: ask the database (the consumer then refuses, it cannot track)
        return await get_user(scope)
    if raw is not None:
        user = _user_from(raw)
        if user is not None:
            return user
    user = await get_user(scope)
    if user.is_authenticated and user.is_active:
        # Never past the session's own expiry: an expired session's handshake is refused
        # at once, not when the cache entry ends (dashboard/auth/revocation.py).
        left = await database_sync_to_async(_seconds_left)(session_key)
        # Not cached if Redis fails: the next handshake asks the database again.
        with contextlib.suppress(Exception):
            if left >= 1:
                await run_script(
                    reads.client,
                    _FILL,
                    [keys.ws_auth_generation(), entry, keys.ws_auth_user(str(user.pk))],
                    generation,
                    _entry_of(user),
                    int(min(ttl, left)),
                )
    return user


def _seconds_left(session_key: str) -> float:
    """Seconds until ``session_key``'s row expires (0: gone)."""
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    expires = Session.objects.filter(session_key=session_key).values_list("expire_date", flat=True).first()
    return 0.0 if expires is None else (expires - timezone.now()).total_seconds()


class SessionAuthMiddleware(BaseMiddleware):
    """Channels' AuthMiddleware, answered from the cache when it can."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if "session" not in scope:
            raise ValueError("SessionAuthMiddleware needs SessionMiddleware above it")
        scope = dict(scope, user=await cached_user(scope))
        return await super().__call__(scope, receive, send)


def CachedAuthMiddlewareStack(inner: Any) -> Any:
    """Drop-in for channels.auth.AuthMiddlewareStack."""
    return CookieMiddleware(SessionMiddleware(SessionAuthMiddleware(inner)))


# -- invalidation (sync: called from Django signals and the session store) -----


def _forget(user_id: str | None, session_keys: tuple[str, ...]) -> None:
    """One script: bump the generation, drop the entries (rare: a login, a logout, a user save)."""
    script_keys = [keys.ws_auth_generation()]
    if user_id is not None:
        script_keys.append(keys.ws_auth_user(user_id))
    args = [session_entry(k) for k in session_keys]
    try:
        run_sync(lambda client: run_script(client, _FORGET, script_keys, *args))
    except RedisError as exc:
        logger.warning(
            "[ws_auth] could not drop the cached sessions of user %s: %r (they end with their TTL)",
            user_id,
            exc,
        )


def forget_sessions_now(session_keys: list[str]) -> None:
    """Drop these sessions' entries now (after a commit already: dashboard/auth/revocation.py)."""
    if session_keys:
        _forget(None, tuple(session_keys))


def forget_session(session_key: str) -> None:
    """Drop ``session_key``'s entry once the current transaction commits."""
    transaction.on_commit(lambda: _forget(None, (session_key,)))


def forget_user(user_id: str) -> None:
    """Drop every entry of ``user_id`` once the current transaction commits."""
    transaction.on_commit(lambda: _forget(user_id, ()))


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="dashboard.ws_auth.user_saved")
def _on_user_saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    if not created:
        forget_user(str(instance.pk))


@receiver(post_delete, sender=settings.AUTH_USER_MODEL, dispatch_uid="dashboard.ws_auth.user_deleted")
def _on_user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    forget_user(str(instance.pk))
