"""The relay warden (broadcast/warden.py): a real warden process and real child processes
standing in for relays. It kills them once the deadline passes, keeps them while the
deadline is refreshed, and kills them when the worker's end of the socket closes."""

from __future__ import annotations

import asyncio
import math
import subprocess
import time

from broadcast.warden import RelayWarden, Watch
from devtools.processes import wait_until


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"])


def ended(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is not None


async def test_the_warden_kills_its_relays_once_the_deadline_passes_and_not_before():
    warden = RelayWarden()
    relays = [sleeper(), sleeper(), sleeper()]
    try:
        ids = [warden.add(proc.pid) for proc in relays]
        assert all(ids) and warden.pid() is not None
        warden.remove(ids[2])  # ended (as far as the worker knows): never the warden's to kill

        # Refreshed every 0.1 s, 0.3 s ahead (a healthy keeper): they run on.
        until = time.monotonic() + 1.2
        while time.monotonic() < until:
            warden.deadline(time.monotonic() + 0.3)
            await asyncio.sleep(0.1)
        assert not any(ended(p) for p in relays)

        # No more refreshes (the worker froze): killed within moments of the deadline.
        deadline = time.monotonic() + 0.3
        warden.deadline(deadline)
        await wait_until(lambda: ended(relays[0]) and ended(relays[1]), 3, "relays killed")
        assert time.monotonic() - deadline < 0.5
        assert relays[0].returncode == -9 and relays[1].returncode == -9
        await asyncio.sleep(0.2)
        assert not ended(relays[2])
        assert warden.dropped == 0
    finally:
        warden.stop()
        for proc in relays:
            proc.kill()
            proc.wait()


async def test_the_worker_kills_through_the_warden_and_a_closed_socket_kills_all():
    warden = RelayWarden()
    relays = [sleeper(), sleeper()]
    try:
        ids = [warden.add(proc.pid) for proc in relays]
        warden.deadline(math.inf)
        assert ids[0] is not None
        warden.kill(ids[0])  # the lease keeper's stop: this one only
        await wait_until(lambda: ended(relays[0]), 3, "relay killed")
        assert not ended(relays[1])
        warden.remove(ids[0])
        warden.kill(ids[0])  # after it ended: nothing (its pidfd is closed)
        warden.stop()  # the worker is gone: the warden takes the rest with it
        await wait_until(lambda: ended(relays[1]), 3, "the last relay killed")
    finally:
        warden.stop()
        for proc in relays:
            proc.kill()
            proc.wait()


def test_the_watch_state():
    watch = Watch()
    assert watch.timeout(0.0) is None  # nothing to watch
    watch.message(b"d 10.5", [])
    assert watch.deadline == 10.5 and watch.timeout(0.0) is None
    watch.message(b"d nonsense", [])  # dropped
    assert watch.deadline == 10.5


async def test_a_warden_that_died_is_replaced_and_told_every_relay_again():
    import os
    import signal

    warden = RelayWarden()
    relays = [sleeper(), sleeper()]
    try:
        assert warden.add(relays[0].pid) is not None
        first = warden.pid()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await wait_until(lambda: warden.pid() is None, 3, "warden gone")
        assert not ended(relays[0])  # its relays are not the warden's children
        assert warden.add(relays[1].pid) is not None  # starts another, which learns both
        assert warden.pid() not in (None, first)
        warden.deadline(time.monotonic())
        await wait_until(lambda: ended(relays[0]) and ended(relays[1]), 3, "both killed by the new warden")
    finally:
        warden.stop()
        for proc in relays:
            proc.kill()
            proc.wait()
