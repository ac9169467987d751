"""The whole flow with real processes: daphne + runworker + redis-server, HTTP login, real WebSockets."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from devtools.clients import login, open_socket, signup
from devtools.processes import Stack

pytestmark = pytest.mark.processes

STARTED = r"\[PresenceManager\] UserStreamManager started: {uid}\n"
STOPPED = r"\[PresenceManager\] UserStreamManager stopped: {uid}\n"


def console(uid: str) -> str:
    return rf"\[UserStreamManager:{uid}\] Console log #(\d+) - \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{6}}Z\n"


def last_count(log, uid: str) -> int:
    return int(log.findall(console(uid))[-1].group(1))


@pytest.fixture
def stack(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix)
    yield stack
    stack.stop_all()


async def test_three_tabs_then_last_close_stops_after_five_seconds(stack):
    await three_tabs_flow(stack)


async def three_tabs_flow(stack: Stack) -> None:
    """The whole flow; tests/test_postgres.py runs it against PostgreSQL too."""
    web = stack.start_daphne()
    worker = stack.start_worker()
    log = worker.log
    await log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=30)

    await signup(web.url, "streamer@example.com", "a-long-pass-123")
    session = await login(web.url, "streamer@example.com", "a-long-pass-123")
    tabs = [await open_socket(web.url, session) for _ in range(3)]
    uid = (await log.wait_for(r"\[PresenceManager\] presence join: (\d+)\n", timeout=10)).group(1)
    await log.wait_for(STARTED.format(uid=uid), timeout=10)
    await log.wait_for(r"\[PresenceManager\] presence join: \d+\n", timeout=10, count=3)
    assert len(log.findall(STARTED.format(uid=uid))) == 1  # three tabs, one manager
    await log.wait_for(console(uid), timeout=5, count=2)

    # Close two tabs: the manager keeps logging.
    await tabs[0].close()
    await tabs[1].close()
    await log.wait_for(rf"\[PresenceManager\] presence leave: {uid} \(1 sessions left\)\n", timeout=10)
    before = last_count(log, uid)
    mark = log.mark()
    await log.wait_for(console(uid), timeout=5, after=mark, count=2)
    assert last_count(log, uid) >= before + 2
    assert not log.findall(r"cleanup scheduled")

    # Close the last tab and come back within the window: same manager, counter goes on.
    await tabs[2].close()
    await log.wait_for(rf"\[PresenceManager\] presence leave: {uid} \(0 sessions left\)\n", timeout=10)
    await log.wait_for(rf"\[PresenceManager\] cleanup scheduled: {uid} in 5s\n", timeout=5)
    back = await open_socket(web.url, session)
    await log.wait_for(r"\[PresenceManager\] presence join: \d+\n", timeout=10, count=4)
    count_at_return = last_count(log, uid)
    mark = log.mark()
    await log.wait_for(console(uid), timeout=10, after=mark, count=7)  # past the 5 s window
    assert not log.findall(STOPPED.format(uid=uid))
    numbers = [int(m.group(1)) for m in log.findall(console(uid))]
    assert numbers == list(range(1, len(numbers) + 1))  # never restarted
    assert numbers[-1] >= count_at_return + 7

    # Close it for good: stopped between 5 and 6.5 s later, and the logging stops.
    await back.close()
    closed_at = time.monotonic()
    await log.wait_for(STOPPED.format(uid=uid), timeout=10)
    elapsed = time.monotonic() - closed_at
    assert 5.0 <= elapsed <= 6.5, elapsed
    final = last_count(log, uid)
    await asyncio.sleep(1.5)  # a stopped logger must stay silent: nothing to await but time
    assert last_count(log, uid) == final
    assert "Traceback" not in log.text() and "Traceback" not in web.log.text()


async def test_log_lines_use_the_exact_formats(stack):
    # The cleanup timer starts where the tab closes (daphne's untrack), so both read the timeout.
    web = stack.start_daphne(LIVESTREAM_CLEANUP_TIMEOUT="0.5")
    worker = stack.start_worker(LIVESTREAM_CLEANUP_TIMEOUT="0.5")
    await signup(web.url, "fmt@example.com", "a-long-pass-123")
    session = await login(web.url, "fmt@example.com", "a-long-pass-123")
    ws = await open_socket(web.url, session)
    uid = (await worker.log.wait_for(r"\[PresenceManager\] presence join: (\d+)\n", timeout=15)).group(1)
    await worker.log.wait_for(console(uid), timeout=5)
    await ws.close()
    await worker.log.wait_for(STOPPED.format(uid=uid), timeout=10)
    messages = [re.sub(r"^\S+ \S+ \S+ \S+ ", "", line) for line in worker.log.lines()]
    for expected in (
        f"[PresenceManager] presence join: {uid}",
        f"[PresenceManager] UserStreamManager started: {uid}",
        f"[PresenceManager] presence leave: {uid} (0 sessions left)",
        f"[PresenceManager] cleanup scheduled: {uid} in 0.5s",
        f"[PresenceManager] UserStreamManager stopped: {uid}",
    ):
        assert expected in messages, expected
