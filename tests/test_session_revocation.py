"""Issue 20.1: a session that ends however it ends closes its sockets within 1 s and
its cookie opens no new socket: deleted through the ORM (as clearsessions, the admin's
bulk delete or an ops script do), a password change made elsewhere, an expiry (or a raw
SQL delete) that only the sweep can see. Real daphne; the changes come from another
process (manage.py shell), as an operator's would."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from dashboard.ws.live import SESSION_ENDED
from devtools.clients import create_accounts, login, open_socket
from devtools.processes import Stack
from tests.test_logout_closes_sockets import closed_with

pytestmark = pytest.mark.processes

PASSWORD = "revoked-pw-12345"
SHELL = "import time; from django.contrib.sessions.models import Session; "


@pytest.fixture
def stack(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix)
    stack.web = stack.start_daphne()
    yield stack
    stack.stop_all()


def shell(stack: Stack, code: str) -> float:
    """Run ``code`` in a manage.py shell; the time.time() it printed just before acting."""
    return float(stack.manage("shell", "-c", code).split()[-1])


async def closed_at(ws, timeout: float = 5.0) -> tuple[int, float]:
    code = await closed_with(ws, timeout)
    return code, time.time()


async def refused(url: str, session: str) -> bool:
    """A handshake with ``session`` is refused (or closed at once, never kept open)."""
    try:
        ws = await open_socket(url, session)
    except Exception:
        return True
    code = await closed_with(ws, 2.0)
    return code in (-1, 1006, 4001, 4003) or code is None


async def test_orm_deletes_close_the_sockets_within_a_second_and_refuse_the_cookie(stack):
    web = stack.web
    (account,) = create_accounts(stack, ["orm@x.io"]).values()
    keep = await open_socket(web.url, account.session)  # another session of the user stays
    delays = []
    for run in range(5):
        session = await asyncio.to_thread(_new_session, stack, account.user_id)
        sockets = [await open_socket(web.url, session) for _ in range(2)]
        closes = [asyncio.ensure_future(closed_at(ws)) for ws in sockets]
        if run % 2:  # a QuerySet delete (clearsessions, the admin's bulk delete)
            code = (
                SHELL + f"t = time.time(); Session.objects.filter(session_key='{session}').delete(); print(t)"
            )
        else:  # one instance
            code = (
                SHELL
                + f"s = Session.objects.get(session_key='{session}'); t = time.time(); s.delete(); print(t)"
            )
        started = await asyncio.to_thread(shell, stack, code)
        for code_, at in await asyncio.gather(*closes):
            assert code_ == SESSION_ENDED
            delays.append(at - started)
        assert await refused(web.url, session)
    await keep.ping()
    delays.sort()
    print(f"socket close after a session delete: p50 {statistics.median(delays) * 1000:.0f} ms, "
          f"max {delays[-1] * 1000:.0f} ms over {len(delays)}")  # fmt: skip
    assert delays[-1] < 1.0, delays
    await keep.close()


def _new_session(stack: Stack, user_id: str) -> str:
    code = (
        "from django.contrib.auth import get_user_model; from django.test import Client; "
        f"c = Client(); c.force_login(get_user_model().objects.get(pk={user_id})); "
        "print(c.cookies['sessionid'].value)"
    )
    return stack.manage("shell", "-c", code).split()[-1]


async def test_a_password_change_elsewhere_closes_the_other_sessions(stack):
    web = stack.web
    (account,) = create_accounts(stack, ["pw@x.io"]).values()
    other = await asyncio.to_thread(_new_session, stack, account.user_id)
    sockets = [await open_socket(web.url, s) for s in (account.session, account.session, other)]
    closes = [asyncio.ensure_future(closed_at(ws)) for ws in sockets]
    code = (
        "import time; from django.contrib.auth import get_user_model; "
        f"u = get_user_model().objects.get(pk={account.user_id}); u.set_password('{PASSWORD}'); "
        "t = time.time(); u.save(); print(t)"
    )
    started = await asyncio.to_thread(shell, stack, code)
    for code_, at in await asyncio.gather(*closes):
        assert code_ == SESSION_ENDED and at - started < 1.0, (code_, at - started)
    assert await refused(web.url, account.session) and await refused(web.url, other)
    fresh = await login(web.url, "pw@x.io", PASSWORD)  # the new password works
    ws = await open_socket(web.url, fresh)
    await ws.ping()
    await ws.close()


async def test_the_sweep_closes_expired_and_raw_sql_deleted_sessions(stack):
    web = stack.web
    (account,) = create_accounts(stack, ["sweep@x.io"]).values()
    expiring = await asyncio.to_thread(_new_session, stack, account.user_id)
    raw = await asyncio.to_thread(_new_session, stack, account.user_id)
    sockets = [await open_socket(web.url, s) for s in (expiring, raw)]
    closes = [asyncio.ensure_future(closed_at(ws)) for ws in sockets]
    code = (
        "import time; from django.db import connection; c = connection.cursor(); t = time.time(); "
        f"c.execute(\"UPDATE django_session SET expire_date = '2000-01-01' WHERE session_key = '{expiring}'\"); "
        f"c.execute(\"DELETE FROM django_session WHERE session_key = '{raw}'\"); print(t)"
    )
    started = await asyncio.to_thread(shell, stack, code)
    interval = 1.0  # SESSION_SWEEP_INTERVAL's default
    for code_, at in await asyncio.gather(*closes):
        assert code_ == SESSION_ENDED and at - started < interval + 1.0, (code_, at - started)
    assert await refused(web.url, expiring) and await refused(web.url, raw)
    await stack.web.log.wait_for(r"sessions with open sockets ended \(expired or deleted\)", 2)


@pytest.mark.django_db(transaction=True)
def test_deletes_are_announced_once_per_commit_and_never_after_a_rollback(monkeypatch, django_user_model):
    from django.contrib.sessions.models import Session
    from django.db import transaction
    from django.test import Client

    from dashboard.auth import revocation

    announced: list[list[str]] = []
    monkeypatch.setattr(revocation, "ended", lambda keys, reason: announced.append(sorted(keys)))
    user = django_user_model.objects.create(username="rb", email="rb@x.y")
    keys = []
    for _ in range(4):
        client = Client()
        client.force_login(user)
        keys.append(client.cookies["sessionid"].value)
    announced.clear()  # logging in rotates (deletes) the session it started with
    with pytest.raises(RuntimeError), transaction.atomic():
        Session.objects.filter(session_key=keys[0]).delete()
        raise RuntimeError("rolled back")
    assert announced == [] and Session.objects.filter(session_key=keys[0]).exists()
    Session.objects.filter(session_key__in=keys[:3]).delete()  # one batch for the QuerySet
    Session.objects.get(session_key=keys[3]).delete()  # autocommit: announced at once
    assert announced == [sorted(keys[:3]), [keys[3]]]
