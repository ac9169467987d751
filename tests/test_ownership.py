"""The worker's decisions (livestream/ownership/policy.py), without Redis or processes.

The rules that otherwise only fault tests reach (SIGSTOP, Redis restarts, two
workers) are checked here with explicit clocks, in milliseconds.
"""

from __future__ import annotations

from livestream.conf import LivestreamSettings
from livestream.ownership.policy import (
    CleanupFacts,
    Forward,
    Ownership,
    Release,
    ReleaseHold,
    Start,
    Stop,
    TickPlan,
)

CONF = LivestreamSettings(LEASE_TTL=3.0, RECONCILE_INTERVAL=1.0, HEARTBEAT_INTERVAL=10.0)
ME, OTHER = "w-me", "w-other"


def core() -> Ownership:
    return Ownership(ME, CONF)


def test_no_fence_while_renewals_reach_redis_however_late_the_worker_is():
    # Renewal runs on its own thread: only its clock counts, not the worker's loop.
    ownership = core()
    assert ownership.fence(["1", "2"], last_renewal=100.0, now=101.99) == []
    assert ownership.fenced == set()


def test_fence_stops_every_manager_once_renewal_failed_for_ttl_minus_interval():
    ownership = core()
    actions = ownership.fence(["1", "2"], last_renewal=100.0, now=102.0)
    assert actions == [Stop("1", "fence"), Stop("2", "fence")]
    assert ownership.fenced == {"1", "2"}


def test_a_lease_taken_by_another_worker_stops_our_manager_and_forgets_the_fence():
    ownership = core()
    ownership.fenced = {"3"}
    actions, resumable = ownership.renewed(
        ["1", "2", "3"], lost=["2", "3"], running={"1", "2"}, epoch_changed=False, now=0
    )
    assert actions == [Stop("2", "lost")]
    assert resumable == []
    assert ownership.fenced == set()


def test_fenced_users_resume_when_their_lease_is_still_ours_and_they_are_present():
    ownership = core()
    ownership.fence(["1", "2"], last_renewal=0.0, now=5.0)
    actions, resumable = ownership.renewed(["1", "2"], lost=[], running=set(), epoch_changed=False, now=6.0)
    assert actions == [] and resumable == ["1", "2"]
    assert ownership.resume("1", present=True, now=6.0) == Start("1")
    assert ownership.resume("2", present=False, now=6.0) == Release("2")  # gone meanwhile: free the lease
    assert ownership.fenced == set()
    assert ownership.resume("2", present=True, now=6.0) is None  # decided once


def test_after_redis_lost_its_data_absence_means_nothing_until_heartbeats_rebuilt_presence():
    ownership = core()
    ownership.fence(["1"], last_renewal=0.0, now=5.0)
    _, resumable = ownership.renewed(["1"], lost=[], running=set(), epoch_changed=True, now=10.0)
    assert resumable == ["1"]
    # Presence is empty after the restart, but the heartbeats have not re-tracked yet.
    assert ownership.rebuilding(10.0 + CONF.HEARTBEAT_INTERVAL)
    assert ownership.resume("1", present=False, now=11.0) == Start("1")
    assert not ownership.rebuilding(10.0 + CONF.HEARTBEAT_INTERVAL + 2 * CONF.RECONCILE_INTERVAL)


def test_a_started_manager_is_no_longer_fenced():
    ownership = core()
    ownership.fence(["1"], last_renewal=0.0, now=5.0)
    ownership.started("1")
    _, resumable = ownership.renewed(["1"], lost=[], running={"1"}, epoch_changed=False, now=6.0)
    assert resumable == []


def test_cleanup_decisions():
    ownership = core()
    running = {"mine"}
    assert ownership.cleanup("mine", CleanupFacts(1, ME, held=False), running) is None  # came back
    assert ownership.cleanup("mine", CleanupFacts(0, ME, held=False), running) == Stop("mine", "cleanup")
    assert ownership.cleanup("held", CleanupFacts(0, "held-by-staff:7", held=True), running) == ReleaseHold(
        "held"
    )
    assert ownership.cleanup("theirs", CleanupFacts(0, OTHER, held=False), running) == Forward(
        OTHER, "theirs"
    )
    assert ownership.cleanup("nobody", CleanupFacts(0, None, held=False), running) is None
    # Our lease but no manager here (fenced): the renewal decides, not the cleanup.
    assert ownership.cleanup("fenced", CleanupFacts(0, ME, held=False), running) is None


def test_the_tick_claims_orphans_only_while_the_fence_is_not_due():
    ownership = core()
    assert ownership.tick(last_renewal=100.0, now=101.9) == TickPlan(
        claim_orphans=True, schedule_cleanups=True
    )
    assert ownership.tick(last_renewal=100.0, now=102.0).claim_orphans is False


def test_the_tick_schedules_no_cleanup_while_presence_is_rebuilt_after_redis_lost_its_data():
    ownership = core()
    ownership.renewed([], lost=[], running=set(), epoch_changed=True, now=10.0)  # rebuild for 10 + 2 s
    assert ownership.tick(last_renewal=21.0, now=21.9) == TickPlan(
        claim_orphans=True, schedule_cleanups=False
    )
    assert ownership.tick(last_renewal=22.0, now=22.0).schedule_cleanups is True


def test_due_timers_split_into_cleanups_with_valid_ids_and_every_other_message():
    from livestream.timers.cleanups import split_due

    due = [
        {"type": "presence.cleanup", "user_id": "1"},
        {"type": "presence.cleanup", "user_id": "bad\nid"},  # dropped: never reaches a decision
        {"type": "presence.reconcile"},
    ]
    assert split_due(due) == (["1"], [{"type": "presence.reconcile"}])
