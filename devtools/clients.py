"""Clients of a running stack: accounts with sessions, the sign-up and login forms, WebSockets.

Accounts come two ways, one code path: ``create_accounts`` writes users and logged-in
sessions into a Stack's database from a subprocess (the tests' processes own their
Django); ``make_users`` does the same in this process (the benchmarks configure
Django themselves). No password is hashed: a session is what the WebSocket's
AuthMiddlewareStack checks, and the sign-up form has tests of its own.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import secrets
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import websockets

from devtools.processes import BASE_DIR, PYTHON

if TYPE_CHECKING:
    from devtools.processes import Stack


async def signup(base_url: str, email: str, password: str) -> str:
    """Sign up through allauth's form; returns the session cookie."""
    return await _auth_form(
        base_url, "/accounts/signup/", {"email": email, "password1": password, "password2": password}
    )


async def login(base_url: str, email: str, password: str) -> str:
    """Log in through allauth's form; returns the session cookie."""
    return await _auth_form(base_url, "/accounts/login/", {"login": email, "password": password})


async def _auth_form(base_url: str, path: str, data: dict[str, str]) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await client.get(path)
        data = {**data, "csrfmiddlewaretoken": client.cookies["csrftoken"]}
        response = await client.post(path, data=data, headers={"Referer": base_url + path})
        if response.status_code != 302 or "sessionid" not in client.cookies:
            raise AssertionError(f"{path} failed: {response.status_code}\n{response.text[:2000]}")
        return client.cookies["sessionid"]


async def open_socket(
    base_url: str,
    session: str | None,
    origin: str | None = None,
    path: str = "/ws/presence/",
    **connect_options: Any,
):
    """A real WebSocket to daphne with the session cookie and a same-origin Origin.

    ``connect_options`` go to websockets.connect (e.g. open_timeout under load).
    """
    headers = {"Origin": origin or base_url}
    if session:
        headers["Cookie"] = f"sessionid={session}"
    url = base_url.replace("http", "ws", 1) + path
    # Like a browser: no client-side pings, and pushes are buffered without limit so a
    # test that does not read them never stalls the transport (daphne's own pings
    # would then go unanswered and the socket would be dropped after ~40 s).
    connect_options = {"ping_interval": None, "max_queue": None, **connect_options}
    return await websockets.connect(url, additional_headers=headers, **connect_options)


# -- accounts without the sign-up form (thousands in a second) ---------------------


@dataclass(frozen=True)
class Account:
    email: str
    user_id: str
    session: str


def logged_in(emails: list[str], username: Any = None) -> dict[str, tuple[str, str]]:
    """Under Django: email -> (user id, key of a new logged-in session) for each of ``emails``.

    A missing user is created with no usable password, named ``username(email)``
    (default: the email). Users and sessions are written in bulk.
    """
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.auth.hashers import make_password
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    user_model = get_user_model()
    name = username or (lambda email: email[:150])
    known = set(user_model.objects.filter(email__in=emails).values_list("email", flat=True))
    unusable = make_password(None)
    new = [
        user_model(username=name(e), email=e, password=unusable)
        for e in dict.fromkeys(emails)
        if e not in known
    ]
    user_model.objects.bulk_create(new, batch_size=500)
    users = {}
    for user in user_model.objects.filter(email__in=emails).order_by("-pk"):
        users[user.email] = user  # the first of any duplicates, as .first() would
    store = SessionStore()
    expires = timezone.now() + datetime.timedelta(days=1)
    sessions, out = [], {}
    for email in emails:
        user = users[email]
        data = {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
        key = secrets.token_hex(16)
        sessions.append(Session(session_key=key, session_data=store.encode(data), expire_date=expires))
        out[email] = (str(user.pk), key)
    Session.objects.bulk_create(sessions, batch_size=500)
    return out


def _logged_in_main() -> None:
    """``logged_in`` in a subprocess: emails (JSON) on stdin, the result (JSON) on stdout."""
    import sys

    import django

    django.setup()
    json.dump(logged_in(json.load(sys.stdin)), sys.stdout)


def create_accounts(stack: Stack, emails: list[str]) -> dict[str, Account]:
    """Users with a logged-in session each, written straight to the stack's database.

    The sign-up form hashes a password per user (~0.3 s of CPU each); fault and
    soak tests need many users, not the form (other tests cover it).
    """
    result = subprocess.run(
        [PYTHON, "-c", "from devtools.clients import _logged_in_main; _logged_in_main()"],
        cwd=BASE_DIR,
        env=stack.process_env(),
        input=json.dumps(emails).encode(),
        capture_output=True,
        check=True,
    )
    rows = json.loads(result.stdout)
    return {email: Account(email, uid, session) for email, (uid, session) in rows.items()}


def make_users(count: int, start: int = 0) -> list[tuple[str, str]]:
    """``count`` users ``bench<i>`` with a logged-in session each, in this process's Django;
    (user id, session key) pairs."""
    from django.db import connections

    emails = [f"bench{i}@example.com" for i in range(start, start + count)]
    rows = logged_in(emails, username=lambda email: email.partition("@")[0])
    connections.close_all()  # Stack copies a fresh database over the file for the next run
    return [rows[email] for email in emails]


async def amake_users(count: int, start: int = 0) -> list[tuple[str, str]]:
    """make_users from async code (the ORM refuses to run on the event loop's thread)."""
    return await asyncio.to_thread(make_users, count, start)


async def closed_with(ws: Any, timeout: float = 5) -> int | None:
    """Read until the server closes the socket; its close code."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


async def ping(ws, timeout: float = 5) -> None:
    """Send the dashboard's {"type": "ping"} and wait for its pong (skipping pushed messages)."""
    await ws.send(json.dumps({"type": "ping"}))
    async with asyncio.timeout(timeout):
        while json.loads(await ws.recv()).get("type") != "pong":
            pass


async def listen(channel: str) -> Any:
    """A pub/sub subscriber to ``channel`` on this process's Redis client (what a daphne hears)."""
    from livestream.redis import get_redis

    pubsub = get_redis().pubsub()
    await pubsub.subscribe(channel)
    return pubsub


async def next_json(pubsub: Any, timeout: float = 2.0) -> dict[str, Any]:
    """The next message published to ``pubsub``'s channel, JSON-decoded."""
    async with asyncio.timeout(timeout):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
            if message is not None:
                return json.loads(message["data"])
