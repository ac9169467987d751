"""Pushes each running manager's status to its own user's open dashboard tabs.

The worker owns the managers, so it is the one that knows their state. It
sends to the channel-layer group ``user_group(user_id)``, which every socket of
that user (and only that user) joins in dashboard/consumers.py:

    {"type": "dashboard.manager", "user_id": "7",
     "status": {"state": "running", "started_at": 1712345678.1,
                "components": {"ConsoleLogger": {"state": "running", "restarts": 0, "count": 12}}}}

Cost: a full pass every STATUS_PUSH_INTERVAL seconds sends only the statuses
that changed since the last push (the ConsoleLogger's counter changes once a
second, so one group_send per running manager per pass at most; unchanged
managers cost a JSON encode, no Redis). Lifecycle events (started, a tab
joined, stopping, stopped) are pushed at once for that user alone. One task
sends, CONCURRENCY at a time, which keeps each user's messages in order.

A group_send costs ~0.3 ms of worker CPU (redis-py, three round trips), so one
worker sustains a few thousand pushes a second. With more managers than that a
pass outlasts the interval; it is then followed by as long a pause, so pushing
never takes more than about half the worker's time and the pages update less
often (run more workers: leases spread the users over them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from channels.layers import get_channel_layer

from livestream.conf import get_settings
from livestream.supervisor import State
from livestream.user_stream_manager import UserStreamManager

logger = logging.getLogger(__name__)

Status = dict[str, Any]

MESSAGE_TYPE = "dashboard.manager"
# Concurrent group_sends: enough to hide Redis latency (the cost is CPU, not
# waiting), and each holds a pooled connection: a pass must not open one per
# manager, nor starve the worker's other tasks of the shared pool.
CONCURRENCY = 32
_GROUP_SAFE = re.compile(r"[^a-zA-Z0-9_.-]")


def user_group(user_id: str) -> str:
    """The channel-layer group of one user's dashboard sockets."""
    return "dashboard-user-" + _GROUP_SAFE.sub("_", user_id)[:64]


def manager_status(manager: UserStreamManager, state: str | None = None) -> Status:
    """What the user's dashboard shows: the manager's state and its components."""
    status = manager.status()
    if state is None:
        starting = any(child.state == State.STARTING for child in manager.children)
        state = "starting" if starting else "running"
    return {"state": state, **status}


class StatusPusher:
    """Sends ``managers``' statuses to their users' groups; see the module docstring."""

    def __init__(self, managers: Mapping[str, UserStreamManager]) -> None:
        self.managers = managers
        self._last: dict[str, str] = {}
        # user -> status to send as is, or None for "the current status, even if unchanged"
        self._urgent: dict[str, Status | None] = {}
        self._wake = asyncio.Event()

    def announce(
        self, user_id: str, state: str | None = None, manager: UserStreamManager | None = None
    ) -> None:
        """Push this user's status now: ``state`` of ``manager`` as it is at this moment,
        or (no state) whatever this worker runs for them when the push happens."""
        self._urgent[user_id] = manager_status(manager, state) if manager and state else None
        self._wake.set()

    async def run(self) -> None:
        """Full passes every STATUS_PUSH_INTERVAL (0 disables them), urgent pushes in between."""
        loop = asyncio.get_running_loop()
        next_pass = loop.time()
        while True:
            interval = get_settings().STATUS_PUSH_INTERVAL
            timeout = max(0.0, next_pass - loop.time()) if interval > 0 else None
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
        """One pass: urgent statuses, plus (full) every changed one. Returns how many were sent."""
        self._wake.clear()
        urgent, self._urgent = self._urgent, {}
        messages: dict[str, tuple[str, Status]] = {}
        for user_id, status in urgent.items():
            if status is None and user_id in self.managers:
                status = manager_status(self.managers[user_id])
            if status is not None:
                messages[user_id] = (json.dumps(status, sort_keys=True), status)
        if full:
            for user_id, manager in list(self.managers.items()):
                if user_id not in messages:
                    status = manager_status(manager)
                    encoded = json.dumps(status, sort_keys=True)
                    if encoded != self._last.get(user_id):
                        messages[user_id] = (encoded, status)
            for user_id in [u for u in self._last if u not in self.managers and u not in messages]:
                del self._last[user_id]
        if messages:
            await self._send(messages)
        return len(messages)

    async def flush(self, timeout: float = 1.0) -> None:
        """Send what is urgent (used on shutdown); never raises."""
        try:
            await asyncio.wait_for(self.push(full=False), timeout)
        except Exception as exc:
            logger.warning("[PresenceManager] final status push failed: %r", exc)

    async def _send(self, messages: dict[str, tuple[str, Status]]) -> None:
        layer = get_channel_layer()
        failed: list[BaseException] = []
        started = time.monotonic()
        queue = iter(messages.items())

        async def sender() -> None:  # CONCURRENCY of these share the queue
            for user_id, (encoded, status) in queue:
                try:
                    message = {"type": MESSAGE_TYPE, "user_id": user_id, "status": status}
                    await layer.group_send(user_group(user_id), message)
                except Exception as exc:
                    failed.append(exc)
                    self._last.pop(user_id, None)  # sent again on the next pass
                    continue
                if status["state"] == "stopped":
                    self._last.pop(user_id, None)
                else:
                    self._last[user_id] = encoded

        await asyncio.gather(*(sender() for _ in range(min(CONCURRENCY, len(messages)))))
        if failed:
            logger.warning(
                "[PresenceManager] status push failed for %d of %d users: %r",
                len(failed),
                len(messages),
                failed[0],
            )
        elapsed = time.monotonic() - started
        if elapsed > get_settings().STATUS_PUSH_INTERVAL > 0:
            logger.warning("[PresenceManager] status push of %d users took %.2fs", len(messages), elapsed)
