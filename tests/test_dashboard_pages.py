"""Dashboard pages: login required, and every page opens the presence WebSocket."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db

PAGES = ["/dashboard/", "/dashboard/stream/", "/dashboard/analytics/"]


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_users_go_to_the_allauth_login_with_next(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={path}"


@pytest.mark.parametrize("path", PAGES)
def test_signed_in_users_get_the_page_with_the_presence_socket(client, path):
    user = get_user_model().objects.create_user(username="a", email="a@example.com", password="x-pass-123")
    client.force_login(user)
    response = client.get(path)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-ws-path="/ws/presence/"' in html
    assert "dashboard/presence.js" in html


def test_presence_script_reconnects_with_backoff():
    # A static check that the reconnect path exists; the browser tests exercise it for real.
    body = Path(finders.find("dashboard/presence.js")).read_text()
    assert "onclose" in body and "setTimeout(connect" in body and "MAX_DELAY" in body
    assert "1012" in body and "4029" in body and "4003" in body  # restart, too many tabs, deactivated


def test_signup_and_login_pages_are_allauths(client):
    assert client.get("/accounts/signup/").status_code == 200
    assert client.get("/accounts/login/").status_code == 200
