"""Chat connections are effects outside Redis (issue 19 item 2): the lease keeper closes a
user's chat sessions through register_external_effect, and no message is sent to a platform
once this worker may no longer act. In process, against a real IRC server (miniircd) and the
suite's private redis-server; the gate is the process' real one, its deadline moved as a
frozen worker's would be."""

from __future__ import annotations

import math

import pytest

from devtools.processes import wait_until
from livestream.components.base import CommandError
from livestream.components.platform_supervisor import NOT_OWNER, Child, PlatformSupervisor
from livestream.ownership import fencing
from platforms.clients import Connection
from tests.irc import IrcServer, Viewer

TOKEN = "good-token"


def connection(pk: int, platform: str, channel: str = "") -> Connection:
    return Connection(
        pk, platform, f"c{pk}", channel, TOKEN, "", None, "rtmp://127.0.0.1/app", "k", True, "", "v1"
    )


@pytest.fixture
def ircd(tmp_path):
    server = IrcServer(tmp_path, password=f"oauth:{TOKEN}").start()
    yield server
    server.stop()


@pytest.fixture
def gate():
    """The process' gate with its deadline restored afterwards (no lease keeper runs here)."""
    saved = fencing.GATE.deadline
    yield fencing.GATE
    fencing.GATE.deadline = saved


async def test_the_keeper_closes_a_users_chat_sessions_and_no_send_once_past_the_deadline(
    ircd, gate, configure_livestream
):
    configure_livestream(TWITCH_IRC_URL=ircd.url)
    supervisor = PlatformSupervisor("41")
    other = PlatformSupervisor("42")
    twitch = supervisor.children[1] = Child(supervisor, connection(1, "twitch", "streamer"))
    custom = other.children[2] = Child(other, connection(2, "custom"))
    viewer = await Viewer.join(ircd, "viewer", "streamer")
    try:
        twitch.start()
        custom.start()
        await wait_until(lambda: twitch.client.connected and custom.client.connected, 10, "connected")
        gate.deadline = math.inf
        assert (await supervisor.send_chat({"text": "while we own it"}))["results"]
        await viewer.wait_for(lambda line: "while we own it" in line, 5)

        # Past the deadline (a worker woken from a freeze): nothing is sent.
        gate.deadline = -math.inf
        mark = len(viewer.lines)
        with pytest.raises(CommandError, match=NOT_OWNER):
            await supervisor.send_chat({"text": "stale"})
        with pytest.raises(CommandError, match=NOT_OWNER):
            await supervisor.set_stream_info({"title": "t", "category": ""})

        # The keeper stops user 41's effects: its chat session is closed, 42's is not.
        assert gate.lost(("41",)) == 1
        await wait_until(lambda: twitch.task is not None and twitch.task.done(), 5, "session closed")
        assert twitch.client.connected is False
        assert custom.task is not None and not custom.task.done()
        assert gate.lost(("41",)) == 0  # unregistered once it ended
        assert not any("stale" in line for line in viewer.lines[mark:])
    finally:
        await viewer.close()
        for child in (twitch, custom):
            if child.task is not None:
                child.task.cancel()
        await supervisor._stop([twitch])
        await other._stop([custom])
