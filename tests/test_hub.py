"""dashboard/ws/hub.py: one socket whose send waits cannot stall the others' delivery."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re

from dashboard.ws.hub import Hub
from devtools.processes import wait_until


class Quick:
    def __init__(self) -> None:
        self.got: list[int] = []

    async def on_manager(self, event: dict, raw: str) -> None:
        self.got.append(event["n"])


class Stuck(Quick):
    """A socket whose send waits (another server's backpressure, a client that reads nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.unblocked = asyncio.Event()

    async def on_manager(self, event: dict, raw: str) -> None:
        await self.unblocked.wait()
        self.got.append(event["n"])


async def test_a_socket_whose_send_waits_stalls_nobody_and_gets_its_messages_in_order(aredis, key_prefix):
    hub = Hub({"manager": "on_manager"})
    channel = f"{key_prefix}:test:hub"
    stuck, quick = Stuck(), Quick()
    try:
        await hub.join(stuck, [channel])
        await hub.join(quick, [channel])
        for n in range(5):
            await aredis.publish(channel, json.dumps({"type": "manager", "n": n}))
        await wait_until(lambda: quick.got == [0, 1, 2, 3, 4], 3, "the other socket got every message")
        assert stuck.got == []
        stuck.unblocked.set()
        await wait_until(lambda: stuck.got == [0, 1, 2, 3, 4], 3, "the slow socket got them all, in order")
        await aredis.publish(channel, json.dumps({"type": "manager", "n": 5}))  # and it is back to normal
        await wait_until(lambda: stuck.got[-1:] == [5] and quick.got[-1:] == [5], 3, "both got the next")
        assert hub.overflowed == 0
    finally:
        await hub.aclose()


async def test_a_handler_that_fails_after_waiting_is_logged_and_the_socket_still_gets_the_next(
    aredis, key_prefix, caplog
):
    class Failing(Quick):
        async def on_manager(self, event: dict, raw: str) -> None:
            await asyncio.sleep(0.01)
            if event["n"] == 0:
                raise RuntimeError("send failed")
            self.got.append(event["n"])

    hub = Hub({"manager": "on_manager"})
    channel = f"{key_prefix}:test:hub"
    failing = Failing()
    try:
        await hub.join(failing, [channel])
        for n in range(3):
            await aredis.publish(channel, json.dumps({"type": "manager", "n": n}))
        await wait_until(lambda: failing.got == [1, 2], 3, "the messages after the failure")
        assert "[hub] handler on_manager failed" in caplog.text and "send failed" in caplog.text
    finally:
        await hub.aclose()


async def test_a_lost_pubsub_connection_is_logged_once_and_its_channels_subscribed_again(
    aredis, key_prefix, caplog
):
    """Redis closes the hub's connection (as a restart does) while Redis itself stays up:
    redis-py's own retry would reconnect and re-subscribe unseen; the hub logs the loss and
    the return once each, and a message published after it reaches the socket."""
    hub = Hub({"manager": "on_manager"})
    channel = f"{key_prefix}:test:hub-lost"
    socket = Quick()
    try:
        await hub.join(socket, [channel])
        # This process's hubs' connections: ours, and those earlier tests' event loops left.
        name = f"dashboard:{os.getpid()}:pubsub"
        listed = [c for c in await aredis.client_list() if c.get("name") == name]
        assert listed, "the hub's connection is named"
        caplog.set_level(logging.WARNING, logger="dashboard.hub")
        for connection in listed:
            await aredis.client_kill_filter(_id=connection["id"])
        back = r"\[hub\] Redis pub/sub back after"
        await wait_until(lambda: re.search(back, caplog.text), 5, "the hub logged its return")
        assert len(re.findall(r"\[hub\] Redis pub/sub connection lost", caplog.text)) == 1, caplog.text
        assert len(re.findall(back, caplog.text)) == 1, caplog.text
        await wait_until(lambda: channel in hub.subscribed(), 5, "the channel subscribed again")
        await aredis.publish(channel, json.dumps({"type": "manager", "n": 7}))
        await wait_until(lambda: socket.got == [7], 5, "a message published after it reached the socket")
    finally:
        await hub.aclose()
