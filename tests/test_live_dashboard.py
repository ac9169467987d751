"""The live dashboard: the worker pushes each user's own manager status to that user's tabs.

In-process tests drive the StatusPusher and a PresenceManager against the real
Redis, with a probe subscribed to the user's pub/sub channel (livestream/pushes/channels.py)
standing in for a tab; the end-to-end test uses real daphne + runworker processes
and real WebSockets for two users.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from devtools.clients import listen, next_json, open_socket, signup
from devtools.processes import Stack
from livestream.components.base import Component
from livestream.components.user_manager import UserStreamManager
from livestream.presence import diffs
from livestream.presence.store import PresenceStore
from livestream.pushes import channels as push
from livestream.pushes.status import StatusPusher
from livestream.worker.presence_manager import PresenceManager

LIVE = "/ws/presence/?live=1"  # the dashboard page's socket: it gets the pushes
PASSWORD = "live-dashboard-pw-1"

# -- helpers -------------------------------------------------------------------


async def probe(user_id: str) -> Any:
    """A subscriber to ``user_id``'s push channel: what one of their live tabs would get."""
    return await listen(push.user_channel(user_id))


async def received(channel: Any, timeout: float = 2.0) -> dict[str, Any]:
    """The next message published to the probe's channel (JSON-decoded)."""
    return await next_json(channel, timeout)


async def silent(channel: Any, seconds: float = 0.3) -> bool:
    try:
        message = await received(channel, seconds)
    except TimeoutError:
        return True
    raise AssertionError(f"expected nothing, got {message}")


class Dial(Component):
    """A component whose status the test sets, to control what changes."""

    values: dict[str, int] = {}

    async def run(self) -> None:
        await asyncio.Event().wait()

    def status(self) -> dict[str, Any]:
        return {"value": Dial.values.get(self.user_id, 0)}


async def started(*user_ids: str) -> dict[str, UserStreamManager]:
    managers = {uid: UserStreamManager(uid, [Dial]) for uid in user_ids}
    for manager in managers.values():
        manager.start()
    await asyncio.sleep(0)  # let the components' tasks begin (state: running)
    return managers


# -- the pusher ----------------------------------------------------------------


async def test_a_pass_sends_each_changed_status_once_to_its_own_user_only():
    Dial.values = {}
    managers = await started("1", "2")
    pusher = StatusPusher(managers)
    one, two = await probe("1"), await probe("2")
    try:
        assert await pusher.push(full=True) == 2
        first = await received(one)
        assert first["type"] == "manager" and first["user_id"] == "1"  # the browser's shape
        assert first["state"] == "running"
        assert first["components"]["Dial"] == {"state": "running", "restarts": 0, "value": 0}
        assert (await received(two))["user_id"] == "2"

        # Nothing changed: nothing is sent (10,000 idle managers cost no group_send).
        assert await pusher.push(full=True) == 0
        assert await silent(one) and await silent(two)

        # One user's status changes: one send, to that user's group alone.
        Dial.values["1"] = 5
        assert await pusher.push(full=True) == 1
        assert (await received(one))["components"]["Dial"]["value"] == 5
        assert await silent(two)

        # A lifecycle announce is sent at once, even unchanged, and only for that user.
        pusher.announce("2")
        assert await pusher.push(full=False) == 1
        assert (await received(two))["components"]["Dial"]["value"] == 0
        assert await silent(one)
    finally:
        for manager in managers.values():
            await manager.stop()


async def test_stopping_and_stopped_are_pushed_in_order():
    Dial.values = {}
    managers = await started("1")
    pusher = StatusPusher(managers)
    tab = await probe("1")
    manager = managers.pop("1")
    pusher.announce("1", "stopping", manager)
    assert await pusher.push(full=True) == 1
    await manager.stop()
    pusher.announce("1", "stopped", manager)
    assert await pusher.push(full=True) == 1
    stopping, stopped = await received(tab), await received(tab)
    assert stopping["state"] == "stopping"
    assert stopped["state"] == "stopped"
    assert stopped["components"]["Dial"]["state"] == "stopped"
    # A manager that is gone is not pushed again.
    assert await pusher.push(full=True) == 0


async def test_the_worker_pushes_running_with_a_ticking_counter_then_stopping_and_stopped(
    configure_livestream,
):
    """A real PresenceManager: join -> running (counter ticking) -> cleanup -> stopped; shutdown -> stopped."""
    configure_livestream(CONSOLE_LOG_INTERVAL=0.2, STATUS_PUSH_INTERVAL=0.2, CLEANUP_TIMEOUT=30)
    manager = PresenceManager()
    await manager.start()
    tab = await probe("42")
    store = PresenceStore()
    try:
        join = await store.track("42", {"email": "x@example.com", "joined_at": 1, "ref": "r1"})
        await manager.handle(diffs.presence_diff(joins=[join]))
        counts: list[int] = []
        deadline = time.monotonic() + 5
        while len(counts) < 4:
            assert time.monotonic() < deadline, f"counter did not tick: {counts}"
            status = await received(tab)
            if status["type"] == "manager" and status["state"] == "running":
                counts.append(status["components"]["ConsoleLogger"]["count"])
        assert counts == sorted(counts) and counts[-1] > counts[0], counts

        leave = await store.untrack("42", "r1")
        await manager.handle(diffs.presence_diff(leaves=[leave]))
        await manager.local.stop_if_absent("42")  # what the cleanup timer does
        states = []
        while not states or states[-1] != "stopped":
            message = await received(tab)
            if message["type"] == "manager":
                states.append(message["state"])
        assert "stopping" in states or states[-1] == "stopped"
        assert set(states) <= {"running", "stopping", "stopped"}, states

        # Shutdown tells the open tabs too, before the next worker takes over.
        join = await store.track("42", {"email": "x@example.com", "joined_at": 2, "ref": "r2"})
        await manager.handle(diffs.presence_diff(joins=[join]))
        while (await received(tab)).get("state") != "running":
            pass
    finally:
        await manager.shutdown()
    last = None
    while True:
        try:
            message = await received(tab, 0.5)
            last = message.get("state", last)
        except TimeoutError:
            break
    assert last == "stopped"


