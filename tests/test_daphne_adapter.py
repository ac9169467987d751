"""dashboard/daphne/adapter.py: daphne's, autobahn's and Twisted's internals behind one adapter
that checks them at start and switches off, in one log line, only what a missing one breaks."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys

import pytest

from dashboard.daphne import adapter
from devtools.clients import closed_with, create_accounts, open_socket, ping
from devtools.processes import BASE_DIR, BIN, PYTHON, Stack, base_env, free_port, wait_listening
from streampai import redis_internals
from streampai.redisconf import redis_client


@pytest.fixture(autouse=True)
def fresh_check():
    yield
    adapter.check(force=True)  # the next test sees the real libraries again


def test_every_attribute_is_there_with_the_pinned_versions(caplog):
    with caplog.at_level(logging.WARNING, logger="dashboard.daphne"):
        assert adapter.check(force=True) == {}
    assert "switched off" not in caplog.text


def test_a_missing_attribute_switches_off_its_feature_only_in_one_line(monkeypatch, caplog):
    from twisted.internet import tcp

    monkeypatch.delattr(tcp.Connection, "getHandle")
    with caplog.at_level(logging.WARNING, logger="dashboard.daphne"):
        off = adapter.check(force=True)
    assert off == {adapter.SMALL_BUFFER: "twisted tcp.Connection.getHandle missing"}
    lines = [r.getMessage() for r in caplog.records if r.name == "dashboard.daphne"]
    assert lines == [
        "daphne adapter: switched off small receive buffer (twisted tcp.Connection.getHandle missing) "
        "(daphne/autobahn/Twisted differ from the pinned versions)"
    ]
    assert not adapter.enabled(adapter.SMALL_BUFFER)
    others = set(adapter.REQUIREMENTS) - {adapter.SMALL_BUFFER}
    assert all(adapter.enabled(feature) for feature in others)


def test_an_import_that_fails_is_a_switched_off_feature_not_an_error(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "autobahn.websocket.protocol", None)  # import raises ImportError
    with caplog.at_level(logging.WARNING, logger="dashboard.daphne"):
        off = adapter.check(force=True)
    assert set(off) == {adapter.RESTART_CLOSE, adapter.LAZY_LOG}
    assert len([r for r in caplog.records if r.name == "dashboard.daphne"]) == 1
    adapter.lazy_autobahn_config_log()  # off: does nothing, raises nothing


# A process whose autobahn lost one attribute the adapter uses, then runs argv[1:] as a command.
WITHOUT = """
import runpy, sys
{delete}
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_migrate_runs_with_an_attribute_missing(tmp_path):
    delete = "import autobahn.websocket.protocol as p; del p.WebSocketProtocol._connectionMade"
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    done = subprocess.run(
        [PYTHON, "-c", WITHOUT.format(delete=delete), "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "AttributeError" not in done.stderr


@pytest.mark.processes
async def test_daphne_without_one_attribute_says_so_once_and_the_rest_works(
    tmp_path, migrated_db_template, key_prefix
):
    stack = Stack(tmp_path, migrated_db_template, key_prefix)
    try:
        delete = "from twisted.internet import tcp; del tcp.Connection.getHandle"
        port = free_port()
        daphne = str(BIN / "daphne")
        args = [PYTHON, "-c", WITHOUT.format(delete=delete), daphne, "-b", "127.0.0.1", "-p", str(port)]
        web = stack._spawn("daphne", [*args, "streampai.asgi:application"])
        web.port, web.url = port, f"http://127.0.0.1:{port}"
        wait_listening(port, web)
        stack.start_worker()
        (user,) = create_accounts(stack, ["adapter@x.io"]).values()
        ws = await open_socket(web.url, user.session)
        await ping(ws)  # the socket works
        log = web.log.text()
        assert log.count("daphne adapter: switched off") == 1, log
        assert "switched off small receive buffer (twisted tcp.Connection.getHandle missing)" in log
        web.signal(signal.SIGTERM)
        assert await closed_with(ws, timeout=10) == 1012  # the hand-off's close still works
    finally:
        stack.stop_all()


# -- redis-py's and channels-redis' internals (streampai/redis_internals.py) -------------


@pytest.fixture
def fresh_redis_check():
    yield
    redis_internals.check(force=True)


@pytest.mark.redis
async def test_redis_adapter_switches_off_only_what_a_missing_attribute_breaks(
    monkeypatch, caplog, fresh_redis_check
):
    from channels_redis.core import RedisChannelLayer

    with caplog.at_level(logging.WARNING, logger="streampai.redis"):
        assert redis_internals.check(force=True) == {}
        monkeypatch.delattr(RedisChannelLayer, "create_pool")
        off = redis_internals.check(force=True)
    assert off == {redis_internals.LAYER_POOLS: "channels-redis RedisChannelLayer.create_pool missing"}
    lines = [r.getMessage() for r in caplog.records if r.name == "streampai.redis"]
    assert len(lines) == 1 and "switched off bounded channel-layer pools" in lines[0]
    assert redis_internals.enabled(redis_internals.FOLLOW_MASTER)
    client = redis_client()  # the bounded pool and its release still work
    try:
        assert await client.ping()
        assert await client.ping()
    finally:
        await client.aclose()
