"""livestream.state: one snapshot of presence, managers, cleanups and workers from Redis."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime

import pytest

from devtools.processes import wait_until
from livestream.keys import key
from livestream.observe.state import read_state, read_state_sync, run_sync
from livestream.ownership.leases import LeaseStore
from livestream.presence.store import PresenceStore
from tests.staff_helpers import connect, disconnect, publish_fake_worker, status


@pytest.fixture(autouse=True)
def fast(configure_livestream):
    configure_livestream(RECONCILE_INTERVAL=0.1, LEASE_TTL=1.0, CLEANUP_TIMEOUT=3.0)


async def test_snapshot_of_a_real_worker(run_worker, aredis):
    worker = await run_worker()
    await connect("1", "a")
    await connect("1", "b")
    await connect("2", "c")

    async def both_running():
        s = await read_state()
        ok = set(s.managers) == {"1", "2"} and all(
            m.components["ConsoleLogger"].state == "running" for m in s.managers.values()
        )
        return ok and s

    s = await wait_until(both_running, 5, "both managers published")
    wid = worker.manager.worker_id
    assert [m["ref"] for m in s.presence["1"]] == ["a", "b"]
    assert [m["ref"] for m in s.presence["2"]] == ["c"]
    m = s.managers["1"]
    assert m.worker == wid
    assert abs(m.started_at.timestamp() - worker.manager.local.managers["1"].started_at) < 1e-3
    assert m.components["ConsoleLogger"].restarts == 0
    assert m.components["ConsoleLogger"].extra["count"] >= 1
    assert set(s.workers) == {wid}
    assert s.pending_cleanups == {}
    assert s.totals == {
        "present_users": 2,
        "open_sessions": 3,
        "running_managers": 2,
        "pending_cleanups": 0,
        "live_workers": 1,
        "held_by_staff": 0,
    }

    await disconnect("2", "c")
    s = await wait_until(
        lambda: _with(read_state(), lambda s: "2" in s.pending_cleanups), 3, "cleanup of 2 pending"
    )
    assert 0 < s.pending_cleanups["2"] <= 3.0
    assert "2" not in s.presence and "2" in s.managers  # still running until the cleanup is due


async def _with(coro, predicate):
    value = await coro
    return value if predicate(value) else None


async def test_a_dead_workers_leftover_state_is_ignored(aredis):
    now = time.time()
    await publish_fake_worker(aredis, "alive", {"1": status(now - 5)})
    # Killed 2 s ago (LEASE_TTL is 1 s): its HASH has not expired yet, but it is not alive.
    await publish_fake_worker(aredis, "dead", {"2": status(now - 60)}, seen_ago=2.0)
    s = await read_state()
    assert set(s.managers) == {"1"}
    assert set(s.workers) == {"alive"}
    assert s.workers["alive"].host == "fakehost" and s.workers["alive"].pid == "4242"


async def test_a_user_listed_by_two_workers_is_shown_on_the_lease_owner(aredis):
    now = time.time()
    await publish_fake_worker(aredis, "old-owner", {"1": status(now - 10)})
    await publish_fake_worker(aredis, "new-owner", {"1": status(now - 20)})
    owner = LeaseStore("new-owner", aredis)
    await owner.check_epoch()
    await owner.acquire("1")
    assert (await read_state()).managers["1"].worker == "new-owner"
    await aredis.delete(key("lease", "1"))  # no lease: the newest start wins
    assert (await read_state()).managers["1"].worker == "old-owner"


async def test_malformed_published_status_is_logged_and_skipped(aredis, caplog):
    await publish_fake_worker(aredis, "w", {"1": status(time.time())})
    await aredis.hset(key("managers", "w"), mapping={"2": "not json", "3": json.dumps({"components": {}})})
    with caplog.at_level(logging.WARNING, logger="livestream.state"):
        s = await read_state()
    assert set(s.managers) == {"1"}
    assert len([r for r in caplog.records if "ignored malformed status" in r.getMessage()]) == 2


async def test_pending_cleanups_are_only_cleanup_timers_with_time_left(aredis):
    from livestream.timers.store import TimerStore

    timers = TimerStore(aredis)
    await timers.schedule("cleanup:7", "x", {"type": "presence.cleanup", "user_id": "7"}, 4.0)
    await timers.schedule("other:8", "x", {"type": "other"}, 4.0)
    s = await read_state()
    assert list(s.pending_cleanups) == ["7"]
    assert 3.0 < s.pending_cleanups["7"] <= 4.0


async def test_as_json_is_exactly_the_documented_shape(aredis):
    started = time.time() - 3
    await PresenceStore(client=aredis).track("1", {"email": "a@example.com", "joined_at": 5, "ref": "r"})
    await publish_fake_worker(aredis, "w", {"1": status(started, "restarting", restarts=2, count=9)})
    data = (await read_state()).as_json()
    assert data == {
        "presence": {"1": {"metas": [{"email": "a@example.com", "joined_at": 5, "ref": "r"}]}},
        "managers": {
            "1": {
                "worker": "w",
                "started_at": datetime.fromisoformat(data["managers"]["1"]["started_at"]).isoformat(),
                "components": {"ConsoleLogger": {"state": "restarting", "restarts": 2}},
            }
        },
        "pending_cleanups": {},
    }
    assert abs(datetime.fromisoformat(data["managers"]["1"]["started_at"]).timestamp() - started) < 1e-3


def test_read_state_sync_from_plain_sync_code():
    async def seed(client):
        await PresenceStore(client=client).track("3", {"email": "c@example.com", "joined_at": 1, "ref": "x"})

    run_sync(seed)
    s = read_state_sync()
    assert list(s.presence) == ["3"] and s.managers == {}
