"""Issue 4.6: components supervised like OTP children, in a real worker process.

The worker runs every user's manager with the components of tests/components.py
(configured through LIVESTREAM_COMPONENTS): one that crashes at once, one that
crashes every 1.5 s, one that ignores cancellation, and the real ConsoleLogger.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time

import pytest

from devtools.clients import create_accounts, open_socket
from devtools.logs import timed_lines, worker_id
from devtools.processes import Stack, wait_until

pytestmark = pytest.mark.processes

COMPONENTS = ["Crasher", "SlowCrasher", "Stubborn", "ConsoleLogger"]
SHUTDOWN_TIMEOUT, CLEANUP = 1.0, 1.0
ENV = {
    "LIVESTREAM_COMPONENTS": ",".join(COMPONENTS),
    "DJANGO_SETTINGS_MODULE": "tests.settings",  # registers the test components
    "LIVESTREAM_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
    "LIVESTREAM_CLEANUP_TIMEOUT": str(CLEANUP),
    # MAX_RESTARTS, MAX_RESTARTS_WINDOW and the backoff keep their defaults: 3 in 5 s, 0.1 s doubling.
}


@pytest.fixture
def stack(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=ENV)
    yield stack
    stack.stop_all()


async def test_crashing_components_restart_with_backoff_then_fail_alone(stack, aredis, key_prefix):
    web = stack.start_daphne()
    worker = stack.start_worker()
    accounts = create_accounts(stack, ["one@x.io", "two@x.io"])
    sockets = [await open_socket(web.url, a.session) for a in accounts.values()]
    uid = accounts["one@x.io"].user_id
    log = worker.log
    await log.wait_for(rf"UserStreamManager started: {uid}$", timeout=10)

    # Crasher: restarted 3 times with exponential backoff, the 4th crash marks it failed.
    await log.wait_for(
        rf"\[UserStreamManager:{uid}\] Crasher failed: more than 3 restarts in 5(\.0)?s; left down", timeout=5
    )
    crash_times = [
        t for t, line in timed_lines(worker) if f"[UserStreamManager:{uid}] Crasher crashed" in line
    ]
    assert len(crash_times) == 4, crash_times
    gaps = [b - a for a, b in itertools.pairwise(crash_times)]
    for gap, backoff in zip(gaps, [0.1, 0.2, 0.4], strict=True):
        assert backoff - 0.01 <= gap <= backoff + 0.5, (gaps, "backoff 0.1, 0.2, 0.4 s")
    for n, delay in enumerate(["0.10", "0.20", "0.40"], start=1):
        assert log.findall(rf"\[UserStreamManager:{uid}\] Crasher restarting in {delay}s \(restart {n}\)")

    # The failure is visible in the manager's published status, beside the others still running.
    async def status() -> dict | None:
        raw = await aredis.hget(f"{key_prefix}:managers:{worker_id(worker)}", uid)
        return json.loads(raw) if raw else None

    async def crasher_failed_in_status() -> dict | None:
        current = await status()
        return current if current and current["components"]["Crasher"]["state"] == "failed" else None

    published = await wait_until(crasher_failed_in_status, timeout=5, message="Crasher failed in status")
    components = published["components"]
    assert components["Crasher"]["restarts"] == 3
    assert components["Stubborn"]["state"] == "running"
    assert components["ConsoleLogger"]["state"] == "running"

    # SlowCrasher crashes every ~1.5 s: never 4 in 5 s, so it is restarted each time, never failed.
    mark = log.mark()
    await log.wait_for(
        rf"\[UserStreamManager:{uid}\] SlowCrasher restarting in", timeout=10, after=mark, count=3
    )
    assert not log.findall(r"SlowCrasher failed")
    # ... and the ConsoleLogger kept logging all along, counting on.
    counts = [int(m[1]) for m in log.findall(rf"\[UserStreamManager:{uid}\] Console log #(\d+)")]
    assert counts == list(range(1, len(counts) + 1)) and len(counts) >= 4, counts
    assert (await status())["components"]["ConsoleLogger"]["count"] >= 4

    # Stop: the Stubborn component gets SHUTDOWN_TIMEOUT, then is abandoned with a log line;
    # the manager stops all the same.
    await sockets[0].close()
    await log.wait_for(rf"cleanup scheduled: {uid} in", timeout=5)
    closing = time.monotonic()
    await log.wait_for(
        rf"\[UserStreamManager:{uid}\] Stubborn ignored cancellation for 1(\.0)?s; abandoned",
        timeout=CLEANUP + SHUTDOWN_TIMEOUT + 3,
    )
    await log.wait_for(rf"UserStreamManager stopped: {uid}$", timeout=2)
    took = time.monotonic() - closing
    assert took <= CLEANUP + SHUTDOWN_TIMEOUT + 1.5, took

    # Every line the supervisor and components wrote names the user and the component.
    supervisor_lines = [
        line
        for line in log.lines()
        if re.search(r" (livestream\.supervisor|livestream\.test_components|livestream\.console) ", line)
    ]
    assert supervisor_lines
    for line in supervisor_lines:
        assert re.search(
            r"\[UserStreamManager:\d+\] (Crasher|SlowCrasher|Stubborn|ConsoleLogger|Console log)", line
        ), line
    # The other user's manager was never disturbed by any of it.
    other = accounts["two@x.io"].user_id
    assert not log.findall(rf"UserStreamManager stopped: {other}$")
    assert worker.alive()
    print(
        f"supervision: crash gaps {[round(g, 2) for g in gaps]} s; Stubborn abandoned and manager "
        f"stopped {took:.2f}s after its cleanup was scheduled"
    )
    # SIGTERM: the worker exits although abandoned Stubborn tasks never end (asyncio.run would
    # wait for them for ever), naming them in a last log line.
    stopping = time.monotonic()
    assert await asyncio.to_thread(worker.stop, 10) == 0
    assert time.monotonic() - stopping < SHUTDOWN_TIMEOUT + 4
    assert log.findall(r"Worker exiting with \d+ task\(s\) that ignore cancellation: Stubborn:")
    await sockets[1].close()
