"""manage.py presence_debug: the readable report and the exact --json shape."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command

from devtools.processes import wait_until
from livestream.observe.state import run_sync
from livestream.presence.store import PresenceStore
from livestream.timers.store import TimerStore
from tests.staff_helpers import connect, publish_fake_worker, status

STATES = {"starting", "running", "restarting", "failed", "stopped"}


def presence_debug(*args: str) -> str:
    out = StringIO()
    call_command("presence_debug", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def seeded(configure_livestream):
    """User 1: two tabs, manager running on worker w1. User 2: left, cleanup due in ~4 s."""
    configure_livestream(LEASE_TTL=5.0)
    now = time.time()

    async def seed(client):
        store = PresenceStore(client=client)
        await store.track("1", {"email": "one@example.com", "joined_at": int(now) - 30, "ref": "tab-a"})
        await store.track("1", {"email": "one@example.com", "joined_at": int(now) - 20, "ref": "tab-b"})
        await publish_fake_worker(
            client, "w1", {"1": status(now - 30, count=30), "2": status(now - 90, restarts=1, count=90)}
        )
        await TimerStore(client).schedule("cleanup:2", "x", {"type": "presence.cleanup", "user_id": "2"}, 4.0)

    run_sync(seed)
    return now


def test_text_report(seeded):
    text = presence_debug()
    lines = text.splitlines()
    assert "Presence (users_presence): 1 user, 2 sessions" in lines
    assert "  user 1 one@example.com - 2 sessions" in lines
    assert any(
        re.fullmatch(r"    - ref tab-a, joined \d\d:\d\d:\d\d \(3\ds ago\), email=one@example.com", x)
        for x in lines
    )
    assert any(
        re.fullmatch(r"    - ref tab-b, joined \d\d:\d\d:\d\d \(2\ds ago\), email=one@example.com", x)
        for x in lines
    )
    assert "Running managers: 2" in lines
    assert any(
        re.fullmatch(r"  user 1 on w1, started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(up 3\ds\)", x)
        for x in lines
    )
    assert "    ConsoleLogger: running, 0 restarts, count 30" in lines
    assert "    ConsoleLogger: running, 1 restart, count 90" in lines
    assert "Pending cleanups: 1" in lines
    assert any(re.fullmatch(r"  user 2 due in [34]\.\ds", x) for x in lines)
    assert any(
        re.fullmatch(r"  w1 \(host fakehost, pid 4242\): 2 managers, last tick \d\.\ds ago", x) for x in lines
    )
    assert lines[-1] == (
        "Totals: 1 present user, 2 open sessions, 2 running managers, 1 pending cleanup, 1 live worker"
    )


def test_json_is_exactly_the_documented_shape(seeded):
    data = json.loads(presence_debug("--json"))
    assert set(data) == {"presence", "managers", "pending_cleanups"}
    assert data["presence"] == {
        "1": {
            "metas": [
                {"email": "one@example.com", "joined_at": int(seeded) - 30, "ref": "tab-a"},
                {"email": "one@example.com", "joined_at": int(seeded) - 20, "ref": "tab-b"},
            ]
        }
    }
    assert set(data["managers"]) == {"1", "2"}
    for manager in data["managers"].values():
        assert set(manager) == {"worker", "started_at", "components"}
        assert manager["worker"] == "w1"
        assert datetime.fromisoformat(manager["started_at"]).tzinfo is not None
        for name, component in manager["components"].items():
            assert name == "ConsoleLogger"
            assert set(component) == {"state", "restarts"}
            assert component["state"] in STATES and isinstance(component["restarts"], int)
    assert data["managers"]["2"]["components"]["ConsoleLogger"] == {"state": "running", "restarts": 1}
    assert abs(datetime.fromisoformat(data["managers"]["1"]["started_at"]).timestamp() - (seeded - 30)) < 1e-3
    assert set(data["pending_cleanups"]) == {"2"}
    assert set(data["pending_cleanups"]["2"]) == {"due_in"}
    assert 3.0 < data["pending_cleanups"]["2"]["due_in"] <= 4.0


def test_empty_state():
    assert json.loads(presence_debug("--json")) == {"presence": {}, "managers": {}, "pending_cleanups": {}}
    assert presence_debug().splitlines()[-1] == (
        "Totals: 0 present users, 0 open sessions, 0 running managers, 0 pending cleanups, 0 live workers"
    )


async def test_json_of_a_real_worker(run_worker, configure_livestream):
    configure_livestream(RECONCILE_INTERVAL=0.1)
    worker = await run_worker()
    await connect("5", "tab")

    async def published():
        data = json.loads(await sync_to_async(presence_debug)("--json"))
        components = data["managers"].get("5", {}).get("components") or {}
        # Every default component running (the list is settings' COMPONENTS, ConsoleLogger first).
        running = components.get("ConsoleLogger") == {"state": "running", "restarts": 0}
        return data if running and all(c["state"] == "running" for c in components.values()) else None

    data = await wait_until(published, 5, "manager 5 in presence_debug --json")
    assert data["managers"]["5"]["worker"] == worker.manager.worker_id
    assert [m["ref"] for m in data["presence"]["5"]["metas"]] == ["tab"]


def test_unreachable_redis_is_a_clear_error(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    with pytest.raises(CommandError, match="Could not read the shared state from Redis"):
        presence_debug("--json")


def test_json_detail_has_the_workers_holds_and_totals_the_text_shows(seeded):
    data = json.loads(presence_debug("--json", "--detail"))
    # The documented shape is all there, unchanged ...
    assert {"presence", "managers", "pending_cleanups"} <= set(data)
    assert set(data["managers"]) == {"1", "2"} and set(data["pending_cleanups"]) == {"2"}
    # ... and what the text report adds: the workers, the holds and the totals.
    assert set(data["workers"]) == {"w1"}
    assert set(data["workers"]["w1"]) == {"host", "pid", "seen_ago"}
    assert data["held"] == {}
    assert data["totals"] == {
        "present_users": 1,
        "open_sessions": 2,
        "running_managers": 2,
        "pending_cleanups": 1,
        "live_workers": 1,
        "held_by_staff": 0,
    }
    assert datetime.fromisoformat(data["taken_at"]).tzinfo is not None
    text = presence_debug()
    assert "Live workers: 1" in text and "w1 (host" in text
