"""The alert webhook (alerts/views.py): auth, every 4xx, size limit, queue cap, rotation.

Through Django's real request stack (AsyncClient: the view is async, as under daphne)
with the suite's real Redis and the test database.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext

from alerts import views
from alerts.models import AlertWebhook
from alerts.queue import AlertQueue

pytestmark = pytest.mark.django_db(transaction=True)

DONATION = {"kind": "donation", "from": "Ana", "amount": 5, "currency": "eur", "message": "gg"}


@database_sync_to_async
def make_user(name: str = "streamer", active: bool = True) -> tuple[Any, AlertWebhook]:
    # No password: hashing one costs ~0.3 s of CPU and these users never log in.
    user = get_user_model().objects.create_user(name, f"{name}@example.com", is_active=active)
    return user, AlertWebhook.for_user(user.pk)


def url(user_id: Any, secret: str) -> str:
    return f"/hooks/alerts/{user_id}/{secret}/"


async def post(path: str, body: Any, **extra: Any) -> Any:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return await AsyncClient().post(path, data=data, content_type="application/json", **extra)


async def test_a_valid_alert_is_queued_with_its_id(configure_livestream):
    user, hook = await make_user()
    response = await post(url(user.pk, hook.secret), DONATION)
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["queued"] == 1 and len(body["id"]) == 16
    [queued] = await AlertQueue(str(user.pk)).pending()
    assert queued["id"] == body["id"]
    assert {k: queued[k] for k in DONATION} == {**DONATION, "currency": "EUR"}
    assert isinstance(queued["queued_at"], float)


def test_unknown_user_bad_secret_and_inactive_user_get_the_same_answer_and_work(monkeypatch):
    # Sync client: the async view's query then runs on this thread, where it is counted.
    user, hook = make_user.func("streamer")
    idle, idle_hook = make_user.func("idle", active=False)
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(views.hmac, "compare_digest", spy)
    wrong = hook.secret[:-1] + ("A" if hook.secret[-1] != "A" else "B")
    cases = {
        "bad secret": url(user.pk, wrong),
        "unknown user": url(user.pk + 1000, hook.secret),
        "inactive user": url(idle.pk, idle_hook.secret),
        "malformed id": url("abc", hook.secret),
        "huge id": url("9" * 40, hook.secret),
    }
    client = Client()
    for name, path in cases.items():
        compared.clear()
        with CaptureQueriesContext(connection) as queries:
            response = client.post(path, DONATION, content_type="application/json")
        assert (response.status_code, response.json()) == (404, {"error": "unknown webhook"}), name
        # The same work whatever was wrong: one query, one constant-time compare.
        assert len(queries) == 1, name
        assert len(compared) == 1 and len(compared[0][1]) == len(hook.secret), name
    compared.clear()
    assert (
        client.post(url(user.pk, hook.secret), DONATION, content_type="application/json").status_code == 202
    )
    assert len(compared) == 1


BAD_BODIES = [
    (b"not json", "body must be a JSON object"),
    (b"\xff\xfe", "body must be UTF-8 encoded JSON"),
    ([1, 2], "body must be a JSON object"),
    ({**DONATION, "ammount": 5}, "unknown field(s): 'ammount'"),
    ({**DONATION, "kind": "bribe"}, "kind must be one of: donation, follow, subscription, cheer, raid"),
    ({**DONATION, "amount": -1}, "amount must be a positive number"),
    ({**DONATION, "amount": 0}, "amount must be a positive number"),
    ({**DONATION, "amount": "5"}, "amount must be a number"),
    ({**DONATION, "amount": True}, "amount must be a number"),
    ({**DONATION, "amount": 10**7}, "amount must be at most 1,000,000"),
    ({"kind": "donation", "from": "Ana"}, "amount must be a number"),
    ({**DONATION, "from": ""}, "from must not be empty"),
    ({**DONATION, "from": "x" * 65}, "from must be at most 64 characters"),
    ({**DONATION, "from": "Ana\nINFO forged"}, "from must not contain control characters"),
    ({**DONATION, "message": "m" * 501}, "message must be at most 500 characters"),
    ({**DONATION, "currency": "euro"}, "currency must be a three-letter code such as EUR"),
]


async def test_bad_bodies_get_400_with_the_reason():
    user, hook = await make_user()
    for body, error in BAD_BODIES:
        response = await post(url(user.pk, hook.secret), body)
        assert response.status_code == 400, body
        assert response.json()["error"].startswith(error), (body, response.json())
    assert await AlertQueue(str(user.pk)).length() == 0


async def test_a_follow_needs_no_amount_and_the_trailing_slash_is_optional():
    user, hook = await make_user()
    response = await post(url(user.pk, hook.secret), {"kind": "follow", "from": "Bo"})
    assert response.status_code == 202
    response = await post(url(user.pk, hook.secret).rstrip("/"), {"kind": "follow", "from": "Bo"})
    assert response.status_code == 202


async def test_only_post(configure_livestream):
    user, hook = await make_user()
    for method in ("get", "put", "delete"):
        response = await getattr(AsyncClient(), method)(url(user.pk, hook.secret))
        assert response.status_code == 405 and response["Allow"] == "POST"
        assert "POST" in response.json()["error"]


async def test_bodies_over_the_limit_get_413(configure_livestream):
    configure_livestream(ALERT_MAX_BODY_BYTES=512)
    user, hook = await make_user()
    big = {**DONATION, "message": "m" * 490, "from": "x" * 60}
    assert len(json.dumps(big)) > 512
    response = await post(url(user.pk, hook.secret), big)
    assert (response.status_code, response.json()) == (413, {"error": "body too large: at most 512 bytes"})
    # A lying Content-Length does not get more than the limit read either.
    response = await post(url(user.pk, hook.secret), big, CONTENT_LENGTH="100")
    assert response.status_code == 413
    assert await AlertQueue(str(user.pk)).length() == 0


async def test_a_full_queue_gets_429_and_other_users_are_unaffected(configure_livestream, caplog):
    configure_livestream(ALERT_QUEUE_CAP=3)
    user, hook = await make_user()
    other, other_hook = await make_user("other")
    codes = [(await post(url(user.pk, hook.secret), DONATION)).status_code for _ in range(5)]
    assert codes == [202, 202, 202, 429, 429]
    # A flood against the full queue is one log line (per user per minute), not one per post.
    assert len([r for r in caplog.records if "queue full for user" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if "[alerts] queued alert" in r.getMessage()]) == 3
    response = await post(url(user.pk, hook.secret), DONATION)
    assert response.json() == {"error": "too many alerts waiting: at most 3 are queued"}
    assert (await post(url(other.pk, other_hook.secret), DONATION)).status_code == 202
    assert await AlertQueue(str(user.pk)).length() == 3


def test_rotation_from_the_stream_page_replaces_the_url_at_once(django_user_model):
    user = django_user_model.objects.create_user("rot", "rot@example.com", "pw-alerts-123")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    page = client.get("/dashboard/stream/")
    html = page.content.decode()
    assert 'id="alert-webhook-url"' in html
    old = AlertWebhook.objects.get(user=user).secret
    assert url(user.pk, old) in html
    # Without the CSRF token: refused, nothing rotated.
    assert client.post("/hooks/alerts/rotate/").status_code == 403
    assert AlertWebhook.objects.get(user=user).secret == old
    token = client.cookies["csrftoken"].value
    response = client.post(
        "/hooks/alerts/rotate/", {"csrfmiddlewaretoken": token, "next": "/dashboard/stream/"}
    )
    assert response.status_code == 302 and response["Location"] == "/dashboard/stream/"
    hook = AlertWebhook.objects.get(user=user)
    assert hook.secret != old and hook.rotated_at is not None
    html = client.get("/dashboard/stream/").content.decode()
    assert url(user.pk, hook.secret) in html and url(user.pk, old) not in html
    # The old URL is dead, the new one works.
    webhook = Client()
    assert webhook.post(url(user.pk, old), DONATION, content_type="application/json").status_code == 404
    # An off-site "next" is not followed.
    response = client.post(
        "/hooks/alerts/rotate/", {"csrfmiddlewaretoken": token, "next": "https://evil.example/"}
    )
    assert response["Location"] == "/dashboard/stream/"


def test_rotation_needs_a_signed_in_user_and_post(django_user_model):
    client = Client()
    assert client.post("/hooks/alerts/rotate/").status_code == 302  # to the login page
    user = django_user_model.objects.create_user("rot", "rot@example.com", "pw-alerts-123")
    client.force_login(user)
    assert client.get("/hooks/alerts/rotate/").status_code == 405


def test_every_dashboard_page_has_the_overlay(django_user_model):
    user = django_user_model.objects.create_user("ov", "ov@example.com", "pw-alerts-123")
    client = Client()
    client.force_login(user)
    for path in ("/dashboard/", "/dashboard/stream/", "/dashboard/analytics/"):
        html = client.get(path).content.decode()
        assert 'id="alert-overlay"' in html and "dashboard/alerts.js" in html, path
        assert 'id="presence"' in html, path


def test_alert_settings_are_validated():
    from django.core.exceptions import ImproperlyConfigured

    from livestream.conf import LivestreamSettings, validate

    validate(LivestreamSettings())
    for bad in (
        {"ALERT_QUEUE_CAP": 0},
        {"ALERT_MAX_BODY_BYTES": 100},
        {"ALERT_MAX_BODY_BYTES": 10**6},
        {"ALERT_DISPLAY_INTERVAL": -1.0},
        {"ALERT_RECHECK_INTERVAL": 0.0},
    ):
        with pytest.raises(ImproperlyConfigured, match=next(iter(bad))):
            validate(LivestreamSettings(**bad))


def test_the_admin_lists_webhooks_without_their_secret_and_rotates(django_user_model):
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw-alerts-123")
    user = django_user_model.objects.create_user("streamer", "s@example.com")
    hook = AlertWebhook.for_user(user.pk)
    client = Client()
    client.force_login(admin)
    page = client.get("/admin/alerts/alertwebhook/")
    assert page.status_code == 200
    assert hook.secret not in page.content.decode()
    assert hook.secret not in client.get(f"/admin/alerts/alertwebhook/{hook.pk}/change/").content.decode()
    response = client.post(
        "/admin/alerts/alertwebhook/", {"action": "rotate", "_selected_action": [hook.pk]}, follow=True
    )
    assert response.status_code == 200
    old = hook.secret
    hook.refresh_from_db()
    assert hook.rotated_at is not None and hook.secret != old
    assert Client().post(url(user.pk, old), DONATION, content_type="application/json").status_code == 404
    assert (
        Client().post(url(user.pk, hook.secret), DONATION, content_type="application/json").status_code == 202
    )


async def test_redis_unreachable_is_503_and_one_log_line(settings, tmp_path, caplog):
    user, hook = await make_user()
    settings.REDIS_URL = f"unix://{tmp_path}/nobody-listens.sock"
    response = await post(url(user.pk, hook.secret), DONATION)
    assert (response.status_code, response.json()) == (503, {"error": "alert queue unavailable; retry later"})
    assert len([r for r in caplog.records if "could not queue an alert" in r.getMessage()]) == 1
