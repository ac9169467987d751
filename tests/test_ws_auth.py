"""The handshake's user cache (dashboard/auth/ws_auth.py): a hit answers what the database would.

Through the real ASGI stack and a real Redis. The cache's use is seen from the
outside: a change written to the database without Django's signals (a queryset
``update()``) is not seen while the entry lives, and every path Django ends a
session or changes a user by drops the entry.
"""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client

from dashboard.auth import ws_auth
from livestream import keys
from livestream.presence.store import PresenceStore
from livestream.redis import get_redis, run_script
from tests.test_presence_consumer import communicator, session_for

pytestmark = pytest.mark.django_db(transaction=True)


async def email_seen(session: str) -> str | None:
    """Connect once; the email the consumer tracked for the socket (None: refused)."""
    ws = communicator(session)
    connected, _ = await ws.connect()
    if not connected:
        return None
    metas = next(iter((await PresenceStore().list()).values()))["metas"]
    await ws.disconnect()
    return metas[0]["email"]


async def cached(session: str) -> str | None:
    return await get_redis().get(ws_auth.session_entry(session))


@sync_to_async
def update_email_quietly(user_id: str, email: str) -> None:
    get_user_model().objects.filter(pk=user_id).update(email=email)  # no post_save


async def test_the_second_handshake_is_answered_from_the_cache_until_the_user_is_saved():
    user_id, session = await session_for("a@example.com")
    assert await cached(session) is None
    assert await email_seen(session) == "a@example.com"
    assert '"email":"a@example.com"' in (await cached(session) or "")

    await update_email_quietly(user_id, "b@example.com")
    assert await email_seen(session) == "a@example.com"  # the database was not asked

    user = await get_user_model().objects.aget(pk=user_id)
    await sync_to_async(user.save)()  # any save drops the user's entries
    assert await cached(session) is None
    assert await email_seen(session) == "b@example.com"


async def test_logout_drops_the_entry_and_the_old_cookie_is_refused():
    _, session = await session_for("a@example.com")
    assert await email_seen(session) == "a@example.com"

    def log_out() -> None:
        client = Client()
        client.cookies["sessionid"] = session
        client.logout()  # session.flush() -> SessionStore.delete

    await sync_to_async(log_out)()
    assert await cached(session) is None
    assert await email_seen(session) is None


async def test_a_deactivated_user_is_dropped_and_refused():
    user_id, session = await session_for("a@example.com")
    assert await email_seen(session) == "a@example.com"
    user = await get_user_model().objects.aget(pk=user_id)
    user.is_active = False
    await sync_to_async(user.save)()
    assert await cached(session) is None
    assert await email_seen(session) is None
    assert await cached(session) is None  # inactive users are never stored


async def test_a_password_change_elsewhere_drops_every_session_of_the_user():
    user_id, first = await session_for("a@example.com")
    second = await sync_to_async(lambda: _second_session(user_id))()
    assert await email_seen(first) == await email_seen(second) == "a@example.com"
    user = await get_user_model().objects.aget(pk=user_id)
    user.set_password("another-pass-456")
    await sync_to_async(user.save)()
    assert await cached(first) is None and await cached(second) is None
    # Both sessions carry the old password's hash: Django refuses them, so must we.
    assert await email_seen(first) is None
    assert await email_seen(second) is None


def _second_session(user_id: str) -> str:
    client = Client()
    client.force_login(get_user_model().objects.get(pk=user_id))
    return client.cookies["sessionid"].value


async def test_a_fill_that_raced_an_invalidation_is_not_stored():
    """The database read happened before the invalidation: what it read may be stale."""
    user_id, session = await session_for("a@example.com")
    redis = get_redis()
    generation = await redis.get(keys.ws_auth_generation()) or "0"
    await sync_to_async(ws_auth._forget)(user_id, ())  # e.g. a deactivation committing meanwhile
    entry = ws_auth.session_entry(session)
    stored = await run_script(
        redis,
        ws_auth._FILL,
        [keys.ws_auth_generation(), entry, keys.ws_auth_user(user_id)],
        generation,
        '{"pk": 1}',
        60,
    )
    assert stored == 0
    assert await redis.get(entry) is None


async def test_a_garbled_entry_is_ignored_and_the_database_answers():
    _, session = await session_for("a@example.com")
    await get_redis().set(ws_auth.session_entry(session), "{not json")
    assert await email_seen(session) == "a@example.com"


async def test_a_ttl_of_zero_turns_the_cache_off(configure_livestream):
    configure_livestream(WS_AUTH_CACHE_TTL=0)
    _, session = await session_for("a@example.com")
    assert await email_seen(session) == "a@example.com"
    assert await cached(session) is None
    assert not await get_redis().keys(keys.key("wsauth", "s", "*"))
