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

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from livestream.conf import LivestreamSettings


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
        return now - last_renewal >= self.conf.LEASE_TTL - self.conf.RECONCILE_INTERVAL

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
