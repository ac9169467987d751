"""/metrics: off by default, never public, and the numbers match Redis and the workers."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from devtools.processes import wait_until
from livestream.components.base import Component
from livestream.keys import key
from livestream.observe.metrics import BUCKETS, read_metrics, record_join_to_running, render
from livestream.observe.state import run_sync
from livestream.presence.store import PresenceStore
from livestream.timers.store import TimerStore
from tests.staff_helpers import connect, publish_fake_worker, status, ticks

TOKEN = "s3cret-metrics-token-0123456789"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def staff_client(django_user_model, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    staff = django_user_model.objects.create_user("ops", "ops@example.com", "pw-123456789", is_staff=True)
    client = Client()
    client.force_login(staff)
    return client


# -- access --------------------------------------------------------------------


@pytest.mark.django_db
def test_disabled_by_default_is_404_for_everyone(client, staff_client):
    assert client.get("/metrics").status_code == 404
    assert staff_client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 404


@pytest.mark.django_db
def test_enabled_without_a_token_is_staff_only(client, staff_client, django_user_model, configure_livestream):
    configure_livestream(METRICS_ENABLED=True)
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 403
    plain = django_user_model.objects.create_user("plain", "plain@example.com", "pw-123456789")
    client.force_login(plain)
    assert client.get("/metrics").status_code == 403
    response = staff_client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


@pytest.mark.django_db
def test_enabled_with_a_token_takes_the_bearer_token(client, configure_livestream):
    configure_livestream(METRICS_ENABLED="true", METRICS_TOKEN=TOKEN)  # strings, as from the environment
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}x").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=TOKEN).status_code == 403
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert b"streampai_present_users" in response.content


# -- numbers -------------------------------------------------------------------


@pytest.mark.django_db
def test_numbers_match_the_shared_state(client, configure_livestream):
    configure_livestream(METRICS_ENABLED=True, METRICS_TOKEN=TOKEN, LEASE_TTL=5.0)
    now = time.time()

    async def seed(redis):
        store = PresenceStore(client=redis)
        for uid, ref in (("1", "a"), ("1", "b"), ("2", "c")):
            await store.track(uid, {"email": "x@example.com", "joined_at": 1, "ref": ref})
        await publish_fake_worker(redis, "w1", {"1": status(now), "2": status(now, "restarting", restarts=2)})
        await publish_fake_worker(redis, "w2", {"3": status(now, restarts=1)})
        await publish_fake_worker(redis, "dead", {"4": status(now)}, seen_ago=30)  # not counted
        await TimerStore(redis).schedule("cleanup:3", "x", {"type": "presence.cleanup", "user_id": "3"}, 9)
        await redis.hset(key("metrics", "restarts"), mapping={"ConsoleLogger": 5})
        for seconds in (0.0004, 0.003, 0.003, 0.7, 60):
            await record_join_to_running(seconds, redis)

    run_sync(seed)
    got = samples(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode())
    assert got[("streampai_present_users", ())] == 2
    assert got[("streampai_open_sessions", ())] == 3
    assert got[("streampai_running_managers", ())] == 3
    assert got[("streampai_pending_cleanups", ())] == 1
    assert got[("streampai_live_workers", ())] == 2
    assert got[("streampai_held_by_staff", ())] == 0
    assert got[("streampai_components", (("component", "ConsoleLogger"), ("state", "running")))] == 2
    assert got[("streampai_components", (("component", "ConsoleLogger"), ("state", "restarting")))] == 1
    assert got[("streampai_component_restarts_total", (("component", "ConsoleLogger"),))] == 5
    hist = "streampai_join_to_running_seconds"
    assert got[(f"{hist}_count", ())] == 5
    assert got[(f"{hist}_sum", ())] == pytest.approx(60.7064)
    assert got[(f"{hist}_bucket", (("le", "0.001"),))] == 1
    assert got[(f"{hist}_bucket", (("le", "0.005"),))] == 3
    assert got[(f"{hist}_bucket", (("le", "1.0"),))] == 4
    assert got[(f"{hist}_bucket", (("le", "10.0"),))] == 4
    assert got[(f"{hist}_bucket", (("le", "+Inf"),))] == 5
    assert len([k for k in got if k[0] == f"{hist}_bucket"]) == len(BUCKETS) + 1


async def test_empty_state_renders_zeros():
    got = samples(render(await read_metrics()).decode())
    assert got[("streampai_running_managers", ())] == 0
    assert got[("streampai_join_to_running_seconds_count", ())] == 0


# -- measured by a real worker -------------------------------------------------


class Crashy(Component):
    """Crashes at once, every time: the supervisor restarts it MAX_RESTARTS times, then gives up."""

    async def run(self) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom (test)")


async def _metrics() -> dict:
    return samples(render(await read_metrics()).decode())


async def test_a_worker_measures_join_to_running(run_worker, aredis):
    worker = await run_worker()
    await ticks(worker.manager.worker_id, 0, aredis)
    # No more reconcile ticks: the joins, not a tick's orphan claim, must start the managers.
    (reconcile,) = await wait_until(  # a list: wait_until would await a task it is given
        lambda: [t for t in worker.manager.scope.tasks if t.get_name() == "reconcile tick"],
        5,
        "the reconcile loop",
    )
    reconcile.cancel()
    for uid in ("1", "2", "3"):
        await connect(uid, f"tab{uid}")
    got = await wait_until(
        lambda: _if(_metrics(), lambda m: m[("streampai_join_to_running_seconds_count", ())] >= 3),
        5,
        "3 joins",
    )
    assert got[("streampai_join_to_running_seconds_count", ())] == 3
    # Each join took the worker a few Redis round trips on this machine, not seconds.
    assert 0 < got[("streampai_join_to_running_seconds_sum", ())] < 3 * 0.5
    assert got[("streampai_join_to_running_seconds_bucket", (("le", "0.5"),))] == 3
    assert sorted(worker.manager.local.managers) == ["1", "2", "3"]


async def test_a_worker_counts_component_restarts_once(run_worker, configure_livestream, aredis):
    configure_livestream(
        RECONCILE_INTERVAL=0.05,
        COMPONENTS="Crashy",
        EXTRA_COMPONENTS={"Crashy": "tests.test_metrics.Crashy"},
        RESTART_BACKOFF=0.05,
        MAX_RESTARTS=3,
    )
    worker = await run_worker()
    await connect("1", "tab")
    key_ = ("streampai_components", (("component", "Crashy"), ("state", "failed")))
    got = await wait_until(lambda: _if(_metrics(), lambda m: m.get(key_) == 1), 10, "Crashy failed")
    assert got[("streampai_component_restarts_total", (("component", "Crashy"),))] == 3
    await ticks(
        worker.manager.worker_id, 5, aredis
    )  # more ticks publish the same restarts: not counted again
    got = await _metrics()
    assert got[("streampai_component_restarts_total", (("component", "Crashy"),))] == 3


async def _if(coro, predicate):
    value = await coro
    return value if predicate(value) else None


@pytest.mark.django_db
def test_redis_down_is_a_503_not_a_crash(client, configure_livestream, settings):
    configure_livestream(METRICS_ENABLED=True, METRICS_TOKEN=TOKEN)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 503
