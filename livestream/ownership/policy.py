"""The worker's decisions about its managers, pure: facts and a clock in, actions out.

Modelled on Phoenix.Tracker's State/Replica: nothing here reads Redis, spawns a
task or looks at a clock of its own. livestream/worker/presence_manager.py reads the
facts (what Redis says, what runs here, what time it is), asks this module what
to do and performs the returned actions. So the delicate rules (fencing, what a
renewal after a freeze or a Redis data loss means, who acts on a cleanup) are
tested in milliseconds, without processes (tests/test_ownership.py).

The rules:

  fence     No renewal reached Redis for LEASE_TTL - RECONCILE_INTERVAL while
            managers run: our leases may lapse and be claimed, so every manager
            is cancelled now (before it takes another step) and remembered as
            fenced. Being late is not a reason: renewal runs on its own thread
            (livestream/ownership/keeper.py) and its clock is what counts here.
  renewal   A lease another worker holds now stops our manager. A fenced user
            whose lease is still ours (or was taken back after Redis lost its
            data) resumes if they are present, or if presence is being rebuilt;
            otherwise the lease is released. A new Redis epoch (restarted empty)
            starts a rebuild: for HEARTBEAT_INTERVAL + 2 ticks absence means
            nothing, since the sockets' heartbeats have not re-tracked them yet.
  cleanup   A user still present: nothing. Held by staff: the hold ends. Ours:
            stop. Another worker's: forward the stop to it.
  tick      The reconcile tick claims present users nobody runs only while the
            fence is not due (a worker about to lose its leases takes no more),
            and schedules the cleanups that lost leaves never scheduled only
            while presence is not being rebuilt.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from livestream.conf import LivestreamSettings

# -- the grant rules, shared with the Lua that applies them atomically -------------------
#
# Each function below has a line-for-line twin in livestream/ownership/policy_lua.py (the
# scripts in leases.py compose that Lua; none writes the rule itself).
# tests/test_policy.py runs one table of cases through both, against a private redis-server,
# so the two are the same policy; tests/test_ownership.py tests the Python side alone.


def fence_threshold(lease_ttl: float, reconcile_interval: float) -> float:
    """How long without a renewal reaching Redis before every manager is stopped: a
    renewal round runs every ``reconcile_interval``, so this leaves one round of room
    before LEASE_TTL, when the leases lapse and may be claimed."""
    return lease_ttl - reconcile_interval


def fence_due(last_renewal: float, now: float, lease_ttl: float, reconcile_interval: float) -> bool:
    return now - last_renewal >= fence_threshold(lease_ttl, reconcile_interval)


def effects_deadline(sent_at: float, lease_ttl: float, stop_margin: float) -> float:
    """When the effects outside Redis of a worker whose last renewal was sent at ``sent_at``
    must have stopped: Redis received that renewal no earlier than it was sent, so the
    lease lasts at least until ``sent_at + lease_ttl``, and ``stop_margin`` before it
    the effects are stopped (livestream/ownership/fencing.py)."""
    return sent_at + lease_ttl - stop_margin


def grants_open(known_epoch: str, current_epoch: str | None, on_hold: bool) -> bool:
    """May a worker grant a lease now? Only one that has seen Redis' current epoch (a worker
    that never looked cannot tell a data loss from a first start), and never during an
    epoch hold (after a data loss or a change of master the running owners take their
    leases back first)."""
    return known_epoch != "" and current_epoch == known_epoch and not on_hold


def claimable(
    user_id: str,
    owner: str | None,
    rebuilt: Callable[[str], bool],
    dead: Callable[[str], bool],
    holds_end: bool,
    hold_prefix: str,
) -> bool:
    """May a present user be granted to a worker (placement, orphan claim)? If nobody runs
    them (no lease, a dead worker's, or with ``holds_end``, a join, a staff hold), and no
    heartbeat re-tracked them lately (``rebuilt(user_id)``: their lease goes back to its
    owner only). ``dead`` and ``rebuilt`` are asked only when needed: each is a Redis call
    in the Lua twin, run for every present user each tick."""
    nobody_runs = owner is None or (holds_end and owner.startswith(hold_prefix)) or dead(owner)
    return nobody_runs and not rebuilt(user_id)


def failover_hold(lease_ttl: float, reconcile_interval: float) -> float:
    """No grant for this long after Redis' master changed (a failover, a switchover, a
    restart): an owner whose last renewals went to the old master renews on the new one
    within a round or two of the sentinels naming it, and fences itself otherwise."""
    return lease_ttl + 2 * reconcile_interval


def least_loaded(loads: Sequence[int]) -> int:
    """The index of the least loaded worker (the first of equals)."""
    best = 0
    for j in range(1, len(loads)):
        if loads[j] < loads[best]:
            best = j
    return best


def place(count: int, loads: list[int]) -> list[int]:
    """Where ``count`` users go, one after the other, each on the least loaded worker then:
    their indexes into ``loads`` (which is updated as it goes)."""
    chosen = []
    for _ in range(count):
        best = least_loaded(loads)
        loads[best] += 1
        chosen.append(best)
    return chosen


def fair_share(present: int, live_workers: int, running: int, orphans: int) -> int:
    """How many orphans a worker claims in one tick: up to a fair share of all present
    users (at least one), so that after a worker dies every survivor takes its part."""
    fair = math.ceil(present / max(1, live_workers))
    return min(orphans, max(1, fair - running))


@dataclass(frozen=True)
class Start:
    user_id: str


@dataclass(frozen=True)
class Stop:
    user_id: str
    why: str  # "cleanup", "lost" (another worker holds the lease), "fence"


@dataclass(frozen=True)
class Release:
    user_id: str  # our lease: nobody runs the user now


@dataclass(frozen=True)
class ReleaseHold:
    user_id: str  # a staff hold on the user ends


@dataclass(frozen=True)
class Forward:
    owner: str  # the worker that runs the user: it must stop them
    user_id: str


Action = Start | Stop | Release | ReleaseHold | Forward


@dataclass(frozen=True)
class TickPlan:
    """What one reconcile tick may do, besides expiring dead connections and publishing state."""

    claim_orphans: bool  # claim present users nobody runs
    schedule_cleanups: bool  # schedule the cleanup of users away without one


@dataclass(frozen=True)
class CleanupFacts:
    """What Redis said about a user whose cleanup timer came due."""

    sessions: int
    owner: str | None  # the lease's value: a worker id, a staff hold, or None
    held: bool  # the lease is a staff hold


@dataclass
class Ownership:
    """One worker's fenced users and rebuild window; the rest is passed in as facts."""

    worker_id: str
    conf: LivestreamSettings
    fenced: set[str] = field(default_factory=set)
    rebuild_until: float = 0.0

    # -- fencing -----------------------------------------------------------------

    def fence_due(self, last_renewal: float, now: float) -> bool:
        """Our leases may lapse soon: no renewal reached Redis for LEASE_TTL - RECONCILE_INTERVAL."""
        return fence_due(last_renewal, now, self.conf.LEASE_TTL, self.conf.RECONCILE_INTERVAL)

    def fence(self, running: Iterable[str], last_renewal: float, now: float) -> list[Action]:
        """Stop every running manager if the fence is due; they are remembered as fenced."""
        if not self.fence_due(last_renewal, now):
            return []
        actions: list[Action] = []
        for user_id in running:
            self.fenced.add(user_id)
            actions.append(Stop(user_id, "fence"))
        return actions

    # -- renewal -----------------------------------------------------------------

    def renewed(
        self,
        users: Iterable[str],
        lost: Collection[str],
        running: Collection[str],
        epoch_changed: bool,
        now: float,
    ) -> tuple[list[Action], list[str]]:
        """A renewal of ``users`` reached Redis; ``lost`` are held by another worker now.

        Returns the actions due now and the fenced users that may resume: the caller
        asks Redis whether each is present and calls :meth:`resume`.
        """
        if epoch_changed:
            self.rebuild_until = now + self.conf.HEARTBEAT_INTERVAL + 2 * self.conf.RECONCILE_INTERVAL
        actions: list[Action] = [Stop(u, "lost") for u in lost if u in running]
        renewed = list(users)
        self.fenced.difference_update(u for u in renewed if u in lost)
        resumable = [u for u in renewed if u in self.fenced and u not in lost and u not in running]
        return actions, resumable

    def rebuilding(self, now: float) -> bool:
        """Redis lost its data lately: absence means nothing until the heartbeats re-track."""
        return now < self.rebuild_until

    def resume(self, user_id: str, present: bool, now: float) -> Action | None:
        """A fenced user whose lease is ours again: run them if they are (or may be) present."""
        if user_id not in self.fenced:
            return None
        self.fenced.discard(user_id)
        return Start(user_id) if present or self.rebuilding(now) else Release(user_id)

    def started(self, user_id: str) -> None:
        """A manager started here (however): it is no longer fenced."""
        self.fenced.discard(user_id)

    # -- the reconcile tick -------------------------------------------------------

    def tick(self, last_renewal: float, now: float) -> TickPlan:
        return TickPlan(
            claim_orphans=not self.fence_due(last_renewal, now), schedule_cleanups=not self.rebuilding(now)
        )

    # -- cleanup -----------------------------------------------------------------

    def cleanup(self, user_id: str, facts: CleanupFacts, running: Collection[str]) -> Action | None:
        """A cleanup timer came due for ``user_id`` (claimed by us, see livestream/timers/store.py)."""
        if facts.sessions > 0:
            return None  # they came back
        if facts.held:
            return ReleaseHold(user_id)
        if user_id in running:
            return Stop(user_id, "cleanup")
        if facts.owner and facts.owner != self.worker_id:
            return Forward(facts.owner, user_id)
        return None
