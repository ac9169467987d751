"""Pushes each running manager's status, and the session count, to its own user's tabs.

(The live side of what state.py publishes for staff: this module sends each user
their own manager, as it changes; state.py is the whole picture, read on demand;
control.py is what staff do about it. It runs inside the worker, so its log lines
carry the worker's ``[PresenceManager]`` tag.)

The worker owns the managers, so it is the one that knows their state. It
publishes to ``push.user_channel(user_id)`` (livestream/pushes/channels.py), which only that
user's live dashboard sockets listen to:

    {"type": "manager", "user_id": "7", "state": "running", "started_at": 1712345678.1,
     "components": {"ConsoleLogger": {"state": "running", "restarts": 0, "count": 12}}}
    {"type": "sessions", "user_id": "7", "sessions": 3}

Cost: a full pass every STATUS_PUSH_INTERVAL seconds sends only the statuses
that changed since the last push (the ConsoleLogger's counter changes once a
second), and only to users somebody watches: a publish that reached no tab marks
the user unwatched until one of their tabs joins. Lifecycle events (started, a
tab joined, stopping, stopped) are pushed at once for that user alone. Session
counts come from the presence events and are coalesced: at most one per user per
SESSIONS_PUSH_INTERVAL, the latest winning. Everything a pass sends goes out in
pipelined PUBLISHes, a thousand per round trip, in order.

A pass slower than the interval (many thousands of watched managers) is followed
by as long a pause, so pushing never takes more than about half the worker's
time; the pages then update less often (run more workers: leases spread the
users over them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from livestream.components.supervisor import State
from livestream.components.user_manager import UserStreamManager
from livestream.conf import get_settings
from livestream.pushes import channels as push

logger = logging.getLogger("livestream.status_push")

Status = dict[str, Any]

# A user's session count is pushed at most this often (seconds): a browser
# restoring 200 tabs sends each tab a few counts, not 200 each.
SESSIONS_PUSH_INTERVAL = 0.5
# Statuses read between two yields to the loop during a full pass.
YIELD_EVERY = 100


def manager_status(manager: UserStreamManager, state: str | None = None) -> Status:
    """What the user's dashboard shows: the manager's state and its components."""
    status = manager.status()
    if state is None:
        starting = any(child.state == State.STARTING for child in manager.children)
        state = "starting" if starting else "running"
    return {"state": state, **status}


class StatusPusher:
    """Sends ``managers``' statuses to their users' tabs; see the module docstring."""

    def __init__(self, managers: Mapping[str, UserStreamManager]) -> None:
        self.managers = managers
        self._last: dict[str, str] = {}
        # user -> status to send as is, or None for "the current status, even if unchanged"
        self._urgent: dict[str, Status | None] = {}
        # Users none of whose tabs listens (the last publish reached nobody): the
        # periodic passes skip them until one of their tabs joins (announce).
        self._unwatched: set[str] = set()
        self._sessions: dict[str, int] = {}  # user -> session count to push (coalesced)
        self._sessions_sent: dict[str, float] = {}  # user -> when their count was last pushed
        self._wake = asyncio.Event()

    def announce(
        self, user_id: str, state: str | None = None, manager: UserStreamManager | None = None
    ) -> None:
        """Push this user's status now: ``state`` of ``manager`` as it is at this moment,
        or (no state) whatever this worker runs for them when the push happens."""
        self._urgent[user_id] = manager_status(manager, state) if manager and state else None
        self._unwatched.discard(user_id)
        self._wake.set()

    def announce_sessions(self, user_id: str, sessions: int) -> None:
        """Push the user's open-session count: at most once per SESSIONS_PUSH_INTERVAL per user,
        the latest count winning, however many tabs open or close meanwhile."""
        self._sessions[user_id] = sessions
        self._wake.set()

    async def run(self) -> None:
        """Full passes every STATUS_PUSH_INTERVAL (0 disables them), urgent pushes in between."""
        loop = asyncio.get_running_loop()
        next_pass = loop.time()
        while True:
            interval = get_settings().STATUS_PUSH_INTERVAL
            timeout = max(0.0, next_pass - loop.time()) if interval > 0 else None
            if self._sessions:  # coalesced counts still waiting for their slot
                timeout = SESSIONS_PUSH_INTERVAL if timeout is None else min(timeout, SESSIONS_PUSH_INTERVAL)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
            # the cancellation that worker shutdown sends (the worker then hangs).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            full = interval > 0 and loop.time() >= next_pass
            began = loop.time()
            try:
                await self.push(full=full)
            except Exception:  # a component's status() raising must not end the pushes
                logger.exception("[PresenceManager] status push pass failed")
                await asyncio.sleep(min(interval, 1.0) or 1.0)
            if full:
                # A pass slower than the interval (many thousands of managers) is
                # followed by as long a pause: pushes never take more than about
                # half of the worker's time, the pages just update less often.
                now = loop.time()
                next_pass = max(next_pass + interval, now + (now - began))

    async def push(self, *, full: bool) -> int:
        """One pass: urgent statuses, session counts due, plus (full) every changed status
        of a watched user. Returns how many messages were sent."""
        self._wake.clear()
        urgent, self._urgent = self._urgent, {}
        messages: dict[str, tuple[str, Status]] = {}
        for i, (user_id, status) in enumerate(urgent.items(), 1):
            if status is None and user_id in self.managers:
                status = manager_status(self.managers[user_id])
            if status is not None:
                messages[user_id] = (json.dumps(status, sort_keys=True), status)
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        if full:
            for i, (user_id, manager) in enumerate(list(self.managers.items()), 1):
                if user_id not in messages and user_id not in self._unwatched:
                    status = manager_status(manager)
                    encoded = json.dumps(status, sort_keys=True)
                    if encoded != self._last.get(user_id):
                        messages[user_id] = (encoded, status)
                if i % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # let the managers' ticks run in between
            for user_id in [u for u in self._last if u not in self.managers and u not in messages]:
                del self._last[user_id]
            self._unwatched.intersection_update(self.managers)
        counts = self._due_session_counts()
        if messages or counts:
            await self._send(messages, counts)
        return len(messages) + len(counts)

    def _due_session_counts(self) -> dict[str, int]:
        now = time.monotonic()
        due = {
            user_id: sessions
            for user_id, sessions in self._sessions.items()
            if now - self._sessions_sent.get(user_id, 0.0) >= SESSIONS_PUSH_INTERVAL
        }
        for user_id in due:
            del self._sessions[user_id]
            self._sessions_sent[user_id] = now
        if len(self._sessions_sent) > 10 * len(due) + 1000:  # forget users long quiet
            horizon = now - SESSIONS_PUSH_INTERVAL
            self._sessions_sent = {u: t for u, t in self._sessions_sent.items() if t >= horizon}
        return due

    async def flush(self, timeout: float = 1.0) -> None:
        """Send what is urgent (used on shutdown); never raises."""
        try:
            await asyncio.wait_for(self.push(full=False), timeout)
        except Exception as exc:
            logger.warning("[PresenceManager] final status push failed: %r", exc)

    async def _send(self, messages: dict[str, tuple[str, Status]], counts: dict[str, int]) -> None:
        started = time.monotonic()
        statuses = list(messages.items())
        # The browser's shape, {"type": "manager", "user_id", **status}, from the encoding
        # already made to tell changed statuses apart: no second json.dumps per status.
        batch = [
            (push.user_channel(user_id), f'{{"type":"manager","user_id":{json.dumps(user_id)},{encoded[1:]}')
            for user_id, (encoded, _status) in statuses
        ]
        batch += [
            (push.user_channel(user_id), push.encode({"type": "sessions", "user_id": user_id, "sessions": n}))
            for user_id, n in counts.items()
        ]
        try:
            receivers = await push.publish_many(batch)
        except Exception as exc:
            for user_id, _ in statuses:
                self._last.pop(user_id, None)  # sent again on the next pass
            logger.warning("[PresenceManager] status push of %d users failed: %r", len(batch), exc)
            return
        for (user_id, (encoded, status)), reached in zip(statuses, receivers, strict=False):
            if status["state"] == "stopped":
                self._last.pop(user_id, None)
            else:
                self._last[user_id] = encoded
            if not reached:
                self._unwatched.add(user_id)
        elapsed = time.monotonic() - started
        if elapsed > get_settings().STATUS_PUSH_INTERVAL > 0:
            logger.warning("[PresenceManager] status push of %d users took %.2fs", len(batch), elapsed)
