"""The admin user list: an "online" column (open sessions) and filter, hijack kept."""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.urls import reverse
from hijack.contrib.admin import HijackUserAdminMixin

from livestream.admin import OnlineUserAdmin
from livestream.observe.state import run_sync
from livestream.presence.store import PresenceStore

pytestmark = pytest.mark.django_db


def track(user_id: str, *refs: str) -> None:
    async def go(client):
        for ref in refs:
            await PresenceStore(client=client).track(
                user_id, {"email": "x@example.com", "joined_at": 1, "ref": ref}
            )

    run_sync(go)


@pytest.fixture
def people(django_user_model, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast set-up
    users = {
        name: django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123456789")
        for name in ("alice", "bob", "carol")
    }
    track(str(users["alice"].pk), "a1", "a2", "a3")
    track(str(users["bob"].pk), "b1")
    track("no-such-user", "zz")  # a presence id that is not a user pk is ignored
    return users


def rows(html: str) -> dict[str, str]:
    """username -> the "online" cell's text, from the changelist table."""
    out = {}
    for row in re.findall(r"<tr>(.*?)</tr>", html.split('id="result_list"', 1)[1], re.S):
        name = re.search(r'class="field-username"[^>]*>(?:<a [^>]*>)?([^<]+)<', row)
        online = re.search(r'<td class="field-online">(.*?)</td>', row, re.S)
        if name and online:
            out[name.group(1)] = online.group(1).strip()
    return out


def test_the_user_admin_is_extended_and_still_hijack_enabled():
    registered = type(admin.site._registry[get_user_model()])
    assert issubclass(registered, OnlineUserAdmin)
    assert issubclass(registered, UserAdmin)
    assert issubclass(registered, HijackUserAdminMixin)  # hijack.contrib.admin wrapped ours


def test_online_column_shows_open_sessions(admin_client, people):
    html = admin_client.get(reverse("admin:auth_user_changelist")).content.decode()
    assert "column-online" in html
    cells = rows(html)
    assert cells["alice"] == "3"
    assert cells["bob"] == "1"
    assert cells["carol"] == "-"  # offline: blank
    assert cells["admin"] == "-"
    # hijack's impersonate button is still there (for non-superusers)
    assert f'data-hijack-user="{people["alice"].pk}"' in html


def test_online_filter(admin_client, people):
    url = reverse("admin:auth_user_changelist")
    html = admin_client.get(url).content.decode()
    assert "?online=yes" in html and "?online=no" in html
    assert set(rows(admin_client.get(url, {"online": "yes"}).content.decode())) == {"alice", "bob"}
    assert set(rows(admin_client.get(url, {"online": "no"}).content.decode())) == {"carol", "admin"}


def test_user_list_still_works_without_redis(admin_client, people, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = admin_client.get(reverse("admin:auth_user_changelist"), follow=True)
    assert response.status_code == 200
    assert set(rows(response.content.decode())) == {"alice", "bob", "carol", "admin"}
    assert "Presence is unavailable right now" in response.content.decode()
