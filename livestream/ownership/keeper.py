"""Keeps a worker's leases, and its entry in the worker registry, alive on a thread of its own.

A worker busy with thousands of managers (a join flood, a deploy's reconnect
storm) is slow, not dead. If renewing its leases waited its turn on the worker's
event loop, a long enough queue of ordinary work would let them lapse: the worker
would fence itself, stop every manager, claim them all back and be busier still.
So renewal runs here, on its own thread, event loop and Redis connection, first
and on time however late the worker's loop is.

Each round (every RECONCILE_INTERVAL): beat (alive, with our load, for placement
and for the admin), check Redis' epoch (did it lose its data?), renew every lease
of ``owned()``. The worker's fence compares ``last_renewal`` (when the last round
that reached Redis was sent) with the lease TTL: it fires when we *could not*
renew (Redis unreachable, the whole process frozen), never because the worker
was late. A round that finds its own last renewal too old while managers still
run (the process was frozen: SIGSTOP, a paused VM) renews nothing until the
worker has fenced: a frozen worker's managers must stop before it touches its
leases again.

Effects outside Redis (livestream/ownership/fencing.py) are stopped from here, not from
the worker's loop: those of a lost lease at once, and all of them once EFFECT_STOP_MARGIN
is all that is left of the lease the last renewal that reached Redis bought.

Results go back to the worker's loop with ``call_soon_threadsafe``; reading
``owned()`` here relies on ``tuple(dict)`` being one C call under the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from livestream.conf import get_settings
from livestream.ownership import fencing
from livestream.ownership.leases import LeaseStore
from livestream.ownership.policy import fence_due

logger = logging.getLogger("livestream.lease_keeper")


@dataclass(frozen=True)
class Renewal:
    """One round's outcome, for the worker's loop."""

    sent_at: float  # time.monotonic() when the renewal was sent: the leases run out LEASE_TTL after
    users: tuple[str, ...]  # whose leases were renewed (or found lost)
    lost: tuple[str, ...]  # held by another worker now
    live_workers: int
    epoch_changed: bool  # Redis is new to us: first look, or it lost its data


class LeaseKeeper:
    def __init__(
        self,
        leases: LeaseStore,
        owned: Callable[[], tuple[str, ...]],
        running: Callable[[], int],
        info: Callable[[], dict[str, str]],
        on_renewal: Callable[[Renewal], None],
        on_stale: Callable[[], None],
    ) -> None:
        self.worker_leases = leases  # the worker's own store: we keep its epoch current
        self.owned = owned
        self.running = running
        self.info = info
        self.on_renewal = on_renewal
        self.on_stale = on_stale
        self.last_renewal = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.last_renewal = time.monotonic()
        fencing.GATE.renewed(self.last_renewal)
        self._thread = threading.Thread(target=self._main, name="lease-keeper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        fencing.GATE.keeper_stopped()

    def stale(self, now: float | None = None) -> bool:
        """No renewal reached Redis for LEASE_TTL - RECONCILE_INTERVAL: our leases may lapse soon."""
        conf = get_settings()
        now = time.monotonic() if now is None else now
        return fence_due(self.last_renewal, now, conf.LEASE_TTL, conf.RECONCILE_INTERVAL)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        # Built here: a client belongs to the loop it was made on (livestream/redis.py).
        leases = LeaseStore(self.worker_leases.worker_id)
        # The worker's tokens, by reference: a renewal that takes a lease back takes its token
        # back too (renew copies the dict in one C call: the worker's loop writes it).
        leases.tokens = self.worker_leases.tokens
        down_since: float | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            fencing.GATE.expire(started)
            if self.stale(started) and self.running() > 0:
                self._notify(self.on_stale)  # frozen or cut off: the worker fences before we renew
                self._stop.wait(0.02)
                continue
            try:
                renewal = await self._round(leases, started)
            except Exception as exc:
                if down_since is None:
                    down_since = started
                    logger.warning("[PresenceManager] lease renewal failed: %r; retrying", exc)
            else:
                if down_since is not None:
                    logger.info("[PresenceManager] lease renewal back after %.1fs", started - down_since)
                    down_since = None
                self.last_renewal = started
                fencing.GATE.renewed(started)
                fencing.GATE.lost(renewal.lost)
                self._notify(self.on_renewal, renewal)
            interval = get_settings().RECONCILE_INTERVAL
            wake, deadline = started + interval, fencing.GATE.deadline
            if time.monotonic() < deadline < wake:
                wake = deadline  # external effects stop on time, between two rounds
            self._stop.wait(max(0.0, wake - time.monotonic()))

    async def _round(self, leases: LeaseStore, started: float) -> Renewal:
        live = await leases.beat(self.info(), load=self.running())
        changed = await leases.check_epoch()
        self.worker_leases.epoch = leases.epoch
        users = self.owned()
        lost = await leases.renew(list(users))
        return Renewal(started, users, tuple(lost), live, changed)

    def _notify(self, callback: Callable[..., None], *args: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the worker's loop closed meanwhile
                self._loop.call_soon_threadsafe(callback, *args)
