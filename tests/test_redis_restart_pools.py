"""Issue 20.5: after a Redis restart no pooled connection is left poisoned.

Before the fix every connection that sat idle in a pool across the restart failed
the first time it was used again, however long Redis had been back: a tab's
command got "the server cannot reach its workers", a staff stop failed, and the
worker's claim() raised outside its try (no reply; the tab waited for "timed out").

Runs its OWN redis-server (never the suite's, never 6379) and SIGKILLs it, behind a
proxy (devtools/faultproxy.py) that, as a real network does, does not tell idle
connections that the server went away (on one host the kernel would: EOF at once).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis

from dashboard.ws.hub import control_channel
from devtools.clients import create_accounts, login
from devtools.faultproxy import FaultProxy
from devtools.logs import log_problems
from devtools.processes import Stack, start_worker_ready, wait_until
from livestream import keys
from livestream.conf import get_settings
from streampai.embedded_redis import EmbeddedRedis
from tests.tabs import Tab

pytestmark = pytest.mark.processes

TABS, PER_TAB = 3, 8  # commands at once: each pool holds several connections


@pytest.fixture
def private_redis(tmp_path) -> EmbeddedRedis:
    server = EmbeddedRedis(tmp_path / "private-redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def proxy(private_redis) -> FaultProxy:
    proxy = FaultProxy(private_redis.socket_path).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def stack(tmp_path, migrated_db_template, key_prefix, proxy):
    env = {
        "REDIS_URL": proxy.url,
        "DJANGO_SETTINGS_MODULE": "tests.settings",  # registers Echo
        "LIVESTREAM_COMPONENTS": "ConsoleLogger,Echo",
        "LIVESTREAM_COMMAND_RATE": "0",
        "LIVESTREAM_PRESENCE_TTL": "3",
        "LIVESTREAM_HEARTBEAT_INTERVAL": "1",
    }
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=env)
    yield stack
    stack.stop_all()


async def wait_rebuilt(server: EmbeddedRedis, user_ids: list[str]) -> None:
    """Every user present, leased and listened to again in the restarted (empty) Redis."""
    wanted = [keys.lease_prefix() + uid for uid in user_ids]
    users = keys.key("presence", get_settings().TOPIC, "users")
    observer = aioredis.Redis.from_url(server.url, decode_responses=True)

    controls = [control_channel(uid) for uid in user_ids]

    async def back() -> bool:
        present = await observer.smembers(users)
        listened = dict(await observer.pubsub_numsub(*controls))  # daphne's hub re-subscribed
        return (
            set(user_ids) <= present
            and all(await observer.mget(wanted))
            and all(listened.get(c, 0) for c in controls)
        )

    try:
        await wait_until(back, 20, "presence and leases rebuilt")
    finally:
        await observer.aclose()


async def burst(tabs: list[Tab]) -> list[dict]:
    """PER_TAB commands from every tab at once (the Echo sleeps a little: they overlap)."""
    return await asyncio.gather(
        *(tab.command("Echo", "slow", {"seconds": 0.2}) for tab in tabs for _ in range(PER_TAB))
    )


async def staff_stop(web_url: str, staff_session: str, uid: str) -> str:
    async with httpx.AsyncClient(base_url=web_url, cookies={"sessionid": staff_session}, timeout=30) as http:
        await http.get("/admin/livestream/debug/")
        response = await http.post(
            f"/admin/livestream/debug/{uid}/stop/",
            data={"csrfmiddlewaretoken": http.cookies["csrftoken"]},
            headers={"Referer": web_url + "/admin/livestream/debug/"},
            follow_redirects=True,
        )
        assert response.status_code == 200
        return response.text


async def test_after_a_redis_restart_nothing_fails_the_first_time(stack, private_redis, proxy):
    web = stack.start_daphne()
    worker = await start_worker_ready(stack)
    stack.manage(
        "createsuperuser", "--noinput", "--username", "boss", "--email", "boss@example.com",
        DJANGO_SUPERUSER_PASSWORD="boss-pass-123456",
    )  # fmt: skip
    staff = await login(web.url, "boss@example.com", "boss-pass-123456")
    accounts = list(create_accounts(stack, [f"p{i}@x.io" for i in range(TABS + 1)]).values())
    users, victim = accounts[:TABS], accounts[TABS]
    tabs = [await Tab.open(web.url, a.session) for a in users]
    victim_tab = await Tab.open(web.url, victim.session)
    for account in accounts:
        await worker.log.wait_for(rf"UserStreamManager started: {account.user_id}\n", 15)
    assert all(reply["ok"] for reply in await burst(tabs))  # every pool now holds several connections

    # While Redis is down a command fails at once with an error reply and one log line.
    reset, zombies = proxy.cut()  # first: the clients must not see the server's sockets close
    private_redis.kill()
    assert zombies >= 2, (reset, zombies)
    mark = web.log.mark()
    down = await tabs[0].command("Echo", "whoami", timeout=10)
    assert down["ok"] is False and "cannot reach its workers" in down["error"]
    assert len(web.log.findall(r"command Echo\.whoami of user \d+ not sent", after=mark)) == 1

    private_redis.start()  # empty: presence and leases come back (heartbeats, the worker's tick)
    wmark, dmark = worker.log.mark(), web.log.mark()
    await wait_rebuilt(private_redis, [a.user_id for a in accounts])
    await asyncio.sleep(1.0)  # idle, as the pools of a quiet site are

    replies = await burst(tabs)
    failed = [r for r in replies if not r["ok"]]
    assert failed == [], failed
    page = await staff_stop(web.url, staff, victim.user_id)
    assert "Asked the workers to stop" in page, page[-2000:]
    await worker.log.wait_for(rf"staff \d+ stopped the manager of {victim.user_id}", 10, after=wmark)
    assert web.log.findall(r"not sent|cannot reach", after=dmark) == []
    assert worker.log.findall(r"not claimed|Traceback", after=wmark) == []
    for tab in [*tabs, victim_tab]:
        await tab.close()
    problems = [p for p in log_problems(stack.procs) if "Connection" not in p and "not sent" not in p]
    assert problems == [], problems
