"""Placement of new managers and the ownership of cleanup timers, against a real Redis."""

from __future__ import annotations

import asyncio

from livestream.ownership.leases import HOLD_PREFIX, LeaseStore
from livestream.presence.store import PresenceStore, cleanup_timer
from livestream.timers.store import OWNER_GRACE, TimerStore


def meta(ref: str) -> dict:
    return {"email": f"{ref}@example.com", "joined_at": 1, "ref": ref}


async def live(*worker_ids: str, loads: dict[str, int] | None = None) -> dict[str, LeaseStore]:
    stores = {w: LeaseStore(w) for w in worker_ids}
    for w, store in stores.items():
        await store.beat(load=(loads or {}).get(w, 0))
        await store.check_epoch()
    return stores


async def test_joins_go_to_the_least_loaded_live_worker_and_reach_its_start_list(aredis):
    a, b = (await live("a", "b", loads={"a": 3, "b": 1})).values()
    presence = PresenceStore()
    for uid in ("1", "2", "3", "4"):
        await presence.track(uid, meta(f"r{uid}"))
    mine = await a.place(["1", "2", "3", "4"], presence)
    # b (load 1) takes users until it is as loaded as a (3), then they alternate, a first.
    assert mine == ["3"]
    assert [await a.owner(u) for u in ("1", "2", "3", "4")] == ["b", "b", "a", "b"]
    assert await aredis.lrange(b.starts_key(), 0, -1) == ["1", "2", "4"]
    assert await b.mine(["1", "2", "3", "4"]) == ["1", "2", "4"]


async def test_placement_skips_absent_users_and_running_ones_and_ends_a_staff_hold(aredis):
    a, b = (await live("a", "b")).values()
    presence = PresenceStore()
    for uid in ("run", "held"):
        await presence.track(uid, meta(uid))
    await aredis.set(b.lease_key("run"), "b", px=3000)
    await aredis.set(a.lease_key("held"), HOLD_PREFIX + "7", px=60000)
    placed = await a.place(["gone", "run", "held"], presence)
    assert await a.owner("gone") is None  # not present: nobody runs them
    assert await a.owner("run") == "b"  # already running elsewhere: stays there
    assert await a.owner("held") in ("a", "b")  # a join ends a staff stop
    assert placed == (["held"] if await a.owner("held") == "a" else [])


async def test_no_lease_is_granted_by_a_worker_that_has_not_seen_the_current_epoch(aredis):
    """Redis restarted empty: daphne's heartbeats re-track everyone at once, while the
    workers still run the managers whose leases vanished. A worker that has not looked at
    the epoch since (or never did) grants nothing, by any of the three ways to a lease
    (seen: a reconcile tick's orphan claim started a second manager of a running user)."""
    (a,) = (await live("a")).values()
    presence = PresenceStore()
    await presence.track("1", meta("r1"))
    for known in ("an-epoch-redis-forgot", ""):
        a.epoch = known
        assert await a.place(["1"], presence) == []
        assert await a.claim_orphans(presence, live_workers=1) == []
        assert await a.acquire("1") is False
        assert await a.owner("1") is None
    await a.check_epoch()  # looks again: Redis' current epoch
    assert await a.claim_orphans(presence, live_workers=1) == ["1"]


async def test_a_cleanup_is_left_to_the_worker_running_the_user_then_anyone_takes_it(aredis):
    await live("a", "b")
    presence, timers = PresenceStore(), TimerStore()
    await aredis.set(LeaseStore("b").lease_key("1"), "b", px=10_000)
    await presence.track("1", meta("r1"))
    await presence.untrack("1", "r1", cleanup_delay=0)  # schedules cleanup:1 now
    claimed, wait = await timers.claim_due(worker_id="a")
    assert claimed == [] and wait is not None and wait <= 0.05  # b's: looked at again soon
    claimed, _ = await timers.claim_due(worker_id="b")
    assert [name for name, _, _ in claimed] == [cleanup_timer("1")]

    # b is stuck: once the timer is overdue by the grace, anyone takes it (and forwards it).
    await presence.track("1", meta("r2"))
    await presence.untrack("1", "r2", cleanup_delay=0)
    await asyncio.sleep(OWNER_GRACE + 0.1)
    claimed, _ = await timers.claim_due(worker_id="a")
    assert [message["user_id"] for _, _, message in claimed] == ["1"]


async def test_a_cleanup_of_a_user_nobody_runs_or_of_a_dead_workers_user_is_anyones(aredis):
    (a,) = (await live("a")).values()
    presence, timers = PresenceStore(), TimerStore()
    for uid in ("free", "dead"):
        await presence.track(uid, meta(uid))
        await presence.untrack(uid, uid, cleanup_delay=0)
    await aredis.set(a.lease_key("dead"), "w-dead", px=10_000)
    await aredis.sadd(a.dead_key, "w-dead")
    claimed, _ = await timers.claim_due(worker_id="a")
    assert sorted(message["user_id"] for _, _, message in claimed) == ["dead", "free"]


async def test_a_user_a_heartbeat_re_tracked_goes_back_to_its_owner_only(aredis, configure_livestream):
    """Redis lost a running user's connection and lease; daphne's heartbeat tracks the
    connection again. For LEASE_TTL no worker may place or claim that user (a worker new to
    this Redis has seen only its new epoch), while the owner takes its lease back by renewing."""
    configure_livestream(LEASE_TTL=0.5)
    owner, newcomer = (await live("owner", "newcomer")).values()
    presence = PresenceStore()
    await presence.track("1", meta("r1"))  # the connect
    await aredis.set(owner.lease_key("1"), "owner", px=10_000)  # its manager runs on "owner"
    await aredis.delete(owner.lease_key("1"), presence.user_prefix + "1")  # Redis lost them
    assert await presence.refresh("1", meta("r1")) is not None  # the heartbeat adds it again
    assert await newcomer.place(["1"], presence) == []
    assert await newcomer.claim_orphans(presence, live_workers=2) == []
    assert await owner.renew(["1"]) == []  # the owner's next renewal takes it back
    assert await newcomer.owner("1") == "owner"
    await aredis.delete(owner.lease_key("1"))  # and if the owner is gone for good:
    await asyncio.sleep(0.6)  # LEASE_TTL later, anyone may claim the user
    assert await newcomer.claim_orphans(presence, live_workers=1) == ["1"]
