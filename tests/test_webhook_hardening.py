"""Issue 20.4: the alert webhook under load and bad input.

Rate limits per IP (before Django) and per user (after the secret), 429 with
Retry-After; every malformed body a 400 with a clear message and no sender text in a
log line; the body cap enforced by daphne while it reads (a huge body is refused, not
buffered) and a Content-Length that does not match the body refused (real daphne).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import httpx
import psutil
import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import AsyncClient

from alerts.models import AlertWebhook
from alerts.queue import AlertQueue
from devtools.clients import create_accounts
from devtools.processes import Stack
from streampai.asgi import application

DONATION = {"kind": "donation", "from": "Ana", "amount": 5, "currency": "EUR"}
MARK = "SENDERTEXT"  # put into bad bodies: it must never reach a log line


@database_sync_to_async
def make_user(name: str) -> tuple[Any, AlertWebhook]:
    user = get_user_model().objects.create_user(name, f"{name}@example.com")
    return user, AlertWebhook.for_user(user.pk)


def url(user_id: Any, secret: str) -> str:
    return f"/hooks/alerts/{user_id}/{secret}/"


async def post(path: str, body: Any, **extra: Any) -> Any:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return await AsyncClient().post(path, data=data, content_type="application/json", **extra)


BAD = [
    ('{"kind": "donation", "from": "Ana", "amount": ' + "9" * 4000 + "}", "amount must be at most"),
    ('{"kind": "donation", "from": "Ana", "amount": ' + "9" * 5000 + "}", "body must be a JSON object"),
    ('{"kind": "donation", "from": "Ana", "amount": -' + "9" * 4000 + "}", "amount must be a positive"),
    ('{"kind": "donation", "from": "Ana", "amount": 1e999}', "amount must be a positive number"),
    ('{"kind": "donation", "from": "Ana", "amount": NaN}', "amount must be a positive number"),
    ('{"kind": "donation", "from": "Ana", "amount": -Infinity}', "amount must be a positive number"),
    ('{"kind": "donation", "from": "Ana", "amount": {"a": 1}}', "amount must be a number"),
    ('{"kind": "follow", "from": "' + MARK + '\\ud800"}', "from must be valid Unicode text"),
    ('{"kind": "follow", "from": "A", "message": "' + MARK + '\\udfff x"}', "message must be valid Unicode"),
    ('{"kind": ["donation"], "from": "A"}', "kind must be one of"),
    ('{"kind": {"a": 1}, "from": "A"}', "kind must be one of"),
    ('{"kind": "follow", "from": 5}', "from must be a string"),
    ('{"kind": "follow", "from": "A", "' + MARK + '": 1}', "unknown field(s)"),
    ('{"kind": "follow", "from": "' + MARK + '\\u0000"}', "from must not contain control characters"),
    ("[" * 10_000 + "]" * 10_000, "body must be a JSON object"),
    ("", "body must be a JSON object"),
    ("null", "body must be a JSON object"),
    (b"\xff\xfe{}", "body must be UTF-8 encoded JSON"),
]


@pytest.mark.django_db(transaction=True)
async def test_every_malformed_body_is_a_400_with_a_reason_and_no_sender_text_logged(
    caplog, configure_livestream
):
    configure_livestream(ALERT_MAX_BODY_BYTES=65536)  # room for the 5,000-digit amount
    caplog.set_level(logging.INFO)
    user, hook = await make_user("bodies")
    for body, error in BAD:
        response = await post(url(user.pk, hook.secret), body)
        assert response.status_code == 400, (body[:80], response.status_code, response.content[:200])
        assert response.json()["error"].startswith(error), (body[:80], response.json())
    assert await AlertQueue(str(user.pk)).length() == 0
    assert MARK not in caplog.text
    assert "refused an alert for user" in caplog.text  # the one line names the field only
    # A user id that looks like digits to str.isdigit() but is not one: 404, not 500.
    assert (await post(url("²", hook.secret), DONATION)).status_code == 404


@pytest.mark.django_db(transaction=True)
async def test_a_user_over_their_rate_gets_429_with_retry_after(configure_livestream):
    configure_livestream(ALERT_RATE_PER_USER=0.5, ALERT_BURST_PER_USER=3)
    user, hook = await make_user("fast")
    other, other_hook = await make_user("other")
    for _ in range(5):  # strangers with a wrong secret do not spend the user's budget
        assert (await post(url(user.pk, "wrong" + hook.secret[5:]), DONATION)).status_code == 404
    codes = [(await post(url(user.pk, hook.secret), DONATION)).status_code for _ in range(3)]
    assert codes == [202, 202, 202]
    over = await post(url(user.pk, hook.secret), DONATION)
    assert over.status_code == 429 and 1 <= int(over["Retry-After"]) <= 2
    assert "per second" in over.json()["error"]
    assert (await post(url(other.pk, other_hook.secret), DONATION)).status_code == 202
    assert await AlertQueue(str(user.pk)).length() == 3


@pytest.mark.django_db(transaction=True)
async def test_an_address_over_its_rate_is_refused_before_django(configure_livestream, caplog):
    configure_livestream(ALERT_RATE_PER_IP=0.5, ALERT_BURST_PER_IP=2)
    caplog.set_level(logging.WARNING)
    user, hook = await make_user("ip")

    def client(ip: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=application, client=(ip, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://localhost")

    async with client("10.0.0.1") as flood, client("10.0.0.2") as calm:
        codes = [(await flood.post(url(user.pk, hook.secret), json=DONATION)).status_code for _ in range(2)]
        assert codes == [202, 202]
        django_lines = len([r for r in caplog.records if r.name == "django.request"])
        for _ in range(20):
            over = await flood.post(url(user.pk, "x" * 43), json=DONATION)
            assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
        # Django never saw them (its 404s would each be a django.request line).
        assert len([r for r in caplog.records if r.name == "django.request"]) == django_lines
        assert len([r for r in caplog.records if "webhook posts from '10.0.0.1'" in r.getMessage()]) == 1
        assert (await calm.post(url(user.pk, hook.secret), json=DONATION)).status_code == 202
        assert (await flood.get("/accounts/login/")).status_code == 200  # other paths are not limited


# -- daphne: the cap while reading, the Content-Length check ----------------------


def raw_request(port: int, head: bytes, body: bytes = b"", read_timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head + body)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data and b'"}' in data:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return data


def chunked_flood(port: int, path: str, total: int) -> tuple[int, bytes]:
    """POST up to ``total`` bytes chunked (as fast as the server takes them); (bytes sent, reply)."""
    piece = b"x" * 65536
    frame = b"%x\r\n" % len(piece) + piece + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        try:
            while sent < total:
                sock.sendall(frame)
                sent += len(piece)
        except OSError:  # refused: the server closed the connection
            pass
        try:
            reply = sock.recv(65536)
        except OSError:
            reply = b""
    return sent, reply


@pytest.mark.processes
async def test_daphne_caps_bodies_while_reading_and_refuses_a_lying_length(
    tmp_path, migrated_db_template, key_prefix
):
    stack = Stack(tmp_path, migrated_db_template, key_prefix)
    try:
        web = stack.start_daphne()
        (account,) = create_accounts(stack, ["cap@x.io"]).values()
        code = (
            f"from alerts.models import AlertWebhook; print(AlertWebhook.for_user({account.user_id}).secret)"
        )
        secret = stack.manage("shell", "-c", code).split()[-1]
        path = url(account.user_id, secret)
        head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"

        # A declared length over the cap: 413 at once, without sending any body.
        started = time.monotonic()
        reply = await asyncio.to_thread(
            raw_request, web.port, (head + "Content-Length: 10000000\r\n\r\n").encode()
        )
        assert reply.startswith(b"HTTP/1.1 413") and b"body too large: at most 4096 bytes" in reply, reply
        assert time.monotonic() - started < 2

        # A chunked 200 MB body: refused early; daphne does not grow by what was sent.
        rss = psutil.Process(web.popen.pid).memory_info().rss
        sent, reply = await asyncio.to_thread(chunked_flood, web.port, path, 200 * 1024 * 1024)
        grown = (psutil.Process(web.popen.pid).memory_info().rss - rss) / 2**20
        assert sent < 50 * 1024 * 1024, sent  # the connection was closed long before the end
        assert grown < 20, f"daphne grew {grown:.0f} MB"
        assert reply.startswith(b"HTTP/1.1 413") or reply == b"", reply[:200]

        # A short Content-Length with a 100 KB body: 400, nothing queued.
        valid = json.dumps({"kind": "follow", "from": "Bo"}).encode()
        lying = (head + f"Content-Length: {len(valid)}\r\n\r\n").encode()
        reply = await asyncio.to_thread(raw_request, web.port, lying, valid + b"y" * 100_000)
        assert reply.startswith(b"HTTP/1.1 400") and b"Content-Length does not match the body" in reply, reply
        await asyncio.sleep(0.2)
        assert await AlertQueue(account.user_id).length() == 0

        # Still served: an honest one is queued; a big page elsewhere is capped by its own limit.
        async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
            assert (await http.post(path, json=DONATION)).status_code == 202
        big = (
            f"POST /accounts/login/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: {3_000_000}\r\n\r\n"
        ).encode()
        assert (await asyncio.to_thread(raw_request, web.port, big)).startswith(b"HTTP/1.1 413")
        assert web.alive()
    finally:
        stack.stop_all()
