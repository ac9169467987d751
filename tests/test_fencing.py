"""Fencing tokens (issue 19): every grant a larger token, stale writes refused where they
land, effects outside Redis stopped before a lease can lapse. Against the suite's private
redis-server; the SIGSTOP test runs real workers."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import pytest
from django.core.exceptions import ImproperlyConfigured

from alerts.queue import SUPERSEDED, AlertQueue
from livestream import keys
from livestream.components import emitter
from livestream.components.base import Component
from livestream.components.stream_state import StreamStateServer
from livestream.conf import LivestreamSettings, validate
from livestream.ownership import fencing
from livestream.ownership.leases import LeaseStore
from livestream.presence.store import PresenceStore


def meta(ref: str) -> dict:
    return {"email": f"{ref}@example.com", "joined_at": 1, "ref": ref}


async def worker(worker_id: str) -> LeaseStore:
    store = LeaseStore(worker_id)
    await store.beat()
    await store.check_epoch()
    return store


async def test_every_grant_gets_a_larger_token_by_every_path(aredis):
    a, b = await worker("a"), await worker("b")
    presence = PresenceStore()
    await presence.track("1", meta("r1"))
    seen = []
    assert await a.acquire("1")
    seen.append(a.tokens["1"])
    assert await a.acquire("1")  # ours already: the same grant, the same token
    assert a.tokens["1"] == seen[-1]
    await a.release("1")
    assert await b.claim_orphans(presence, live_workers=1) == ["1"]
    seen.append(b.tokens["1"])
    await b.release("1")
    assert await a.place(["1"], presence) in (["1"], [])
    placed_on = {"a": a, "b": b}[await a.owner("1")]
    assert await placed_on.mine(["1"]) == ["1"]  # the start list's way: the token with it
    seen.append(placed_on.tokens["1"])
    assert seen == sorted(set(seen)), seen
    assert int(await aredis.get(keys.fence_token("1"))) == seen[-1]


async def test_a_token_stays_larger_when_redis_lost_the_counter(aredis):
    """A failover loses the last writes, a restart without persistence all of them: the
    token is never below Redis' clock (microseconds), so it still grows."""
    a = await worker("a")
    assert await a.acquire("1")
    first = a.tokens["1"]
    assert abs(first / 1e6 - time.time()) < 5  # the clock, in microseconds
    await a.release("1")
    await aredis.delete(keys.fence_token("1"))  # the counter is gone
    assert await a.acquire("1")
    assert a.tokens["1"] > first
    await a.release("1")
    await aredis.set(keys.fence_token("1"), str(first + 10**12))  # ahead of the clock
    assert await a.acquire("1")
    assert a.tokens["1"] == first + 10**12 + 1


async def test_a_new_master_holds_grants_while_the_owners_renew(aredis, configure_livestream):
    """The replication id changed (a promoted replica): no grant for the failover hold,
    while an owner's renewal takes back a lease the new master does not have."""
    configure_livestream(LEASE_TTL=0.3, RECONCILE_INTERVAL=0.1)
    a, b = await worker("a"), await worker("b")
    presence = PresenceStore()
    await presence.track("1", meta("r1"))
    assert await a.acquire("1")
    token = a.tokens["1"]
    await aredis.set(keys.epoch() + ":master", "an-older-master")  # as a promoted replica has it
    await aredis.delete(a.lease_key("1"))  # a's last renewal went to the old master
    assert await b.claim_orphans(presence, live_workers=2) == []
    assert await b.acquire("1") is False
    assert await a.renew(["1"]) == []  # taken back, with its token
    assert await a.owner("1") == "a"
    assert int(await aredis.get(keys.fence_token("1"))) == token
    await asyncio.sleep(0.55)  # the hold (LEASE_TTL + 2 intervals) is over
    await aredis.delete(a.lease_key("1"))  # a is gone
    assert await b.claim_orphans(presence, live_workers=1) == ["1"]
    assert b.tokens["1"] > token


async def test_a_lease_taken_back_never_puts_back_an_older_token(aredis):
    a = await worker("a")
    assert await a.acquire("1")
    await aredis.delete(a.lease_key("1"))
    await aredis.set(keys.fence_token("1"), str(a.tokens["1"] + 1))  # a newer grant's token
    assert await a.renew(["1"]) == []
    assert await aredis.get(keys.fence_token("1")) == str(a.tokens["1"] + 1)


class Writer(Component):
    async def run(self) -> None:
        await asyncio.Event().wait()


