"""Issue 20.2: no secret reaches a log. A full flow against daphne and a worker (alerts
posted, wrong secrets probed, bad bodies, a rotation), then every log the processes wrote
is searched for every secret the test created."""

from __future__ import annotations

import asyncio
import logging
import secrets

import httpx
import pytest

from devtools.clients import create_accounts
from devtools.processes import Stack, start_worker_ready
from streampai.logredact import RedactFilter, redact
from tests.test_logout_closes_sockets import post_form

pytestmark = pytest.mark.processes

DONATION = {"kind": "donation", "from": "Ana", "amount": 5, "currency": "EUR", "message": "gg"}


def webhook_secret(stack: Stack, user_id: str) -> str:
    code = f"from alerts.models import AlertWebhook; print(AlertWebhook.for_user({user_id}).secret)"
    return stack.manage("shell", "-c", code).split()[-1]


async def test_no_log_holds_a_secret_after_a_full_webhook_flow(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env={"LIVESTREAM_ALERT_DISPLAY_INTERVAL": "0"})
    try:
        web = stack.start_daphne()
        await start_worker_ready(stack)
        accounts = list(create_accounts(stack, ["hook1@x.io", "hook2@x.io"]).values())
        created: list[str] = []
        for account in accounts:
            created.append(await asyncio.to_thread(webhook_secret, stack, account.user_id))
        wrong = [secrets.token_urlsafe(32) for _ in range(3)]
        one, two = accounts
        async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
            for _ in range(3):
                ok = await http.post(f"/hooks/alerts/{one.user_id}/{created[0]}/", json=DONATION)
                assert ok.status_code == 202, ok.text
            bare = await http.post(f"/hooks/alerts/{two.user_id}/{created[1]}", json=DONATION)  # no slash
            assert bare.status_code == 202, bare.text
            for secret in wrong:
                assert (
                    await http.post(f"/hooks/alerts/{one.user_id}/{secret}/", json=DONATION)
                ).status_code == 404
            bad = await http.post(f"/hooks/alerts/{one.user_id}/{created[0]}/", json={"kind": "nope"})
            assert bad.status_code == 400
            assert (await http.get(f"/hooks/alerts/{one.user_id}/{created[0]}/")).status_code == 405
            big = await http.post(f"/hooks/alerts/{one.user_id}/{created[0]}/", content=b"x" * 70_000)
            assert big.status_code == 413
            query = await http.get(f"/nowhere/?access_token={wrong[0]}&key={wrong[1]}")
            assert query.status_code == 404
        # A rotation from the Stream page: the old URL is refused, the new one works.
        rotated = await post_form(web.url, one.session, "/hooks/alerts/rotate/")
        assert rotated.status_code == 302
        created.append(await asyncio.to_thread(webhook_secret, stack, one.user_id))
        async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
            assert (
                await http.post(f"/hooks/alerts/{one.user_id}/{created[0]}/", json=DONATION)
            ).status_code == 404
            assert (
                await http.post(f"/hooks/alerts/{one.user_id}/{created[2]}/", json=DONATION)
            ).status_code == 202
        await web.log.wait_for(r"Not Found: /hooks/alerts/\d+/\*\*\*/", 5)
        await web.log.wait_for(rf'"POST /hooks/alerts/{one.user_id}/\*\*\*/" 202', 5)
    finally:
        stack.stop_all()
    logs = {path.name: path.read_text(errors="replace") for path in tmp_path.rglob("*.log")}
    assert {"daphne.log", "worker.log"} <= set(logs)
    leaks = [(name, secret) for name, text in logs.items() for secret in [*created, *wrong] if secret in text]
    assert leaks == [], leaks


def test_the_patterns_cover_stream_keys_and_platform_tokens():
    lines = {
        '1.2.3.4 - - [x] "POST /hooks/alerts/7/Zx-9_abc/" 202 40': '"POST /hooks/alerts/7/***/" 202',
        "Not Found: /hooks/alerts/7/Zx-9_abc": "Not Found: /hooks/alerts/7/***",
        '"GET /hooks/alerts/rotate/" 405': '"GET /hooks/alerts/rotate/" 405',  # no secret in it
        "publish rtmp://ingest.example:1935/live/sk_live_123 now": "/live/*** now",
        "relay to rtmps://live.twitch.tv/app/live_123_abc failed": "rtmps://live.twitch.tv/app/***",
        "PASS oauth:abcdef0123456789": "PASS oauth:***",
        "GET /cb?code=1&access_token=tok123&refresh_token=r456": "access_token=***&refresh_token=***",
        "Authorization: Bearer eyJhbGciOi.x.y": "Bearer ***",
    }
    for line, expected in lines.items():
        assert expected in redact(line), (line, redact(line))
    for secret in (
        "Zx-9_abc",
        "sk_live_123",
        "live_123_abc",
        "abcdef0123456789",
        "tok123",
        "r456",
        "eyJhbGciOi",
    ):
        assert all(secret not in redact(line) for line in lines)
    record = logging.LogRecord(
        "django.request", logging.WARNING, "", 0, "Not Found: %s", ("/hooks/alerts/7/Zx-9_abc/",), None
    )
    RedactFilter().filter(record)
    assert record.getMessage() == "Not Found: /hooks/alerts/7/***/"
