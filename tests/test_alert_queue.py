"""The per-user alert queue (alerts/queue.py) against the suite's real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from alerts.queue import AWAY, SUPERSEDED, AlertQueue
from alerts.wakeups import listener
from livestream import keys
from livestream.presence.store import PresenceStore


async def present(user_id: str) -> str:
    """A tab of ``user_id`` is open: one connection in presence, as the dashboard socket tracks it."""
    ref = f"ref-{uuid.uuid4().hex[:8]}"  # each connection its own ref (an untracked one never returns)
    await PresenceStore().track(user_id, {"email": f"{user_id}@example.com", "joined_at": 0, "ref": ref})
    return ref


@pytest.fixture(autouse=True)
async def tab_open() -> str:
    return await present("7")


def alert(n: int) -> dict:
    return {"id": f"a{n}", "kind": "donation", "from": f"donor {n}", "amount": n}


async def test_push_take_ack_in_order_each_once():
    queue = AlertQueue("7")
    for n in range(1, 4):
        assert await queue.push(alert(n), cap=10) == n
    claimed = await queue.claim("tok")
    assert (claimed.stale, claimed.queued, claimed.delivered) == (None, 3, 0)
    seen = []
    while (taken := await queue.take("tok")).alert is not None:
        seen.append(taken.alert["id"])
        assert taken.previous is None
        assert await queue.ack(taken.alert["id"]) == len(seen)
    assert seen == ["a1", "a2", "a3"]
    assert await queue.length() == 0
    assert taken.queued == 0


async def test_a_push_sent_again_queues_the_alert_once():
    """redis-py sends a command again after a connection error, also when the first ran."""
    queue = AlertQueue("7")
    assert await queue.push(alert(1), cap=10) == 1
    assert await queue.push(alert(1), cap=10) == 1  # the same id: nothing more queued
    assert await queue.push(alert(2), cap=10) == 2
    assert [a["id"] for a in await queue.pending()] == ["a1", "a2"]
    assert queue.replicated is None  # the suite's Redis has no replica: no WAIT


async def test_a_take_is_confirmed_only_while_in_flight():
    queue = AlertQueue("7")
    await queue.push(alert(1), cap=10)
    await queue.claim("tok")
    taken = await queue.take("tok")
    assert await queue.confirm("a1") == "replicated"  # no replica: nothing to wait for
    assert await queue.confirm("a9") == "gone"
    await queue.ack(taken.alert["id"])
    assert await queue.confirm("a1") == "gone"


async def test_cap_refuses_when_full_and_users_are_separate():
    queue, other = AlertQueue("7"), AlertQueue("8")
    assert [await queue.push(alert(n), cap=2) for n in (1, 2, 3)] == [1, 2, None]
    assert await other.push(alert(9), cap=2) == 1  # another user's queue is not affected
    assert [a["id"] for a in await queue.pending()] == ["a1", "a2"]


async def test_alerts_wait_without_a_manager_and_survive_a_new_client(redis_url):
    from streampai.redisconf import redis_client

    await AlertQueue("7").push(alert(1), cap=10)
    client = redis_client(redis_url)  # as another process would see it
    try:
        later = AlertQueue("7", client)
        assert [a["id"] for a in await later.pending()] == ["a1"]
        assert await client.ttl(keys.alerts("7", "queue")) == -1  # kept, however long
    finally:
        await client.aclose()


async def test_a_newer_claim_supersedes_the_older_owner():
    queue = AlertQueue("7")
    await queue.push(alert(1), cap=10)
    await queue.claim("old")
    await queue.claim("new")
    assert await queue.take("old") == SUPERSEDED
    assert (await queue.take("new")).alert["id"] == "a1"


async def test_an_alert_left_in_flight_is_handed_to_the_next_claim_once_and_not_requeued():
    queue = AlertQueue("7")
    for n in (1, 2):
        await queue.push(alert(n), cap=10)
    await queue.claim("dead")
    assert (await queue.take("dead")).alert["id"] == "a1"  # ... and the worker died here
    claimed = await queue.claim("next")
    assert claimed.stale is not None and claimed.stale["id"] == "a1"
    assert claimed.queued == 1
    assert (await queue.claim("again")).stale is None  # reported once
    assert [a["id"] for a in await queue.pending()] == ["a2"]


async def test_nothing_is_taken_while_the_user_has_no_open_tab(tab_open):
    queue = AlertQueue("7")
    await queue.push(alert(1), cap=10)
    await queue.claim("tok")
    await PresenceStore().untrack_many([("7", tab_open)])  # the last tab closed
    assert await queue.take("tok") == AWAY
    assert await queue.length() == 1  # still queued
    await present("7")  # a tab again (a reload, a reconnect after a deploy)
    assert (await queue.take("tok")).alert["id"] == "a1"


async def test_the_owner_finds_its_own_unacknowledged_alert_on_the_next_take():
    queue = AlertQueue("7")
    for n in (1, 2):
        await queue.push(alert(n), cap=10)
    await queue.claim("tok")
    await queue.take("tok")  # the ack never reached Redis
    taken = await queue.take("tok")
    assert taken.previous["id"] == "a1" and taken.alert["id"] == "a2"
    assert await queue.ack("a2", delivered=False) == 0  # an emit that failed is not counted
    assert await queue.ack("a2") == 1


async def test_push_wakes_the_registered_user_only():
    wakeups = listener()
    mine, theirs = wakeups.register("7"), wakeups.register("8")
    try:
        await asyncio.wait_for(wakeups.subscribed.wait(), 5)
        mine.clear(), theirs.clear()  # the wake-everyone at subscribe
        await AlertQueue("7").push(alert(1), cap=10)
        await asyncio.wait_for(mine.wait(), 2)
        await asyncio.sleep(0.05)
        assert not theirs.is_set()
    finally:
        wakeups.unregister("7", mine)
        wakeups.unregister("8", theirs)
    assert wakeups.task is None and not wakeups.waiters  # the subscriber closes with the last


async def evalsha_calls(aredis) -> int:
    stats = await aredis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_burst_of_claims_is_a_few_script_calls(aredis):
    await AlertQueue("u3").push(alert(1), cap=10)
    wakeups = listener()
    before = await evalsha_calls(aredis)
    claimed = await asyncio.gather(*(wakeups.claim(f"u{i}", f"tok{i}") for i in range(1200)))
    calls = await evalsha_calls(aredis) - before
    assert calls <= 4, calls  # 1,200 claims: 500 per call, plus the first one alone
    assert [c.queued for c in claimed[:5]] == [0, 0, 0, 1, 0]
    assert await aredis.get(keys.alerts("u1199", "owner")) == "tok1199"


async def test_a_missed_wake_up_is_made_up_by_the_re_check(configure_livestream):
    configure_livestream(ALERT_RECHECK_INTERVAL=0.2)
    wakeups = listener()
    waiting, idle = wakeups.register("7"), wakeups.register("8")
    try:
        await asyncio.wait_for(wakeups.subscribed.wait(), 5)
        # Queued without the PUBLISH reaching anyone (as while the subscriber reconnects).
        await AlertQueue("7").redis.rpush(keys.alerts("7", "queue"), '{"id": "x"}')
        waiting.clear(), idle.clear()
        await asyncio.wait_for(waiting.wait(), 2)  # the periodic re-check found it
        assert not idle.is_set()
        assert await wakeups.wake_pending() == 1
    finally:
        wakeups.unregister("7", waiting)
        wakeups.unregister("8", idle)