# -- end to end: real daphne + worker, two users, two sockets -----------------


class Tab:
    """A real WebSocket collecting what the server pushes to it."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.messages: list[tuple[float, dict[str, Any]]] = []
        # Component events (every socket gets StreamStateServer's sticky state at connect, even
        # for a user who never went live: issue 17) are kept apart: these tests are about pushes.
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            message = json.loads(frame)
            if message.get("type") == "event":
                self.events.append(message)
            else:
                self.messages.append((time.monotonic(), message))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for _, m in self.messages if m.get("type") == kind]

    async def wait_for(self, predicate, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for _, message in self.messages:
                if predicate(message):
                    return message
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout}s; got {self.messages[-5:]}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self.task, 5)


@pytest.mark.processes
async def test_each_user_sees_only_their_own_manager_and_sessions(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix)
    try:
        web = stack.start_daphne()
        worker = stack.start_worker()
        alice = await signup(web.url, "alice@example.com", PASSWORD)
        bob = await signup(web.url, "bob@example.com", PASSWORD)
        a = Tab(await open_socket(web.url, alice, path=LIVE))
        b = Tab(await open_socket(web.url, bob, path=LIVE))
        a_id = (await a.wait_for(lambda m: m["type"] == "sessions", 10, "session count"))["user_id"]
        b_id = (await b.wait_for(lambda m: m["type"] == "sessions", 10, "session count"))["user_id"]
        assert a_id != b_id

        # Each sees its own manager running and its counter ticking, once a second.
        def ticked(tab: Tab, n: int):
            # A "starting" status has no count yet.
            return lambda m: m["type"] == "manager" and m["components"]["ConsoleLogger"].get("count", 0) >= n

        first_a = await a.wait_for(
            lambda m: m["type"] == "manager" and m["state"] == "running", 15, "running"
        )
        start_count = first_a["components"]["ConsoleLogger"].get("count", 0)
        started = time.monotonic()
        await a.wait_for(ticked(a, start_count + 3), 10, "3 more console logs")
        await b.wait_for(ticked(b, 3), 10, "bob's console log #3")
        elapsed = time.monotonic() - started
        assert 1.5 <= elapsed <= 6.0, f"3 ticks took {elapsed:.1f}s"

        # A second tab of Alice's: both her tabs learn there are 2; Bob hears nothing of it.
        b_mark = len(b.messages)
        a2 = Tab(await open_socket(web.url, alice, path=LIVE))
        await a.wait_for(lambda m: m["type"] == "sessions" and m["sessions"] == 2, 5, "sessions=2")
        await a2.wait_for(lambda m: m["type"] == "sessions" and m["sessions"] == 2, 5, "sessions=2")
        await a2.wait_for(lambda m: m["type"] == "manager" and m["state"] == "running", 5, "state at once")
        await a2.close()
        await a.wait_for(lambda m: m["type"] == "sessions" and m["sessions"] == 1, 5, "sessions=1")

        # A socket not opened by the page (no ?live=1) counts as a session but gets no pushes:
        # a client that never reads would otherwise fill its queue and time out.
        plain = Tab(await open_socket(web.url, alice))
        await a.wait_for(lambda m: m["type"] == "sessions" and m["sessions"] == 2, 5, "sessions=2 again")
        count_now = a.of("manager")[-1]["components"]["ConsoleLogger"].get("count", 0)
        await a.wait_for(ticked(a, count_now + 2), 10, "two more ticks")
        assert plain.messages == []
        await plain.close()

        # A message addressed to Bob but published on Alice's channel (a bug elsewhere) is not forwarded.
        spoof = {"type": "manager", "user_id": b_id, "state": "spoofed", "components": {}}
        await push.publish(push.user_channel(a_id), spoof)
        await web.log.wait_for(rf"dropped 'manager' for user '{b_id}' on a socket of user {a_id}", 5)
        await b.wait_for(ticked(b, 6), 10, "more of bob's ticks")

        # Nobody ever got anybody else's data.
        assert {m["user_id"] for _, m in a.messages} == {a_id}
        assert {m["user_id"] for _, m in b.messages} == {b_id}
        assert not any(m.get("state") == "spoofed" for _, m in a.messages + b.messages)
        assert all(m.get("sessions", 1) == 1 for _, m in b.messages[b_mark:])

        # At most about one push per second per tab, not one per message source.
        window = b.messages[-1][0] - b.messages[0][0]
        assert len(b.of("manager")) <= window * 1.5 + 3, (len(b.of("manager")), window)
        counts = [
            m["components"]["ConsoleLogger"]["count"] for m in b.of("manager") if m["state"] == "running"
        ]
        assert counts == sorted(counts)
        assert "Traceback" not in worker.log.text() + web.log.text()
        await a.close()
        await b.close()
    finally:
        stack.stop_all()