async def test_a_stale_tokens_writes_are_refused_counted_and_logged_once(aredis, caplog):
    caplog.set_level(logging.WARNING, logger="livestream.fencing")
    a = await worker("a")
    assert await a.acquire("7")
    old = a.tokens["7"]
    await aredis.set(keys.fence_token("7"), str(old + 1))  # another worker's grant since
    stale, current = Writer("7"), Writer("7")
    stale.token, current.token = old, old + 1
    pubsub = aredis.pubsub()
    await pubsub.subscribe(keys.control("7"))
    await stale.emit("state", {"n": 1}, sticky=True)
    await stale.emit("state", {"n": 2}, sticky=True)
    assert await aredis.hgetall(keys.sticky("7")) == {}  # nothing kept ...
    await current.emit("state", {"n": 3}, sticky=True)
    assert list(await aredis.hgetall(keys.sticky("7"))) == ["Writer:state"]
    frames = []
    async with asyncio.timeout(2):
        while len(frames) < 1:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message:
                frames.append(message["data"])
    assert '\\"n\\":3' in frames[0]  # ... nor published: the first message is the current one's
    await pubsub.aclose()
    assert await emitter.send_reply("7", "to", "k", "{}", token=old) == -1
    assert await emitter.forget_sticky("7", "Writer", token=old) == -1
    assert int(await aredis.get(keys.fence_refused())) == 4
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and f"token {old} is stale" in lines[0], lines  # once per run
    assert fencing.REFUSED["Writer"] >= 2


async def test_stream_state_and_alert_queue_refuse_a_stale_token(aredis):
    await PresenceStore().track("7", meta("r7"))
    a = await worker("a")
    assert await a.acquire("7")
    token = a.tokens["7"]
    server = StreamStateServer("7")
    server.token = token
    moved, data = await server._move("starting", "offline")
    assert moved is True and data["state"] == "starting"
    await aredis.set(keys.fence_token("7"), str(token + 1))
    moved, data = await server._move("live", "starting")
    assert moved is None and data["state"] == "starting"  # refused, unchanged
    queue = AlertQueue("7")
    await queue.push({"id": "a1", "kind": "donation"}, cap=10)
    await queue.claim("claim")
    stale = fencing.Fence("7", token, "AlertManager")
    assert await queue.take("claim", fence=stale) == SUPERSEDED
    assert await queue.length() == 1  # not taken
    current = fencing.Fence("7", token + 1, "AlertManager")
    taken = await queue.take("claim", fence=current)
    assert taken.alert["id"] == "a1"
    assert await queue.ack("a1", fence=stale) == -1  # a stale ack changes nothing
    assert await aredis.get(keys.alerts("7", "inflight")) is not None
    assert await queue.ack("a1", fence=current) == 1


async def test_no_token_no_check_and_a_vanished_token_lets_the_owner_write(aredis):
    """Outside a worker (tests, tools) nothing is fenced; after Redis lost its data the
    owner's next renewal writes its token back, and its writes are not refused meanwhile."""
    assert await emitter.emit("9", "Writer", "e", {}, token=None) == 0
    assert await emitter.emit("9", "Writer", "e", {}, token=123) == 0


def test_the_effects_gate_stops_effects_before_the_lease_can_lapse(settings):
    gate = fencing.EffectGate()
    stopped = []
    gate.register("1", lambda: stopped.append("1"))
    unregister = gate.register("2", lambda: stopped.append("2"))
    gate.register("3", lambda: stopped.append("3"))
    gate.renewed(100.0)  # LEASE_TTL 3, EFFECT_STOP_MARGIN 0.5 (the defaults)
    assert gate.deadline == 102.5
    assert gate.lost(("3",)) == 1 and stopped == ["3"]  # another worker holds it: at once
    assert gate.expire(102.4) == 0 and gate.open(102.4)
    unregister()
    assert gate.expire(102.5) == 1 and stopped == ["3", "1"]
    assert not gate.open(102.5)
    assert gate.expire(103.0) == 0  # each stop called once


def test_a_user_whose_lease_was_taken_acts_no_more_until_granted_again():
    """Between the renewal that saw the loss and the manager's stop, a relay's retry must not
    start a second publisher: the user is closed here, the others are not."""
    gate = fencing.EffectGate()
    gate.renewed(100.0)
    assert gate.open_for("3", 101.0) and gate.open_for("4", 101.0)
    gate.lost(("3",))
    assert not gate.open_for("3", 101.0) and gate.open_for("4", 101.0)
    gate.register("3", lambda: None)
    assert gate.lost(("3",)) == 1  # registered after the loss: stopped at the next one
    gate.granted("3")  # a manager starts for 3 here again
    assert gate.open_for("3", 101.0)
    assert not gate.open_for("4", 102.6)  # the process-wide deadline still holds


@pytest.mark.parametrize("margin", [0.0, 2.0, 5.0])
def test_the_stop_margin_is_checked_at_start(margin):
    with pytest.raises(ImproperlyConfigured, match="EFFECT_STOP_MARGIN"):
        validate(LivestreamSettings(LEASE_TTL=3.0, RECONCILE_INTERVAL=1.0, EFFECT_STOP_MARGIN=margin))
    validate(LivestreamSettings(LEASE_TTL=3.0, RECONCILE_INTERVAL=1.0, EFFECT_STOP_MARGIN=1.5))


