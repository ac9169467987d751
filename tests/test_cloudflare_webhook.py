"""POST /hooks/cloudflare/ (broadcast/cloudflare_webhook.py): signatures, refusals, set_input.

Through Django's real request stack (AsyncClient) with the suite's real Redis and test
database; the bodies and the Webhook-Signature header are built as Cloudflare documents
them (devtools/cloudflare_api.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import AsyncClient

from broadcast import cloudflare_webhook, inputs
from broadcast.models import StreamIngest
from dashboard.ws.limits import Throttled
from devtools.cloudflare_api import live_input_notification, sign_webhook

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "whsec-test-0123456789abcdef"
URL = "/hooks/cloudflare/"
UID = "eb222fcca08eeb1ae84c981ebe8aeeb6"


@pytest.fixture(autouse=True)
def cloudflare(configure_livestream: Any) -> None:
    configure_livestream(
        BROADCAST_BACKEND="cloudflare",
        CLOUDFLARE_ACCOUNT_ID="acc",
        CLOUDFLARE_API_TOKEN="tok",
        CLOUDFLARE_WEBHOOK_SECRET=SECRET,
        CLOUDFLARE_WEBHOOK_TOLERANCE=300,
    )


@database_sync_to_async
def user_with_input(uid: str = UID) -> str:
    user = get_user_model().objects.create_user(f"u{uid[:6]}", f"{uid[:6]}@example.com")
    row = StreamIngest(
        user=user, backend="cloudflare", remote_id=uid, server_url="rtmps://live.cloudflare.com:443/live/"
    )
    row.set_key("k" * 32 + uid)
    row.save()
    return str(user.pk)


async def post(body: bytes, url: str = URL, **headers: str) -> Any:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return await AsyncClient().post(url, data=body, content_type="application/json", headers=named)


async def signed(body: bytes, at: int | None = None, secret: str = SECRET) -> Any:
    return await post(body, webhook_signature=sign_webhook(secret, body, at))


async def test_signed_connect_and_disconnect_set_the_input(aredis):
    user = await user_with_input()
    response = await signed(live_input_notification(UID, "live_input.connected"))
    assert response.status_code == 200, response.content
    assert response.json() == {"input": UID, "state": "connected"}
    assert (await inputs.get_input(user)).connected is True
    response = await signed(live_input_notification(UID, "live_input.disconnected"))
    assert response.json() == {"input": UID, "state": "disconnected"}
    assert (await inputs.get_input(user)).connected is False


async def test_the_documented_example_signature_header_shape_is_accepted():
    await user_with_input()
    body = live_input_notification(UID, "live_input.connected")
    header = sign_webhook(SECRET, body)
    assert header.startswith("time=") and ",sig1=" in header
    # Order and spaces after the comma do not matter.
    at, sig = header.split(",")
    response = await post(body, webhook_signature=f"{sig}, {at}")
    assert response.status_code == 200, response.content


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        ("missing", 401, "unsigned: a Webhook-Signature (or cf-webhook-auth) header is required"),
        ("wrong secret", 401, "bad Webhook-Signature"),
        ("tampered body", 401, "bad Webhook-Signature"),
        ("malformed", 400, "malformed Webhook-Signature: expected time=<unix>,sig1=<hex>"),
        ("no sig1", 400, "malformed Webhook-Signature: expected time=<unix>,sig1=<hex>"),
        ("expired", 401, "Webhook-Signature time is too old"),
        ("replayed", 401, "Webhook-Signature time is too old"),
        ("future", 401, "Webhook-Signature time is in the future"),
    ],
)
async def test_unsigned_or_badly_signed_requests_are_refused(case, status, error):
    user = await user_with_input()
    body = live_input_notification(UID, "live_input.connected")
    now = int(time.time())
    headers = {
        "missing": {},
        "wrong secret": {"webhook_signature": sign_webhook("not-the-secret", body)},
        "tampered body": {
            "webhook_signature": sign_webhook(SECRET, body.replace(b"connected", b"disconnected"))
        },
        "malformed": {"webhook_signature": "garbage"},
        "no sig1": {"webhook_signature": f"time={now}"},
        "expired": {"webhook_signature": sign_webhook(SECRET, body, now - 301)},
        # A genuine notification captured an hour ago and sent again.
        "replayed": {"webhook_signature": sign_webhook(SECRET, body, now - 3600)},
        "future": {"webhook_signature": sign_webhook(SECRET, body, now + 3600)},
    }[case]
    response = await post(body, **headers)
    assert response.status_code == status
    assert response.json()["error"].startswith(error)
    assert (await inputs.get_input(user)).since is None  # nothing recorded


async def test_notifications_destination_secret_is_accepted_and_checked():
    user = await user_with_input()
    body = live_input_notification(UID, "live_input.connected")
    assert (await post(body, cf_webhook_auth="wrong")).status_code == 401
    old = live_input_notification(UID, "live_input.connected", ts=int(time.time()) - 3600)
    response = await post(old, cf_webhook_auth=SECRET)
    assert response.status_code == 401 and "too old" in response.json()["error"]
    assert (await inputs.get_input(user)).since is None
    response = await post(body, cf_webhook_auth=SECRET)
    assert response.status_code == 200, response.content
    assert (await inputs.get_input(user)).connected is True


async def test_signed_but_not_ours_is_acknowledged_and_ignored():
    await user_with_input()
    other = await signed(live_input_notification("0" * 32, "live_input.connected"))
    assert other.status_code == 200 and other.json() == {"ignored": "unknown live input"}
    errored = await signed(live_input_notification(UID, "live_input.errored"))
    assert errored.status_code == 200 and "ignored" in errored.json()


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", json.dumps({"data": {"input_id": 5}}).encode(), json.dumps({"ts": 1}).encode()],
)
async def test_signed_bodies_that_are_not_notifications_get_400(body):
    response = await signed(body)
    assert response.status_code == 400 and response.json()["error"]


async def test_a_body_over_the_cap_gets_413_unread(configure_livestream):
    configure_livestream(CLOUDFLARE_WEBHOOK_MAX_BODY_BYTES=1024)
    body = b'{"pad": "' + b"x" * 2000 + b'"}'
    response = await signed(body)
    assert response.status_code == 413


async def test_only_post_and_only_with_the_cloudflare_backend(configure_livestream):
    response = await AsyncClient().get(URL)
    assert response.status_code == 405 and response["Allow"] == "POST"
    configure_livestream(BROADCAST_BACKEND="selfhosted")
    response = await signed(live_input_notification(UID, "live_input.connected"))
    assert response.status_code == 404


async def test_no_trailing_slash_works_too():
    await user_with_input()
    body = live_input_notification(UID, "live_input.connected")
    response = await post(body, URL.rstrip("/"), webhook_signature=sign_webhook(SECRET, body))
    assert response.status_code == 200


async def test_refusals_never_log_the_secret_or_the_signature(caplog, monkeypatch):
    # A fresh throttle: earlier tests' refusals used up this minute's line.
    monkeypatch.setattr(cloudflare_webhook, "_refusals", Throttled(60.0))
    await user_with_input()
    body = live_input_notification(UID, "live_input.connected")
    header = sign_webhook("not-the-secret", body)
    with caplog.at_level("INFO"):
        await post(body, webhook_signature=header)
        await post(body, cf_webhook_auth="guess-" + SECRET[:5])
        await signed(body)
    text = caplog.text
    assert "bad Webhook-Signature" in text
    assert SECRET not in text and header.split("sig1=")[1] not in text and "guess-" not in text


async def test_a_late_or_repeated_event_cannot_undo_a_newer_one():
    """Cloudflare retries: a "connected" that arrives after the later "disconnected" (or the
    same delivery twice) is acknowledged and dropped, by the event's own updated_at."""
    user = await user_with_input()
    connected = live_input_notification(
        UID, "live_input.connected", updated_at="2026-12-06T10:00:00.100000001Z"
    )
    gone = live_input_notification(
        UID, "live_input.disconnected", updated_at="2026-12-06T10:00:00.100000002Z"
    )
    assert (await signed(connected)).json()["state"] == "connected"
    assert (await signed(gone)).json()["state"] == "disconnected"
    for late in (connected, gone):  # the older one late, the newer one again
        response = await signed(late)
        assert response.status_code == 200
        assert response.json() == {"ignored": "older than the last event applied for this input"}
    assert (await inputs.get_input(user)).connected is False
    again = live_input_notification(UID, "live_input.connected", updated_at="2026-12-06T10:00:05Z")
    assert (await signed(again)).json()["state"] == "connected"


def test_event_times_parse_to_the_nanosecond_digits_given():
    parse = cloudflare_webhook.parse_time
    assert parse("2022-01-13T11:43:41.855717910Z") == 1642074221_855717910
    assert parse("2022-01-13T11:43:41.5Z") == 1642074221_500000000
    assert parse("2022-01-13T11:43:41Z") == 1642074221_000000000
    assert parse("2022-01-13T12:43:41+01:00") == 1642074221_000000000
    for bad in ("yesterday", "2022-13-45T11:43:41Z", 5, None):
        assert parse(bad) is None


async def test_redis_unreachable_is_503_and_the_event_is_applied_on_cloudflares_retry(settings, tmp_path):
    user = await user_with_input()
    body = live_input_notification(UID, "live_input.connected")
    real = settings.REDIS_URL
    settings.REDIS_URL = f"unix://{tmp_path}/nobody-listens.sock"
    response = await signed(body)
    assert (response.status_code, response.json()) == (503, {"error": "input state unavailable; retry later"})
    settings.REDIS_URL = real
    # Cloudflare retries the same delivery: applied now (it was not remembered as seen).
    response = await signed(body)
    assert response.status_code == 200 and response.json()["state"] == "connected"
    assert (await inputs.get_input(user)).connected is True
