"""Impersonation (django-hijack): who may, the banner, the audit log, and whose presence it is."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest
import websockets
from django.contrib.auth import get_user_model
from django.test import Client

from dashboard.auth.impersonation import superusers_impersonate_others
from dashboard.ws.live import SESSION_ENDED
from devtools.clients import login, open_socket
from devtools.processes import Stack

LIVE = "/ws/presence/?live=1"  # the dashboard page's socket: it gets the pushes
PASSWORD = "impersonation-pw-1"


def make_user(email: str, *, superuser: bool = False, staff: bool = False, active: bool = True):
    return get_user_model().objects.create_user(
        username=email.split("@")[0],
        email=email,
        password=PASSWORD,
        is_superuser=superuser,
        is_staff=staff or superuser,
        is_active=active,
    )


# -- who may impersonate whom ----------------------------------------------------


@pytest.mark.django_db
def test_only_superusers_impersonate_and_never_another_superuser():
    root = make_user("root@example.com", superuser=True)
    other_root = make_user("root2@example.com", superuser=True)
    staff = make_user("staff@example.com", staff=True)
    user = make_user("user@example.com")
    other = make_user("other@example.com")
    gone = make_user("gone@example.com", active=False)

    def may(hijacker, hijacked) -> bool:
        return superusers_impersonate_others(hijacker=hijacker, hijacked=hijacked)

    assert may(root, user) and may(root, staff)
    assert not may(root, other_root), "superusers cannot be impersonated"
    assert not may(root, root)
    assert not may(root, gone)
    assert not may(root, None)
    assert not may(staff, user), "staff is not enough"
    assert not may(user, other)


@pytest.mark.django_db
def test_hijack_views_enforce_the_rule_and_log_start_and_stop(caplog):
    root = make_user("root@example.com", superuser=True)
    other_root = make_user("root2@example.com", superuser=True)
    staff = make_user("staff@example.com", staff=True)
    user = make_user("user@example.com")
    caplog.set_level(logging.INFO, logger="dashboard")

    for hijacker, hijacked in [(root, other_root), (staff, user), (user, staff)]:
        client = Client()
        client.force_login(hijacker)
        response = client.post("/hijack/acquire/", {"user_pk": hijacked.pk})
        assert response.status_code == 403, (hijacker, hijacked)
        assert client.get("/dashboard/").context["user"].pk == hijacker.pk
    assert "impersonating" not in caplog.text

    client = Client()
    client.force_login(root)
    # The admin's user list offers the button for ordinary users only.
    listing = client.get("/admin/auth/user/").content.decode()
    assert f'data-hijack-user="{user.pk}"' in listing
    assert f'data-hijack-user="{staff.pk}"' in listing
    assert f'data-hijack-user="{other_root.pk}"' not in listing
    assert f'data-hijack-user="{root.pk}"' not in listing

    response = client.post("/hijack/acquire/", {"user_pk": user.pk, "next": "/dashboard/"})
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    assert f"superuser {root.pk} (root) started impersonating user {user.pk} (user)" in caplog.text
    page = client.get("/dashboard/stream/")
    html = page.content.decode()
    assert page.context["user"].pk == user.pk
    assert f'data-user-id="{user.pk}"' in html, "the dashboard is the impersonated user's"
    assert 'id="impersonation-banner"' in html and "Viewing as" in html and "user@example.com" in html
    # The banner is on every page, not only the dashboard's.
    for path in ("/dashboard/analytics/", "/admin/login/", "/accounts/email/"):
        assert 'id="impersonation-banner"' in client.get(path, follow=True).content.decode(), path
    # While impersonating, the ordinary user's rights apply: no impersonating further.
    assert client.post("/hijack/acquire/", {"user_pk": staff.pk}).status_code == 403

    response = client.post("/hijack/release/", {"next": "/admin/auth/user/"})
    assert response.status_code == 302
    assert f"superuser {root.pk} (root) stopped impersonating user {user.pk} (user)" in caplog.text
    after = client.get("/dashboard/")
    assert after.context["user"].pk == root.pk
    assert 'id="impersonation-banner"' not in after.content.decode()


# -- presence and the manager belong to the impersonated user -----------------


async def post_as(base_url: str, session: str, path: str, data: dict[str, str]) -> httpx.Response:
    """POST a form with ``session``'s cookie and a CSRF token from a dashboard page."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        page = await client.get("/dashboard/", headers={"Cookie": f"sessionid={session}"})
        token = page.cookies["csrftoken"]
        return await client.post(
            path,
            data={**data, "csrfmiddlewaretoken": token},
            headers={"Cookie": f"sessionid={session}; csrftoken={token}"},
        )


async def recv_json(ws, timeout: float = 10.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def closed_with(ws, timeout: float = 5.0) -> int:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else -1


@pytest.mark.processes
async def test_while_impersonating_the_socket_presence_and_manager_are_the_impersonated_users(
    tmp_path, migrated_db_template, key_prefix
):
    stack = Stack(tmp_path, migrated_db_template, key_prefix)
    try:
        ids = json.loads(
            stack.manage(
                "shell",
                "-c",
                "import json; from django.contrib.auth import get_user_model as m; U = m(); "
                "U.objects.create_superuser('root', 'root@example.com', 'impersonation-pw-1'); "
                "U.objects.create_user('dave', 'dave@example.com', 'impersonation-pw-1'); "
                "print(json.dumps({u.username: str(u.pk) for u in U.objects.all()}))",
            ).splitlines()[-1]  # Django's shell may print a note first
        )
        web = stack.start_daphne()
        worker = stack.start_worker()
        root_session = await login(web.url, "root@example.com", PASSWORD)
        own_tab = await open_socket(web.url, root_session)
        await worker.log.wait_for(rf"UserStreamManager started: {ids['root']}$", 15)

        response = await post_as(web.url, root_session, "/hijack/acquire/", {"user_pk": ids["dave"]})
        assert response.status_code == 302, response.text[:500]
        hijacked_session = response.cookies["sessionid"]
        assert hijacked_session != root_session

        # The superuser's tab opened before the switch is closed: it was the superuser's.
        assert await closed_with(own_tab) == SESSION_ENDED

        mark = worker.log.mark()
        tab = await open_socket(web.url, hijacked_session, path=LIVE)
        await worker.log.wait_for(rf"presence join: {ids['dave']}$", 10, after=mark)
        await worker.log.wait_for(rf"UserStreamManager started: {ids['dave']}$", 10, after=mark)
        # Every push that names a user names dave (component frames, which name none, may come
        # first on a slow machine); the manager's state arrives within 10 s.
        deadline = time.monotonic() + 10
        seen: list[dict] = []
        while (message := await recv_json(tab))["type"] != "manager":
            seen.append(message)
            assert time.monotonic() < deadline, seen
        assert all(pushed.get("user_id", ids["dave"]) == ids["dave"] for pushed in seen), seen
        assert message["user_id"] == ids["dave"] and message["state"] in {"starting", "running"}
        assert f"presence join: {ids['root']}" not in worker.log.text()[mark:]

        # Ending the impersonation closes its sockets, and the impersonated user leaves at once.
        mark = worker.log.mark()
        response = await post_as(web.url, hijacked_session, "/hijack/release/", {})
        assert response.status_code == 302, response.text[:500]
        assert await closed_with(tab) == SESSION_ENDED
        await worker.log.wait_for(rf"presence leave: {ids['dave']} \(0 sessions left\)", 5, after=mark)
        assert "started impersonating user" in web.log.text()
        assert "stopped impersonating user" in web.log.text()
    finally:
        stack.stop_all()
