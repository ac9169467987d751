"""Logging out (or signing in again) closes that session's open dashboard sockets at once.

Channels checks auth only at connect: without this a logged-out tab would stay
connected and present (and keep the manager running) until it was closed.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets
from asgiref.sync import sync_to_async
from django.conf import settings
from django.test import RequestFactory

from dashboard.auth.sessions import end_session
from dashboard.ws.live import SESSION_ENDED
from devtools.clients import login, open_socket, signup
from devtools.processes import Stack
from livestream.presence.store import PresenceStore
from livestream.pushes import channels as push
from livestream.redis import get_redis

LIVE = "/ws/presence/?live=1"  # the dashboard page's socket: it gets the pushes
PASSWORD = "logout-closes-pw-1"


async def post_form(
    base_url: str, session: str, path: str, data: dict[str, str] | None = None
) -> httpx.Response:
    """POST a form as the browser would: the CSRF token comes from a dashboard page."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30, cookies={"sessionid": session}) as client:
        page = await client.get("/dashboard/")
        assert page.status_code == 200, page.status_code
        form = {**(data or {}), "csrfmiddlewaretoken": client.cookies["csrftoken"]}
        return await client.post(path, data=form, headers={"Referer": base_url + "/dashboard/"})


async def user_id_of(ws) -> str:
    """The user id in the first session-count push a dashboard socket gets (from the worker)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = await asyncio.wait_for(ws.recv(), 10)
        if '"sessions"' in message:
            return json.loads(message)["user_id"]
    raise AssertionError("no session count pushed")


async def closed_with(ws, timeout: float = 5.0) -> int:
    """Wait for the server to close ``ws``; returns the close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else -1


@pytest.mark.processes
async def test_logout_closes_only_that_sessions_sockets_and_presence_leaves_at_once(
    tmp_path, migrated_db_template, key_prefix
):
    stack = Stack(tmp_path, migrated_db_template, key_prefix)
    try:
        stack.manage(
            "createsuperuser",
            "--noinput",
            "--username=boss",
            "--email=boss@example.com",
            DJANGO_SUPERUSER_PASSWORD=PASSWORD,
        )
        web = stack.start_daphne()
        stack.start_worker()  # it pushes the session counts
        laptop = await signup(web.url, "carol@example.com", PASSWORD)
        phone = await login(web.url, "carol@example.com", PASSWORD)
        assert laptop != phone
        tab1 = await open_socket(web.url, laptop, path=LIVE)
        user_id = await user_id_of(tab1)
        tab2 = await open_socket(web.url, laptop, path=LIVE)
        other = await open_socket(web.url, phone)
        store = PresenceStore()
        deadline = time.monotonic() + 5
        while await store.sessions(user_id) != 3:
            assert time.monotonic() < deadline, "three sockets never tracked"
            await asyncio.sleep(0.02)

        started = time.monotonic()
        response = await post_form(web.url, laptop, "/accounts/logout/")
        assert response.status_code == 302, response.status_code
        codes = await asyncio.gather(closed_with(tab1), closed_with(tab2))
        elapsed = time.monotonic() - started
        assert codes == [SESSION_ENDED, SESSION_ENDED]
        assert elapsed < 3.0, f"sockets closed {elapsed:.2f}s after logout"
        # Untracked before the close was sent: no waiting for a heartbeat or expiry.
        assert await store.sessions(user_id) == 1
        await web.log.wait_for(r"closing a socket of user \d+: session 'logged out'", 5, count=2)

        # The other session is untouched and still answers.
        await other.send('{"type": "ping"}')
        pong = None
        while pong is None or '"pong"' not in pong:
            pong = await asyncio.wait_for(other.recv(), 5)
        assert other.close_code is None

        # The logged-out session cannot come back.
        with pytest.raises(websockets.InvalidStatus):
            await open_socket(web.url, laptop)

        # Signing in again in a session (here: as staff, through the admin's login)
        # rotates its key; its sockets, opened with the old key, close too.
        async with httpx.AsyncClient(base_url=web.url, timeout=30) as client:
            form = await client.get("/admin/login/", headers={"Cookie": f"sessionid={phone}"})
            token = form.cookies["csrftoken"]
            response = await client.post(
                "/admin/login/",
                data={"username": "boss", "password": PASSWORD, "csrfmiddlewaretoken": token},
                headers={"Cookie": f"sessionid={phone}; csrftoken={token}"},
            )
            assert response.status_code == 302, response.text[:1000]
        assert await closed_with(other) == SESSION_ENDED
        assert await store.sessions(user_id) == 0
        assert "Traceback" not in web.log.text()
    finally:
        stack.stop_all()


async def test_a_logout_outside_a_request_cycle_closes_the_sockets_at_once():
    """end_session() without the middleware (e.g. a test client's logout()) sends right away."""
    pubsub = get_redis().pubsub()
    await pubsub.subscribe(push.session_channel("abc123"))
    request = RequestFactory().get("/", HTTP_COOKIE=f"{settings.SESSION_COOKIE_NAME}=abc123")
    await sync_to_async(end_session)(request, "logged out")
    async with asyncio.timeout(2):
        message = None
        while message is None:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert json.loads(message["data"]) == {"type": "session.ended", "reason": "logged out"}
    await pubsub.aclose()
