"""This process's presence I/O: batched track/untrack and one heartbeat loop.

Every dashboard socket of the process goes through one Tracker:

  track(uid, meta)   queued; one task sends everything queued in one track_many
                     (one EVALSHA for up to BATCH connections). A burst of 2,000
                     connects is a handful of round trips on one Redis connection,
                     not 2,000 concurrent commands each taking a pool connection.
  untrack(uid, ref)  the same, with untrack_many. A failed batch (Redis timeout,
                     restart) is retried in the background with backoff until it
                     succeeds: a closed socket is never dropped from the queue, so
                     it cannot stay present. The cleanup delay counts from the
                     call (the close), not from when the batch reached Redis: the
                     time spent queued is taken off each connection's delay.
  watch/forget       the heartbeat set. One loop refreshes all of it every
                     HEARTBEAT_INTERVAL with track_many, BATCH per round trip; a
                     connection Redis lost is re-tracked (and logged). A socket is
                     forgotten *before* its untrack is queued, and the track script
                     never revives an untracked ref, so a heartbeat in flight while
                     a socket closes cannot bring it back as a ghost.

The Redis connections are this process's own (``dashboard:<pid>:presence``, see
dashboard/ws/hub.py), at most one per loop here: they never grow with the load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from dashboard.daphne.memory import Trimmer
from livestream.conf import get_settings
from livestream.presence.store import Change, Meta, PresenceStore
from livestream.tasks import Backoff, per_loop

logger = logging.getLogger("dashboard.tracker")

# Connections per track_many / untrack_many (one Lua call each; ~a millisecond of Redis).
BATCH = 500


class Tracker:
    def __init__(self) -> None:
        self.open: dict[str, tuple[str, Meta]] = {}  # ref -> (user id, meta): the heartbeat set
        self.stopping = False  # set on SIGTERM (dashboard/daphne/shutdown.py)
        self._tracks: list[tuple[str, Meta, asyncio.Future[Change | None]]] = []
        # (user id, ref, cleanup delay or None for the default, queued at (monotonic), future)
        self._untracks: list[tuple[str, str, float | None, float, asyncio.Future[Change | None]]] = []
        self._track_wake = asyncio.Event()
        self._untrack_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: Any = None
        self.trimmer = Trimmer()  # memory back to the system after a burst closed

    def store(self) -> PresenceStore:
        if self._client is None:
            from dashboard.ws.hub import named_client

            self._client = named_client("presence")
        return PresenceStore(client=self._client)

    def _start(self) -> None:
        if not self._tasks or any(t.done() for t in self._tasks):
            for task in self._tasks:
                task.cancel()
            self._tasks = [
                asyncio.ensure_future(self._track_loop()),
                asyncio.ensure_future(self._untrack_loop()),
                asyncio.ensure_future(self._heartbeat_loop()),
            ]

    # -- the sockets' side -------------------------------------------------

    async def track(self, user_id: str, meta: Meta) -> Change | None:
        """Track one connection (batched with everybody else's); its join, or None."""
        self._start()
        future: asyncio.Future[Change | None] = asyncio.get_running_loop().create_future()
        self._tracks.append((user_id, meta, future))
        self._track_wake.set()
        return await asyncio.shield(future)

    def untrack(
        self, user_id: str, ref: str, cleanup_delay: float | None = None
    ) -> asyncio.Future[Change | None]:
        """Queue the untrack of one connection; it is retried until it succeeds.

        The returned future resolves with the leave (or None: it was not tracked);
        waiting for it is optional.
        """
        self._start()
        self.open.pop(ref, None)
        self.trimmer.seen(len(self.open))
        future: asyncio.Future[Change | None] = asyncio.get_running_loop().create_future()
        self._untracks.append((user_id, ref, cleanup_delay, time.monotonic(), future))
        self._untrack_wake.set()
        return future

    def watch(self, user_id: str, meta: Meta) -> None:
        self.open[meta["ref"]] = (user_id, meta)
        self.trimmer.seen(len(self.open))

    def forget(self, ref: str) -> None:
        self.open.pop(ref, None)

    def pending_untracks(self) -> int:
        return len(self._untracks)

    # -- the loops ---------------------------------------------------------

    async def _track_loop(self) -> None:
        while True:
            await self._track_wake.wait()
            self._track_wake.clear()
            while self._tracks:
                batch, self._tracks = self._tracks[:BATCH], self._tracks[BATCH:]
                try:
                    changes = await self.store().track_many(
                        [(uid, meta) for uid, meta, _ in batch], sticky=True
                    )
                except Exception as exc:  # the connects fail (refused): nothing was tracked for sure
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(ConnectionError(f"track failed: {exc!r}"))
                    continue
                for (_, _, future), change in zip(batch, changes, strict=True):
                    if not future.done():
                        future.set_result(change)

    async def _untrack_loop(self) -> None:
        backoff = Backoff()
        failing_since: float | None = None
        while True:
            await self._untrack_wake.wait()
            self._untrack_wake.clear()
            while self._untracks:
                delay = self._untracks[0][2]
                batch = [item for item in self._untracks[:BATCH] if item[2] == delay]
                now = time.monotonic()
                try:
                    changes = await self.store().untrack_many(
                        [(uid, ref) for uid, ref, _, _, _ in batch],
                        cleanup_delay=delay,
                        closed_ago=[now - queued for _, _, _, queued, _ in batch],
                    )
                except Exception as exc:
                    if failing_since is None:
                        failing_since = time.monotonic()
                        logger.warning(
                            "[PresenceConsumer] untrack of %d connections failed: %r; retrying until it works",
                            len(self._untracks),
                            exc,
                        )
                    await asyncio.sleep(backoff.failed())
                    continue
                if failing_since is not None:
                    logger.warning(
                        "[PresenceConsumer] untracks work again after %.1fs", time.monotonic() - failing_since
                    )
                    failing_since = None
                    backoff.reset()
                done = {id(item) for item in batch}
                self._untracks = [item for item in self._untracks if id(item) not in done]
                for (*_, future), change in zip(batch, changes, strict=True):
                    if not future.done():
                        future.set_result(change)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(get_settings().HEARTBEAT_INTERVAL)
            if not self.stopping:  # handed off: nothing to refresh (and the loop stays up)
                await self.beat()

    async def beat(self) -> None:
        """Refresh every open connection (BATCH per round trip); re-track the ones Redis lost."""
        connections = list(self.open.values())
        for start in range(0, len(connections), BATCH):
            batch = connections[start : start + BATCH]
            try:
                changes = await self.store().track_many(batch, heartbeat=True)
            except Exception as exc:  # Redis restarting: the next beat tries again
                logger.warning("[PresenceConsumer] heartbeat of %d connections failed: %r", len(batch), exc)
                return
            for (user_id, _meta), change in zip(batch, changes, strict=True):
                if change is not None:
                    logger.info("[PresenceConsumer] re-tracked connection of user %s", user_id)

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued untrack went through (or ``timeout``); True if it did."""
        deadline = time.monotonic() + timeout
        while self._untracks:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True


# This process's tracker (one per event loop).
get_tracker = per_loop(Tracker)
