"""Issue 8: the worker under bursts, with real runworker processes.

A flood of joins is served in order without the worker ever mistaking itself for
a dead one (no fence, no manager started twice), and new managers are spread
over the live workers by rule (least loaded), not by which worker read the join.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter

import pytest

from devtools.processes import Proc, Stack
from livestream.presence.store import PresenceStore

pytestmark = pytest.mark.processes

STARTED = re.compile(r"\[PresenceManager\] UserStreamManager started: (\S+)$", re.MULTILINE)
FENCE = "leases not renewed"


@pytest.fixture
def stack(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix)
    yield stack
    stack.stop_all()


class StartCounter:
    """Counts ``UserStreamManager started`` per user in a worker's log, reading only what is new."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.offset = 0
        self.started: Counter[str] = Counter()

    def update(self) -> Counter[str]:
        with self.proc.log.path.open(errors="replace") as log:
            log.seek(self.offset)
            text = log.read()
        end = text.rfind("\n") + 1  # a line still being written is read next time
        self.offset += len(text[:end].encode(errors="replace"))
        self.started.update(m.group(1) for m in STARTED.finditer(text[:end]))
        return self.started


async def wait_started(counter: StartCounter, users: set[str], timeout: float) -> float:
    began = time.monotonic()
    while not users <= set(counter.update()):
        missing = len(users - set(counter.started))
        assert time.monotonic() - began < timeout, f"{missing} of {len(users)} not running after {timeout}s"
        await asyncio.sleep(0.2)
    return time.monotonic() - began


def meta(ref: str) -> dict:
    return {"email": f"{ref}@example.com", "joined_at": int(time.time()), "ref": ref}


@pytest.mark.cpu_heavy
async def test_a_flood_of_12000_joins_starts_every_user_once_without_a_fence(stack):
    worker = stack.start_worker()
    await worker.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=20)
    counter = StartCounter(worker)
    users = [str(i) for i in range(1, 12_001)]
    store = PresenceStore()
    # As 12,000 tabs' daphne tracks would: all at once, in a few round trips.
    for start in range(0, len(users), 1000):
        await store.track_many([(u, meta(f"r{u}")) for u in users[start : start + 1000]])

    took = await wait_started(counter, set(users), timeout=60)
    # Keep watching a little: a late fence or a lost lease would restart managers now.
    await asyncio.sleep(3)
    started = counter.update()
    twice = {u: n for u, n in started.items() if n > 1}
    text = worker.log.text()
    assert not twice, f"{len(twice)} users started more than once, e.g. {list(twice.items())[:5]}"
    assert FENCE not in text
    assert "UserStreamManager stopped" not in text
    assert "Traceback" not in text
    print(f"12,000 joins: all running {took:.1f}s after the flood")


async def test_new_managers_spread_over_the_live_workers_by_load(stack):
    """12 users opening two tabs each, one after another, over 2 workers; a third joins later."""
    workers = [stack.start_worker("worker1"), stack.start_worker("worker2")]
    for proc in workers:
        await proc.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=20)
    await asyncio.sleep(1.5)  # both have beaten: each sees the other as live
    counters = [StartCounter(proc) for proc in workers]
    store = PresenceStore()
    for uid in range(1, 13):
        for tab in ("a", "b"):
            await store.track(str(uid), meta(f"{uid}{tab}"))
            await asyncio.sleep(0.05)
    expected = {str(u) for u in range(1, 13)}
    await _wait_all(counters, expected)
    per_worker = [len(c.update()) for c in counters]
    assert sum(per_worker) == 12 and max(per_worker) <= 8, per_worker

    third = stack.start_worker("worker3")
    await third.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=20)
    await asyncio.sleep(1.5)
    counters.append(StartCounter(third))
    for uid in range(13, 25):
        await store.track(str(uid), meta(f"{uid}a"))
        await asyncio.sleep(0.05)
    await _wait_all(counters, {str(u) for u in range(1, 25)})
    new_on_third = len(counters[2].update())
    # The empty newcomer is the least loaded: it gets most of the new users (6 of them
    # would even out the load: 6 + 6 + 6 + 6).
    assert new_on_third >= 6, [len(c.started) for c in counters]
    # Existing managers stayed where they were: every user was started once, on one worker.
    assert sum(len(c.update()) for c in counters) == 24


async def _wait_all(counters: list[StartCounter], users: set[str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        running = set().union(*(set(c.update()) for c in counters))
        if users <= running:
            return
        assert time.monotonic() < deadline, f"not running: {sorted(users - running)}"
        await asyncio.sleep(0.05)
