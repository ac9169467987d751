"""The UserStreamManagers this worker runs, and the effects of what livestream/ownership/policy.py decides.

The effect half of the ownership core. ``managers`` maps a user id to the
UserStreamManager running here (this process only: who runs whom is in Redis, as
leases). A lock per user keeps a start, a stop and a staff action of one user from
interleaving. Starting and stopping log the worker's lines

    [PresenceManager] UserStreamManager started: <user>
    [PresenceManager] UserStreamManager stopped: <user>

and push the status to the user's tabs (livestream/pushes/status.py). ``apply``
performs one Action of the pure core; ``renewed`` and ``fence`` turn a renewal
round or a renewal that failed for too long into such actions.

A user's next manager here starts only once their last one here has stopped
(``stopped``): a component may take up to SHUTDOWN_TIMEOUT to end (one stuck in
a Redis call during a failover), and two managers of one user must never run at
once, not even in one process. Only the waiting start waits, not other users'.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from livestream import logformats
from livestream.components import choices
from livestream.components.user_manager import UserStreamManager, component_classes
from livestream.observe import metrics
from livestream.ownership import fencing, history
from livestream.ownership.holds import release_hold
from livestream.ownership.keeper import Renewal
from livestream.ownership.leases import LeaseStore
from livestream.ownership.policy import Action, Forward, Ownership, Release, ReleaseHold, Start, Stop
from livestream.ownership.routing import Forwarder
from livestream.presence.store import PresenceStore
from livestream.pushes.status import StatusPusher
from livestream.tasks import TaskScope

logger = logging.getLogger(logformats.WORKER_LOGGER)

# Managers started between two yields to the loop: a batch of joins must not hold
# up the ticks of the managers already running.
START_CHUNK = 200


class LocalManagers:
    def __init__(
        self, core: Ownership, store: PresenceStore, leases: LeaseStore, scope: TaskScope, forward: Forwarder
    ) -> None:
        self.core, self.store, self.leases, self.scope, self.forward = core, store, leases, scope, forward
        self.managers: dict[str, UserStreamManager] = {}
        self.status = StatusPusher(self.managers)  # live dashboards
        self.series = metrics.WorkerSeries()  # join-to-running and restarts, written each tick
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Per user, one future per manager taken out of ``managers`` that has not stopped yet.
        self._stopping: dict[str, list[asyncio.Future[None]]] = {}
        self._waiting_starts: set[str] = set()  # users whose start waits for such a stop
        self._components = component_classes()

    def lock(self, user_id: str) -> asyncio.Lock:
        return self._locks[user_id]

    # -- start and stop ----------------------------------------------------------

    def start(self, user_id: str) -> UserStreamManager:
        self.core.started(user_id)
        fencing.GATE.granted(user_id)  # a lease lost earlier is ours again
        token = self.leases.tokens.get(user_id)  # of the grant that made us its owner
        manager = self.managers[user_id] = UserStreamManager(
            user_id,
            self._components,
            choose=choices.for_user,
            on_restart=self.series.count_restart,
            token=token,
        )
        manager.start()
        self.status.announce(user_id)
        logger.info(logformats.MANAGER_STARTED, user_id)
        history.record("run", event="start", user=user_id, worker=self.leases.worker_id, token=token)
        return manager

    async def start_many(self, user_ids: list[str], received: float) -> None:
        """A manager for each of ``user_ids`` (whose lease we hold) not running yet."""
        for i, user_id in enumerate(user_ids, 1):
            if user_id in self.managers or self.lock(user_id).locked():
                pass  # running, or whoever holds the lock starts or stops them
            elif self.stopping(user_id):
                if user_id not in self._waiting_starts:
                    self._waiting_starts.add(user_id)
                    self.scope.spawn(self._start_once_stopped(user_id, received), f"start:{user_id}")
            else:
                self._start_timed(user_id, received)
            if i % START_CHUNK == 0:
                await asyncio.sleep(0)

    def _start_timed(self, user_id: str, received: float) -> None:
        manager = self.start(user_id)
        manager.on_running = lambda: self.series.observe_join(time.monotonic() - received)

    async def _start_once_stopped(self, user_id: str, received: float) -> None:
        try:
            await self.stopped(user_id)
            async with self.lock(user_id):
                if user_id not in self.managers:
                    self._start_timed(user_id, received)
        finally:
            self._waiting_starts.discard(user_id)

    def stopping(self, user_id: str) -> bool:
        """A manager of ``user_id`` was taken out of ``managers`` and has not stopped yet."""
        return user_id in self._stopping

    async def stopped(self, user_id: str) -> None:
        """Until every manager of ``user_id`` taken out of ``managers`` has stopped."""
        while pending := self._stopping.get(user_id):
            await asyncio.wait(pending)

    async def all_stopped(self) -> None:
        await asyncio.gather(*(self.stopped(user_id) for user_id in list(self._stopping)))

    async def stop(self, user_id: str, *, release: bool) -> None:
        taken = self._take(user_id)
        if taken is not None:
            await self._end(user_id, *taken, release=release)

    def stop_soon(self, user_id: str, why: str) -> None:
        """Cancel the user's manager now, before any of its components acts again, and stop
        it in the background (a fence, a lease lost): out of ``managers`` at once."""
        taken = self._take(user_id)
        if taken is not None:
            taken[0].cancel()
            self.scope.spawn(self._end(user_id, *taken, release=False), f"{why}:{user_id}")

    def _take(self, user_id: str) -> tuple[UserStreamManager, asyncio.Future[None]] | None:
        manager = self.managers.pop(user_id, None)
        if manager is None:
            return None
        done = asyncio.get_running_loop().create_future()
        self._stopping.setdefault(user_id, []).append(done)
        return manager, done

    async def _end(
        self, user_id: str, manager: UserStreamManager, done: asyncio.Future[None], *, release: bool
    ) -> None:
        try:
            self.status.announce(user_id, "stopping", manager)
            await manager.stop()
            self.status.announce(user_id, "stopped", manager)
            logger.info(logformats.MANAGER_STOPPED, user_id)
            history.record(
                "run", event="stop", user=user_id, worker=self.leases.worker_id, token=manager.token
            )
        finally:
            done.set_result(None)
            pending = self._stopping[user_id]
            pending.remove(done)
            if not pending:
                del self._stopping[user_id]
        if release:
            self.leases.tokens.pop(user_id, None)
            try:
                await self.leases.release(user_id)
            except Exception as exc:
                logger.warning("[PresenceManager] lease of %s not released: %s", user_id, exc)

    async def stop_if_absent(self, user_id: str, *, seen_absent: bool = False) -> None:
        """Stop our manager for an absent user; start it again if they came back meanwhile.

        ``seen_absent``: the caller read them absent a moment ago (a due cleanup's facts),
        so the stop does not wait for another round trip: a burst of cleanups stops each
        manager on time. A return in between is still caught, by the release.
        """
        async with self.lock(user_id):
            if user_id not in self.managers:
                return
            if not seen_absent and await self.store.sessions(user_id) > 0:
                return
            await self.stop(user_id, release=False)
            try:
                released = await self.leases.release_if_absent(user_id, self.store.user_prefix + user_id)
            except Exception as exc:  # Redis away: the lease, no longer renewed, lapses by itself
                logger.warning("[PresenceManager] lease of %s not released: %r", user_id, exc)
                self.leases.tokens.pop(user_id, None)
                return
            if not released:
                await self.stopped(user_id)
                self.start(user_id)
            else:
                self.leases.tokens.pop(user_id, None)

    # -- what the core decided ---------------------------------------------------

    async def apply(self, action: Action | None) -> None:
        match action:
            case Start(user_id):
                self.start(user_id)
            case Stop(user_id, "cleanup"):  # the core decided on facts read just now
                self.scope.spawn(self.stop_if_absent(user_id, seen_absent=True), f"stop:{user_id}")
            case Stop(user_id, why):
                if why == "lost":
                    self.leases.tokens.pop(user_id, None)
                    logger.warning(
                        "[PresenceManager] lease of %s taken by another worker; stopping here", user_id
                    )
                self.stop_soon(user_id, why)
            case Release(user_id):
                self.leases.tokens.pop(user_id, None)
                await self.leases.release(user_id)
            case ReleaseHold(user_id):
                await release_hold(self.leases, user_id)  # their cleanup ends a staff stop
            case Forward(owner, user_id):
                await self.forward(owner, {"type": "presence.stop", "user_id": user_id})

    def renewed(self, renewal: Renewal) -> None:
        """A renewal round reached Redis (livestream/ownership/keeper.py); runs on our loop."""
        now = time.monotonic()
        actions, resumable = self.core.renewed(
            renewal.users, renewal.lost, self.managers, renewal.epoch_changed, now
        )
        if renewal.epoch_changed and (self.managers or self.core.fenced):
            grace = self.core.rebuild_until - now
            logger.warning("[PresenceManager] Redis lost its data; rebuilding presence for %.0fs", grace)
        for action in actions:
            self.scope.spawn(self.apply(action), "renewal")
        if resumable:
            self.scope.spawn(self._resume(resumable), "resume-fenced")

    async def _resume(self, user_ids: list[str]) -> None:
        """Fenced users whose leases are ours again: run them again now rather than after someone's claim."""
        for user_id in user_ids:
            if self.stopping(user_id):  # its fenced manager is still stopping: resumed apart, after it
                self.scope.spawn(self._resume_one(user_id), f"resume:{user_id}")
            else:
                await self._resume_one(user_id)

    async def _resume_one(self, user_id: str) -> None:
        await self.stopped(user_id)
        async with self.lock(user_id):
            if user_id in self.managers:
                return
            try:
                present = await self.store.sessions(user_id) > 0
            except Exception as exc:  # Redis away again: still fenced, offered at the next renewal
                logger.warning("[PresenceManager] fenced %s not resumed yet: %r", user_id, exc)
                return
            try:
                await self.apply(self.core.resume(user_id, present, time.monotonic()))
            except Exception as exc:  # a Release that did not reach Redis: the lease lapses
                logger.warning("[PresenceManager] lease of %s not released: %r", user_id, exc)

    def fence(self, last_renewal: float) -> None:
        """Unable to renew: stop everything before our leases can expire and be claimed."""
        now = time.monotonic()
        if not self.managers or not self.core.fence_due(last_renewal, now):
            return
        logger.warning(logformats.FENCE, now - last_renewal, len(self.managers))
        for action in self.core.fence(list(self.managers), last_renewal, now):
            self.stop_soon(action.user_id, "fence")  # now: a worker waking from a freeze must not act first
