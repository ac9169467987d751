"""Managing connections on the Stream page (platforms/views.py) and the admin: a user adds
a custom RTMP target, enables/disables and removes only their own connections; the page
and the admin never show a token or key."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from livestream.models import UserComponent
from platforms.models import PlatformConnection
from platforms.signals import SUPERVISOR

pytestmark = pytest.mark.django_db


@pytest.fixture
def users():
    make = get_user_model().objects.create_user
    return make("a", "a@example.com", "pw-a-123456"), make("b", "b@example.com", "pw-b-123456")


def test_add_toggle_remove_own_connections_only(client, users):
    a, b = users
    client.force_login(a)
    response = client.post(
        "/platforms/custom/", {"name": "Backup", "url": "rtmp://x.example/live", "key": "sk_live_987654"}
    )
    assert response.status_code == 302
    row = PlatformConnection.objects.get(user=a)
    assert (row.platform, row.name, row.key, row.enabled) == ("custom", "Backup", "sk_live_987654", True)
    assert "sk_live_987654" not in row.key_enc
    # The first connection enables the PlatformSupervisor for this user.
    assert UserComponent.objects.filter(user=a, name=SUPERVISOR, enabled=True).exists()

    page = client.get("/dashboard/stream/").content.decode()
    assert f'data-id="custom:{row.pk}"' in page and "Backup" in page
    assert "sk_live_987654" not in page and row.key_enc not in page
    assert 'id="chat-lines"' in page and 'id="chat-text"' in page

    assert client.post(f"/platforms/{row.pk}/toggle/").status_code == 302
    assert PlatformConnection.objects.get(pk=row.pk).enabled is False

    other = PlatformConnection.objects.create(user=b, platform="custom", name="B's", url="rtmp://b/live")
    assert client.post(f"/platforms/{other.pk}/toggle/").status_code == 404
    assert client.post(f"/platforms/{other.pk}/remove/").status_code == 404
    assert client.get(f"/platforms/{row.pk}/remove/").status_code == 405

    assert client.post(f"/platforms/{row.pk}/remove/").status_code == 302
    assert not PlatformConnection.objects.filter(user=a).exists()
    # The last one gone: the supervisor is no longer run for this user.
    assert not UserComponent.objects.filter(user=a, name=SUPERVISOR).exists()


def test_bad_custom_target_is_refused_with_a_message(client, users):
    client.force_login(users[0])
    response = client.post("/platforms/custom/", {"name": "x", "url": "http://nope", "key": "k"}, follow=True)
    assert b"rtmp://" in response.content
    assert not PlatformConnection.objects.exists()


def test_the_admin_never_shows_a_token(client, users):
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-123456")
    row = PlatformConnection(user=users[0], platform="twitch", channel="streamer")
    row.access_token, row.refresh_token = "oauth-tok-123456789", "refresh-tok-123456789"
    row.save()
    client.force_login(admin)
    for url in (
        "/admin/platforms/platformconnection/",
        f"/admin/platforms/platformconnection/{row.pk}/change/",
    ):
        page = client.get(url).content.decode()
        assert "streamer" in page
        for secret in (
            "oauth-tok-123456789",
            "refresh-tok-123456789",
            row.access_token_enc,
            row.refresh_token_enc,
        ):
            assert secret not in page


def test_connect_platform_command(users, capsys):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    call_command(
        "connect_platform",
        "a@example.com",
        "twitch",
        "--channel",
        "#Streamer",
        "--token",
        "oauth:abcdefgh123",
    )
    row = PlatformConnection.objects.get(user=users[0])
    assert (row.channel, row.access_token) == ("streamer", "abcdefgh123")
    assert capsys.readouterr().out.strip() == row.public_id
    # Again: the same connection, updated.
    call_command(
        "connect_platform",
        "a@example.com",
        "twitch",
        "--channel",
        "streamer",
        "--token",
        "new-token-1",
        "--disabled",
    )
    assert PlatformConnection.objects.get(pk=row.pk).access_token == "new-token-1"
    assert PlatformConnection.objects.count() == 1 and not PlatformConnection.objects.get().enabled
    with pytest.raises(CommandError, match="--url and --key"):
        call_command("connect_platform", "a@example.com", "custom", "--url", "rtmp://x/live")
    with pytest.raises(CommandError, match="no user"):
        call_command("connect_platform", "nobody@example.com", "twitch", "--channel", "x", "--token", "y")


def test_connect_buttons_only_for_configured_oauth_apps(client, users, settings):
    client.force_login(users[0])
    page = client.get("/dashboard/stream/").content.decode()
    assert 'id="connect-twitch"' not in page and 'id="connect-google"' not in page
    settings.SOCIALACCOUNT_PROVIDERS = {
        **settings.SOCIALACCOUNT_PROVIDERS,
        "twitch": {
            **settings.SOCIALACCOUNT_PROVIDERS["twitch"],
            "APPS": [{"client_id": "cid", "secret": "app-secret-xyz"}],
        },
    }
    page = client.get("/dashboard/stream/").content.decode()
    assert 'id="connect-twitch"' in page and "/accounts/twitch/login/" in page and "process=connect" in page
    assert 'id="connect-google"' not in page and "app-secret-xyz" not in page
