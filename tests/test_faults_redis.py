"""Issue 4.4: Redis restarts and loses everything.

This test runs its OWN redis-server (an EmbeddedRedis in tmp_path, on a unix
socket), never the suite's shared one and never the machine's 6379, and kills
and restarts it under a running daphne and two workers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from dashboard.ws.hub import control_channel
from devtools.clients import create_accounts, open_socket, ping
from devtools.logs import log_problems, manager_runs, overlapping_runs, running_at
from devtools.processes import Proc, Stack
from streampai.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.processes

HEARTBEAT, CLEANUP = 1.0, 2.0


@pytest.fixture
def private_redis(tmp_path) -> EmbeddedRedis:
    server = EmbeddedRedis(tmp_path / "private-redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def observer(private_redis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def stack(tmp_path, migrated_db_template, key_prefix, private_redis):
    env = {
        "REDIS_URL": private_redis.url,
        "LIVESTREAM_PRESENCE_TTL": "3",
        "LIVESTREAM_HEARTBEAT_INTERVAL": str(HEARTBEAT),
        "LIVESTREAM_CLEANUP_TIMEOUT": str(CLEANUP),
    }
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=env)
    yield stack
    stack.stop_all()


def gaps(workers: list[Proc], user_ids: set[str], since: float, until: float) -> dict[str, float]:
    """Per user, the longest stretch in [since, until] with no manager running (10 ms resolution)."""
    runs = manager_runs(workers)
    longest = dict.fromkeys(user_ids, 0.0)
    open_since: dict[str, float | None] = dict.fromkeys(user_ids)
    t = since
    while t <= until:
        live = running_at(runs, t)
        for uid in user_ids:
            if uid in live:
                open_since[uid] = None
            else:
                start = open_since[uid] = open_since[uid] or t
                longest[uid] = max(longest[uid], t - start)
        t += 0.01
    return longest


async def wait_present(
    observer: aioredis.Redis, key_prefix: str, user_ids: set[str], timeout: float
) -> float:
    started = time.monotonic()
    deadline = started + timeout
    users_key = f"{key_prefix}:presence:users_presence:users"
    while True:
        try:
            if set(await observer.smembers(users_key)) == user_ids:
                break
        except redis.ConnectionError:  # our own pooled connection died with the server
            pass
        assert time.monotonic() < deadline, "presence was not rebuilt"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def wait_all_running(workers: list[Proc], user_ids: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while set(running_at(manager_runs(workers), time.time())) != user_ids:
        assert time.monotonic() < deadline, f"not all of {user_ids} run"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("outage", [0.0, 4.0], ids=["restart", "down-4s"])
async def test_redis_restart_with_data_loss(stack, private_redis, observer, key_prefix, outage):
    web = stack.start_daphne()
    workers = [stack.start_worker(f"worker{i}") for i in (1, 2)]
    accounts = list(create_accounts(stack, [f"r{i}@x.io" for i in range(6)]).values())
    user_ids = {a.user_id for a in accounts}
    sockets = [await open_socket(web.url, a.session) for a in accounts]
    await wait_all_running(workers, user_ids, timeout=10)
    assert await observer.dbsize() > 0

    private_redis.kill()  # SIGKILL: no save, nothing on disk; everything is lost
    down_at = time.time()
    await asyncio.sleep(outage)
    private_redis.start()
    up_at = time.time()
    rebuilt = await wait_present(observer, key_prefix, user_ids, timeout=HEARTBEAT + 5)
    await wait_all_running(workers, user_ids, timeout=HEARTBEAT + 5)
    back_at = time.time()
    # The sockets stayed open through it all: each still answers a ping.
    for ws in sockets:
        await ping(ws)
    # daphne's hub logged the outage once and re-subscribed its sockets' channels.
    await web.log.wait_for(r"\[hub\] Redis pub/sub back after", timeout=5)
    assert len(web.log.findall(r"\[hub\] Redis pub/sub connection lost")) == 1
    assert len(web.log.findall(r"\[hub\] Redis pub/sub back after")) == 1
    numsub = dict(await observer.pubsub_numsub(*(control_channel(a.user_id) for a in accounts)))
    assert set(numsub.values()) == {1}, numsub
    # Absent users and normal traffic work again: one user leaves, one tab more.
    await sockets.pop().close()
    gone = accounts[-1].user_id
    await wait_all_running(workers, user_ids - {gone}, timeout=CLEANUP + 3)
    settled = time.time()

    longest = gaps(workers, user_ids - {gone}, up_at, settled)
    print(
        f"Redis {'restart' if not outage else f'down {outage:g}s'}: presence rebuilt {rebuilt:.2f}s after it "
        f"came back; managers running again {back_at - up_at:.2f}s after; longest gap after restart "
        f"{max(longest.values()):.2f}s; stopped during outage: "
        f"{sum(bool(w.log.findall('leases not renewed')) for w in workers)} workers fenced"
    )
    assert max(longest.values()) <= HEARTBEAT + 0.5, longest
    assert not overlapping_runs(manager_runs(workers)), overlapping_runs(manager_runs(workers))
    for proc in [web, *workers]:
        assert proc.alive(), f"{proc.name} died"
    assert not log_problems([web, *workers]), "\n".join(log_problems([web, *workers]))
    assert down_at < up_at
    for ws in sockets:
        await ws.close()
