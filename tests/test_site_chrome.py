"""What a newcomer saw first: the icon, the sign-in and sign-up pages in the site's layout,
and log lines printed once."""

from __future__ import annotations

import httpx
import pytest

from devtools.processes import Stack, wait_until

NEEDS_REDIS = False  # the in-process pages below; the daphne test is marked processes


def test_favicon_ico_is_served(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert response.content.startswith(b"<svg")


@pytest.mark.django_db  # allauth's social providers (platforms/) are read from the database
@pytest.mark.parametrize("url", ["/accounts/login/", "/accounts/signup/"])
def test_sign_in_and_sign_up_use_the_sites_layout(client, url):
    body = client.get(url).content.decode()
    assert "dashboard/dashboard.css" in body  # the dashboard's stylesheet
    assert 'class="topbar"' in body and 'class="auth"' in body
    assert 'rel="icon"' in body and "dashboard/favicon.svg" in body
    assert "<form" in body and 'name="password' in body  # allauth's own form, inside it
    assert "Menu:" not in body  # allauth's bare layout is gone


@pytest.mark.processes
async def test_a_request_warning_is_logged_once(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix)
    try:
        web = stack.start_daphne(DEBUG="1")
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{web.url}/no-such-page-{key_prefix}")).status_code == 404
        needle = f"Not Found: /no-such-page-{key_prefix}"
        await wait_until(lambda: needle in web.log.text(), 5, "the warning")
        lines = [line for line in web.log.lines() if needle in line]
        assert len(lines) == 1, lines
        assert "WARNING django.request" in lines[0]
    finally:
        stack.stop_all()
