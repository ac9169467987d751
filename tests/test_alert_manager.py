"""AlertManager (livestream/components/alert_manager.py) in-process, against real Redis.

The component runs under its real ComponentSupervisor and emits through the real
Component.emit; a probe subscribed to the user's control channel (what every open tab
of the user is subscribed to, dashboard/ws/hub.py) stands in for the tabs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest

from alerts.queue import AlertQueue
from devtools.processes import wait_until
from livestream import keys
from livestream.components.alert_manager import AlertManager
from livestream.components.supervisor import ComponentSupervisor
from tests.test_alert_queue import present

USER = "42"
DISPLAY = 0.2


@pytest.fixture(autouse=True)
async def fast_alerts(configure_livestream) -> str:
    # A long re-check: only a wake-up can explain a prompt delivery.
    configure_livestream(ALERT_DISPLAY_INTERVAL=DISPLAY, ALERT_RECHECK_INTERVAL=30.0)
    return await present(USER)  # the user has a tab open (the tests that need none untrack it)


class Tabs:
    """Every alert frame published for the user, with its arrival time."""

    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub
        self.alerts: list[tuple[float, dict[str, Any]]] = []

    async def collect(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.alerts) < n:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
                if message is None:
                    continue
                envelope = json.loads(message["data"])
                if envelope.get("type") != "component.event":
                    continue
                frame = json.loads(envelope["frame"])
                assert envelope["user_id"] == USER
                if (frame["component"], frame["event"]) == ("AlertManager", "alert"):
                    self.alerts.append((time.monotonic(), frame["data"]))
        return [data for _, data in self.alerts]

    async def quiet(self, seconds: float) -> None:
        """Nothing more arrives for ``seconds`` (a bounded negative check)."""
        before = len(self.alerts)
        with pytest.raises(TimeoutError):
            await self.collect(before + 1, timeout=seconds)

    def ids(self) -> list[str]:
        return [data["id"] for _, data in self.alerts]


@pytest.fixture
async def tabs():
    from livestream.redis import get_redis

    pubsub = get_redis().pubsub()
    await pubsub.subscribe(keys.control(USER))
    yield Tabs(pubsub)
    await pubsub.aclose()


async def queue_alerts(n: int, start: int = 1) -> list[str]:
    queue = AlertQueue(USER)
    ids = []
    for i in range(start, start + n):
        alert = {"id": f"id{i}", "kind": "donation", "from": f"donor {i}", "amount": i}
        assert await queue.push(alert, cap=100) is not None
        ids.append(alert["id"])
    return ids


async def start() -> ComponentSupervisor:
    supervisor = ComponentSupervisor(AlertManager, USER)
    supervisor.start()
    return supervisor


async def test_alerts_queued_with_no_manager_are_delivered_in_order_one_at_a_time(tabs):
    ids = await queue_alerts(4)
    supervisor = await start()
    try:
        got = await tabs.collect(4)
        assert [a["id"] for a in got] == ids
        assert got[0] == {"id": "id1", "kind": "donation", "from": "donor 1", "amount": 1}
        gaps = [b[0] - a[0] for a, b in zip(tabs.alerts, tabs.alerts[1:], strict=False)]
        assert all(DISPLAY * 0.9 <= gap < DISPLAY + 0.5 for gap in gaps), gaps
        await wait_until(lambda: supervisor.status()["delivered"] == 4, 2, "delivered count")
        assert supervisor.status()["queued"] == 0
        await tabs.quiet(DISPLAY * 2)
    finally:
        await supervisor.stop()


async def test_an_alert_queued_while_running_is_delivered_at_once(tabs):
    supervisor = await start()
    try:
        from alerts.wakeups import listener

        await asyncio.wait_for(listener().subscribed.wait(), 5)
        queued_at = time.monotonic()
        await queue_alerts(1)
        await tabs.collect(1)
        assert tabs.alerts[0][0] - queued_at < 0.5  # woken, not the 30 s re-check
    finally:
        await supervisor.stop()


async def test_a_restarted_manager_never_sends_an_alert_twice(tabs):
    ids = await queue_alerts(5)
    first = await start()
    await tabs.collect(2)
    await first.stop()  # e.g. the last tab closed, or a staff restart
    second = await start()
    try:
        await tabs.collect(5)
        assert tabs.ids() == ids
        await tabs.quiet(DISPLAY * 2)
    finally:
        await second.stop()


async def test_two_instances_at_once_the_newer_wins_and_each_alert_goes_out_once(tabs, caplog):
    ids = await queue_alerts(4)
    older = await start()
    await tabs.collect(1)
    newer = await start()  # a takeover while the old owner still runs (a fenced worker)
    try:
        with caplog.at_level(logging.WARNING):
            await tabs.collect(4)
            await wait_until(lambda: older.component.superseded, 2, "the older instance stops")
        assert tabs.ids() == ids
        assert "AlertManager superseded by a newer instance" in caplog.text
        await tabs.quiet(DISPLAY * 2)
    finally:
        await older.stop()
        await newer.stop()


async def test_an_alert_left_in_flight_by_a_dead_instance_is_not_sent_again(tabs, caplog):
    ids = await queue_alerts(3)
    queue = AlertQueue(USER)
    await queue.claim("dead-worker")
    assert (await queue.take("dead-worker")).alert["id"] == ids[0]  # killed before its ack
    with caplog.at_level(logging.WARNING):
        supervisor = await start()
        try:
            await tabs.collect(2)
            assert tabs.ids() == ids[1:]
            assert supervisor.status()["lost_in_flight"] == 1
            await tabs.quiet(DISPLAY * 2)
        finally:
            await supervisor.stop()
    assert f"alert {ids[0]} was in flight when its previous instance stopped" in caplog.text


async def test_with_no_open_tab_alerts_wait_and_go_out_when_a_tab_comes_back(tabs, fast_alerts):
    from livestream.presence.store import PresenceStore

    await PresenceStore().untrack_many([(USER, fast_alerts)])  # last tab closed: cleanup pending
    ids = await queue_alerts(2)
    supervisor = await start()
    try:
        await tabs.quiet(DISPLAY * 3)  # nothing emitted to nobody ...
        assert [a["id"] for a in await AlertQueue(USER).pending()] == ids  # ... all still queued
        back = time.monotonic()
        await present(USER)  # a tab again
        await tabs.collect(2)
        assert tabs.ids() == ids
        assert tabs.alerts[0][0] - back < 1.5  # looked at every AWAY_POLL (0.5 s)
    finally:
        await supervisor.stop()


async def test_stopping_mid_stream_leaves_the_rest_queued(tabs):
    ids = await queue_alerts(3)
    supervisor = await start()
    await tabs.collect(1)
    await supervisor.stop()
    assert [a["id"] for a in await AlertQueue(USER).pending()] == ids[1:]
    assert await AlertQueue(USER).redis.get(keys.alerts(USER, "inflight")) is None


async def test_an_owner_key_lost_with_redis_data_is_claimed_again(tabs):
    supervisor = await start()
    try:
        await wait_until(lambda: AlertQueue(USER).redis.get(keys.alerts(USER, "owner")), 2, "claimed")
        await AlertQueue(USER).redis.delete(keys.alerts(USER, "owner"))  # as after a restart without data
        ids = await queue_alerts(2)
        await tabs.collect(2)
        assert tabs.ids() == ids and not supervisor.component.superseded
    finally:
        await supervisor.stop()


async def test_after_a_redis_restart_without_data_the_running_manager_delivers_again(
    settings, tmp_path, caplog
):
    """A private redis-server (never the suite's) is stopped and started under a running AlertManager."""
    from streampai.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis")
    settings.REDIS_URL = server.start()
    try:
        from livestream.redis import get_redis

        pubsub = get_redis().pubsub()
        await pubsub.subscribe(keys.control(USER))
        tabs = Tabs(pubsub)
        await present(USER)  # on this server
        supervisor = await start()
        await queue_alerts(1)
        await tabs.collect(1)
        with caplog.at_level(logging.WARNING):
            server.stop()
            await wait_until(lambda: "wake-up subscriber lost" in caplog.text, 5, "the listener noticed")
            server.start()  # empty: the restart lost everything, the owner key too
            await pubsub.aclose()
            pubsub = get_redis().pubsub()
            await pubsub.subscribe(keys.control(USER))
            tabs.pubsub = pubsub
            ids = await wait_until(lambda: _queue_quietly(2), 10, "Redis back")
            await present(USER)  # the tab's next heartbeat tracks it again (dashboard/ws/tracker.py)
            await tabs.collect(2, timeout=10)
        assert tabs.ids()[1:] == ids
        assert supervisor.state == "running" and supervisor.restarts == 0
        await supervisor.stop()
        await pubsub.aclose()
    finally:
        server.stop()


async def _queue_quietly(start: int) -> list[str] | None:
    try:
        return await queue_alerts(1, start)
    except Exception:
        return None
