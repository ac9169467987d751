"""The Redis presence set: per-connection tracking, atomic first/last, expiry."""

from __future__ import annotations

import asyncio

from livestream.presence.store import PresenceStore


def meta(ref: str, email: str = "a@example.com", joined_at: int = 1) -> dict:
    return {"email": email, "joined_at": joined_at, "ref": ref}


async def test_track_reports_sessions_and_list_groups_metas_by_user():
    store = PresenceStore()
    first = await store.track("1", meta("r1", joined_at=1))
    second = await store.track("1", meta("r2", joined_at=2))
    other = await store.track("2", meta("r3", "b@example.com"))
    assert (first.sessions, second.sessions, other.sessions) == (1, 2, 1)
    assert await store.list() == {
        "1": {"metas": [meta("r1", joined_at=1), meta("r2", joined_at=2)]},
        "2": {"metas": [meta("r3", "b@example.com")]},
    }


async def test_untrack_reports_last_connection_and_is_idempotent():
    store = PresenceStore()
    await store.track("1", meta("r1"))
    await store.track("1", meta("r2"))
    leave = await store.untrack("1", "r1")
    assert leave.sessions == 1 and leave.meta["ref"] == "r1"
    last = await store.untrack("1", "r2")
    assert last.sessions == 0
    assert await store.untrack("1", "r2") is None
    assert await store.list() == {}
    assert await store.user_ids() == set()


async def test_tracking_the_same_ref_twice_is_not_a_second_join():
    store = PresenceStore()
    assert await store.track("1", meta("r1")) is not None
    assert await store.track("1", meta("r1")) is None
    assert await store.sessions("1") == 1


async def test_concurrent_tracks_and_untracks_agree_on_first_and_last():
    """Many 'daphne processes' at once: exactly one sees sessions==1 on the way up and 0 on the way down."""
    store = PresenceStore()
    refs = [f"r{i}" for i in range(50)]
    joins = await asyncio.gather(*(PresenceStore().track("7", meta(r)) for r in refs))
    assert sorted(j.sessions for j in joins) == list(range(1, 51))
    leaves = await asyncio.gather(*(PresenceStore().untrack("7", r) for r in refs))
    assert sorted(lv.sessions for lv in leaves) == list(range(50))
    assert await store.sessions("7") == 0


async def test_track_and_untrack_are_one_round_trip_each(aredis):
    store = PresenceStore()
    await store.track("1", meta("warm"))  # load the scripts once
    before = await aredis.info("commandstats")
    await store.track("1", meta("r1"))
    await store.untrack("1", "r1")
    after = await aredis.info("commandstats")

    def calls(stats: dict) -> int:
        return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")

    # One EVALSHA each; the scripts' inner commands are counted too, so count EVALSHA alone.
    evalsha = after["cmdstat_evalsha"]["calls"] - before["cmdstat_evalsha"]["calls"]
    assert evalsha == 2
    assert calls(after) - calls(before) >= 2


async def test_expire_stale_removes_connections_past_their_deadline(configure_livestream):
    configure_livestream(PRESENCE_TTL=0.2)
    store = PresenceStore()
    await store.track("1", meta("old"))
    configure_livestream(PRESENCE_TTL=30)
    await store.track("2", meta("fresh"))
    await asyncio.sleep(0.3)
    expired = await store.expire_stale()
    assert [(c.user_id, c.meta["ref"], c.sessions) for c in expired] == [("1", "old", 0)]
    assert set(await store.list()) == {"2"}
    assert await store.expire_stale() == []


async def test_refresh_retracks_a_connection_redis_lost(aredis):
    store = PresenceStore()
    await store.track("1", meta("r1"))
    assert await store.refresh("1", meta("r1")) is None
    await aredis.delete(
        store.users_key, store.user_prefix + "1", store.expiry_key
    )  # as if Redis restarted empty
    again = await store.refresh("1", meta("r1"))
    assert again is not None and again.sessions == 1


async def test_refresh_never_revives_an_untracked_connection():
    """A heartbeat's refresh that reaches Redis after the disconnect's untrack is refused."""
    store = PresenceStore()
    await store.track("1", meta("r1"))
    await store.track("1", meta("r2"))
    await store.untrack("1", "r1")
    assert await store.refresh("1", meta("r1")) is None
    assert await store.sessions("1") == 1
    assert [m["ref"] for m in (await store.list())["1"]["metas"]] == ["r2"]


async def test_the_cleanup_counts_from_the_close_not_from_the_untrack():
    """``closed_ago`` takes the time a close waited (a batch, a Redis retry) off its cleanup
    delay; a close older than the delay is due at once, never in the past's future."""
    from livestream.presence.store import cleanup_timer
    from livestream.timers.store import TimerStore

    store = PresenceStore()
    for uid in ("1", "2", "3"):
        await store.track(uid, meta("r" + uid))
    await store.untrack_many([("1", "r1"), ("2", "r2"), ("3", "r3")], cleanup_delay=5.0, closed_ago=[0, 2, 9])
    due = await TimerStore().pending()
    assert abs(due[cleanup_timer("1")] - 5.0) < 0.5
    assert abs(due[cleanup_timer("2")] - 3.0) < 0.5
    assert due[cleanup_timer("3")] <= 0.0