# -- a frozen owner and an effect outside Redis (real workers) -----------------------------


@pytest.mark.processes
async def test_a_frozen_owners_external_effect_never_overlaps_the_new_owners(
    tmp_path, migrated_db_template, key_prefix
):
    """SIGSTOP the worker running a user whose component acts outside Redis (appends to a
    file, as a relay or a chat connection would act elsewhere); the other worker takes
    over; SIGCONT. Every line of the frozen owner comes before the new owner's first line:
    the frozen one, waking past its lease, acts no more (and its keeper stops the effect)."""
    from devtools.clients import create_accounts, open_socket
    from devtools.processes import Stack

    effects = tmp_path / "effects.log"
    history_dir = tmp_path / "history"
    history_dir.mkdir()
    env = {
        "LIVESTREAM_COMPONENTS": "ExternalAppender",
        "DJANGO_SETTINGS_MODULE": "tests.settings",  # registers ExternalAppender
        "TEST_EFFECTS_FILE": str(effects),
        "STREAMPAI_HISTORY_DIR": str(history_dir),
    }
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=env)
    try:
        web = stack.start_daphne()
        workers = [stack.start_worker(f"worker{i}") for i in (1, 2)]
        for proc in workers:
            await proc.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=30)
        (account,) = create_accounts(stack, ["frozen@x.io"]).values()
        ws = await open_socket(web.url, account.session)
        pid_of = {proc.popen.pid: proc for proc in workers}

        def writers() -> list[tuple[float, int, int]]:
            lines = effects.read_text().splitlines() if effects.exists() else []
            return [(float(t), int(pid), int(token)) for t, pid, token, _ in (line.split() for line in lines)]

        async def wait_for_writer(pid: int | None = None, timeout: float = 15) -> int:
            deadline = time.monotonic() + timeout
            while True:
                found = [w for _, w, _ in writers() if pid is None or w == pid]
                if found:
                    return found[-1]
                assert time.monotonic() < deadline, "no effect written"
                await asyncio.sleep(0.05)

        owner = pid_of[await wait_for_writer()]
        other = next(proc for proc in workers if proc is not owner)
        await asyncio.sleep(0.3)
        owner.signal(signal.SIGSTOP)
        mark = owner.log.mark()  # before SIGCONT: the woken owner may log its stop at once
        try:
            await wait_for_writer(other.popen.pid, timeout=15)  # taken over
            await asyncio.sleep(0.5)
        finally:
            owner.signal(signal.SIGCONT)
        await owner.log.wait_for(r"UserStreamManager stopped", timeout=10, after=mark)
        await asyncio.sleep(1.0)  # the new owner keeps acting; the old one must not
        lines = writers()
        old = [(t, token) for t, pid, token in lines if pid == owner.popen.pid]
        new = [(t, token) for t, pid, token in lines if pid == other.popen.pid]
        assert old and new
        assert max(t for t, _ in old) < min(t for t, _ in new), "the two owners' effects overlap"
        assert min(token for _, token in new) > max(token for _, token in old)  # a newer grant
        assert owner.alive() and other.alive()
        await ws.close()
    finally:
        stack.stop_all()


async def test_the_lease_keeper_takes_a_vanished_lease_back_with_its_token(aredis, configure_livestream):
    """Its renewals run on their own thread and Redis client: they must carry the worker's tokens."""
    from livestream.ownership.keeper import LeaseKeeper

    configure_livestream(RECONCILE_INTERVAL=0.1)
    a = await worker("a")
    assert await a.acquire("1")
    token = a.tokens["1"]
    await aredis.delete(a.lease_key("1"), keys.fence_token("1"))  # a failover lost them
    keeper = LeaseKeeper(a, lambda: ("1",), lambda: 1, dict, lambda _: None, lambda: None)
    keeper.start()
    try:
        deadline = time.monotonic() + 5
        while await aredis.get(keys.fence_token("1")) != str(token):
            assert time.monotonic() < deadline, "the token was not taken back"
            await asyncio.sleep(0.05)
        assert await a.owner("1") == "a"
    finally:
        keeper.stop()


async def test_a_stale_alert_manager_claims_nothing(aredis):
    """A stale instance's claim must not supersede the current owner's instance."""
    queue = AlertQueue("7")
    await aredis.set(keys.fence_token("7"), "5")
    assert (await queue.claim("current", fence=5)).fenced is False
    await queue.push({"id": "a1", "kind": "donation"}, cap=10)
    assert (await queue.claim("stale", fence=4)).fenced is True
    assert await aredis.get(keys.alerts("7", "owner")) == "current"
