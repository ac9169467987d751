"""Issue 9.2 and the bounded pool (issue 8.7): configuration is checked at start, pools wait.

Unit tests of the URL parser and LIVESTREAM checks, then real daphne and
runworker processes given a bad configuration: each exits at once with one
clear line. A Redis that is merely down at start is waited for.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured

from devtools.processes import BASE_DIR, BIN, PYTHON, Stack, base_env, free_port
from livestream.conf import LivestreamSettings, validate
from streampai.embedded_redis import EmbeddedRedis
from streampai.redisconf import (
    BlockingSentinelConnectionPool,
    caches,
    channel_layers,
    layer_pool,
    redis_client,
)
from streampai.redisurl import parse_redis_url
from streampai.startup import EXIT_STATUS, PREFIX

# -- REDIS_URL -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://user:pw@redis.example.com:6380/2",
        "unix:///tmp/redis.sock?db=1",
        "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3/mymaster/3",
    ],
)
def test_supported_redis_urls_parse(url):
    target = parse_redis_url(url)
    assert target.url == url
    assert channel_layers(url)["default"]["CONFIG"]["hosts"]
    assert caches(url, "p")["default"]["LOCATION"] == [url]  # a list: RedisCache splits strings on ","


def test_sentinel_url_follows_the_convention():
    target = parse_redis_url(
        "redis+sentinel://:s3cret@h1:26379,h2/svc/4?socket_timeout=3&sentinel_password=sp&client_type=master"
    )
    assert target.sentinels == (("h1", 26379), ("h2", 26379))
    assert target.service == "svc"
    assert target.client_kwargs == {"password": "s3cret", "db": 4, "socket_timeout": 3.0}
    assert target.sentinel_kwargs == {"password": "sp"}
    host = channel_layers("redis+sentinel://h1:1/svc")["default"]["CONFIG"]["hosts"][0]
    assert host["sentinels"] == [("h1", 1)] and host["master_name"] == "svc"
    assert isinstance(layer_pool(host), BlockingSentinelConnectionPool)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("localhost:6379", "unsupported scheme"),
        ("http://localhost:6379", "unsupported scheme"),
        ("redis://localhost:notaport/0", "Port"),
        ("redis://:6379/0", "no host"),
        ("unix://", "socket path"),
        ("redis+sentinel://h1:26379", "no service name"),
        ("redis+sentinel://h1:x/svc", "not a number"),
        ("redis+sentinel://h1/svc/zero", "not a number"),
        ("redis+sentinel://h1/svc/0?client_type=slave", "client_type"),
        ("redis+sentinel://h1/svc/0?bogus=1", "unknown option"),
    ],
)
def test_bad_redis_urls_are_one_clear_error(url, message):
    with pytest.raises(ImproperlyConfigured, match=message) as info:
        parse_redis_url(url)
    assert "\n" not in str(info.value)


def test_password_never_in_the_error():
    with pytest.raises(ImproperlyConfigured) as info:
        parse_redis_url("redis+sentinel://:topsecret@h1/svc/0?bogus=1")
    assert "topsecret" not in str(info.value)


# -- LIVESTREAM ------------------------------------------------------------------


def test_defaults_are_valid():
    validate(LivestreamSettings())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"LEASE_TTL": 1.0, "RECONCILE_INTERVAL": 1.0}, "fence threshold"),
        ({"PRESENCE_TTL": 15.0, "HEARTBEAT_INTERVAL": 10.0}, "2 x HEARTBEAT_INTERVAL"),
        ({"CLEANUP_TIMEOUT": -1.0}, "CLEANUP_TIMEOUT must be >= 0"),
        ({"RECONCILE_INTERVAL": 0.0}, "RECONCILE_INTERVAL must be > 0"),
        ({"HEARTBEAT_INTERVAL": 0.0}, "HEARTBEAT_INTERVAL must be > 0"),
        ({"REDIS_MAX_CONNECTIONS": 1}, "REDIS_MAX_CONNECTIONS"),
        ({"RESTART_BACKOFF": 3.0}, "RESTART_BACKOFF"),
    ],
)
def test_inconsistent_livestream_values_are_refused(values, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        validate(LivestreamSettings(**values))


# -- the bounded pool --------------------------------------------------------------


async def test_pool_waits_at_its_ceiling_instead_of_opening_more(redis_url, key_prefix):
    name = f"pool-{uuid.uuid4().hex[:8]}"
    client = redis_client(redis_url, max_connections=4, client_name=name)
    observer = redis_client(redis_url)
    try:
        hold = 0.3
        started = time.monotonic()
        # 12 commands that each hold a connection for 0.3 s: 3 rounds of 4, not 12 connections.
        await asyncio.gather(*(client.blpop(f"{key_prefix}:empty:{i}", timeout=hold) for i in range(12)))
        elapsed = time.monotonic() - started
        clients = [c for c in await observer.client_list() if c.get("name") == name]
        assert len(clients) <= 4, clients
        assert 3 * hold - 0.05 <= elapsed < 3 * hold + 1.5, elapsed
    finally:
        await client.aclose()
        await observer.aclose()


async def test_get_redis_and_the_channel_layer_are_bounded(configure_livestream, redis_url):
    import redis.asyncio as aioredis
    from channels.layers import get_channel_layer

    from livestream.redis import get_redis

    configure_livestream(REDIS_MAX_CONNECTIONS=7)
    pool = get_redis().connection_pool
    assert isinstance(pool, aioredis.BlockingConnectionPool) and pool.max_connections == 7
    layer_pool_ = get_channel_layer().create_pool(0)
    assert isinstance(layer_pool_, aioredis.BlockingConnectionPool) and layer_pool_.max_connections == 7
    await layer_pool_.disconnect()


# -- processes refuse a bad configuration at start ------------------------------------

BAD = [
    ({"REDIS_URL": "http://localhost:6379"}, "REDIS_URL"),
    ({"REDIS_URL": "redis+sentinel://h1:26379"}, "no service name"),
    ({"DATABASE_URL": "mysql://u@h/db"}, "not supported"),
    ({"DATABASE_URL": "nosuch://x"}, "DATABASE_URL"),
    ({"LIVESTREAM_LEASE_TTL": "1", "LIVESTREAM_RECONCILE_INTERVAL": "1"}, "fence threshold"),
    ({"LIVESTREAM_PRESENCE_TTL": "abc"}, "PRESENCE_TTL"),
    ({"LIVESTREAM_NO_SUCH_KEY": "1"}, "Unknown LIVESTREAM settings"),
    ({"DEBUG": "0", "SECRET_KEY": "short"}, "SECRET_KEY"),
]


def assert_one_line_exit(done: subprocess.CompletedProcess[str], message: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == EXIT_STATUS, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and message in lines[0], done.stderr[-3000:]


@pytest.mark.processes
@pytest.mark.parametrize(("env", "message"), BAD, ids=[m for _, m in BAD])
def test_worker_and_daphne_stop_at_start(env, message):
    worker = [PYTHON, "manage.py", "runworker", "presence-manager"]
    daphne = [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(free_port()), "streampai.asgi:application"]
    for command in (worker, daphne):
        started = time.monotonic()
        done = subprocess.run(
            command, cwd=BASE_DIR, env=base_env(**env), capture_output=True, text=True, timeout=60
        )
        assert_one_line_exit(done, message)
        assert time.monotonic() - started < 15  # at start, not after retrying


@pytest.mark.processes
async def test_redis_down_at_start_is_waited_for(tmp_path, migrated_db_template, key_prefix):
    server = EmbeddedRedis(tmp_path / "late-redis")
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env={"REDIS_URL": server.url})
    try:
        worker = stack.start_worker()
        web = stack.start_daphne()  # listens: an outage is not a configuration error
        await worker.log.wait_for(r"\[channel layer\] Redis unreachable", timeout=30)
        mark = worker.log.mark()
        await worker.log.wait_for(
            r"reconcile tick failed", timeout=10, after=mark
        )  # still retrying, a second later
        assert worker.alive() and web.alive(), worker.log.text()[-3000:]
        server.start()
        # Ticks succeed again: the worker's heartbeat key shows up in the new Redis.
        client = redis_client(server.url)
        try:
            deadline = time.monotonic() + 10
            while not await client.keys(f"{key_prefix}:*"):
                assert time.monotonic() < deadline, "the worker wrote nothing to Redis once it was up"
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        assert worker.alive() and web.alive()
    finally:
        stack.stop_all()
        server.stop()


def test_sync_client_is_bounded_too(redis_url):
    import redis

    from streampai.redisconf import sync_redis_client

    client = sync_redis_client(redis_url, max_connections=5)
    try:
        assert isinstance(client.connection_pool, redis.BlockingConnectionPool)
        assert client.connection_pool.max_connections == 5
        assert client.ping()
    finally:
        client.close()


async def test_the_pool_serves_a_crowd_in_order_and_loses_no_permit(redis_url):
    """2,000 checkouts on 2 connections, some cancelled or timed out while they wait: the rest
    all run, first come first served, and the pool ends with both permits free."""
    from streampai.redisconf import BoundedConnectionPool

    pool = BoundedConnectionPool.from_url(redis_url, max_connections=2, timeout=5.0)
    order: list[int] = []

    async def use(i: int) -> None:
        connection = await pool.get_connection()
        try:
            order.append(i)
            await connection.send_command("PING")
            assert await connection.read_response() in (b"PONG", "PONG")
        finally:
            await pool.release(connection)

    try:
        tasks = [asyncio.create_task(use(i)) for i in range(2000)]
        await asyncio.sleep(0)
        for task in tasks[100:200]:
            task.cancel()  # some give up while waiting
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert sum(isinstance(r, asyncio.CancelledError) for r in done) == 100
        expected = [i for i in range(2000) if not 100 <= i < 200]
        # First come, first served: only the two holding a connection at once may swap.
        assert sorted(order) == expected
        assert max(abs(order.index(i) - k) for k, i in enumerate(expected)) <= 1
        assert len(pool._in_use_connections) == 0
        short = BoundedConnectionPool.from_url(redis_url, max_connections=1, timeout=0.2)
        held = await short.get_connection()
        with pytest.raises(redis.ConnectionError, match="No connection available"):
            await short.get_connection()  # times out ...
        await short.release(held)
        again = await asyncio.wait_for(short.get_connection(), 1.0)  # ... and leaked no permit
        await short.release(again)
        await short.disconnect()
    finally:
        await pool.disconnect()


@pytest.mark.parametrize("fixed", [True, False], ids=["ours", "redis-py"])
async def test_a_cancelled_waiter_does_not_strand_the_others(redis_url, fixed):
    """A waiter notified and then cancelled must not keep the next waiter asleep until its timeout."""
    import redis.asyncio as aioredis

    from streampai.redisconf import BoundedConnectionPool

    cls = BoundedConnectionPool if fixed else aioredis.BlockingConnectionPool
    pool = cls.from_url(redis_url, max_connections=1, timeout=2.0)
    try:
        held = await pool.get_connection()
        first = asyncio.create_task(pool.get_connection())
        second = asyncio.create_task(pool.get_connection())
        await asyncio.sleep(0.05)  # both wait
        await pool.release(held)  # notifies the first waiter ...
        first.cancel()  # ... which is cancelled before it runs (a socket closed meanwhile)
        started = time.monotonic()
        await asyncio.wait([first])
        if not first.cancelled():  # it ran before the cancel landed and got the connection
            await pool.release(first.result())
        if fixed:
            connection = await asyncio.wait_for(second, 1.0)
            assert time.monotonic() - started < 0.5
            await pool.release(connection)
        else:  # the bug we work around (Python < 3.13): the second waiter sleeps until its timeout
            import sys

            if sys.version_info >= (3, 13):
                pytest.skip("asyncio.Condition no longer loses the notification")
            with pytest.raises(redis.ConnectionError, match="No connection available"):
                await second
            assert time.monotonic() - started > 1.5
    finally:
        await pool.disconnect()


@pytest.mark.parametrize(
    ("env", "port"),
    [
        ({}, 1935),
        ({"RTMP_PORT": "19350"}, 19350),
        ({"RTMP_PORT": "19350", "LIVESTREAM_RTMP_PORT": "19999"}, 19999),
    ],
    ids=["default", "RTMP_PORT", "LIVESTREAM_RTMP_PORT wins"],
)
def test_the_ingest_port_comes_from_RTMP_PORT_as_daphnes_from_PORT(env, port):
    """Issue 18: `make run` takes the ingest's port from RTMP_PORT (the settings read it at import)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("RTMP_PORT", "LIVESTREAM_RTMP_PORT")}
    code = (
        "import django; django.setup(); from livestream.conf import get_settings; "
        "print(get_settings().RTMP_PORT)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "DJANGO_SETTINGS_MODULE": "streampai.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split()[-1] == str(port)
